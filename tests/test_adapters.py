"""Source adapters and the canonical post: real payloads in, schema-valid posts out, hostile input contained."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import jsonschema
import orjson
import pytest

from producers.adapters import (FORMATS, MAX_RECORD_BYTES, Skipped, detect_format, parse_line, parse_record,
                                parse_record_detailed)
from schemas.post import FIELDS, InvalidRecord, validate_post
from tagpulse.core.hashtags import ascii_fold, set_aliases

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
MASTODON_DATA = ROOT.parent / "shared" / "data" / "mastodon"
SCHEMA = jsonschema.Draft202012Validator(json.loads((ROOT / "schemas" / "post.schema.json").read_text()))


@pytest.fixture(autouse=True)
def no_aliases():
    set_aliases(None)
    yield
    set_aliases(None)


def fixture(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def fixture_lines(name: str) -> list:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").split("\n") if line.strip()]


def mastodon_statuses() -> list[dict]:
    if not MASTODON_DATA.is_dir():
        pytest.skip(f"real Mastodon data not found at {MASTODON_DATA}")
    out = []
    for path in sorted(MASTODON_DATA.glob("*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip())
    return out


def assert_canonical(post: dict) -> None:
    assert tuple(post) == FIELDS
    SCHEMA.validate(post)
    assert validate_post(post) == post  # canonical output is a fixed point
    assert orjson.loads(orjson.dumps(post)) == post  # and serialisable (no lone surrogates)


# --------------------------------------------------------------------------- Mastodon (real data)
def test_every_real_mastodon_status_becomes_exactly_one_post():
    statuses = mastodon_statuses()
    assert len(statuses) == 375
    posts = []
    for status in statuses:
        got = parse_record(status)
        assert len(got) == 1
        assert got[0]["post_id"] == status["uri"] and got[0]["author_id"] == status["account"]["url"]
        posts.extend(got)
    for post in posts:
        assert_canonical(post)
        assert post["platform"] == "mastodon"
    assert len({p["post_id"] for p in posts}) == 375


def test_a_boost_is_a_share_with_the_boosted_statuses_tags():
    boosts = [s for s in mastodon_statuses() if s.get("reblog")]
    assert boosts
    tagged = [s for s in boosts if s["reblog"]["tags"]]
    assert tagged, "the data has a boost of a tagged status"
    for status in tagged:
        [post] = parse_record(status, fmt="mastodon")
        assert post["is_share"] is True
        assert post["original_post_id"] == status["reblog"]["uri"]
        assert post["author_id"] == status["account"]["url"]  # the booster, not the original author
        assert post["author_followers"] == status["account"]["followers_count"]
        assert status["tags"] == []  # the boost wrapper itself has no tags …
        assert post["hashtags"] == ["academicmilestone", "datascience"]  # … the original's are used
        assert (post["likes"], post["shares"], post["replies"], post["quotes"]) == (0, 0, 0, 0)


def test_ascii_folded_mastodon_tags_get_the_authors_spelling_back():
    keys = {key for s in mastodon_statuses() for key in parse_record(s)[0]["hashtags"]}
    for key in ["kuenstlicheintelligenz", "qualitaetshochschule", "universitaet", "archaeologie", "goettingen",
                "wissenschaftlicheintegritaet", "hannawaehlt2025", "befristungshoechstquote"]:
        assert key in keys
    for folded in ["kunstlicheintelligenz", "qualitatshochschule", "universitat", "archaologie", "gottingen"]:
        assert folded not in keys


def test_mastodon_tags_follow_tags_array_and_match_links_by_folding():
    statuses = mastodon_statuses()
    for status in statuses:
        source = status["reblog"] or status
        [post] = parse_record(status)
        folded_names = {ascii_fold(t["name"]) for t in source["tags"]}
        # exactly the tags[] entries: same number of distinct folded names, nothing from text regexes
        assert {ascii_fold(k.replace("ae", "a").replace("oe", "o").replace("ue", "u")) for k in post["hashtags"]} \
            <= {n.replace("ae", "a").replace("oe", "o").replace("ue", "u") for n in folded_names} | folded_names
        assert len(post["hashtags"]) <= len(source["tags"])


def test_mastodon_local_handle_gets_its_server():
    [status] = [s for s in mastodon_statuses() if s["uri"].endswith("/yjunechoe/statuses/113347064048858843")]
    assert status["account"]["acct"] == "yjunechoe"
    [post] = parse_record(status)
    assert post["author_handle"] == "yjunechoe@fosstodon.org"


def test_mastodon_streaming_forms():
    ws = fixture_lines("mastodon_stream_ws.jsonl")
    assert [detect_format(m) for m in ws] == ["mastodon-ws"] * 4
    [first] = parse_record(ws[0])
    assert first["post_id"] == "https://mastodon.social/users/Gargron/statuses/103270115826048975"
    assert first["author_followers"] == 322930 and first["hashtags"] == []
    assert first["text"].startswith('"I lost my inheritance')
    [trap] = parse_record(ws[1])
    assert trap["hashtags"] == ["kuenstlicheintelligenz", "universitaet", "ichbinhanna"]  # order of the text
    assert parse_record(ws[2]) == [] and parse_record(ws[3]) == []
    with pytest.raises(Skipped) as skipped:
        parse_record(ws[2], raise_skips=True)
    assert skipped.value.reason == "mastodon_edit"
    with pytest.raises(Skipped) as skipped:
        parse_record(ws[3], raise_skips=True)
    assert skipped.value.reason == "mastodon_delete"
    sse = {"event": "update", "data": ws[1]["payload"]}
    assert detect_format(sse) == "mastodon-sse"
    assert parse_record(sse) == [trap]
    with pytest.raises(InvalidRecord) as bad:
        parse_record({"event": "update", "payload": "{not json"})
    assert bad.value.reason == "invalid_json:payload"


# --------------------------------------------------------------------------- Twitter v1.1
def test_twitter_v1_extended_tweet_takes_hashtags_from_extended_entities():
    tweet = fixture("twitter_v1_extended_tweet.json")
    assert detect_format(tweet) == "twitter-v1"
    [post] = parse_record(tweet)
    assert_canonical(post)
    assert post["post_id"] == "994633657141813248" and post["author_id"] == "944480690"
    assert post["author_handle"] == "FloodSocial" and post["created_at"] == "2018-05-10T15:24:15Z"
    assert post["hashtags"] == ["documentation", "parsingjson", "geotagged"]
    assert post["text"].endswith("#GeoTagged https://t.co/e9yhQTJSIA")


def test_twitter_v1_retweet_is_a_share_by_the_retweeter():
    [post] = parse_record(fixture("twitter_v1_retweet.json"))
    assert_canonical(post)
    assert post["is_share"] and post["original_post_id"] == "850006245121695744"
    assert post["author_id"] == "6253282" and post["author_followers"] == 6172353
    assert (post["likes"], post["shares"]) == (0, 0)  # retweet_count 284 belongs to the original


def test_twitter_v1_retweet_of_a_long_tweet_keeps_all_original_tags():
    record = fixture("twitter_v1_retweet_of_extended.json")
    assert record["entities"]["hashtags"] == [] and "#" not in record["text"]  # truncated RT text has none
    [post] = parse_record(record)
    assert post["hashtags"] == ["documentation", "parsingjson", "geotagged"]


def test_twitter_v1_stream_notices_are_skipped():
    for notice in fixture_lines("twitter_v1_stream_notices.jsonl"):
        assert detect_format(notice) == "twitter-v1"
        assert parse_record_detailed(notice).skipped == "twitter_notice"


# --------------------------------------------------------------------------- Twitter v2
def test_twitter_v2_single_tweet_response_uses_includes_for_followers():
    response = fixture("twitter_v2_tweet.json")
    assert detect_format(response) == "twitter-v2"
    [post] = parse_record(response)
    assert_canonical(post)
    assert post["author_handle"] == "TwitterDev" and post["author_followers"] == 507902
    assert (post["likes"], post["shares"], post["replies"], post["quotes"]) == (70, 11, 2, 1)
    assert not post["is_share"]  # a reply is an original post
    single = {"data": response["data"][0], "includes": response["includes"]}
    assert parse_record(single) == [post]


def test_twitter_v2_page_gives_one_post_per_tweet_and_retweets_take_the_original_tags():
    page = fixture("twitter_v2_page.json")
    posts = parse_record(page)
    assert [p["post_id"] for p in posts] == ["601029765519880192", "601028318887186432", "601031102345678848"]
    retweet, original, quote = posts
    for post in posts:
        assert_canonical(post)
    assert retweet["is_share"] and retweet["original_post_id"] == original["post_id"]
    assert retweet["hashtags"] == original["hashtags"] == ["re_publica", "einbuchfuerkai", "ehrenamt"]
    assert quote["hashtags"] == ["einbuchfuerkai"] and not quote["is_share"]
    assert quote["author_followers"] == 0 and quote["author_handle"] == ""  # author not in includes.users
    # without the expansion, the retweet falls back to its own (truncated) entities
    bare = copy.deepcopy(page)
    bare["includes"].pop("tweets")
    assert parse_record(bare)[0]["hashtags"] == ["re_publica"]


def test_twitter_v2_bad_tweet_in_a_page_does_not_lose_the_others():
    page = fixture("twitter_v2_page.json")
    del page["data"][1]["created_at"]
    result = parse_record_detailed(page)
    assert len(result.posts) == 2
    assert result.invalid == ["missing_field:created_at (data[1])"]
    assert len(parse_record(page)) == 2
    assert parse_record({"meta": {"result_count": 0}}) == []
    assert parse_record_detailed({"errors": [{"title": "Not Found Error"}]}).skipped == "twitter_v2_errors"


# --------------------------------------------------------------------------- Bluesky Jetstream
def test_bluesky_jetstream_events():
    events = fixture_lines("bluesky_jetstream.jsonl")
    assert {detect_format(e) for e in events} == {"bluesky-jetstream"}
    results = [parse_record_detailed(e) for e in events]
    assert [r.skipped for r in results] == ["bluesky_other_collection", "bluesky_delete", "bluesky_identity",
                                            "bluesky_account", None, None, "bluesky_delete"]
    [post] = results[4].posts
    [repost] = results[5].posts
    assert_canonical(post)
    assert_canonical(repost)
    assert post["post_id"] == "at://did:plc:wa7b35aakoll7hugkrjtf3xf/app.bsky.feed.post/3l3qo3zzzzz2k"
    assert post["author_id"] == "did:plc:wa7b35aakoll7hugkrjtf3xf" and post["author_followers"] == 0
    # facets in byte order (the fixture lists them reversed), then record.tags; duplicates merged
    assert post["hashtags"] == ["kuenstlicheintelligenz", "einbuchfuerkai", "ehrenamt"]
    assert post["lang"] == "de" and post["created_at"] == "2024-09-09T19:46:39Z"
    assert repost["is_share"] and repost["original_post_id"] == post["post_id"]
    assert repost["hashtags"] == []


def test_bluesky_enrichment_supplies_followers_handle_and_repost_tags():
    events = fixture_lines("bluesky_jetstream.jsonl")
    repost = dict(events[5], enrichment={"author_followers": 321, "author_handle": "someone.bsky.social",
                                         "subject_hashtags": ["KünstlicheIntelligenz", "einBuchfürKai"]})
    [post] = parse_record(repost)
    assert post["author_followers"] == 321 and post["author_handle"] == "someone.bsky.social"
    assert post["hashtags"] == ["kuenstlicheintelligenz", "einbuchfuerkai"]


def test_bluesky_absurd_created_at_is_invalid_and_missing_falls_back_to_time_us():
    event = fixture_lines("bluesky_jetstream.jsonl")[4]
    backdated = copy.deepcopy(event)
    backdated["commit"]["record"]["createdAt"] = "1970-01-01T00:00:00Z"
    with pytest.raises(InvalidRecord) as bad:
        parse_record(backdated)
    assert bad.value.reason == "timestamp_out_of_range:createdAt"
    undated = copy.deepcopy(event)
    del undated["commit"]["record"]["createdAt"]
    assert parse_record(undated)[0]["created_at"] == "2024-09-09T19:46:40Z"


# --------------------------------------------------------------------------- canonical + dispatch
def test_formats_and_forced_format():
    assert FORMATS == ("auto", "canonical", "mastodon", "mastodon-sse", "mastodon-ws", "twitter-v1", "twitter-v2",
                       "bluesky-jetstream")
    tweet = fixture("twitter_v1_extended_tweet.json")
    with pytest.raises(InvalidRecord):
        parse_record(tweet, fmt="mastodon")
    with pytest.raises(InvalidRecord) as bad:
        parse_record(tweet, fmt="myspace")
    assert bad.value.reason.startswith("unknown_format")
    with pytest.raises(InvalidRecord) as bad:
        detect_format({"hello": "world"})
    assert bad.value.reason == "unknown_format"


def test_canonical_json_passes_through_and_a_batch_gives_many():
    [post] = parse_record(fixture("twitter_v1_extended_tweet.json"))
    assert detect_format(post) == "canonical"
    assert parse_record(post) == [post]
    assert parse_line(orjson.dumps([post, post, {"platform": "x"}])) == [post, post]
    result = parse_record_detailed([post, {"platform": "x"}, [post]])
    assert result.posts == [post]
    assert result.invalid == ["missing_field:post_id (item 1)", "nested_batch (item 2)"]


def base_post(**changes) -> dict:
    post = {"platform": "facebook", "post_id": "fb-1", "author_id": "u1", "author_handle": "u", "author_followers": 10,
            "created_at": "2015-05-20T09:15:00Z", "lang": "de", "text": "#einBuchfürKai", "hashtags": ["einBuchfürKai"],
            "is_share": False, "original_post_id": None, "likes": 1, "shares": 2, "replies": 3, "quotes": 4}
    post.update(changes)
    return post


def test_validate_post_normalises():
    post = validate_post(dict(base_post(created_at="2015-05-20T11:15:00.999+02:00", extra="dropped",
                                        hashtags=["#einBuchfürKai", "EINBUCHFUERKAI", "#\u200b", "Zähler"]),
                              likes=5.0))
    assert post["created_at"] == "2015-05-20T09:15:00Z"
    assert post["hashtags"] == ["einbuchfuerkai", "zaehler"]
    assert post["likes"] == 5 and "extra" not in post
    share = validate_post(base_post(is_share=True, original_post_id="fb-0"))
    assert (share["likes"], share["shares"], share["replies"], share["quotes"]) == (0, 0, 0, 0)
    minimal = validate_post({"platform": "instagram", "post_id": "p", "author_id": "a",
                             "created_at": "2015-05-20T09:15:00Z"})
    assert minimal["hashtags"] == [] and minimal["author_followers"] == 0 and minimal["lang"] is None
    assert len(validate_post(base_post(text="x" * 200_000))["text"]) == 100_000
    assert validate_post(base_post(platform="mastodon_fork-2"))["platform"] == "mastodon_fork-2"


@pytest.mark.parametrize("changes,reason", [
    ({"post_id": ""}, "missing_field:post_id"),
    ({"post_id": None}, "missing_field:post_id"),
    ({"author_id": 12}, "wrong_type:author_id"),
    ({"platform": "Twitter!"}, "bad_platform"),
    ({"platform": ["twitter"]}, "wrong_type:platform"),
    ({"author_followers": -1}, "negative:author_followers"),
    ({"author_followers": 3_000_000_000}, "out_of_range:author_followers"),
    ({"author_followers": float("nan")}, "nan_or_infinity:author_followers"),
    ({"author_followers": float("inf")}, "nan_or_infinity:author_followers"),
    ({"author_followers": "12"}, "wrong_type:author_followers"),
    ({"author_followers": True}, "wrong_type:author_followers"),
    ({"likes": 1.5}, "wrong_type:likes"),
    ({"created_at": "2005-12-31T23:59:59Z"}, "timestamp_out_of_range:created_at"),
    ({"created_at": "2100-01-01T00:00:00Z"}, "timestamp_out_of_range:created_at"),
    ({"created_at": "9999-12-31T23:59:59+00:00"}, "timestamp_out_of_range:created_at"),
    ({"created_at": "2015-02-30T00:00:00Z"}, "bad_timestamp:created_at"),
    ({"created_at": "2015-05-20T09:15:00"}, "timestamp_without_offset:created_at"),
    ({"created_at": 1432113300}, "wrong_type:created_at"),
    ({"created_at": "yesterday"}, "bad_timestamp:created_at"),
    ({"hashtags": "einbuchfuerkai"}, "wrong_type:hashtags"),
    ({"hashtags": [1]}, "wrong_type:hashtags"),
    ({"hashtags": [f"tag{n}" for n in range(101)]}, "too_many_hashtags"),
    ({"hashtags": ["x" * 300]}, "hashtag_too_long"),
    ({"is_share": "yes"}, "wrong_type:is_share"),
    ({"is_share": True}, "missing_field:original_post_id"),
    ({"original_post_id": "fb-0"}, "original_post_id_without_share"),
    ({"lang": 7}, "wrong_type:lang"),
    ({"text": ["x"]}, "wrong_type:text"),
])
def test_validate_post_rejects_with_a_reason(changes, reason):
    with pytest.raises(InvalidRecord) as bad:
        validate_post(base_post(**changes))
    assert bad.value.reason == reason == str(bad.value)


def test_validate_post_accepts_a_hundred_hashtags_and_duplicates_beyond():
    tags = [f"tag{n}" for n in range(100)]
    assert len(validate_post(base_post(hashtags=tags + [t.upper() for t in tags]))["hashtags"]) == 100


# --------------------------------------------------------------------------- bytes
@pytest.mark.parametrize("raw,reason", [
    (b'{"uri": "x", "account": {', "invalid_json"),
    (b"\xff\xfe{}", "invalid_utf8"),
    (b'{"text": "\xed\xa0\x80"}', "invalid_utf8"),
    (b"[" * 2000 + b"]" * 2000, "too_deep"),
    (b'{"author_followers": NaN}', "invalid_json"),
    (b"   ", "empty_record"),
    (b"42", "not_an_object"),
    (b'"just a string"', "not_an_object"),
    (b"{}", "unknown_format"),
])
def test_parse_line_reasons(raw, reason):
    with pytest.raises(InvalidRecord) as bad:
        parse_line(raw)
    assert bad.value.reason == reason


def test_lone_surrogates_from_stdlib_json_are_invalid():
    status = json.loads('{"uri": "https://x.example/s/1", "account": {"url": "https://x.example/@a"}, '
                        '"created_at": "2024-01-01T00:00:00Z", "content": "<p>\\ud800</p>"}')
    with pytest.raises(InvalidRecord) as bad:
        parse_record(status)
    assert bad.value.reason == "invalid_utf8:text"
    with pytest.raises(InvalidRecord):
        parse_record(base_post(hashtags=["tag\ud800"]))


def test_parse_line_rejects_oversize_records_before_decoding():
    big = b'{"text": "' + b"a" * MAX_RECORD_BYTES + b'"}'
    with pytest.raises(InvalidRecord) as bad:
        parse_line(big)
    assert bad.value.reason == "record_too_large"


# --------------------------------------------------------------------------- fuzz
def _random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2 ** 63, -(2 ** 70), 3.5, float("nan"), float("inf"), 1e308])
    if kind == 3:
        return rng.choice(["", "#", "x" * 300, "2015-05-20T09:15:00Z", "\u200b", "at://x", "\ud800", "did:plc:x"])
    if kind == 4:
        return rng.choice(["update", "delete", "commit", "create", "app.bsky.feed.post", "app.bsky.feed.repost"])
    if kind == 5:
        return rng.choice(list(FIELDS) + ["uri", "account", "user", "data", "did", "kind", "commit"])
    if kind == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["platform", "post_id", "author_id", "created_at", "hashtags", "is_share", "original_post_id", "uri",
            "account", "content", "tags", "reblog", "user", "id_str", "text", "retweeted_status", "extended_tweet",
            "entities", "data", "includes", "did", "kind", "commit", "record", "event", "payload", "stream",
            "operation", "collection", "rkey", "facets", "features", "url", "followers_count", "time_us"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def _mutate(rng: random.Random, value, depth: int = 0):
    """Replace one random leaf or subtree of a real record by a random value."""
    if isinstance(value, dict) and value and depth < 6 and rng.random() < 0.8:
        key = rng.choice(list(value))
        if rng.random() < 0.15:
            del value[key]
        else:
            value[key] = _mutate(rng, value[key], depth + 1)
        return value
    if isinstance(value, list) and value and depth < 6 and rng.random() < 0.8:
        i = rng.randrange(len(value))
        value[i] = _mutate(rng, value[i], depth + 1)
        return value
    return _random_json(rng, 2)


def _only_allowed_outcomes(call) -> list[dict]:
    try:
        posts = call()
    except (InvalidRecord, Skipped):
        return []
    for post in posts:
        assert_canonical(post)
    return posts


def test_fuzz_random_bytes_give_only_invalid_or_skipped():
    rng = random.Random(20150520)
    for _ in range(3000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        _only_allowed_outcomes(lambda: parse_line(raw))
        _only_allowed_outcomes(lambda: parse_line(b"{" + raw + b"}"))


def test_fuzz_random_json_structures_give_only_invalid_or_skipped():
    rng = random.Random(7)
    for _ in range(5000):
        value = _random_json(rng)
        fmt = rng.choice(FORMATS)
        _only_allowed_outcomes(lambda: parse_record(value, fmt=fmt))
        _only_allowed_outcomes(lambda: parse_record(value))
        try:
            parse_record_detailed(value)
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            pytest.fail(f"parse_record_detailed raised {exc!r} on {value!r}")


def test_fuzz_mutated_real_records_give_only_posts_invalid_or_skipped():
    rng = random.Random(11)
    seeds = [fixture("twitter_v1_extended_tweet.json"), fixture("twitter_v1_retweet_of_extended.json"),
             fixture("twitter_v2_page.json"), *fixture_lines("bluesky_jetstream.jsonl"),
             *fixture_lines("mastodon_stream_ws.jsonl"), base_post()]
    if MASTODON_DATA.is_dir():
        seeds += mastodon_statuses()[:40]
    produced = 0
    for _ in range(4000):
        record = _mutate(rng, copy.deepcopy(rng.choice(seeds)))
        produced += len(_only_allowed_outcomes(lambda: parse_record(record)))
        raw = orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS) if _serialisable(record) else None
        if raw is not None:
            cut = raw[:rng.randrange(len(raw) + 1)]
            _only_allowed_outcomes(lambda: parse_line(cut))
    assert produced > 0  # mutations that keep a record valid still parse


def _serialisable(value) -> bool:
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True
