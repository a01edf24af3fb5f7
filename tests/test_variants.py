"""Unit tests of the pure variant suggester (no I/O)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from tagpulse.core import variants as v

DATA = Path("/work/shared/data/mastodon/ichbinhanna.jsonl")


def naive_osa(a: str, b: str) -> int:
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


def test_banded_distance_agrees_with_full_table_within_the_limit():
    rng = random.Random(7)
    for _ in range(3000):
        a = "".join(rng.choice("abcu") for _ in range(rng.randint(0, 9)))
        b = "".join(rng.choice("abcu") for _ in range(rng.randint(0, 9)))
        for limit in (1, 2, 3):
            expected = naive_osa(a, b)
            got = v.edit_distance(a, b, limit)
            assert got == (expected if expected <= limit else limit + 1), (a, b, limit)


def test_ascii_folds_of_a_transliterated_key():
    assert v.ascii_folds("einbuchfuerkai") == {"einbuchfurkai"}
    assert v.ascii_folds("moeglichefuesse") == {"moglichefuesse", "moeglichefusse", "moglichefusse"}
    assert v.ascii_folds("rstats") == set()


def test_campaign_variants_are_suggested_with_counts_and_direction():
    counts = {"einbuchfuerkai": 900, "einbildfuerkai": 12, "einbuchfurkai": 30, "rstats": 500,
              "einbuchfuerkaii": 3, "zaehler": 40, "zahler": 35, "ai": 300, "ml": 200, "unrelated": 100}
    spellings = {"einbuchfuerkai": {"#einBuchfürKai": 500, "#einBuchfuerKai": 390, "#EINBUCHFUERKAI": 10},
                 "einbildfuerkai": {"#einBildfuerKai": 12}}
    got = v.suggest(counts, spellings, top=6)
    pairs = {(s.variant, s.canonical): s for s in got}
    assert pairs[("einbuchfuerkai", "einbuchfuerkai")].kind == "spelling"
    assert pairs[("einbuchfuerkai", "einbuchfuerkai")].spellings == ("#einBuchfürKai", "#einBuchfuerKai",
                                                                     "#EINBUCHFUERKAI")
    fold = pairs[("einbuchfurkai", "einbuchfuerkai")]
    assert fold.kind == "ascii-fold" and fold.variant_posts == 30 and fold.canonical_posts == 900
    bild = pairs[("einbildfuerkai", "einbuchfuerkai")]
    assert bild.kind == "edit" and bild.distance == 3 and bild.spellings == ("#einBildfuerKai",)
    assert pairs[("einbuchfuerkaii", "einbuchfuerkai")].distance == 1
    # Short tags are never paired by edit distance; the busiest tag comes first.
    assert ("ml", "ai") not in pairs and ("ai", "ml") not in pairs
    assert got[0].canonical == "einbuchfuerkai"
    # zaehler/zahler: a fold pair, the transliterated form is canonical even though the folded one is quieter here.
    assert ("zahler", "zaehler") in pairs


def test_fold_direction_when_the_folded_form_is_busier():
    got = v.suggest({"einbuchfurkai": 100, "einbuchfuerkai": 20}, top=1)
    assert [(s.variant, s.canonical, s.kind) for s in got] == [("einbuchfurkai", "einbuchfuerkai", "ascii-fold")]


def test_existing_alias_is_not_suggested_again_and_top_bounds_the_candidates():
    counts = {"einbuchfuerkai": 900, "einbildfuerkai": 12, "campaigntag": 5, "campaigntags": 4}
    got = v.suggest(counts, aliases={"einbildfuerkai": "einbuchfuerkai"}, top=1)
    assert got == []
    # campaigntag is not among the top 1, so its near twin is not looked for.
    assert v.suggest(counts, top=2)[0].canonical == "einbuchfuerkai"
    assert any(s.canonical == "campaigntag" for s in v.suggest(counts, top=3))


def test_min_variant_posts_filters_rare_variants():
    counts = {"einbuchfuerkai": 900, "einbildfuerkai": 1}
    assert v.suggest(counts, min_variant_posts=2) == []
    assert len(v.suggest(counts, min_variant_posts=1)) == 1


def test_bad_input_is_harmless():
    assert v.suggest({}) == []
    assert v.suggest({"": 5, "x": 0, "y": -1}) == []
    assert v.suggest({"abcdefgh": 3}, top=0) == []


def test_spellings_from_real_mastodon_texts():
    import html
    import re

    def crude_key(raw: str) -> str:
        return raw.casefold()

    texts = []
    for line in DATA.read_text().split("\n"):
        if not line.strip():
            continue
        status = json.loads(line)
        texts.append(html.unescape(re.sub(r"<[^>]+>", "", status["content"])))
    found = v.spellings_from_texts(texts, crude_key, wanted={"ichbinhanna"})
    assert set(found) == {"ichbinhanna"}
    spellings = found["ichbinhanna"]
    # The real campaign is spelled several ways; the counts come from the texts.
    assert {"#IchBinHanna", "#IchbinHanna"} <= set(spellings)
    assert sum(spellings.values()) >= 150


def test_table_lists_every_suggestion():
    got = v.suggest({"einbuchfuerkai": 9, "einbildfuerkai": 2})
    table = v.format_table(got).splitlines()
    assert table[0].split()[:3] == ["variant", "canonical", "kind"]
    assert table[1].split()[:5] == ["einbildfuerkai", "einbuchfuerkai", "edit:3", "2", "9"]
