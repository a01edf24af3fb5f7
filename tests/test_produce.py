"""`tagpulse produce` and producers/kafka_producer.py: routing, batching, line reading, dead letters
(pure), then the real broker: Mastodon data plus bad lines in, raw topic and dead letters read back."""
from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from producers import kafka_producer as kp
from producers.adapters import MAX_RECORD_BYTES
from postkit import DECODE_EDITS, FINISH_EDITS, canonical_lines

REPO = Path(__file__).resolve().parents[1]

BAD_LINES = [
    (b'{"platform": "twitter", "post_id": "1", "author_id": "2"', "invalid_json"),             # truncated JSON
    (b'{"platform":"twitter","post_id":"1","author_id":"2","created_at":"2015-05-20T00:00:00Z",'
     b'"author_followers":-5}', "negative:author_followers"),
    (b'{"platform":"twitter","post_id":7,"author_id":"2","created_at":"2015-05-20T00:00:00Z"}', "wrong_type:post_id"),
    (b'{"platform":"twitter","author_id":"2","created_at":"2015-05-20T00:00:00Z","post_id":""}',
     "missing_field:post_id"),
    (b'{"platform":"twitter","post_id":"9","author_id":"2","created_at":"9999-01-01T00:00:00Z"}',
     "timestamp_out_of_range:created_at"),
    (b'{"text": "caf\xe9"}', "invalid_utf8"),
    (b"[1, 2", "invalid_json"),
]


# --------------------------------------------------------------------------- routing
def test_murmur2_batch_is_kafkas_murmur2():
    from aiokafka.partitioner import murmur2

    rng = random.Random(7)
    keys = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 41))) for _ in range(3_000)]
    keys += [f"mastodon:https://example.social/users/a/statuses/{i}".encode() for i in range(500)]
    keys += ["bluesky:at://did:plc:äöü/app.bsky.feed.post/x".encode()]
    assert kp.murmur2_batch(keys).tolist() == [murmur2(k) & 0xFFFFFFFF for k in keys]
    for partitions in (1, 3, 4, 12):
        assert kp.partitions_for(keys, partitions) == [(murmur2(k) & 0x7FFFFFFF) % partitions for k in keys]


# --------------------------------------------------------------------------- batching
def test_batches_respect_post_and_byte_limits():
    b = kp.Batcher(max_items=3, max_bytes=100)
    for i in range(10):
        b.add(0, orjson.dumps({"i": i}))
    ready = b.take()
    assert [n for _, _, n in ready] == [3, 3, 3]
    b.drain()
    ready += b.take()
    assert [item["i"] for _, value, _ in ready for item in orjson.loads(value)] == list(range(10))

    b = kp.Batcher(max_items=1000, max_bytes=100)
    items = [orjson.dumps("x" * 20) for _ in range(20)]
    b.add_routed([0] * 20, items)
    b.drain()
    values = [value for _, value, _ in b.take()]
    assert all(len(v) <= 100 for v in values)
    assert sum(len(orjson.loads(v)) for v in values) == 20

    b.add(1, orjson.dumps("y" * 500))      # one item over the limit still goes, alone
    assert [n for _, _, n in b.take()] == [1]


def test_bulk_routing_equals_one_by_one():
    rng = random.Random(1)
    for trial in range(200):
        max_items, max_bytes = rng.choice([1, 3, 10, 500]), rng.choice([50, 200, 5000, 900_000])
        one, bulk = kp.Batcher(max_items, max_bytes), kp.Batcher(max_items, max_bytes)
        for step in range(3):
            n = rng.choice([0, 5, 70, 300])
            parts = [rng.randrange(4) for _ in range(n)]
            items = [b"1" * rng.randrange(1, 80) for _ in range(n)]
            for p, item in zip(parts, items):
                one.add(p, item, step)
            bulk.add_routed(parts, items, step)
            a, b = one.take(), bulk.take()
            for p in range(4):
                assert [r for r in a if r[0] == p] == [r for r in b if r[0] == p], trial
        one.drain()
        bulk.drain()
        assert sorted(one.take()) == sorted(bulk.take())


def test_linger_sends_old_partial_buffers():
    b = kp.Batcher(max_items=500)
    b.add(0, b"1", now=10.0)
    b.add(1, b"2", now=10.4)
    b.stale(now=10.5, linger=0.3)
    assert [(p, v) for p, v, _ in b.take()] == [(0, b"[1]")]
    assert b.buffered == 1


# --------------------------------------------------------------------------- reading lines
def _lines(pieces: list) -> list:
    """Blocks and Oversize markers → the lines they stand for."""
    out = []
    for piece in pieces:
        out += [piece] if isinstance(piece, kp.Oversize) else piece.split(b"\n")
    return out


