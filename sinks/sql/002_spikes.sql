-- tagpulse schema, version 2: spike alerts from the stream's detector (docs/spikes.md).
-- Same exactly-once scheme as version 1: rows carry their Kafka (_partition, _offset).

CREATE TABLE IF NOT EXISTS tagpulse.spikes
(
    tag           String,
    platform      LowCardinality(String),
    window_size   UInt32,
    window_start  DateTime('UTC'),
    detected_at   DateTime('UTC'),
    observed      UInt64,
    expected      Float64,
    score         Float64,
    method        LowCardinality(String),
    reason        String,
    _partition    UInt16,
    _offset       UInt64
)
ENGINE = MergeTree
ORDER BY (tag, window_size, window_start, platform);
