"""Pure parts of the ClickHouse layer and the SQL endpoint (no I/O)."""
from __future__ import annotations

import struct

import orjson
import pytest

from sinks import clickhouse as ch
from sinks.service import Batcher, QueryRefused, backoff_delays, check_query, explain_error


def test_mask_url_hides_password_only():
    assert ch.mask_url("https://reader:s3cr%40t@db.example:8443/tagpulse") == "https://reader:***@db.example:8443/tagpulse"
    assert ch.mask_url("http://db:8123/tagpulse") == "http://db:8123/tagpulse"
    assert ch.mask_url("chdb:///var/lib/tagpulse") == "chdb:///var/lib/tagpulse"


def test_mask_secrets_removes_plain_and_encoded_password():
    url = "https://u:p%40ss@h:8443/db"
    assert ch.mask_secrets("auth failed for u:p@ss and u:p%40ss", url) == "auth failed for u:*** and u:***"


def test_embedded_path():
    assert str(ch.embedded_path("chdb:///tmp/x/clickhouse")) == "/tmp/x/clickhouse"
    assert ch.embedded_path("chdb://memory") is None
    assert ch.embedded_path("http://h:8123") is None


def test_split_statements_respects_quotes_and_comments():
    sql = "-- a comment; not a split\nSELECT ';' AS a; /* ; */ SELECT \"x;\" ;\n\nSELECT 'it''s; fine' ;  "
    assert ch.split_statements(sql) == ["SELECT ';' AS a", "SELECT \"x;\"", "SELECT 'it''s; fine'"]
    assert ch.split_statements("SELECT 'a\\';b'") == ["SELECT 'a\\';b'"]
    assert ch.split_statements(" ; ;") == []


def test_migration_files_are_versioned_and_split_cleanly():
    files = ch.migration_files()
    assert files[0][:2] == (1, "001_initial")
    statements = ch.split_statements(files[0][2].read_text())
    created = [s.split("(")[0].split()[-1] for s in statements if s.startswith("CREATE TABLE")]
    assert created == ["tagpulse.posts", "tagpulse.reach_windows", "tagpulse.late_events", "tagpulse.dead_letters"]
    for statement in statements:  # re-running a migration must be harmless
        assert "IF NOT EXISTS" in statement
        assert "PARTITION BY" not in statement  # one insert = one part = atomic


def test_migration_names_must_be_versioned(tmp_path):
    (tmp_path / "001_a.sql").write_text("SELECT 1")
    (tmp_path / "001_b.sql").write_text("SELECT 1")
    with pytest.raises(ValueError):
        ch.migration_files(tmp_path)
    (tmp_path / "001_b.sql").unlink()
    (tmp_path / "init.sql").write_text("SELECT 1")
    with pytest.raises(ValueError):
        ch.migration_files(tmp_path)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def test_encode_messages_is_rowbinary():
    big = b"x" * 300  # length needs a two-byte varint
    data = ch.encode_messages([(2, 7, b"[1]"), (65535, 2**40, big)])
    pos, rows = 0, []
    while pos < len(data):
        partition, offset = struct.unpack_from("<HQ", data, pos)
        length, pos = _read_varint(data, pos + 10)
        rows.append((partition, offset, data[pos:pos + length]))
        pos += length
    assert rows == [(2, 7, b"[1]"), (65535, 2**40, big)]


def test_drop_present_keeps_only_unstored_messages():
    messages = [(0, 5, b"a"), (0, 6, b"b"), (1, 3, b"c"), (2, 0, b"d")]
    assert ch.drop_present(messages, {0: 5, 1: 3}) == [(0, 6, b"b"), (2, 0, b"d")]
    assert ch.drop_present(messages, {}) == messages


def test_count_rows_counts_keys_not_text():
    rows = [{"post_id": "1", "text": 'says "post_id": 5'}, {"post_id": "2", "text": ""}]
    assert ch.count_rows(ch.TABLES["posts"], orjson.dumps(rows)) == 2
    dead = [{"stage": "worker", "reason": "x", "raw": '{"reason":1}', "raw_bytes": 12, "source": "s"}]
    assert ch.count_rows(ch.TABLES["dead_letters"], orjson.dumps(dead)) == 1


