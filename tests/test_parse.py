"""`tagpulse parse` end to end, as a user runs it (a real subprocess, real files)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
MASTODON_DATA = ROOT.parent / "shared" / "data" / "mastodon"


def tagpulse(*args: str, stdin: bytes | None = None, python_code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", python_code] if python_code else [sys.executable, "-m", "tagpulse.cli"]
    return subprocess.run([*command, "parse", *args], input=stdin, capture_output=True, cwd=ROOT, timeout=300)


def posts_of(result: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in result.stdout.split(b"\n") if line]


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stderr.decode().splitlines()


def test_every_real_mastodon_status_becomes_one_canonical_post():
    files = sorted(str(p) for p in MASTODON_DATA.glob("*.jsonl"))
    if len(files) != 2:
        pytest.skip(f"real Mastodon data not found at {MASTODON_DATA}")
    result = tagpulse("--strict", *files)
    assert result.returncode == 0, result.stderr.decode()
    posts = posts_of(result)
    assert len(posts) == 375 == len({p["post_id"] for p in posts})
    assert stderr_lines(result) == ["parsed 375 records: 375 posts, 0 invalid, 0 skipped"]
    keys = {k for p in posts for k in p["hashtags"]}
    assert "kuenstlicheintelligenz" in keys and "kunstlicheintelligenz" not in keys
    shares = [p for p in posts if p["is_share"]]
    assert any(p["hashtags"] == ["academicmilestone", "datascience"] for p in shares)


def test_bad_records_are_reported_by_line_and_good_neighbours_survive(tmp_path):
    good = (FIXTURES / "bluesky_jetstream.jsonl").read_bytes().split(b"\n")[4]
    canonical = json.dumps({"platform": "facebook", "post_id": "p1", "author_id": "a1",
                            "created_at": "2015-05-20T09:15:00Z", "hashtags": ["#einBuchfürKai"]}).encode()
    lines = [
        good,                                                   # 1 ok
        b'{"did": "did:plc:x", "kind": "commit", "commit": {',  # 2 truncated
        b"\xff\xfe\xfd",                                        # 3 invalid UTF-8
        b"",                                                    # (blank: not a record)
        b'{"x": "' + b"a" * (10 * 1024 * 1024) + b'"}',         # 5 10 MB
        canonical,                                              # 6 ok
        json.dumps({"platform": "facebook", "post_id": "p2", "author_id": "a1", "author_followers": -5,
                    "created_at": "2015-05-20T09:15:00Z"}).encode(),  # 7 negative followers
        json.dumps({"platform": "facebook", "post_id": "p3", "author_id": "a1",
                    "created_at": "1999-01-01T00:00:00Z"}).encode(),  # 8 absurd timestamp
        b'{"did":"did:plc:ufbl","time_us":1,"kind":"identity","identity":{}}',  # 9 skipped
        good,                                                   # 10 ok (a duplicate is still a record)
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines))  # no final newline: the last record must still count
    result = tagpulse(str(path))
    assert result.returncode == 0
    posts = posts_of(result)
    assert [p["platform"] for p in posts] == ["bluesky", "facebook", "bluesky"]
    assert posts[1]["hashtags"] == ["einbuchfuerkai"]
    assert stderr_lines(result) == [
        f"invalid {path}:2: invalid_json",
        f"invalid {path}:3: invalid_utf8",
        f"invalid {path}:5: record_too_large",
        f"invalid {path}:7: negative:author_followers",
        f"invalid {path}:8: timestamp_out_of_range:created_at",
        "parsed 9 records: 3 posts, 5 invalid, 1 skipped",
        "skipped: bluesky_identity 1",
    ]
    strict = tagpulse("--strict", str(path))
    assert strict.returncode == 1 and strict.stdout == result.stdout


def test_stdin_sse_and_pretty_printed_documents():
    result = tagpulse("-", stdin=(FIXTURES / "mastodon_stream_ws.jsonl").read_bytes())
    assert result.returncode == 0
    assert len(posts_of(result)) == 2
    assert stderr_lines(result)[0] == "parsed 4 records: 2 posts, 0 invalid, 2 skipped"

    sse = tagpulse(str(FIXTURES / "mastodon_stream.sse"))
    assert posts_of(sse) == posts_of(result)
    assert stderr_lines(sse) == ["parsed 4 records: 2 posts, 0 invalid, 2 skipped",
                                 "skipped: mastodon_delete 1, mastodon_edit 1"]

    docs = tagpulse(str(FIXTURES / "twitter_v2_page.json"), str(FIXTURES / "twitter_v1_retweet.json"))
    assert [p["post_id"] for p in posts_of(docs)] == ["601029765519880192", "601028318887186432",
                                                     "601031102345678848", "850007368138018817"]
    assert stderr_lines(docs) == ["parsed 2 records: 4 posts, 0 invalid, 0 skipped"]


def test_forced_format_and_unreadable_files(tmp_path):
    forced = tagpulse("--format", "mastodon", str(FIXTURES / "twitter_v2_page.json"))
    assert forced.returncode == 0 and forced.stdout == b""
    assert stderr_lines(forced)[0].startswith(f"invalid {FIXTURES / 'twitter_v2_page.json'}:1: missing_field:")
    missing = tagpulse(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr.decode() and "Traceback" not in missing.stderr.decode()
    bad_choice = tagpulse("--format", "myspace", "-", stdin=b"")
    assert bad_choice.returncode == 2 and "invalid choice" in bad_choice.stderr.decode()


def test_memory_stays_bounded_on_a_huge_line(tmp_path):
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as handle:
        handle.write(b'{"text": "')
        chunk = b"x" * (1 << 20)
        for _ in range(120):  # a 120 MB line
            handle.write(chunk)
        handle.write(b'"}\n')
        handle.write((FIXTURES / "bluesky_jetstream.jsonl").read_bytes().split(b"\n")[4] + b"\n")
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child forked from a big
    # pytest process would report the parent's size.
    code = ("import sys\n"
            "from tagpulse.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "hwm = next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
            "print('maxrss_kb', hwm, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    result = tagpulse(str(path), python_code=code)
    assert result.returncode == 0
    lines = stderr_lines(result)
    assert lines[0] == f"invalid {path}:1: record_too_large"
    assert lines[1] == "parsed 2 records: 1 posts, 1 invalid, 0 skipped"
    maxrss_mb = int(lines[-1].split()[1]) / 1024
    assert maxrss_mb < 100, f"parse held {maxrss_mb:.0f} MB for a 120 MB line"
