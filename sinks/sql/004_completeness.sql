-- tagpulse schema, version 4: completeness of every source (platform), per 1-minute window.
-- The worker emits, per batch, rows {platform, window_start, received, duplicates, late, invalid}
-- on <namespace>.completeness; one (platform, window_start) may appear in many messages, and the
-- sink stores every message exactly once (rows carry their Kafka (_partition, _offset)), so
-- sum() over the raw rows is exact and no FINAL is needed.
--   received   : valid records read for that source whose EVENT time falls in the minute
--                (duplicates and late posts included: they were received too)
--   duplicates : of those, records already seen (same platform:post_id)
--   late       : of those, unique posts that arrived after a window they belong to had closed
--   invalid    : records rejected as unreadable; they have no trustworthy platform or time, so they
--                are counted under platform 'unknown' in the minute of PROCESSING (wall) time

CREATE TABLE IF NOT EXISTS tagpulse.completeness
(
    platform      LowCardinality(String),
    window_start  DateTime('UTC'),
    received      UInt64,
    duplicates    UInt64,
    late          UInt64,
    invalid       UInt64,
    _partition    UInt16,
    _offset       UInt64
)
ENGINE = MergeTree
ORDER BY (platform, window_start);

-- One row per (source, minute), the repeated worker rows summed, with the rates a reader needs to
-- judge a figure: duplicate_rate = duplicates / received, late_rate = late / received,
-- invalid_rate = invalid / (received + invalid) (only the 'unknown' source has invalid records).
CREATE OR REPLACE VIEW tagpulse.source_completeness AS
SELECT platform, window_start, received, duplicates, late, invalid,
       if(received = 0, 0, duplicates / received)          AS duplicate_rate,
       if(received = 0, 0, late / received)                AS late_rate,
       if(received + invalid = 0, 0, invalid / (received + invalid)) AS invalid_rate
FROM
(
    SELECT c.platform AS platform, c.window_start AS window_start,
           sum(c.received) AS received, sum(c.duplicates) AS duplicates, sum(c.late) AS late,
           sum(c.invalid) AS invalid
    FROM tagpulse.completeness AS c
    GROUP BY c.platform, c.window_start
);

-- One row per (tag, platform, minute) that has a final 1-minute window: the tag's posts next to the
-- completeness of its source in that minute, and the tag's own late posts for that window.
-- Completeness is counted per source before posts are split by tag, so the source figures are
-- shared by every tag of that platform and minute. A minute without completeness rows shows 0.
CREATE OR REPLACE VIEW tagpulse.tag_completeness AS
SELECT w.tag AS tag, w.platform AS platform, w.window_start AS window_start, w.posts AS posts,
       ifNull(l.late_posts, 0)        AS late_posts,
       ifNull(c.received, 0)          AS source_received,
       ifNull(c.duplicates, 0)        AS source_duplicates,
       ifNull(c.late, 0)              AS source_late,
       ifNull(c.duplicate_rate, 0)    AS duplicate_rate,
       ifNull(c.late_rate, 0)         AS late_rate
FROM tagpulse.reach_windows AS w
LEFT JOIN tagpulse.source_completeness AS c ON c.platform = w.platform AND c.window_start = w.window_start
LEFT JOIN
(
    SELECT tag, platform, window_start, sum(events) AS late_posts
    FROM tagpulse.late_events
    WHERE window_size = 60
    GROUP BY tag, platform, window_start
) AS l ON l.tag = w.tag AND l.platform = w.platform AND l.window_start = w.window_start
WHERE w.window_size = 60;

-- Every spike alert with the completeness of its source over the spike's window
-- [window_start, window_start + window_size): a spike made of duplicates or replayed late data
-- shows a high duplicate or late rate here.
CREATE OR REPLACE VIEW tagpulse.spike_completeness AS
SELECT s.tag AS tag, s.platform AS platform, s.window_size AS window_size, s.window_start AS window_start,
       s.detected_at AS detected_at, s.observed AS observed, s.expected AS expected, s.score AS score,
       s.method AS method, s.reason AS reason,
       sum(c.received) AS source_received, sum(c.duplicates) AS source_duplicates, sum(c.late) AS source_late,
       if(source_received = 0, 0, source_duplicates / source_received) AS duplicate_rate,
       if(source_received = 0, 0, source_late / source_received)       AS late_rate
FROM
(
    SELECT *, arrayJoin(range(toUInt32(window_start), toUInt32(window_start) + window_size, 60)) AS minute
    FROM tagpulse.spikes
) AS s
LEFT JOIN
(
    SELECT platform, toUInt32(window_start) AS minute, sum(received) AS received,
           sum(duplicates) AS duplicates, sum(late) AS late
    FROM tagpulse.completeness
    GROUP BY platform, minute
) AS c ON c.platform = s.platform AND c.minute = s.minute
GROUP BY tag, platform, window_size, window_start, detected_at, observed, expected, score, method, reason;
