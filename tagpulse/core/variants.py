"""Suggest likely variants of the busiest hashtags (pure: no I/O).

Canonicalisation (tagpulse.core.hashtags) already merges case, width, zero-width
characters and German transliteration, so `#einBuchfürKai` and `#EINBUCHFUERKAI`
are one key. What it cannot know is that two *different* keys mean the same
campaign. Three kinds of evidence are reported, strongest first:

- ``spelling``   one key, several spellings seen in posts (already merged; shown
                 so a reader sees what the key stands for);
- ``ascii-fold`` the variant is the canonical key with some ``ae/oe/ue`` folded to
                 ``a/o/u``: what a Mastodon server sends for ``#einBuchfürKai``
                 (``einbuchfurkai``) when the author's spelling was lost;
- ``edit``       a small edit distance (optimal string alignment, so a swap of
                 two neighbours counts 1). The budget grows with the length:
                 none below 5 characters (``#ai`` and ``#ml`` are two edits apart
                 and unrelated), 1 up to 7, 2 up to 11, 3 from 12 on. The last
                 step exists because the campaign's own look-alike
                 ``einbildfuerkai`` vs ``einbuchfuerkai`` is 3 edits (i→u, l→c,
                 d→h): one swapped word in a long tag.

Work is bounded: only the `top` busiest keys are candidates for "canonical";
each is compared against all keys whose length is within the allowed distance,
after a cheap character-count lower bound. That is O(top × tags) cheap checks and
a banded O(len) distance for the few survivors.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import product
from typing import Callable, Iterable, Mapping

# (transliterated, folded) pairs: canonical keys spell ü as "ue"; ASCII folding makes it "u".
_FOLDS = (("ae", "a"), ("oe", "o"), ("ue", "u"))
_FOLD_PATTERN = re.compile("ae|oe|ue")
# More than this many ae/oe/ue in one tag and we stop enumerating fold combinations (2^n).
_MAX_FOLD_SITES = 6


@dataclass(frozen=True)
class Suggestion:
    variant: str
    canonical: str
    kind: str                   # "spelling" | "ascii-fold" | "edit"
    variant_posts: int
    canonical_posts: int
    distance: int = 0
    spellings: tuple[str, ...] = field(default=())  # display spellings of the variant, most frequent first

    def as_dict(self) -> dict:
        return {"variant": self.variant, "canonical": self.canonical, "kind": self.kind,
                "variant_posts": self.variant_posts, "canonical_posts": self.canonical_posts,
                "distance": self.distance, "spellings": list(self.spellings)}


def max_distance_for(length: int, limit: int = 3) -> int:
    """Edit budget for a tag of this length (0 below 5 characters, 1 up to 7, 2 up to 11, else 3), capped by `limit`."""
    if length < 5:
        budget = 0
    elif length < 8:
        budget = 1
    elif length < 12:
        budget = 2
    else:
        budget = 3
    return max(0, min(budget, limit))


def edit_distance(a: str, b: str, limit: int) -> int:
    """Optimal-string-alignment distance, or limit + 1 as soon as it must exceed `limit`.

    Banded: only cells within `limit` of the diagonal are computed.
    """
    if a == b:
        return 0
    la, lb = len(a), len(b)
    if abs(la - lb) > limit:
        return limit + 1
    big = limit + 1
    prev2: list[int] | None = None
    prev = list(range(lb + 1))
    for i in range(1, la + 1):
        cur = [big] * (lb + 1)
        cur[0] = i
        lo, hi = max(1, i - limit), min(lb, i + limit)
        row_min = cur[0] if lo == 1 else big
        ca = a[i - 1]
        for j in range(lo, hi + 1):
            cost = 0 if ca == b[j - 1] else 1
            value = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if prev2 is not None and i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == b[j - 1]:
                value = min(value, prev2[j - 2] + 1)
            cur[j] = value
            if value < row_min:
                row_min = value
        if row_min > limit:
            return big
        prev2, prev = prev, cur
    return min(prev[lb], big)


def ascii_folds(key: str) -> set[str]:
    """Every form of `key` with some of its ae/oe/ue folded to a/o/u (the key itself excluded)."""
    sites = [m.start() for m in _FOLD_PATTERN.finditer(key)]
    # Overlapping sites ("aue") cannot both fold; keep the first of any overlap.
    kept: list[int] = []
    for s in sites:
        if not kept or s >= kept[-1] + 2:
            kept.append(s)
    kept = kept[:_MAX_FOLD_SITES]
    out = set()
    for choice in product((False, True), repeat=len(kept)):
        if not any(choice):
            continue
        parts, last = [], 0
        for site, fold in zip(kept, choice):
            parts.append(key[last:site])
            parts.append(key[site] if fold else key[site:site + 2])
            last = site + 2
        parts.append(key[last:])
        out.add("".join(parts))
    return out


def _bag_distance(a: Counter, b: Counter) -> int:
    """A lower bound of the edit distance from character counts alone."""
    return max(sum((a - b).values()), sum((b - a).values()))


def suggest(counts: Mapping[str, int], spellings: Mapping[str, Mapping[str, int]] | None = None, *,
            top: int = 20, max_distance: int = 3, min_variant_posts: int = 1,
            aliases: Mapping[str, str] | None = None) -> list[Suggestion]:
    """Variant → canonical suggestions for the `top` busiest keys of `counts`.

    counts: canonical key → posts. spellings: key → {display spelling: posts}.
    aliases: variant → canonical already stored; those pairs are not suggested again.
    The busier key of a pair is the canonical one, except for an ASCII fold, whose
    transliterated form ("fuer") keeps the information and so is canonical.
    """
    spellings = spellings or {}
    aliases = aliases or {}
    ranked = sorted(((c, k) for k, c in counts.items() if k and c > 0), key=lambda ck: (-ck[0], ck[1]))
    heads = [k for _, k in ranked[:max(0, top)]]
    by_length: dict[int, list[str]] = {}
    for _, k in ranked:
        if counts[k] >= min_variant_posts:
            by_length.setdefault(len(k), []).append(k)

    def spelled(key: str) -> tuple[str, ...]:
        seen = spellings.get(key) or {}
        return tuple(s for s, _ in sorted(seen.items(), key=lambda sc: (-sc[1], sc[0])))

    out: list[Suggestion] = []
    paired: set[frozenset] = set()

    def add(variant: str, canonical: str, kind: str, distance: int) -> None:
        pair = frozenset((variant, canonical))
        if pair in paired or aliases.get(variant) == canonical or counts.get(variant, 0) < min_variant_posts:
            return
        paired.add(pair)
        out.append(Suggestion(variant, canonical, kind, counts.get(variant, 0), counts.get(canonical, 0),
                              distance, spelled(variant)))

    for head in heads:
        forms = spelled(head)
        if len(forms) > 1:
            out.append(Suggestion(head, head, "spelling", counts[head], counts[head], 0, forms))

    for head in heads:
        for folded in sorted(ascii_folds(head)):
            if counts.get(folded, 0) >= min_variant_posts:
                add(folded, head, "ascii-fold", head.count("e") - folded.count("e"))
        # The head itself may be the folded form of a quieter transliterated key.
        for other_len in (len(head) + 1, len(head) + 2):
            for other in by_length.get(other_len, ()):
                if head in ascii_folds(other):
                    add(head, other, "ascii-fold", other_len - len(head))

    for head in heads:
        limit = max_distance_for(len(head), max_distance)
        if limit == 0:
            continue
        head_chars = Counter(head)
        for length in range(len(head) - limit, len(head) + limit + 1):
            for other in by_length.get(length, ()):
                if other == head or frozenset((other, head)) in paired:
                    continue
                pair_limit = min(limit, max_distance_for(len(other), max_distance))
                if pair_limit == 0 or abs(len(other) - len(head)) > pair_limit:
                    continue
                if _bag_distance(head_chars, Counter(other)) > pair_limit:
                    continue
                d = edit_distance(head, other, pair_limit)
                if d <= pair_limit:
                    busier, quieter = (head, other) if (counts[head], other) >= (counts[other], head) else (other, head)
                    add(quieter, busier, "edit", d)

    kind_rank = {"spelling": 0, "ascii-fold": 1, "edit": 2}
    out.sort(key=lambda s: (-s.canonical_posts, s.canonical, kind_rank[s.kind], -s.variant_posts, s.variant))
    return out


_HASHTAG_IN_TEXT = re.compile(r"#([^\s#.,;:!?()\[\]{}<>\"'“”„«»/\\|]+)")


def spellings_from_texts(texts: Iterable[str], canonical: Callable[[str], str | None],
                         wanted: set[str] | None = None) -> dict[str, Counter]:
    """key → Counter(display spelling) from `#word` occurrences in post texts.

    `canonical` is tagpulse.core.hashtags.canonical_tag (passed in to keep this module pure);
    `wanted` limits the result to those keys.
    """
    found: dict[str, Counter] = {}
    for text in texts:
        if not text or "#" not in text:
            continue
        for match in _HASHTAG_IN_TEXT.finditer(text):
            raw = match.group(1)
            key = canonical(raw)
            if not key or (wanted is not None and key not in wanted):
                continue
            found.setdefault(key, Counter())["#" + raw] += 1
    return found


def format_table(suggestions: list[Suggestion]) -> str:
    """Aligned plain-text table, one suggestion per line."""
    header = ("variant", "canonical", "kind", "variant_posts", "canonical_posts", "spellings")
    rows = [header]
    for s in suggestions:
        kind = f"edit:{s.distance}" if s.kind == "edit" else s.kind
        rows.append((s.variant, s.canonical, kind, str(s.variant_posts), str(s.canonical_posts),
                     " ".join(s.spellings[:5]) + (" …" if len(s.spellings) > 5 else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = []
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines)
