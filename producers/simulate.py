"""Deterministic simulated post streams (pure: no I/O except `write_jsonl`).

Two generators, both yielding canonical post dicts (schemas.post) in ARRIVAL order, i.e. the
order a producer would deliver them, with exact duplicate deliveries and bounded disorder:

* `simulate_einbuchfuerkai(seed)` — the 2015 #einBuchfuerKai campaign, 2015-05-20 … 05-23 UTC,
  faithful to its published figures (docs/metrics-definitions.md):
  - facebook: one original post and exactly 12,800 shares of it by 12,800 different people with
    heavy-tailed friend/follower counts;
  - twitter: tweets and retweets whose summed author followers (impressions) are exactly
    14,800,000 over created_at ≤ 2015-05-22 12:50:00 UTC; quiet for a day and a half, then the
    campaign catches fire on the evening of 05-21 (19:00 UTC), dips overnight and has a second
    wave the next morning;
  - instagram: 40 posts, 12 of them tagged only #einBildfuerKai ("a picture for Kai");
  - the tag spelled #einBuchfuerKai, #einBuchfürKai, #EINBUCHFUERKAI, #einBuch<U+200B>fuerKai and
    #einBildfuerKai in the texts;
  - background tags at flat low rates (#berlin, #esc2015, #buchtipp, #lesen, #kafka, the weekday…);
  - 5 % of the posts delivered twice, every delivery at most 8 s after its created_at, so no post
    is more than 7 s behind the newest created_at seen before it (within the default 10 s grace).
  `hashtags` are computed with tagpulse.core.hashtags.canonical_tag, so the ACTIVE alias table
  applies: #einBildfuerKai only counts for einbuchfuerkai when the alias einbildfuerkai →
  einbuchfuerkai is set, which `tagpulse demo` does (as an analyst would after
  `tagpulse tags suggest`). The facebook and twitter figures do not depend on the alias (every
  #einBildfuerKai tweet also carries a #einBuch… spelling); instagram has 40 campaign posts with
  the alias and 28 without.

* `synthetic_posts(n, seed, …)` — a generic fast stream for benchmarks and tests: Zipf-distributed
  tags, heavy-tailed follower counts, duplicates and bounded disorder (numpy-vectorised).

Both are deterministic for a seed (numpy's PCG64 streams).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Iterable, Iterator, Sequence

import numpy as np

from tagpulse.core.hashtags import canonical_tag

# --------------------------------------------------------------------------- ground truth
CAMPAIGN_TAG = "einbuchfuerkai"
#: The merge `tagpulse demo` configures so that #einBildfuerKai counts for the campaign.
CAMPAIGN_ALIASES = {"einbildfuerkai": "einbuchfuerkai"}


def _epoch(*args: int) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


START = _epoch(2015, 5, 20)                  # first instant of the replay
END = _epoch(2015, 5, 24)                    # exclusive: the replay covers 05-20 … 05-23
FACEBOOK_ORIGINAL_AT = _epoch(2015, 5, 20, 10, 0)
TAKEOFF = _epoch(2015, 5, 21, 19, 0)         # 21:00 in Germany: the campaign catches fire
IMPRESSIONS_AT = _epoch(2015, 5, 22, 12, 50)
IMPRESSIONS_AT_ISO = "2015-05-22T12:50:00Z"

EXPECTED_FACEBOOK_SHARES = 12_800            # shares of the one facebook original
EXPECTED_FACEBOOK_POSTS = EXPECTED_FACEBOOK_SHARES + 1
EXPECTED_TWITTER_IMPRESSIONS = 14_800_000    # Σ author followers, twitter, created_at ≤ IMPRESSIONS_AT
EXPECTED_INSTAGRAM_POSTS = 40                # with the alias einbildfuerkai → einbuchfuerkai
EXPECTED_INSTAGRAM_POSTS_WITHOUT_ALIAS = 28
DUPLICATE_RATE = 0.05                        # extra deliveries ÷ unique posts
MAX_DELIVERY_DELAY_S = 8.0                   # arrival − created_at < this, for every delivery

TWITTER_TWEETS_QUIET = 30       # before take-off (from the facebook original to 05-21 19:00)
TWITTER_TWEETS_WAVE = 5_200     # after take-off, shaped by _campaign_wave
TWITTER_RETWEET_SHARE = 0.45
FACEBOOK_SHARES_QUIET = 60
INSTAGRAM_BILD_ONLY = 12        # instagram posts tagged only #einBildfuerKai
INSTAGRAM_BILD_AND_BUCH = 3     # … tagged with both spellings

# Spellings of the campaign tag as people typed them, with their share of the posts.
CAMPAIGN_SPELLINGS = ("#einBuchfuerKai", "#einBuchfürKai", "#EINBUCHFUERKAI", "#einBuch\u200bfuerKai")
CAMPAIGN_SPELLING_WEIGHTS = (0.55, 0.36, 0.06, 0.03)
BILD_SPELLING = "#einBildfuerKai"

# Background tags: (platform, spellings, posts per hour), flat over the whole replay.
BACKGROUND = (
    ("twitter", ("#berlin",), 6.0),
    ("twitter", ("#esc2015",), 3.0),
    ("twitter", ("#buchtipp",), 1.5),
    ("twitter", ("#lesen", "#buchtipp"), 0.5),
    ("twitter", ("#Kafka",), 1.0),
    ("facebook", ("#buchtipp",), 0.5),
    ("facebook", ("#Kinderbuch",), 0.3),
    ("instagram", ("#lesen",), 1.0),
    ("instagram", ("#Bücher", "#lesen"), 0.5),
    ("instagram", ("#buchtipp",), 0.5),
)
# A weekday tag on twitter, only on its day (05-20 was a Wednesday).
WEEKDAY_TAGS = ("#mittwoch", "#donnerstag", "#freitag", "#samstag")
WEEKDAY_RATE = 0.5

_DAY = 86_400
_HOUR = 3_600


@dataclass(frozen=True)
class CampaignFigures:
    """What a correct pipeline must report for the campaign tag, computed from a stream."""

    deliveries: int
    unique_posts: int
    duplicates: int
    facebook_posts: int
    facebook_shares: int
    twitter_posts: int
    twitter_impressions_by: int          # created_at ≤ IMPRESSIONS_AT
    instagram_posts: int
    max_disorder_s: int                  # max over deliveries of (newest created_at so far − created_at)


def campaign_figures(posts: Iterable[dict], tag: str = CAMPAIGN_TAG, at: str = IMPRESSIONS_AT_ISO) -> CampaignFigures:
    """Ground-truth figures of a delivery stream (duplicates counted once), for tests and reports."""
    seen: set[tuple[str, str]] = set()
    deliveries = fb = fb_shares = tw = ig = 0
    impressions = 0
    newest = ""
    disorder = 0
    for post in posts:
        deliveries += 1
        created = post["created_at"]
        if created > newest:
            newest = created
        elif created < newest:
            disorder = max(disorder, _iso_epoch(newest) - _iso_epoch(created))
        key = (post["platform"], post["post_id"])
        if key in seen:
            continue
        seen.add(key)
        if tag not in post["hashtags"]:
            continue
        platform = post["platform"]
        if platform == "facebook":
            fb += 1
            fb_shares += bool(post["is_share"])
        elif platform == "twitter":
            tw += 1
            if created <= at:
                impressions += post["author_followers"]
        elif platform == "instagram":
            ig += 1
    return CampaignFigures(deliveries, len(seen), deliveries - len(seen), fb, fb_shares, tw, impressions, ig,
                           disorder)


def _iso_epoch(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


# --------------------------------------------------------------------------- helpers
_ISO_CACHE: dict[int, str] = {}


def iso(t: int) -> str:
    """Epoch seconds → canonical 'YYYY-MM-DDTHH:MM:SSZ'."""
    text = _ISO_CACHE.get(t)
    if text is None:
        text = datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if len(_ISO_CACHE) < 1 << 18:
            _ISO_CACHE[t] = text
    return text


def _campaign_wave(t: np.ndarray) -> np.ndarray:
    """Relative campaign activity per instant after take-off.

    Evening wave (rises over 1.5 h, decays over the night), a second wave around 10:00 UTC the
    next morning, and a long tail over the weekend. Zero before take-off.
    """
    h = (t - TAKEOFF) / _HOUR
    evening = np.clip(h / 1.5, 0, 1) * np.exp(-np.maximum(h - 2.0, 0) / 3.0)
    morning = 0.7 * np.exp(-((h - 15.0) / 3.5) ** 2)
    tail = 0.06 * np.exp(-np.maximum(h - 18.0, 0) / 30.0) * (h >= 2)
    return np.where(h >= 0, evening + morning + tail, 0.0)


def _times_by_intensity(rng: np.random.Generator, n: int, start: int, end: int, weights_fn) -> np.ndarray:
    """Exactly n sorted epoch seconds in [start, end), distributed like weights_fn per minute."""
    minutes = np.arange(start, end, 60, dtype=np.int64)
    weights = weights_fn(minutes + 30).astype(float)
    counts = rng.multinomial(n, weights / weights.sum())
    times = np.repeat(minutes, counts) + rng.integers(0, 60, size=n)
    return np.sort(np.minimum(times, end - 1))


def _uniform_times(rng: np.random.Generator, n: int, start: int, end: int) -> np.ndarray:
    return np.sort(rng.integers(start, end, size=n))


_FIRST = ("anna", "lena", "jonas", "paul", "marie", "felix", "lea", "tim", "sophie", "max", "laura", "lukas",
          "julia", "ben", "hannah", "leon", "emma", "nils", "mia", "finn", "clara", "moritz", "ida", "jan")
_SECOND = ("liest", "buecherwurm", "_hh", "_berlin", "mama", "papa", "_muc", "schreibt", "_koeln", "leseratte",
           "_ffm", "_ka", "blog", "_lpz", "reads", "_do")


def _handle(rng: np.random.Generator) -> str:
    first = _FIRST[int(rng.integers(len(_FIRST)))]
    second = _SECOND[int(rng.integers(len(_SECOND)))]
    return f"{first}{second}{int(rng.integers(1, 100))}"


def _snowflake(t: int, n: int) -> str:
    """A twitter-like id: milliseconds since the twitter epoch, shifted, plus a sequence."""
    return str(((t * 1000 + n % 1000 - 1_288_834_974_657) << 22) | (n % 4096))


def _post(platform: str, post_id: str, author_id: str, handle: str, followers: int, t: int, lang: str | None,
          text: str, hashtags: list[str], is_share: bool = False, original: str | None = None, likes: int = 0,
          shares: int = 0, replies: int = 0, quotes: int = 0) -> dict:
    if is_share:
        likes = shares = replies = quotes = 0  # counts on a share belong to the original
    return {"platform": platform, "post_id": post_id, "author_id": author_id, "author_handle": handle,
            "author_followers": int(followers), "created_at": iso(int(t)), "lang": lang, "text": text,
            "hashtags": hashtags, "is_share": is_share, "original_post_id": original, "likes": int(likes),
            "shares": int(shares), "replies": int(replies), "quotes": int(quotes)}


def _keys(spellings: Sequence[str]) -> list[str]:
    out: list[str] = []
    for spelling in spellings:
        key = canonical_tag(spelling)
        if key is not None and key not in out:
            out.append(key)
    return out


# --------------------------------------------------------------------------- the campaign
_TWEETS = (
    "Kauft ein Buch für Kai! {tag}",
    "Unser Exemplar ist bestellt. Macht mit! {tag}",
    "{tag} – was für eine schöne Aktion. Bitte weitersagen.",
    "Gerade bestellt, mehr muss man nicht sagen {tag} #buchtipp",
    "Von Platz 51.000 auf Platz 1 über Nacht? Das schaffen wir! {tag}",
    "Ein Buch für Kai, und für alle, die es lesen {tag}",
    "Just ordered a copy. Lovely campaign {tag}",
    "Wer noch ein Geschenk sucht: {tag} #Kinderbuch",
    "Gänsehaut. So viele machen mit {tag}",
    "{tag} {tag2} Bitte teilen!",
)
_INSTAGRAM = (
    "Angekommen! 📚 {tag}",
    "Unser Beitrag zur Aktion {tag}",
    "Lesestoff für heute Abend {tag} #lesen",
    "Ein Bild für Kai 📷 {tag}",
)
_BACKGROUND_TEXT = ("Heute gelesen: {tags}", "{tags} am Abend", "Was für ein Tag {tags}", "Tipp: {tags}",
                    "{tags}", "Schönes Wochenende {tags}", "Gerade gesehen {tags}")


class _Campaign:
    """Builds the unique posts of the campaign, in created_at order per stream."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng([seed, 2015_05_21])
        self.posts: list[dict] = []

    def spelling(self) -> str:
        return CAMPAIGN_SPELLINGS[int(self.rng.choice(len(CAMPAIGN_SPELLINGS), p=CAMPAIGN_SPELLING_WEIGHTS))]

    def followers(self, size: int, mu: float, sigma: float, cap: int) -> np.ndarray:
        return np.minimum(self.rng.lognormal(mu, sigma, size=size), cap).astype(np.int64)

    # -- facebook: one original, 12,800 shares by 12,800 different people
    def facebook(self) -> None:
        rng = self.rng
        page_id = "1447385925557212"
        original_id = f"{page_id}_1590324457948673"
        text = ("Kai wünscht sich, dass sein Buch gelesen wird. Kauft ein Buch für Kai und teilt diesen Beitrag! "
                "#einBuchfuerKai")
        hashtags = _keys(["#einBuchfuerKai"])
        self.posts.append(_post("facebook", original_id, page_id, "einbuchfuerkai", 1_840, FACEBOOK_ORIGINAL_AT,
                                "de", text, hashtags, likes=9_412, shares=EXPECTED_FACEBOOK_SHARES, replies=1_037))
        quiet = _uniform_times(rng, FACEBOOK_SHARES_QUIET, FACEBOOK_ORIGINAL_AT + 300, TAKEOFF)
        wave = _times_by_intensity(rng, EXPECTED_FACEBOOK_SHARES - FACEBOOK_SHARES_QUIET, TAKEOFF, END,
                                   _campaign_wave)
        times = np.concatenate([quiet, wave])
        # friends of people (capped at facebook's 5,000) and a few pages with big followings
        friends = self.followers(len(times), 5.4, 1.0, 5_000)
        pages = rng.random(len(times)) < 0.01
        friends[pages] = self.followers(int(pages.sum()), 9.0, 1.3, 2_000_000)
        user_ids = rng.permutation(900_000)[:len(times)] + 100_000_000_000_000
        comments = ("", "", "", "Bitte teilen!", "Macht mit!", "Gerne ❤️", "Schon bestellt.")
        for n, (t, fans, uid) in enumerate(zip(times.tolist(), friends.tolist(), user_ids.tolist())):
            comment = comments[int(rng.integers(len(comments)))]
            self.posts.append(_post("facebook", f"{uid}_{1_590_400_000_000_000 + n}", str(uid),
                                    f"{_handle(rng)}", fans, t, "de", comment, list(hashtags), is_share=True,
                                    original=original_id))

    # -- twitter: originals and retweets; impressions scaled to the published figure
    def twitter(self) -> None:
        rng = self.rng
        quiet = _uniform_times(rng, TWITTER_TWEETS_QUIET, FACEBOOK_ORIGINAL_AT + 1800, TAKEOFF)
        wave = _times_by_intensity(rng, TWITTER_TWEETS_WAVE, TAKEOFF, END, _campaign_wave)
        times = np.concatenate([quiet, wave])
        times[times == IMPRESSIONS_AT] += 1  # "by 12:50" must not depend on ≤ versus <
        n = len(times)

        # regular accounts: Zipf-like activity, log-normal followers; a few prominent accounts
        pool = 4_000
        followers = self.followers(pool, 6.3, 1.5, 400_000)
        prominent = [0, 1, 2, 3, 4, 5]
        followers[prominent] = [830_000, 412_000, 265_000, 174_000, 96_000, 61_000]
        # distinct ids: one per stride of 700,000, a random offset within it
        author_ids = (100_000_000 + np.arange(pool) * 700_000 + rng.integers(0, 700_000, size=pool)).tolist()
        handles = [_handle(rng) for _ in range(pool)]
        handles[:6] = ["buchreport", "literaturcafe", "ndrkultur_fan", "boersenblatt_x", "kinderbuchblog",
                       "leselust_de"]
        authors = (rng.zipf(1.7, size=n) - 1) % (pool - 6) + 6
        # the spark: a prominent account tweets right at take-off, the others join during the waves
        first_wave = TWITTER_TWEETS_QUIET
        authors[first_wave] = 0
        celebrity_slots = rng.choice(np.arange(first_wave + 1, n), size=24, replace=False)
        authors[celebrity_slots] = rng.integers(0, 6, size=24)
        retweet = rng.random(n) < TWITTER_RETWEET_SHARE
        retweet[: first_wave + 1] = False

        originals: list[int] = []        # indexes into self.posts of original tweets
        celebrity_originals: list[int] = []
        retweets_of: dict[int, int] = {}
        tweets: list[tuple[int, int]] = []  # (post index, author slot)
        for i in range(n):
            t = int(times[i])
            a = int(authors[i])
            if retweet[i] and originals:
                pick = (celebrity_originals if celebrity_originals and rng.random() < 0.5 else originals)
                o = pick[int(rng.integers(len(pick)))]
                orig = self.posts[o]
                if orig["author_id"] == str(author_ids[a]):
                    a = (a + 1 - 6) % (pool - 6) + 6
                text = f"RT @{orig['author_handle']}: {orig['text']}"
                if len(text) > 140:  # the old retweet text cut-off: hashtags come from the original
                    text = text[:139] + "…"
                self.posts.append(_post("twitter", _snowflake(t, i), str(author_ids[a]), handles[a], followers[a],
                                        max(t, _iso_epoch(orig["created_at"])), "de", text,
                                        list(orig["hashtags"]), is_share=True, original=orig["post_id"]))
                retweets_of[o] = retweets_of.get(o, 0) + 1
            else:
                template = _TWEETS[int(rng.integers(len(_TWEETS)))]
                spelling = self.spelling()
                second = BILD_SPELLING if rng.random() < 0.4 else self.spelling()
                text = template.format(tag=spelling, tag2=second)
                lang = "en" if text.startswith("Just") else "de"
                spellings = [w for w in text.split() if w.startswith("#")]
                self.posts.append(_post("twitter", _snowflake(t, i), str(author_ids[a]), handles[a], followers[a],
                                        t, lang, text, _keys(spellings), likes=int(rng.geometric(0.15)) - 1,
                                        replies=int(rng.geometric(0.6)) - 1))
                originals.append(len(self.posts) - 1)
                if a < 6:
                    celebrity_originals.append(len(self.posts) - 1)
            tweets.append((len(self.posts) - 1, a))
        for o, count in retweets_of.items():
            self.posts[o]["shares"] = count

        # Scale every campaign account's followers so impressions by the instant are the published
        # figure, then put the rounding remainder on one account with a single counted tweet.
        counted = [(idx, a) for idx, a in tweets if self.posts[idx]["created_at"] <= IMPRESSIONS_AT_ISO]
        total = sum(int(followers[a]) for _, a in counted)
        scale = EXPECTED_TWITTER_IMPRESSIONS / total
        scaled = np.maximum(np.rint(followers * scale), 0).astype(np.int64)
        per_author: dict[int, int] = {}
        for _, a in counted:
            per_author[a] = per_author.get(a, 0) + 1
        remainder = EXPECTED_TWITTER_IMPRESSIONS - sum(int(scaled[a]) for _, a in counted)
        single = max((a for a, c in per_author.items() if c == 1), key=lambda a: int(scaled[a]))
        scaled[single] += remainder
        for idx, a in tweets:
            self.posts[idx]["author_followers"] = int(scaled[a])

    # -- instagram: 40 posts after take-off, some tagged #einBildfuerKai
    def instagram(self) -> None:
        rng = self.rng
        times = _times_by_intensity(rng, EXPECTED_INSTAGRAM_POSTS, TAKEOFF, END, _campaign_wave)
        kinds = np.array([0] * (EXPECTED_INSTAGRAM_POSTS - INSTAGRAM_BILD_ONLY - INSTAGRAM_BILD_AND_BUCH)
                         + [1] * INSTAGRAM_BILD_ONLY + [2] * INSTAGRAM_BILD_AND_BUCH)
        rng.shuffle(kinds)
        followers = self.followers(len(times), 5.6, 1.3, 250_000)
        for n, (t, kind, fans) in enumerate(zip(times.tolist(), kinds.tolist(), followers.tolist())):
            tag = {0: self.spelling(), 1: BILD_SPELLING, 2: f"{BILD_SPELLING} {self.spelling()}"}[kind]
            text = _INSTAGRAM[int(rng.integers(len(_INSTAGRAM)))].format(tag=tag)
            spellings = [w for w in text.split() if w.startswith("#")]
            uid = 1_500_000_000 + int(rng.integers(500_000_000))
            self.posts.append(_post("instagram", f"{987_000_000_000_000_000 + t * 1000 + n}_{uid}", str(uid),
                                    _handle(rng), fans, t, "de", text, _keys(spellings),
                                    likes=int(rng.geometric(0.02)), replies=int(rng.geometric(0.3)) - 1))

    # -- background: ordinary tags at flat low rates
    def background(self) -> None:
        rng = self.rng
        pools = {platform: (self.followers(3_000, 5.8, 1.6, 2_000_000),
                            (rng.permutation(2_000_000)[:3_000] + 7_000_000).tolist()) for platform in
                 ("twitter", "facebook", "instagram")}
        streams = [(p, tags, rate, START, END) for p, tags, rate in BACKGROUND]
        streams += [("twitter", (tag,), WEEKDAY_RATE, START + d * _DAY, START + (d + 1) * _DAY)
                    for d, tag in enumerate(WEEKDAY_TAGS)]
        n = 0
        for platform, spellings, rate, start, end in streams:
            count = int(rng.poisson(rate * (end - start) / _HOUR))
            followers, ids = pools[platform]
            for t in _uniform_times(rng, count, start, end).tolist():
                a = int(rng.zipf(1.5) - 1) % len(ids)
                text = _BACKGROUND_TEXT[int(rng.integers(len(_BACKGROUND_TEXT)))].format(tags=" ".join(spellings))
                if platform == "twitter":
                    post_id = _snowflake(t, 500_000 + n)
                elif platform == "facebook":
                    post_id = f"{ids[a]}_{1_580_000_000_000_000 + n}"
                else:
                    post_id = f"{986_000_000_000_000_000 + t * 1000 + n % 1000}_{ids[a]}"
                self.posts.append(_post(platform, post_id, str(ids[a]), f"bg_{platform[:2]}_{a}", followers[a], t,
                                        "de", text, _keys(spellings), likes=int(rng.geometric(0.3)) - 1))
                n += 1

    def build(self) -> list[dict]:
        self.facebook()
        self.twitter()
        self.instagram()
        self.background()
        return self.posts


