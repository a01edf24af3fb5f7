"""`tagpulse simulate`: the seed campaign's figures, determinism, duplicates, disorder; the synthetic stream."""
from __future__ import annotations

import statistics
from collections import Counter

import orjson
import pytest

from producers import simulate as sim
from schemas.post import validate_post
from tagpulse.core import hashtags


@pytest.fixture
def no_aliases():
    previous = hashtags.get_aliases()
    hashtags.set_aliases(None)
    yield
    hashtags.set_aliases(previous)


@pytest.fixture
def demo_aliases():
    previous = hashtags.get_aliases()
    hashtags.set_aliases(sim.CAMPAIGN_ALIASES)
    yield
    hashtags.set_aliases(previous)


@pytest.fixture(scope="module")
def campaign() -> list[dict]:
    previous = hashtags.get_aliases()
    hashtags.set_aliases(sim.CAMPAIGN_ALIASES)
    try:
        return list(sim.simulate_einbuchfuerkai(seed=0))
    finally:
        hashtags.set_aliases(previous)


def unique(posts: list[dict]) -> list[dict]:
    seen, out = set(), []
    for post in posts:
        key = (post["platform"], post["post_id"])
        if key not in seen:
            seen.add(key)
            out.append(post)
    return out


def test_same_seed_same_stream_other_seed_other_stream(demo_aliases):
    a = [orjson.dumps(p) for p in sim.simulate_einbuchfuerkai(seed=3)]
    b = [orjson.dumps(p) for p in sim.simulate_einbuchfuerkai(seed=3)]
    c = [orjson.dumps(p) for p in sim.simulate_einbuchfuerkai(seed=4)]
    assert a == b
    assert a != c


def test_every_post_is_canonical_and_ids_are_unique(campaign):
    for post in campaign:
        assert list(post) == list(validate_post(post))
        assert validate_post(post) == post
    ids = Counter((p["platform"], p["post_id"]) for p in campaign)
    posts = unique(campaign)
    # a duplicate delivery is the same post, never a different post with a reused id
    by_id = {}
    for post in campaign:
        key = (post["platform"], post["post_id"])
        assert by_id.setdefault(key, post) == post
    assert len(ids) == len(posts)
    assert 20_000 <= len(campaign) <= 30_000


def test_published_figures(campaign):
    f = sim.campaign_figures(campaign)
    assert f.facebook_shares == sim.EXPECTED_FACEBOOK_SHARES == 12_800
    assert f.facebook_posts == 12_801
    assert abs(f.twitter_impressions_by - 14_800_000) <= 148_000
    assert f.instagram_posts == sim.EXPECTED_INSTAGRAM_POSTS == 40


def test_facebook_is_one_original_shared_by_distinct_people(campaign):
    fb = [p for p in unique(campaign) if p["platform"] == "facebook" and sim.CAMPAIGN_TAG in p["hashtags"]]
    originals = [p for p in fb if not p["is_share"]]
    assert len(originals) == 1
    shares = [p for p in fb if p["is_share"]]
    assert {p["original_post_id"] for p in shares} == {originals[0]["post_id"]}
    assert len({p["author_id"] for p in shares}) == len(shares)
    followers = sorted(p["author_followers"] for p in shares)
    assert followers[-1] > 20 * statistics.median(followers)  # heavy tail: a few pages, many people
    assert all(p["created_at"] > originals[0]["created_at"] for p in shares)
    assert all(p["likes"] == p["shares"] == p["replies"] == p["quotes"] == 0 for p in shares)


def test_twitter_takes_off_on_the_evening_of_the_21st(campaign):
    tw = [p for p in unique(campaign) if p["platform"] == "twitter" and sim.CAMPAIGN_TAG in p["hashtags"]]
    takeoff = "2015-05-21T19:00:00Z"
    before = sum(p["author_followers"] for p in tw if p["created_at"] < takeoff)
    by_instant = sum(p["author_followers"] for p in tw if p["created_at"] <= sim.IMPRESSIONS_AT_ISO)
    assert before < 0.05 * by_instant  # quiet before
    evening = sum(1 for p in tw if "2015-05-21T19:00:00Z" <= p["created_at"] < "2015-05-21T22:00:00Z")
    day_before = sum(1 for p in tw if "2015-05-20T19:00:00Z" <= p["created_at"] < "2015-05-20T22:00:00Z")
    assert evening > 20 * max(day_before, 1)
    # ≤ versus < at the instant gives the same figure: nothing is posted exactly then
    assert not any(p["created_at"] == sim.IMPRESSIONS_AT_ISO for p in tw)
    # originals and retweets; a retweet carries its original's full hashtag list even when its text is cut
    by_id = {p["post_id"]: p for p in tw}
    retweets = [p for p in tw if p["is_share"]]
    assert 0.3 < len(retweets) / len(tw) < 0.6
    for rt in retweets:
        assert rt["hashtags"] == by_id[rt["original_post_id"]]["hashtags"]
        assert rt["text"].startswith("RT @") and len(rt["text"]) <= 140


