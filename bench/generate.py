"""Synthetic canonical posts for the benchmark (deterministic for a seed).

Shapes that matter for the stream's cost, not for realism of the text:
- tags are Zipf-distributed over a large vocabulary (a few very hot tags, a long tail),
  0-4 tags per post;
- authors post with Zipf-distributed activity and have heavy-tailed (log-normal) follower
  counts that occasionally grow, so `potential_reach` takes the maximum per author;
- a few percent of the posts arrive twice (duplicates meet in one partition because the
  loader routes by `platform:post_id` like our producer);
- arrival order is shuffled within less than the grace period, so nothing is late.
"""
from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

PLATFORMS = ("mastodon", "bluesky", "twitter", "facebook", "instagram")
PLATFORM_WEIGHTS = (0.35, 0.30, 0.20, 0.10, 0.05)
T0 = 1_748_736_000  # 2025-06-01T00:00:00Z


def iso_utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def synthetic_arrivals(n: int, seed: int = 42, dup_rate: float = 0.03, disorder_s: float = 8.0,
                       rate_per_s: float = 1000.0, n_tags: int = 10_000, n_authors: int = 200_000,
                       t0: int = T0) -> tuple[list[dict], int]:
    """(posts in arrival order including duplicates, number of unique posts).

    Event time advances by about 1/rate_per_s per post, so n posts span n/rate_per_s seconds.
    """
    rng = np.random.default_rng(seed)
    span = max(1, int(n / rate_per_s))
    times = np.sort(rng.integers(t0, t0 + span, size=n))
    # Zipf ranks (a=1.2) folded into the vocabulary: rank 1 is the hottest tag.
    tag_ranks = (rng.zipf(1.3, size=n * 4) - 1) % n_tags
    tags_per_post = rng.choice([0, 1, 1, 1, 2, 2, 3, 4], size=n)
    author_ranks = (rng.zipf(1.3, size=n) - 1) % n_authors
    author_followers = np.minimum(rng.lognormal(5.0, 2.2, size=n_authors).astype(np.int64), 150_000_000)
    growth = rng.random(n) < 0.02  # the follower count seen for an author sometimes grows
    platforms = rng.choice(len(PLATFORMS), size=n, p=PLATFORM_WEIGHTS)
    shares = rng.random(n) < 0.3
    likes = rng.geometric(0.2, size=n) - 1
    replies = rng.geometric(0.5, size=n) - 1
    quotes = (rng.random(n) < 0.05).astype(np.int64)
    words = ["lorem", "ipsum", "dolor", "sit", "amet", "stream", "kafka", "window", "reach", "post"]

    tag_names = {}
    iso_cache = {}
    posts: list[dict] = []
    cursor = 0
    for i in range(n):
        k = int(tags_per_post[i])
        tags = []
        for r in tag_ranks[cursor:cursor + k]:
            name = tag_names.get(r)
            if name is None:
                name = tag_names[r] = f"tag{int(r)}"
            if name not in tags:
                tags.append(name)
        cursor += k
        t = int(times[i])
        created = iso_cache.get(t)
        if created is None:
            created = iso_cache[t] = iso_utc(t)
        author = int(author_ranks[i])
        followers = int(author_followers[author]) + (int(i % 97) if growth[i] else 0)
        share = bool(shares[i])
        platform = PLATFORMS[platforms[i]]
        posts.append({
            "platform": platform, "post_id": f"{i:x}", "author_id": f"u{author}",
            "author_handle": f"user{author}", "author_followers": followers, "created_at": created,
            "lang": "en", "text": " ".join(words[(i + j) % 10] for j in range(8)) + " " + " ".join(
                "#" + t for t in tags),
            "hashtags": tags, "is_share": share, "original_post_id": f"{i // 2:x}" if share else None,
            "likes": 0 if share else int(likes[i]), "shares": 0, "replies": 0 if share else int(replies[i]),
            "quotes": 0 if share else int(quotes[i]),
        })
    # Arrival = event time + a delay below the grace period; duplicates get their own delay.
    dup_idx = np.nonzero(rng.random(n) < dup_rate)[0]
    arrival = np.concatenate([times + rng.uniform(0, disorder_s, size=n),
                              times[dup_idx] + rng.uniform(0, disorder_s, size=len(dup_idx))])
    which = np.concatenate([np.arange(n), dup_idx])
    order = np.argsort(arrival, kind="stable")
    return [posts[j] for j in which[order]], n


def event_span(posts: list[dict]) -> tuple[str, str]:
    times = [p["created_at"] for p in posts]
    return min(times), max(times)
