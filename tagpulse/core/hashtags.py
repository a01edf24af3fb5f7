"""Hashtag canonicalisation (pure: no I/O except AliasTable.load/save).

One tag, one key, whatever the platform or the spelling:

    raw ─► NFKC ─► drop format chars (Unicode Cf: U+200B, U+00AD, …) ─► strip '#'
        ─► casefold ─► German transliteration (ä→ae, ö→oe, ü→ue, ß→ss) ─► alias table

So '#einBuchfürKai', '#einBuchfuerKai', '#EINBUCHFUERKAI', '#einBuch\u200bfuerKai' and the
full-width '＃ｅｉｎＢｕｃｈｆｕｅｒＫａｉ' are all 'einbuchfuerkai', while '#Zähler' ('zaehler') and
'#Zahler' ('zahler') stay two tags: transliteration keeps the information that ASCII folding
(ä→a) would throw away. Aliases are the user's explicit merges on top ('einbildfuerkai' →
'einbuchfuerkai'); they apply to data ingested after they are set.

`canonical_tag` runs once per hashtag per post on the hot path, so results are memoised per
raw string; the memo is cleared whenever the active alias table changes.
"""
from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

# Transliteration applies after casefold, so only lowercase forms are needed
# (casefold already turns ß and ẞ into 'ss').
_TRANSLIT = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss"})

# Memo sizes: large enough for the working set of a busy stream's tags, small enough that
# hostile unique tags cannot grow memory without bound.
_CACHE_SIZE = 1 << 16
_MAX_ALIAS_HOPS = 8


@lru_cache(maxsize=_CACHE_SIZE)
def canonical_key(raw: str) -> str | None:
    """The canonical key of `raw` WITHOUT the alias table (None if nothing is left).

    This is the key a spelling has on its own; tools that suggest aliases need it.
    """
    if raw.isascii():
        # Fast path: NFKC, Cf removal and transliteration are no-ops on ASCII, and
        # casefold equals lower. Most tags on every platform take this branch.
        key = raw.strip().lstrip("#").lower()
        return key or None
    text = unicodedata.normalize("NFKC", raw)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").strip().lstrip("#")
    key = text.casefold().translate(_TRANSLIT)
    # A transliterated/casefolded string may decompose differently (e.g. 'İ' → 'i̇');
    # NFC keeps equal-looking keys byte-equal.
    key = unicodedata.normalize("NFC", key).strip()
    return key or None


class AliasTable:
    """Variant canonical key → canonical key, the user's explicit merges.

    Stored as a flat JSON object {"variant": "canonical", …}. Keys and targets are
    canonicalised (without aliases) on the way in, so 'einBildfürKai' and 'einbildfuerkai'
    name the same variant. `resolve` follows chains (a→b→c) a few hops and stops on cycles.
    """

    __slots__ = ("_map",)

    def __init__(self, mapping: dict[str, str] | None = None) -> None:
        self._map: dict[str, str] = {}
        for variant, canonical in (mapping or {}).items():
            self.add(variant, canonical)

    # -- editing
    def add(self, variant: str, canonical: str) -> None:
        v, c = _key_or_error(variant), _key_or_error(canonical)
        if v == c:
            self._map.pop(v, None)
        else:
            self._map[v] = c

    def remove(self, variant: str) -> None:
        key = canonical_key(variant) if isinstance(variant, str) else None
        if key is not None:
            self._map.pop(key, None)

    # -- reading
    def resolve(self, key: str) -> str:
        seen = 0
        target = self._map.get(key)
        while target is not None and seen < _MAX_ALIAS_HOPS:
            key = target
            target = self._map.get(key)
            seen += 1
        return key

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._map.get(key, default)

    def items(self):
        return self._map.items()

    def to_dict(self) -> dict[str, str]:
        return dict(sorted(self._map.items()))

    def __len__(self) -> int:
        return len(self._map)

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AliasTable) and other._map == self._map

    def __repr__(self) -> str:
        return f"AliasTable({self.to_dict()!r})"

    # -- persistence
    @classmethod
    def load(cls, path: str | os.PathLike) -> "AliasTable":
        """Read a table; OSError if unreadable, ValueError if it is not a flat string→string object."""
        with open(path, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"{path}: expected a JSON object mapping variant tags to canonical tags")
        return cls(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename) so a crash never leaves half a table."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".aliases-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_dict(), handle, ensure_ascii=False, indent=2)
                handle.write("\n")
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def _key_or_error(tag: str) -> str:
    key = canonical_key(tag) if isinstance(tag, str) else None
    if key is None:
        raise ValueError(f"{tag!r} is not a usable tag (empty after canonicalisation)")
    return key


