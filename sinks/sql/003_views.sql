-- tagpulse schema, version 3: views for analysts (docs/queries.md shows them in use).
-- Plain (non-materialized) views: they compute from the base tables at query time, store nothing,
-- and are exact for the same reason the tables are (every Kafka message stored once, no FINAL).
-- CREATE OR REPLACE keeps the file idempotent (a crash before the migration record re-runs it).
--
-- Where the figures come from, and why:
-- * Totals and anything per author come from tagpulse.posts (one row per unique post). Summing
--   tagpulse.reach_windows over time is only right for TUMBLING windows (window_size = 60, hop = size):
--   the 1 h and 24 h windows overlap (hopping), so a post sits in 12 or 24 of them.
-- * Unique authors and potential reach are NOT additive over windows either (an author active in two
--   minutes counts once in the hour); the hourly view recomputes them from posts.
-- * reach_windows holds what the stream computed and excludes late posts (counted in late_events);
--   posts holds every unique post, late ones included. The two differ exactly by the late posts.

-- One row per (tag, platform, hour): exact hourly figures, recomputed from the unique posts.
CREATE OR REPLACE VIEW tagpulse.tag_reach_hourly AS
SELECT tag, platform, hour,
       sum(n)    AS posts,
       sum(s)    AS shares,
       sum(n) - sum(s) AS originals,
       count()   AS unique_authors,
       sum(mf)   AS potential_reach,
       sum(imp)  AS impressions,
       sum(eng)  AS engagement
FROM
(
    SELECT tag, platform, toStartOfHour(created_at) AS hour, author_id,
           count() AS n, countIf(is_share) AS s, max(author_followers) AS mf,
           sum(author_followers) AS imp, sum(likes + shares + replies + quotes) AS eng
    FROM tagpulse.posts
    ARRAY JOIN hashtags AS tag
    GROUP BY tag, platform, hour, author_id
)
GROUP BY tag, platform, hour;

-- One row per (tag, platform): the totals of `tagpulse report`, for every tag at once.
CREATE OR REPLACE VIEW tagpulse.tag_totals AS
SELECT tag, platform,
       sum(n)    AS posts,
       sum(s)    AS shares,
       sum(n) - sum(s) AS originals,
       count()   AS unique_authors,
       sum(mf)   AS potential_reach,
       sum(imp)  AS impressions,
       sum(eng)  AS engagement,
       min(first) AS first_seen,
       max(last)  AS last_seen
FROM
(
    SELECT tag, platform, author_id,
           count() AS n, countIf(is_share) AS s, max(author_followers) AS mf,
           sum(author_followers) AS imp, sum(likes + shares + replies + quotes) AS eng,
           min(created_at) AS first, max(created_at) AS last
    FROM tagpulse.posts
    ARRAY JOIN hashtags AS tag
    GROUP BY tag, platform, author_id
)
GROUP BY tag, platform;

-- One row per (tag, platform, author): who carried a tag, with their largest follower count.
-- ORDER BY followers DESC LIMIT n for the top contributors.
CREATE OR REPLACE VIEW tagpulse.top_contributors AS
SELECT tag, platform, author_id,
       argMax(author_handle, author_followers) AS handle,
       max(author_followers)                   AS followers,
       count()                                 AS posts,
       countIf(is_share)                       AS shares,
       sum(author_followers)                   AS impressions,
       min(created_at)                         AS first_post,
       max(created_at)                         AS last_post
FROM tagpulse.posts
ARRAY JOIN hashtags AS tag
GROUP BY tag, platform, author_id;

-- One row per (tag, platform, minute) from the 1-minute TUMBLING windows, with running totals:
-- cumulative posts and impressions ("theoretical reach over time") since the tag's first minute.
-- Exact because tumbling windows do not overlap and impressions are additive (Σ over posts).
-- Late posts are not in reach_windows (see late_events); tagpulse.posts has them.
CREATE OR REPLACE VIEW tagpulse.tag_reach_cumulative AS
SELECT tag, platform, window_start, posts, shares, impressions, engagement, unique_authors,
       sum(posts)       OVER w AS cum_posts,
       sum(shares)      OVER w AS cum_shares,
       sum(impressions) OVER w AS cum_impressions,
       sum(engagement)  OVER w AS cum_engagement
FROM tagpulse.reach_windows
WHERE window_size = 60
WINDOW w AS (PARTITION BY tag, platform ORDER BY window_start ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW);

-- Late posts per (tag, platform, window_size, window_start): the worker may report one window in
-- several batches, so the raw table can hold several rows per window; this view sums them.
CREATE OR REPLACE VIEW tagpulse.late_windows AS
SELECT tag, platform, window_size, window_start, sum(events) AS late_posts
FROM tagpulse.late_events
GROUP BY tag, platform, window_size, window_start;

-- Rejected input by stage and reason, for a quick health check.
CREATE OR REPLACE VIEW tagpulse.dead_letter_reasons AS
SELECT stage, reason, count() AS records, sum(raw_bytes) AS bytes, min(at) AS first_at, max(at) AS last_at
FROM tagpulse.dead_letters
GROUP BY stage, reason;