def _deliveries(rng: np.random.Generator, created: np.ndarray, dup_rate: float,
                max_delay: float) -> tuple[np.ndarray, np.ndarray]:
    """(post index per delivery, in arrival order; is-duplicate flag per delivery).

    Every delivery arrives within [created, created + max_delay): the first one in the first half,
    a duplicate later than its first delivery. So no delivery's created_at is more than
    ceil(max_delay) − 1 s behind the newest created_at delivered before it.
    """
    n = len(created)
    first = created + rng.random(n) * (max_delay / 2)
    n_dups = int(round(n * dup_rate))
    dup_of = np.sort(rng.choice(n, size=n_dups, replace=False)) if n_dups else np.empty(0, np.int64)
    room = created[dup_of] + max_delay * 0.999 - first[dup_of]
    again = first[dup_of] + rng.random(n_dups) * room
    arrival = np.concatenate([first, again])
    index = np.concatenate([np.arange(n), dup_of])
    order = np.lexsort((np.arange(len(arrival)), arrival))
    is_dup = np.concatenate([np.zeros(n, bool), np.ones(n_dups, bool)])
    return index[order], is_dup[order]


def simulate_einbuchfuerkai(seed: int = 0) -> Iterator[dict]:
    """The campaign's deliveries in arrival order (see the module doc). Deterministic for a seed
    and the active alias table."""
    campaign = _Campaign(seed)
    posts = campaign.build()
    created = np.array([_iso_epoch_fast(p["created_at"]) for p in posts], dtype=np.float64)
    index, is_dup = _deliveries(campaign.rng, created, DUPLICATE_RATE, MAX_DELIVERY_DELAY_S)
    for i, dup in zip(index.tolist(), is_dup.tolist()):
        post = posts[i]
        # a duplicate is an equal dict, not the same object: a consumer may mutate what it gets
        yield {**post, "hashtags": list(post["hashtags"])} if dup else post