def test_block_splitter_any_chunking():
    lines = [b'{"a": %d}' % i for i in range(200)] + [b"", b"x" * 300, b"tail"]
    data = b"\n".join(lines)
    rng = random.Random(3)
    for _ in range(50):
        s = kp.BlockSplitter(limit=1000)
        got, pos = [], 0
        while pos < len(data):
            step = rng.randrange(1, 700)
            got += s.feed(data[pos:pos + step])
            pos += step
        got += s.finish()
        assert _lines(got) == lines
        assert sum(kp.block_lines(b) for b in got) == len(lines)


def test_oversize_line_keeps_only_its_head():
    big = b'{"text": "' + b"y" * (3 * MAX_RECORD_BYTES) + b'"}'
    data = b'{"ok": 1}\n' + big + b'\n{"ok": 2}\n'
    s = kp.BlockSplitter(MAX_RECORD_BYTES)
    got = []
    for pos in range(0, len(data), 300_000):
        got += s.feed(data[pos:pos + 300_000])
        assert len(s._partial) <= MAX_RECORD_BYTES  # memory bounded by the record limit
    got += s.finish()
    lines = _lines(got)
    assert lines[0] == b'{"ok": 1}' and lines[2] == b'{"ok": 2}' and lines[3:] in ([], [b""])
    assert isinstance(lines[1], kp.Oversize)
    assert lines[1].size == len(big) and lines[1].head == big[:kp.DEAD_LETTER_RAW_CHARS]


def test_parse_lines_posts_dead_letters_and_line_numbers(shared_data):
    good = (shared_data / "mastodon" / "statuses.jsonl").read_bytes().splitlines()[:20]
    lines = good[:10] + [b""] + [raw for raw, _ in BAD_LINES] + good[10:] + [kp.Oversize(b"{", 5_000_000)]
    parsed = kp.parse_lines(lines, "auto", "in.jsonl", first_line=1, at=1.0)
    assert len(parsed.posts) == 20
    reasons = [(d["reason"], d["source"]) for d in parsed.invalid]
    expected = [(reason, f"in.jsonl:{12 + n}") for n, (_, reason) in enumerate(BAD_LINES)]
    expected.append(("record_too_large", f"in.jsonl:{len(lines)}"))
    assert reasons == expected
    assert parsed.records == 20 + len(BAD_LINES) + 1  # the blank line is not a record
    assert parsed.invalid[-1]["raw_bytes"] == 5_000_000


def _decoded_segments(encoded: kp.Encoded) -> dict[int, list[dict]]:
    return {p: orjson.loads(b"[" + blob[:-1] + b"]") for p, (blob, _ends) in encoded.segments.items()}


def _reference_block(block, fmt, source, first_line, partitions, at) -> kp.Encoded:
    """encode_block without the msgspec fast path: parse_lines → validate_post → orjson."""
    lines = [block] if type(block) is kp.Oversize else block.split(b"\n")
    parsed = kp.parse_lines(lines, fmt, source, first_line, at)
    return kp.Encoded(kp.encode_posts(parsed.posts, partitions), len(parsed.posts), parsed.invalid,
                      parsed.skipped, parsed.records)


def test_fast_canonical_blocks_equal_the_reference_path():
    """The msgspec fast path is an optimisation only: same posts per partition (in order), same dead
    letters with the same line numbers, same counts, for clean blocks, blocks with odd posts and
    blocks of hostile lines (which fall back to parse_lines whole)."""
    from tagpulse import hostile

    rng = random.Random(5)
    ctx = hostile.Context(rng)
    hostile_lines = []
    for make, _weight in hostile.CLASSES:
        for _ in range(3):
            item = make(ctx).item
            if item and b"\n" not in item and len(item) < 200_000:
                hostile_lines.append(item)
    clean = canonical_lines(1, [])
    odd = canonical_lines(2, FINISH_EDITS)
    duplicate_keys = b'{"platform":"twitter","platform":"mastodon"' + clean[7][1:]
    blocks = [b"\n".join(clean), b"\n".join(odd), b"\n".join(odd[:9] + [duplicate_keys] + odd[9:]),
              b"\n".join(canonical_lines(3, DECODE_EDITS)), b"\n".join(clean[:50] + [b""] + clean[50:]),
              b"\n".join(clean[:10] + [b"  "] + clean[10:]), clean[0] + b" " + clean[1],
              b"\n".join(clean[:5] + hostile_lines[:20] + clean[5:]), b"\n".join(hostile_lines), clean[3] + b"\r"]
    fast_taken = 0
    for n, block in enumerate(blocks):
        args = (block, "auto", "in.jsonl", 100, 4, 1.0)
        fast, reference = kp.encode_block(*args), _reference_block(*args)
        fast_taken += kp._encode_wire_block(block, "in.jsonl", 100, 4, 1.0) is not None
        assert _decoded_segments(fast) == _decoded_segments(reference), n
        assert fast.invalid == reference.invalid, n
        assert (fast.posts, fast.skipped, fast.records) == (reference.posts, reference.skipped, reference.records), n
        for blob, ends in fast.segments.values():
            assert ends[-1] == len(blob) and all(blob[e - 1] == ord(",") for e in ends)
    assert fast_taken >= 3  # the test would prove nothing if every block fell back
    assert len(_reference_block(blocks[1], "auto", "x", 1, 4, 1.0).invalid) >= 5  # odd posts really are odd