def test_spellings_in_text_and_canonical_keys(campaign):
    texts = "\n".join(p["text"] for p in campaign)
    for spelling in ("#einBuchfuerKai", "#einBuchfürKai", "#EINBUCHFUERKAI", "#einBildfuerKai"):
        assert spelling in texts
    keys = Counter(tag for p in unique(campaign) for tag in p["hashtags"])
    # with the demo's alias the picture variant merges: no separate key is left
    assert "einbildfuerkai" not in keys
    assert all(tag == hashtags.canonical_key(tag) for tag in keys)


def test_without_the_alias_the_picture_tag_stays_apart(no_aliases):
    posts = list(sim.simulate_einbuchfuerkai(seed=0))
    f = sim.campaign_figures(posts)
    assert f.instagram_posts == sim.EXPECTED_INSTAGRAM_POSTS_WITHOUT_ALIAS
    # the facebook and twitter figures do not depend on the alias
    assert f.facebook_shares == sim.EXPECTED_FACEBOOK_SHARES
    assert abs(f.twitter_impressions_by - sim.EXPECTED_TWITTER_IMPRESSIONS) <= 148_000
    assert any("einbildfuerkai" in p["hashtags"] for p in posts)


def test_duplicates_and_disorder(campaign):
    f = sim.campaign_figures(campaign)
    assert 0.045 <= f.duplicates / f.unique_posts <= 0.055
    assert f.max_disorder_s <= 8
    from tagpulse.config import load
    assert f.max_disorder_s < load().grace_s
    # duplicates are spread over the whole replay, not bunched at one end
    positions = []
    seen = set()
    for n, post in enumerate(campaign):
        key = (post["platform"], post["post_id"])
        if key in seen:
            positions.append(n / len(campaign))
        seen.add(key)
    assert min(positions) < 0.1 and max(positions) > 0.9


def test_background_tags_on_every_platform(campaign):
    platforms_by_tag: dict[str, set[str]] = {}
    for post in unique(campaign):
        for tag in post["hashtags"]:
            platforms_by_tag.setdefault(tag, set()).add(post["platform"])
    background = {tag for tag in platforms_by_tag if tag != sim.CAMPAIGN_TAG}
    assert {"berlin", "buchtipp", "lesen", "kafka", "buecher", "kinderbuch"} <= background
    assert set().union(*(platforms_by_tag[t] for t in background)) == {"twitter", "facebook", "instagram"}


# --------------------------------------------------------------------------- synthetic
def test_synthetic_posts_shape():
    posts = list(sim.synthetic_posts(20_000, seed=5, tags=200, dup_rate=0.03, disorder_s=5))
    assert len(posts) == 20_000
    assert [orjson.dumps(p) for p in posts] == [orjson.dumps(p) for p in sim.synthetic_posts(20_000, seed=5, tags=200)]
    for post in posts[:2_000]:
        assert validate_post(post) == post
    f = sim.campaign_figures(posts, tag="tag0")
    assert 0.025 <= f.duplicates / len(posts) <= 0.035
    assert f.max_disorder_s < 5
    counts = Counter(tag for p in unique(posts) for tag in p["hashtags"])
    ranked = [tag for tag, _ in counts.most_common()]
    assert ranked[0] == "tag0"
    assert counts["tag0"] > 5 * counts["tag20"]  # Zipf: a few hot tags, a long tail
    followers = sorted(p["author_followers"] for p in posts)
    assert followers[-1] > 100 * statistics.median(followers)


def test_synthetic_posts_with_given_tags_are_canonicalised():
    posts = list(sim.synthetic_posts(500, seed=1, tags=["#Zähler", "#einBuchfürKai"], dup_rate=0))
    keys = {tag for p in posts for tag in p["hashtags"]}
    assert keys <= {"zaehler", "einbuchfuerkai"} and keys
    assert len({p["post_id"] for p in posts}) == 500


def test_cli_writes_the_stream(tmp_path, monkeypatch, no_aliases):
    from tagpulse.cli import main

    monkeypatch.setenv("TAGPULSE_HOME", str(tmp_path / "home"))
    out = tmp_path / "sim.jsonl"
    assert main(["simulate", "einbuchfuerkai", "--seed", "1", "--out", str(out), "-q"]) == 0
    lines = out.read_bytes().splitlines()
    assert lines == [orjson.dumps(p) for p in sim.simulate_einbuchfuerkai(seed=1)]
    # the user's alias table applies, as in `tagpulse produce` and the stream
    hashtags.AliasTable(sim.CAMPAIGN_ALIASES).save(tmp_path / "home" / "aliases.json")
    assert main(["simulate", "einbuchfuerkai", "--seed", "1", "--out", str(out), "-q"]) == 0
    posts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert sim.campaign_figures(posts).instagram_posts == 40
    assert main(["simulate", "synthetic", "--posts", "1000", "--out", str(out), "-q"]) == 0
    assert len(out.read_bytes().splitlines()) == 1000