# The active table. Module state because canonical_tag is called per hashtag on the hot path
# and threading a table through every adapter would cost more than it buys.
_aliases = AliasTable()


def set_aliases(table: AliasTable | dict | None) -> None:
    """Make `table` the alias table that canonical_tag applies (None: no aliases)."""
    global _aliases
    if table is None:
        table = AliasTable()
    elif isinstance(table, dict):
        table = AliasTable(table)
    _aliases = table
    _canonical_cached.cache_clear()


def get_aliases() -> AliasTable:
    return _aliases


@lru_cache(maxsize=_CACHE_SIZE)
def _canonical_cached(raw: str) -> str | None:
    key = canonical_key(raw)
    if key is None or not len(_aliases):
        return key
    return _aliases.resolve(key)


def canonical_tag(raw: str) -> str | None:
    """The canonical key of a hashtag as written ('#einBuchfürKai' → 'einbuchfuerkai'), None if empty.

    Applies the active alias table (set_aliases). Never raises: a non-string gives None.
    """
    if type(raw) is not str:
        return None
    return _canonical_cached(raw)


def canonical_tags(raws: Iterable[str]) -> list[str]:
    """Canonical keys of `raws`: empty ones dropped, duplicates removed, first appearance kept."""
    out: list[str] = []
    for raw in raws:
        key = canonical_tag(raw)
        if key is not None and key not in out:
            out.append(key)
    return out


def ascii_fold(text: str) -> str:
    """Lossy comparison form: NFKD without combining marks and format chars, casefolded.

    This is how Mastodon servers fold tag names ('KünstlicheIntelligenz' → 'kunstlicheintelligenz');
    adapters use it only to match a folded tag name back to the author's own spelling.
    """
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(ch for ch in decomposed if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf")
    return kept.casefold()


class DisplayForms:
    """Counts the original spellings seen per canonical key; `display(key)` is the most frequent.

    Ties go to the spelling seen first, so the display form is stable while counts are equal.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, Counter] = {}

    def add(self, raw: str, key: str | None = None, count: int = 1) -> str | None:
        """Record one use of spelling `raw` (leading '#' and outer space removed); returns its key."""
        if type(raw) is not str:
            return None
        if key is None:
            key = canonical_tag(raw)
            if key is None:
                return None
        spelling = unicodedata.normalize("NFC", raw.strip().lstrip("#＃"))
        if not spelling:
            return key
        counter = self._counts.get(key)
        if counter is None:
            counter = self._counts[key] = Counter()
        counter[spelling] += count
        return key

    def display(self, key: str) -> str | None:
        counter = self._counts.get(key)
        if not counter:
            return None
        # max() returns the first maximal item, and Counter keeps insertion order.
        return max(counter.items(), key=lambda item: item[1])[0]

    def spellings(self, key: str) -> dict[str, int]:
        return dict(self._counts.get(key, {}))

    def keys(self):
        return self._counts.keys()

    def merge(self, other: "DisplayForms") -> None:
        for key, counter in other._counts.items():
            for spelling, n in counter.items():
                self.add(spelling, key, n)

    def to_dict(self) -> dict[str, dict[str, int]]:
        return {key: dict(counter) for key, counter in self._counts.items()}

    @classmethod
    def from_dict(cls, data: dict[str, dict[str, int]]) -> "DisplayForms":
        forms = cls()
        for key, spellings in data.items():
            for spelling, n in spellings.items():
                forms.add(spelling, key, int(n))
        return forms

    def __len__(self) -> int:
        return len(self._counts)