def test_dead_letter_record_format():
    raw = b"\xff" + b"z" * 100_000
    record = kp.dead_letter("invalid_utf8", raw, "f:3", at=5.0)
    assert set(record) == {"stage", "reason", "raw", "raw_bytes", "source", "at"}
    assert record["stage"] == "produce" and record["raw_bytes"] == 100_001 and record["source"] == "f:3"
    assert record["raw"].startswith("\ufffd") and len(record["raw"]) == kp.DEAD_LETTER_RAW_CHARS
    orjson.dumps(record)


def test_missing_broker_is_one_clear_line(tmp_path, monkeypatch, capsys):
    import socket

    from tagpulse.cli import main

    with socket.socket() as sock:       # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("TAGPULSE_HOME", str(tmp_path))
    monkeypatch.setenv("TAGPULSE_KAFKA", f"127.0.0.1:{port}")
    data = tmp_path / "in.jsonl"
    data.write_bytes(b'{"a": 1}\n')
    assert main(["produce", str(data)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot reach Kafka at 127.0.0.1:" in err[0] and "tagpulse stack up" in err[0]


# --------------------------------------------------------------------------- the real broker
async def _read(settings, topic: str, want: int, timeout: float = 60.0) -> list:
    """(partition, key, value) of every message until `want` items (array elements) were read."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    out, items = [], 0
    deadline = time.monotonic() + timeout
    try:
        while items < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                for m in messages:
                    value = orjson.loads(m.value)
                    out.append((m.partition, m.key, value))
                    items += len(value) if isinstance(value, list) else 1
        # anything beyond what we expect would be a bug: give it a moment to show up
        batch = await consumer.getmany(timeout_ms=1_000)
        for messages in batch.values():
            for m in messages:
                out.append((m.partition, m.key, orjson.loads(m.value)))
    finally:
        await consumer.stop()
    return out


def _expected_posts(files: list[Path]) -> list[dict]:
    from producers.adapters import parse_line

    return [post for f in files for line in f.read_bytes().splitlines() if line.strip() for post in parse_line(line)]


@pytest.mark.integration
@pytest.mark.parametrize("jobs", ["0", "2"])
def test_produce_mastodon_data_and_bad_lines(namespace_settings, shared_data, tmp_path, capsys, jobs):
    from tagpulse.cli import main

    settings = namespace_settings
    files = sorted((shared_data / "mastodon").glob("*.jsonl"))
    expected = _expected_posts(files)
    from producers.adapters import parse_line

    status = files[0].read_bytes().splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(raw for raw, _ in BAD_LINES) + b"\n" + b'{"x": "' + b"q" * (MAX_RECORD_BYTES + 10)
                    + b'"}\n' + status + b"\n")
    expected += parse_line(status)   # a valid status after the bad lines (a duplicate delivery) is not lost

    assert main(["produce", "--batch-size", "50", "--jobs", jobs, *map(str, files), str(bad)]) == 0
    err = capsys.readouterr().err
    assert f"sent {len(expected)} posts" in err and f"{len(BAD_LINES) + 1} invalid" in err

    raw = asyncio.run(_read(settings, settings.topics.raw, len(expected)))
    partitions = asyncio.run(_partition_count(settings))
    got = []
    for partition, key, value in raw:
        assert key is None and isinstance(value, list) and 1 <= len(value) <= 50
        for post in value:
            assert kp.partitions_for([kp.post_key(post)], partitions) == [partition]
        got += value
    assert sorted(orjson.dumps(p) for p in got) == sorted(orjson.dumps(p) for p in expected)

    dead = asyncio.run(_read(settings, settings.topics.dead_letters, len(BAD_LINES) + 1))
    records = sorted((record for _, _, value in dead for record in value),
                     key=lambda r: int(r["source"].rpartition(":")[2]))
    assert [(r["reason"], r["source"]) for r in records] == (
        [(reason, f"{bad}:{n + 1}") for n, (_, reason) in enumerate(BAD_LINES)]
        + [("record_too_large", f"{bad}:{len(BAD_LINES) + 1}")])
    assert records[-1]["raw_bytes"] == MAX_RECORD_BYTES + 19 and len(records[-1]["raw"]) == kp.DEAD_LETTER_RAW_CHARS
    assert all(r["stage"] == "produce" for r in records)


@pytest.mark.integration
@pytest.mark.parametrize("jobs", ["0", "2"])
def test_produce_canonical_jsonl_through_the_fast_path(namespace_settings, tmp_path, capsys, jobs):
    """Canonical JSONL (the msgspec fast path), odd posts included, through `tagpulse produce` into the real
    broker: the raw topic holds exactly the reference path's posts, routed, and the odd ones are dead letters."""
    from tagpulse.cli import main

    settings = namespace_settings
    lines = canonical_lines(4, FINISH_EDITS)
    path = tmp_path / "canonical.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    reference = kp.parse_lines(lines, "canonical", str(path), first_line=1, at=1.0)
    assert kp._encode_wire_block(b"\n".join(lines), str(path), 1, 4, 1.0) is not None  # the fast path applies

    assert main(["produce", "--jobs", jobs, str(path)]) == 0
    err = capsys.readouterr().err
    assert f"sent {len(reference.posts)} posts" in err and f"{len(reference.invalid)} invalid" in err

    raw = asyncio.run(_read(settings, settings.topics.raw, len(reference.posts)))
    partitions = asyncio.run(_partition_count(settings))
    got = []
    for partition, _key, value in raw:
        for post in value:
            assert kp.partitions_for([kp.post_key(post)], partitions) == [partition]
        got += value
    assert sorted(orjson.dumps(p) for p in got) == sorted(orjson.dumps(p) for p in reference.posts)
    dead = asyncio.run(_read(settings, settings.topics.dead_letters, len(reference.invalid)))
    assert sorted((r["reason"], r["source"]) for _, _, value in dead for r in value) == sorted(
        (r["reason"], r["source"]) for r in reference.invalid)


async def _partition_count(settings) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:
        return len(await producer.partitions_for(settings.topics.raw))
    finally:
        await producer.stop()


@pytest.mark.integration
def test_routing_matches_kafkas_default_partitioner(namespace_settings):
    """A keyed single record from any producer lands where our batches put the same post."""
    settings = namespace_settings
    partitions = asyncio.run(_partition_count(settings))
    assert partitions > 1
    keys = [f"mastodon:https://example.social/statuses/{i}".encode() for i in range(12)]
    metadata = kp.send_raw(settings, [b"{}"] * 1, key=keys[0])
    for key in keys[1:]:
        metadata += kp.send_raw(settings, [b"{}"], key=key)
    assert [m.partition for m in metadata] == kp.partitions_for(keys, partitions)


@pytest.mark.integration
def test_produce_posts_validates_and_routes(namespace_settings):
    from producers.simulate import synthetic_posts

    settings = namespace_settings
    posts = list(synthetic_posts(3_000, seed=2))
    broken = dict(posts[0], author_followers=-1)
    counts = asyncio.run(kp.produce_posts(settings, posts + [broken, "not a post"]))
    assert (counts.posts, counts.invalid, counts.records) == (3_000, 2, 3_002)
    assert counts.messages >= 4   # at least one batch per partition
    raw = asyncio.run(_read(settings, settings.topics.raw, 3_000))
    assert sum(len(v) for _, _, v in raw) == 3_000
    dead = asyncio.run(_read(settings, settings.topics.dead_letters, 2))
    assert sorted(r["reason"] for _, _, v in dead for r in v) == ["negative:author_followers", "not_an_object"]


@pytest.mark.integration
def test_stdin_pipe_is_sent_while_it_is_still_open(namespace_settings, shared_data):
    """Linger: posts from a slow pipe reach Kafka without waiting for a full batch or the end of input."""
    settings = namespace_settings
    lines = (shared_data / "mastodon" / "statuses.jsonl").read_bytes().splitlines()[:3]
    proc = subprocess.Popen([sys.executable, "-m", "tagpulse.cli", "produce", "-"], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO, env=os.environ.copy())
    try:
        proc.stdin.write(b"\n".join(lines) + b"\n")
        proc.stdin.flush()
        raw = asyncio.run(_read(settings, settings.topics.raw, 3))
        assert sum(len(v) for _, _, v in raw) == 3       # arrived while stdin is still open
        assert proc.poll() is None
    finally:
        _, err = proc.communicate(timeout=60)   # closes stdin: the end of input
    assert proc.returncode == 0, err
    assert b"sent 3 posts" in err
