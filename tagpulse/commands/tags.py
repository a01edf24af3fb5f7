"""`tagpulse tags suggest | alias add|list|remove`: find and merge hashtag variants.

`suggest` reads tag counts from ClickHouse (the `posts` table, through the same
read-only path as `tagpulse sql`) or from canonical JSONL files (`--from-file`),
and prints likely variants of the busiest tags (tagpulse.core.variants).
`alias` edits $TAGPULSE_HOME/aliases.json, which canonicalisation applies to new
data; docs/tags.md says how to re-aggregate history after a change.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

HELP = "Suggest hashtag variants of the busiest tags; manage tag aliases (variant → canonical)"

MAX_TAGS = 200_000          # distinct tags read for one suggestion run: bounded memory
MAX_SPELLING_TEXTS = 20_000  # post texts scanned for display spellings


class UserError(Exception):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("suggest", help="list likely variants of the busiest tags with their counts",
                       description="Variants of the busiest tags: other spellings of one key, ASCII-folded forms "
                                   "(einbuchfurkai → einbuchfuerkai) and small edit distances "
                                   "(einbildfuerkai → einbuchfuerkai).")
    s.add_argument("--top", type=int, default=20, metavar="N", help="look for variants of the N busiest tags (20)")
    s.add_argument("--since", metavar="WHEN",
                   help="only posts created since WHEN: a duration back from now (7d, 12h) or a date/time "
                        "(2015-05-20, 2015-05-20T09:00:00Z); default all")
    s.add_argument("--from-file", nargs="+", type=Path, metavar="FILE",
                   help="count tags in canonical JSONL files instead of ClickHouse")
    s.add_argument("--min-posts", type=int, default=1, metavar="N", help="ignore variants with fewer posts (1)")
    s.add_argument("--max-distance", type=int, default=3, metavar="D",
                   help="largest edit distance for long tags (3; shorter tags get less, see docs/tags.md)")
    s.add_argument("--json", action="store_true", help="one JSON object per suggestion instead of a table")

    a = sub.add_parser("alias", help="add, list or remove tag aliases ($TAGPULSE_HOME/aliases.json)")
    asub = a.add_subparsers(dest="alias_action", metavar="add|list|remove", required=True)
    add = asub.add_parser("add", help="map VARIANT to CANONICAL for new data")
    add.add_argument("variant")
    add.add_argument("canonical")
    ls = asub.add_parser("list", help="list stored aliases (VARIANT<TAB>CANONICAL)")
    ls.add_argument("--sql", action="store_true",
                    help="print a ClickHouse expression that applies the aliases to `hashtags` (docs/tags.md)")
    rm = asub.add_parser("remove", help="forget the alias of VARIANT")
    rm.add_argument("variant")


# --------------------------------------------------------------------------- time filter
def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    if not text:
        return None
    from tagpulse.config import parse_duration

    now = now or datetime.now(timezone.utc)
    try:
        return datetime.fromtimestamp(now.timestamp() - parse_duration(text), tz=timezone.utc)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--since {text!r}: expected a duration (7d, 12h, 90m) or a date such as 2015-05-20") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


# --------------------------------------------------------------------------- counts
def counts_from_files(paths: list[Path], since: datetime | None, canonical) -> tuple[Counter, dict]:
    """Posts per tag key and spellings from canonical JSONL; each platform:post_id counted once."""
    counts: Counter = Counter()
    texts_by_key: dict[str, list[str]] = {}
    seen: set[str] = set()
    texts: list[str] = []
    for path in paths:
        try:
            handle = open(path, encoding="utf-8", errors="replace")
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from None
        with handle:
            for line in handle:
                try:
                    post = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(post, dict) or not isinstance(post.get("hashtags"), list):
                    continue
                key = f"{post.get('platform')}:{post.get('post_id')}"
                if key in seen:
                    continue  # duplicate delivery: the pipeline counts it once, so do we
                seen.add(key)
                if since is not None:
                    try:
                        created = datetime.fromisoformat(str(post.get("created_at", "")).replace("Z", "+00:00"))
                    except ValueError:
                        continue
                    if created < since:
                        continue
                for tag in dict.fromkeys(t for t in post["hashtags"] if isinstance(t, str) and t):
                    counts[tag] += 1
                if len(texts) < MAX_SPELLING_TEXTS * 5 and isinstance(post.get("text"), str) and "#" in post["text"]:
                    texts.append(post["text"])
    from tagpulse.core.variants import spellings_from_texts

    return counts, spellings_from_texts(texts, canonical)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def counts_from_clickhouse(settings, since: datetime | None, wanted_texts, canonical) -> tuple[Counter, dict]:
    from tagpulse.commands.sql import QueryError, run_query

    where = f"WHERE created_at >= toDateTime({int(since.timestamp())}, 'UTC')" if since else ""
    sql = (f"SELECT tag, count() AS posts FROM tagpulse.posts ARRAY JOIN arrayDistinct(hashtags) AS tag {where} "
           f"GROUP BY tag ORDER BY posts DESC, tag LIMIT {MAX_TAGS}")
    try:
        raw = run_query(settings, sql, "JSONEachRow")
    except QueryError as exc:
        raise UserError(str(exc)) from None
    counts: Counter = Counter()
    for line in raw.splitlines():
        if line.strip():
            row = json.loads(line)
            counts[row["tag"]] = int(row["posts"])
    keys = wanted_texts(counts)
    if not keys:
        return counts, {}
    cond = f"hasAny(hashtags, [{', '.join(_quote(k) for k in sorted(keys))}])"
    text_sql = (f"SELECT text FROM tagpulse.posts WHERE {cond}"
                f"{' AND created_at >= toDateTime(' + str(int(since.timestamp())) + ', ' + _quote('UTC') + ')' if since else ''} "
                f"LIMIT {MAX_SPELLING_TEXTS}")
    try:
        raw = run_query(settings, text_sql, "JSONEachRow")
    except QueryError as exc:
        raise UserError(str(exc)) from None
    texts = [json.loads(line)["text"] for line in raw.splitlines() if line.strip()]
    from tagpulse.core.variants import spellings_from_texts

    return counts, spellings_from_texts(texts, canonical, wanted=set(keys))


# --------------------------------------------------------------------------- aliases
def aliases_path(settings) -> Path:
    return settings.home / "aliases.json"


def load_aliases(settings):
    from tagpulse.core.hashtags import AliasTable

    path = aliases_path(settings)
    if not path.exists():
        return AliasTable()
    try:
        return AliasTable.load(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def alias_items(table) -> dict[str, str]:
    return dict(sorted(table.items()))


def alias_sql(items: dict[str, str], column: str = "hashtags") -> str:
    """`hashtags` with the aliases applied, as one ClickHouse expression (for re-aggregating history)."""
    if not items:
        return column
    variants = ", ".join(_quote(v) for v in items)
    targets = ", ".join(_quote(c) for c in items.values())
    return f"arrayDistinct(arrayMap(t -> transform(t, [{variants}], [{targets}], t), {column}))"


def run_alias(args, settings) -> int:
    # The key a name has on its own (no aliases applied), as the alias table stores it.
    from tagpulse.core.hashtags import canonical_key as canonical_tag

    table = load_aliases(settings)
    path = aliases_path(settings)
    if args.alias_action == "list":
        items = alias_items(table)
        if getattr(args, "sql", False):
            print(alias_sql(items))
            return 0
        if not items:
            print(f"no aliases in {path}", file=sys.stderr)
        for variant, canonical in items.items():
            print(f"{variant}\t{canonical}")
        return 0
    variant = canonical_tag(args.variant)
    if not variant:
        raise UserError(f"{args.variant!r} is empty after canonicalisation")
    if args.alias_action == "remove":
        if variant not in alias_items(table):
            raise UserError(f"no alias for {variant} in {path}")
        table.remove(variant)
        table.save(path)
        print(f"removed alias {variant}; applies to data ingested from now on (see docs/tags.md to re-aggregate "
              "history)", file=sys.stderr)
        return 0
    canonical = canonical_tag(args.canonical)
    if not canonical:
        raise UserError(f"{args.canonical!r} is empty after canonicalisation")
    items = alias_items(table)
    # Keep the table flat (one hop): point at the final target and refuse cycles.
    target = items.get(canonical, canonical)
    if variant == canonical:
        raise UserError(f"{args.variant} and {args.canonical} are already the same key ({variant})")
    if target == variant:
        raise UserError(f"{canonical} is itself an alias of {variant}: that would be a cycle")
    table.add(variant, target)
    for other, aim in items.items():
        if aim == variant:
            table.add(other, target)  # whatever pointed at the variant now points at its new target
    table.save(path)
    print(f"{variant} → {target} stored in {path}; applies to data ingested from now on "
          "(see docs/tags.md to re-aggregate history)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- suggest
def run_suggest(args, settings) -> int:
    from tagpulse.core import variants
    from tagpulse.core.hashtags import canonical_key

    if args.top < 1:
        raise UserError("--top must be at least 1")
    since = parse_since(args.since)
    try:
        known = alias_items(load_aliases(settings))
    except UserError:
        raise
    # Without the user's aliases: a spelling must map to its own key here.
    canonical = canonical_key
    if args.from_file:
        counts, spellings = counts_from_files(args.from_file, since, canonical)
    else:
        def wanted_texts(counts: Counter) -> set[str]:
            first = variants.suggest(counts, None, top=args.top, max_distance=args.max_distance,
                                     min_variant_posts=args.min_posts, aliases=known)
            keys = {k for k, _ in counts.most_common(args.top)}
            return keys | {s.variant for s in first}

        counts, spellings = counts_from_clickhouse(settings, since, wanted_texts, canonical)
    if not counts:
        print("no tagged posts found" + (f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since else ""), file=sys.stderr)
        return 0
    found = variants.suggest(counts, spellings, top=args.top, max_distance=args.max_distance,
                             min_variant_posts=args.min_posts, aliases=known)
    if args.json:
        for s in found:
            print(json.dumps(s.as_dict(), ensure_ascii=False))
    elif found:
        print(variants.format_table(found))
    if found:
        print(f"{len(found)} suggestions for the {min(args.top, len(counts))} busiest of {len(counts)} tags; "
              "store one with: tagpulse tags alias add VARIANT CANONICAL", file=sys.stderr)
    else:
        print(f"no variants found among the {min(args.top, len(counts))} busiest of {len(counts)} tags",
              file=sys.stderr)
    return 0


def run(args) -> int:
    from tagpulse import config

    settings = config.load()
    try:
        if args.action == "suggest":
            return run_suggest(args, settings)
        return run_alias(args, settings)
    except UserError as exc:
        print(f"tagpulse tags: {exc}", file=sys.stderr)
        return 1
