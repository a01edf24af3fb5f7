"""Hashtag canonicalisation: one key per tag whatever the spelling, and no false merges."""
from __future__ import annotations

import json

import pytest

from tagpulse.core import hashtags
from tagpulse.core.hashtags import AliasTable, DisplayForms, canonical_key, canonical_tag, set_aliases


@pytest.fixture(autouse=True)
def no_aliases():
    set_aliases(None)
    yield
    set_aliases(None)


FULL_WIDTH = "＃ｅｉｎＢｕｃｈｆｕｅｒＫａｉ"


@pytest.mark.parametrize("spelling", [
    "#einBuchfürKai", "#einBuchfuerKai", "#EINBUCHFUERKAI", "#einBuch\u200bfuerKai", FULL_WIDTH,
    "＃einBuchfürKai", "einbuchfuerkai", "#einBuchfu\u0308rKai",  # decomposed ü (u + combining diaeresis)
    "#EINBUCHFÜRKAI", "#ein\u00adBuch\u2060für\ufeffKai",  # soft hyphen, word joiner, BOM
])
def test_every_spelling_of_the_seed_tag_is_one_key(spelling):
    assert canonical_tag(spelling) == "einbuchfuerkai"


def test_transliteration_keeps_umlauts_apart_from_plain_vowels():
    assert canonical_tag("#Zähler") == "zaehler"
    assert canonical_tag("#Zahler") == "zahler"
    assert canonical_tag("#Zähler") != canonical_tag("#Zahler")


@pytest.mark.parametrize("raw,key", [
    ("#Straße", "strasse"), ("#STRASSE", "strasse"), ("#ÖPNV", "oepnv"), ("#Ärger", "aerger"),
    ("#KünstlicheIntelligenz", "kuenstlicheintelligenz"), ("#rstats", "rstats"), ("  #Spaces  ", "spaces"),
])
def test_examples(raw, key):
    assert canonical_tag(raw) == key


@pytest.mark.parametrize("raw", ["", "#", "##", "   ", "#\u200b", "\u200b\u200d", "＃"])
def test_empty_after_cleaning_is_none(raw):
    assert canonical_tag(raw) is None


@pytest.mark.parametrize("raw", [None, 42, b"#bytes", ["#list"]])
def test_non_strings_give_none(raw):
    assert canonical_tag(raw) is None


def test_zero_width_before_the_hash_is_dropped_too():
    assert canonical_tag("\u200b#einBuchfuerKai") == "einbuchfuerkai"


def test_canonical_tag_is_idempotent():
    for raw in ["#einBuchfürKai", FULL_WIDTH, "#Zähler", "İstanbul", "ﬁnance", "#ǅemal"]:
        key = canonical_tag(raw)
        assert canonical_tag(key) == key


def test_alias_table_merges_variants_and_can_be_switched_off():
    table = AliasTable()
    table.add("#einBildfürKai", "einbuchfuerkai")
    assert table.resolve("einbildfuerkai") == "einbuchfuerkai"
    assert canonical_tag("#einBildfuerKai") == "einbildfuerkai"  # not active yet
    set_aliases(table)
    assert canonical_tag("#einBildfuerKai") == "einbuchfuerkai"
    assert canonical_tag("#EINBILDFÜRKAI") == "einbuchfuerkai"
    assert canonical_key("#einBildfuerKai") == "einbildfuerkai"  # the alias-free key stays available
    set_aliases(None)
    assert canonical_tag("#einBildfuerKai") == "einbildfuerkai"  # memo cleared with the table


def test_alias_chains_resolve_and_cycles_stop():
    table = AliasTable({"a1": "b1", "b1": "c1"})
    assert table.resolve("a1") == "c1"
    table.add("c1", "a1")  # a cycle: resolve must still terminate
    assert table.resolve("a1") in {"a1", "b1", "c1"}


def test_alias_table_round_trips_through_json(tmp_path):
    path = tmp_path / "nested" / "aliases.json"
    table = AliasTable({"einbildfuerkai": "einbuchfuerkai", "#Zaehler": "Zähler"})
    table.save(path)
    assert json.loads(path.read_text(encoding="utf-8")) == {"einbildfuerkai": "einbuchfuerkai"}
    loaded = AliasTable.load(path)
    assert loaded == table
    assert dict(loaded.items()) == {"einbildfuerkai": "einbuchfuerkai"}
    loaded.remove("einbildfuerkai")
    assert len(loaded) == 0


def test_alias_table_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('["not", "a", "mapping"]')
    with pytest.raises(ValueError):
        AliasTable.load(bad)
    with pytest.raises(ValueError):
        AliasTable().add("#", "something")


def test_display_form_is_the_most_frequent_spelling():
    forms = DisplayForms()
    for raw in ["#einBuchfürKai", "#einBuchfuerKai", "#einBuchfürKai", "#EINBUCHFUERKAI"]:
        assert forms.add(raw) == "einbuchfuerkai"
    assert forms.display("einbuchfuerkai") == "einBuchfürKai"
    assert forms.spellings("einbuchfuerkai") == {"einBuchfürKai": 2, "einBuchfuerKai": 1, "EINBUCHFUERKAI": 1}
    assert forms.display("unknown") is None
    assert forms.add("#\u200b") is None


def test_display_form_ties_go_to_the_first_spelling_seen():
    forms = DisplayForms()
    forms.add("#RStats")
    forms.add("#rstats")
    assert forms.display("rstats") == "RStats"
    copy = DisplayForms.from_dict(forms.to_dict())
    copy.merge(forms)
    assert copy.spellings("rstats") == {"RStats": 2, "rstats": 2}


def test_ascii_fold_matches_mastodon_folding():
    assert hashtags.ascii_fold("KünstlicheIntelligenz") == "kunstlicheintelligenz"
    assert hashtags.ascii_fold("Qualitätshochschule") == "qualitatshochschule"
    assert hashtags.ascii_fold("WissZeitVG") == "wisszeitvg"