_EPOCH_CACHE: dict[str, int] = {}


def _iso_epoch_fast(text: str) -> int:
    value = _EPOCH_CACHE.get(text)
    if value is None:
        value = _EPOCH_CACHE[text] = _iso_epoch(text)
    return value


# --------------------------------------------------------------------------- generic synthetic stream
SYNTHETIC_START = "2025-06-01T00:00:00Z"
SYNTHETIC_PLATFORMS = ("mastodon", "bluesky", "twitter", "facebook", "instagram")
SYNTHETIC_PLATFORM_WEIGHTS = (0.35, 0.30, 0.20, 0.10, 0.05)
_TAGS_PER_POST = (0, 1, 1, 1, 2, 2, 3, 4)


def synthetic_posts(n: int, seed: int = 0, tags: int | Sequence[str] = 1_000, zipf_s: float = 1.1,
                    dup_rate: float = 0.03, disorder_s: float = 5.0, start: str | int = SYNTHETIC_START,
                    rate_per_s: float = 200.0, authors: int | None = None, share_rate: float = 0.25,
                    platforms: Sequence[str] = SYNTHETIC_PLATFORMS,
                    platform_weights: Sequence[float] | None = None) -> Iterator[dict]:
    """`n` canonical post deliveries (duplicates included) in arrival order.

    - tags: a vocabulary size (names 'tag0', 'tag1', … by falling popularity) or the tags
      themselves (canonicalised); each post has 0-4 tags drawn from a Zipf law with exponent
      `zipf_s` over the vocabulary (rank k has weight k^-s);
    - authors (default n/10) post with Zipf(1.3) activity and have log-normal follower counts
      (median ≈ 150, long tail up to 150 M);
    - created_at advances by 1/rate_per_s per unique post from `start`;
    - a fraction dup_rate of the deliveries repeats an earlier post exactly; every delivery arrives
      less than disorder_s after its created_at, so lateness stays below disorder_s.
    """
    if n <= 0:
        return
    rng = np.random.default_rng([seed, 7])
    t0 = _iso_epoch(start) if isinstance(start, str) else int(start)
    n_dups = int(round(n * dup_rate / (1 + dup_rate))) if dup_rate > 0 else 0
    n_dups = min(n_dups, n - 1)
    unique = n - n_dups

    if isinstance(tags, int):
        vocabulary = [f"tag{k}" for k in range(max(1, tags))]
    else:
        vocabulary = [key for key in (canonical_tag(t) for t in tags) if key is not None] or ["tag0"]
    spellings = vocabulary if isinstance(tags, int) else [str(t).lstrip("#") for t in tags]
    weights = np.arange(1, len(vocabulary) + 1, dtype=np.float64) ** -zipf_s
    k_per_post = rng.choice(np.array(_TAGS_PER_POST), size=unique)
    ends = np.cumsum(k_per_post).tolist()
    tag_ids = rng.choice(len(vocabulary), size=int(ends[-1]) if ends else 0, p=weights / weights.sum()).tolist()

    n_authors = authors or max(1_000, unique // 10)
    author_of = ((rng.zipf(1.3, size=unique) - 1) % n_authors).tolist()
    author_followers = np.minimum(rng.lognormal(5.0, 2.2, size=n_authors), 150_000_000).astype(np.int64).tolist()
    pw = np.asarray(platform_weights or SYNTHETIC_PLATFORM_WEIGHTS[:len(platforms)], dtype=np.float64)
    platform_of = rng.choice(len(platforms), size=unique, p=pw / pw.sum()).tolist()
    is_share = (rng.random(unique) < share_rate)
    is_share[0] = False
    back = rng.integers(1, 1_000, size=unique)
    original_of = np.maximum(np.arange(unique) - back, 0).tolist()
    is_share = is_share.tolist()
    likes = (rng.geometric(0.2, size=unique) - 1).tolist()
    replies = (rng.geometric(0.6, size=unique) - 1).tolist()
    created = t0 + (np.arange(unique) / rate_per_s).astype(np.int64)
    created_list = created.tolist()

    index, is_dup = _deliveries(rng, created.astype(np.float64), n_dups / unique, disorder_s)
    # Only posts that will be delivered again are kept, and only until then: memory stays small.
    again = np.zeros(unique, dtype=bool)
    again[index[is_dup]] = True
    again = again.tolist()
    kept: dict[int, dict] = {}
    prefix = f"s{seed}-"
    tag_start = [0] + ends
    for i, dup in zip(index.tolist(), is_dup.tolist()):
        if dup:
            post = kept.pop(i)
            yield {**post, "hashtags": list(post["hashtags"])}
            continue
        keys: list[str] = []
        words: list[str] = []
        for tid in tag_ids[tag_start[i]:tag_start[i + 1]]:
            key = vocabulary[tid]
            if key not in keys:
                keys.append(key)
                words.append(spellings[tid])
        a = author_of[i]
        share = is_share[i]
        post = {
            "platform": platforms[platform_of[i]], "post_id": f"{prefix}{i}", "author_id": f"u{a}",
            "author_handle": f"user{a}", "author_followers": author_followers[a], "created_at": iso(created_list[i]),
            "lang": "en", "text": "synthetic post #" + " #".join(words) if words else "synthetic post",
            "hashtags": keys, "is_share": share,
            "original_post_id": f"{prefix}{original_of[i]}" if share else None,
            "likes": 0 if share else likes[i], "shares": 0, "replies": 0 if share else replies[i], "quotes": 0,
        }
        if again[i]:
            kept[i] = post
        yield post


# --------------------------------------------------------------------------- output
def write_jsonl(posts: Iterable[dict], out: IO[bytes], chunk: int = 4_096) -> int:
    """Canonical JSONL to a binary stream; returns the number of lines."""
    import orjson

    dumps = orjson.dumps
    lines: list[bytes] = []
    total = 0
    for post in posts:
        lines.append(dumps(post))
        if len(lines) >= chunk:
            out.write(b"\n".join(lines) + b"\n")
            total += len(lines)
            lines.clear()
    if lines:
        out.write(b"\n".join(lines) + b"\n")
        total += len(lines)
    return total