def test_window_rows_as_arrays_round_trip_and_are_counted():
    from tagpulse.core.windows import WINDOW_ROW_FIELDS, window_row_arrays, window_row_tuple, window_rows_of

    base = {"platform": "mastodon", "window_size": 60, "window_start": 1432113300, "window_end": 1432113360,
            "posts": 3, "originals": 2, "shares": 1, "unique_authors": 2, "potential_reach": 30,
            "impressions": 40, "engagement": 5}
    # Tags that hold the row separator or its parts, quotes, brackets, backslashes; first and not first.
    tags = ("],[", "einbuchfuerkai", '"],["', "a],[b", "[[", "x],[", "1],[", '],[","', "\\],[", "ä],[")
    dicts = [dict(base, tag=tag) for tag in tags]
    rows = [window_row_tuple(row) for row in dicts]  # as stage 2 builds them
    value = orjson.dumps(window_row_arrays(rows, 1432113371.5))
    assert orjson.dumps(window_row_arrays(rows[1:2], 1432113371.5)) == \
        b'[["einbuchfuerkai","mastodon",60,1432113300,1432113360,3,2,1,2,30,40,5,1432113371.5]]'
    assert window_rows_of(value) == [dict(row, closed_at=1432113371.5) for row in dicts]
    spec = ch.TABLES["reach_windows"]
    assert ch.count_rows(spec, value) == len(rows)
    for i in range(len(rows)):  # every tag alone, and every pair in both orders
        assert ch.count_rows(spec, orjson.dumps(window_row_arrays(rows[i:i + 1], 0.0))) == 1
        for j in range(len(rows)):
            assert ch.count_rows(spec, orjson.dumps(window_row_arrays([rows[i], rows[j]], 0.0))) == 2
    # Messages of older workers: objects.
    objects = orjson.dumps([dict(row, closed_at=1.5) for row in dicts])
    assert window_rows_of(objects) == [dict(row, closed_at=1.5) for row in dicts]
    assert ch.count_rows(spec, objects) == len(rows)
    # The sink's JSONExtract reads an array by position: its tuple lists the fields in the topic's order.
    names = [field.split()[0] for field in spec.json_type.removeprefix("Tuple(").removesuffix(")").split(", ")]
    assert tuple(names) == WINDOW_ROW_FIELDS


def test_table_specs_match_the_ddl():
    ddl = "\n".join(path.read_text() for _, _, path in ch.migration_files())
    for spec in ch.TABLES.values():
        assert len(spec.columns) == len(spec.select)
        table_ddl = ddl.split(f"tagpulse.{spec.table}\n")[1].split("ENGINE")[0]
        declared = [line.split()[0] for line in table_ddl.splitlines()
                    if line.strip() and (line.strip()[0].isalpha() or line.strip()[0] == "_") and not line.strip().startswith("INDEX")]
        assert sorted(declared) == sorted([*spec.columns, "_partition", "_offset"]), spec.table


def test_batcher_flushes_on_rows_bytes_or_time():
    b = Batcher(["posts", "reach_windows"], flush_rows=10, interval_s=1.0, max_bytes=100)
    assert not b.due(0.0) and b.empty()
    b.add("posts", 0, 1, b"[]", 4, now=10.0)
    assert not b.due(10.5)
    assert b.due(11.0)  # the oldest message waited interval_s
    b.add("posts", 0, 2, b"[]", 6, now=10.6)
    assert b.due(10.6)  # 10 rows
    taken = b.take_all(10.6)
    assert taken == {"posts": ([(0, 1, b"[]"), (0, 2, b"[]")], 10)} and b.empty()
    b.add("reach_windows", 1, 9, b"x" * 100, 1, now=20.0)
    assert b.due(20.0)  # bytes


def test_batcher_window_rows_are_prompt_but_not_more_often_than_the_gap():
    b = Batcher(["posts", "reach_windows", "spikes"], flush_rows=1000, interval_s=1.0, max_bytes=1 << 20,
                prompt_gap_s=0.25)
    b.add("posts", 0, 1, b"[]", 5, now=10.0)
    assert not b.prompt_due(10.1)  # posts alone wait for the interval
    assert b.time_left(10.1) == pytest.approx(0.9)
    b.add("reach_windows", 0, 1, b"[]", 5, now=10.1)
    assert b.prompt_due(10.1)  # nothing flushed yet: at once (the service adds "caught up")
    b.take_all(10.1)
    b.add("spikes", 0, 1, b"[]", 1, now=10.2)
    assert not b.prompt_due(10.2) and b.time_left(10.2) == pytest.approx(0.15)
    assert b.prompt_due(10.35)
    assert not b.due(10.35)  # the interval rule alone would wait until 11.2


def test_backoff_doubles_to_a_cap():
    delays = backoff_delays(0.5, 30.0)
    assert [next(delays) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


def test_check_query():
    assert check_query("SELECT 1;", "TSVWithNames") == "SELECT 1"
    for sql, fmt in (("", "TSV"), ("SELECT 1; SELECT 2", "TSV"), ("SELECT 1", "TSV; DROP"), (None, "TSV")):
        with pytest.raises(QueryRefused):
            check_query(sql, fmt)


def test_explain_error():
    assert "read-only" in explain_error("Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY)")
    assert explain_error("Code: 60. Unknown table\nstack") == "Code: 60. Unknown table"
