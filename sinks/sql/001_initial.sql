-- tagpulse schema, version 1.
-- Plain MergeTree without PARTITION BY: one INSERT of one block is one part, so a sink batch lands
-- entirely or not at all. Every row carries the Kafka (_partition, _offset) of the message it came
-- from; the sink resumes from max(_offset) per partition, so no row is ever written twice and
-- queries need no FINAL (docs/clickhouse.md).
-- Statements are idempotent (IF NOT EXISTS): a crash between a statement and the
-- schema_migrations record only means the file runs again.

CREATE DATABASE IF NOT EXISTS tagpulse;

CREATE TABLE IF NOT EXISTS tagpulse.posts
(
    platform          LowCardinality(String),
    post_id           String,
    author_id         String,
    author_handle     String,
    author_followers  UInt64,
    created_at        DateTime('UTC'),
    lang              LowCardinality(String),
    text              String,
    hashtags          Array(String),
    is_share          Bool,
    original_post_id  String,
    likes             UInt64,
    shares            UInt64,
    replies           UInt64,
    quotes            UInt64,
    ingested_at       DateTime64(3, 'UTC'),
    _partition        UInt16,
    _offset           UInt64,
    INDEX hashtags_bf hashtags TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
ORDER BY (platform, created_at, post_id);

CREATE TABLE IF NOT EXISTS tagpulse.reach_windows
(
    tag              String,
    platform         LowCardinality(String),
    window_size      UInt32,
    window_start     DateTime('UTC'),
    window_end       DateTime('UTC'),
    posts            UInt64,
    originals        UInt64,
    shares           UInt64,
    unique_authors   UInt64,
    potential_reach  UInt64,
    impressions      UInt64,
    engagement       UInt64,
    closed_at        DateTime64(3, 'UTC'),
    _partition       UInt16,
    _offset          UInt64
)
ENGINE = MergeTree
ORDER BY (tag, window_size, window_start, platform);

CREATE TABLE IF NOT EXISTS tagpulse.late_events
(
    tag           String,
    platform      LowCardinality(String),
    window_size   UInt32,
    window_start  DateTime('UTC'),
    events        UInt64,
    _partition    UInt16,
    _offset       UInt64
)
ENGINE = MergeTree
ORDER BY (tag, window_size, window_start, platform);

CREATE TABLE IF NOT EXISTS tagpulse.dead_letters
(
    stage       LowCardinality(String),
    reason      String,
    raw         String,
    raw_bytes   UInt64,
    source      String,
    at          DateTime64(3, 'UTC'),
    _partition  UInt16,
    _offset     UInt64
)
ENGINE = MergeTree
ORDER BY (stage, at);
