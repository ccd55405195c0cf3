"""Title cleaning and tokenization, vectorized with Arrow compute kernels (no per-row Python).

The same function cleans the 20M-row training set chunk by chunk and the handful of titles that
`meli.predict` classifies, so inference sees text exactly as training did. Steps, each switchable
in the `preprocess` config section: lowercase, strip accents (NFKD + drop combining marks), turn
punctuation into spaces, turn digits into spaces, split on whitespace, drop stopwords of the
row's language and tokens shorter than `min_token_length`. Tokens are joined by single spaces.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Mapping, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from meli.data.stopwords import STOPWORDS

DEFAULTS: dict = {
    "lowercase": True,
    "strip_accents": True,
    "strip_punctuation": True,
    "strip_numbers": False,
    "remove_stopwords": True,
    "min_token_length": 2,
}

# Anything that is not a letter, combining mark, digit or whitespace counts as punctuation.
_PUNCTUATION = r"[^\p{L}\p{M}\p{N}\s]+"


class Cleaned(NamedTuple):
    text: pa.StringArray  # tokens joined by single spaces ("" when nothing is left)
    n_tokens: np.ndarray  # int64 tokens per row


def _options(cfg: Mapping | None) -> dict:
    return {**DEFAULTS, **{k: v for k, v in (cfg or {}).items() if k in DEFAULTS}}


def normalize(titles: pa.Array, cfg: Mapping | None = None) -> pa.Array:
    """Lowercase / strip accents / punctuation / digits (as configured); nulls become ""."""
    opt = _options(cfg)
    text = pc.fill_null(titles.cast(pa.string()), "")
    if opt["lowercase"]:
        text = pc.utf8_lower(text)
    if opt["strip_accents"]:
        text = _strip_accents(text)
    if opt["strip_punctuation"]:
        text = pc.replace_substring_regex(text, _PUNCTUATION, " ")
    if opt["strip_numbers"]:
        text = pc.replace_substring_regex(text, r"\p{N}+", " ")
    return text


def _strip_accents(text: pa.Array) -> pa.Array:
    """NFKD, then drop combining marks; only the non-ASCII titles (a minority) pay for it."""
    non_ascii = pc.invert(pc.string_is_ascii(text))
    if not pc.any(non_ascii).as_py():
        return text
    stripped = pc.replace_substring_regex(pc.utf8_normalize(pc.filter(text, non_ascii), "NFKD"), r"\p{Mn}+", "")
    return pc.replace_with_mask(text, non_ascii, stripped)


@lru_cache(maxsize=None)
def stopword_set(language: str, lowercase: bool, strip_accents: bool) -> pa.Array:
    """The language's stopwords normalised like titles (so "está" matches "esta" when accents go)."""
    words = pa.array(sorted(STOPWORDS.get(language, ())), pa.string())
    opt = {**DEFAULTS, "lowercase": True, "strip_accents": strip_accents, "strip_punctuation": False}
    return pc.unique(normalize(words, opt))


def clean_array(titles: pa.Array | pa.ChunkedArray, cfg: Mapping | None, languages: pa.Array | str) -> Cleaned:
    """Clean a column of titles; ``languages`` is one language for all rows or one per row."""
    opt = _options(cfg)
    if isinstance(titles, pa.ChunkedArray):
        titles = titles.combine_chunks()
    if isinstance(languages, pa.ChunkedArray):
        languages = languages.combine_chunks()
    n = len(titles)
    # Punctuation stripping turns every non-ASCII space into " ", so the cheaper ASCII split is exact.
    split = pc.ascii_split_whitespace if opt["strip_punctuation"] else pc.utf8_split_whitespace
    tokens = split(normalize(titles, opt))
    flat = pc.list_flatten(tokens)
    parents = pc.list_parent_indices(tokens)
    keep = pc.greater_equal(pc.utf8_length(flat), opt["min_token_length"])
    if opt["remove_stopwords"]:
        keep = pc.and_(keep, pc.invert(_is_stopword(flat, parents, languages, opt)))
    kept = pc.filter(flat, keep)
    counts = np.bincount(pc.filter(parents, keep).to_numpy(), minlength=n).astype(np.int64)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    text = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), kept), " ")
    return Cleaned(text, counts)


def _is_stopword(flat: pa.Array, parents: pa.Array, languages: pa.Array | str, opt: dict) -> pa.Array:
    # Compared case-insensitively even when titles keep their case.
    words = flat if opt["lowercase"] else pc.utf8_lower(flat)
    sets = {lang: stopword_set(lang, True, opt["strip_accents"]) for lang in STOPWORDS}
    if isinstance(languages, str):
        if languages not in sets:
            return pc.equal(pc.utf8_length(flat), -1)  # all False: no list for this language
        return pc.is_in(words, value_set=sets[languages])
    token_language = pc.take(languages, parents)
    mask = None
    for lang, stop in sets.items():
        hit = pc.and_(pc.equal(token_language, lang), pc.is_in(words, value_set=stop))
        mask = hit if mask is None else pc.or_(mask, hit)
    return pc.fill_null(mask, False)


def clean_titles(
    titles: Iterable[str | None], cfg: Mapping | None = None, language: str | None = "spanish"
) -> list[str]:
    """Clean a few raw titles exactly like the data stage does (used by predict).

    ``language=None`` guesses it per title (a model trained on Spanish and Portuguese).
    """
    array = pa.array(list(titles), pa.string())
    return clean_array(array, cfg, guess_language(array) if language is None else language).text.to_pylist()


def cleaning_for(summary: Mapping | None) -> tuple[Mapping | None, str | None]:
    """(preprocess config, language) with which the data stage cleaned a dataset, from its
    summary.json: new titles must be cleaned the same way, stopwords of the same language."""
    if not summary:
        return None, "spanish"
    languages = (summary.get("dataset") or {}).get("languages") or ["spanish"]
    return summary.get("preprocess"), languages[0] if len(languages) == 1 else None


# Words and letters that tell the two languages apart in product titles ("de", "para", "com"
# style function words; ã/õ/ç vs ñ). Only used where the source has no language column.
_PORTUGUESE_MARKERS = r"[ãõç]|\b(?:do|da|dos|das|com|em|não|nao|pra|você|voce|ao|às|kit c)\b"
_SPANISH_MARKERS = r"[ñ]|\b(?:del|el|los|las|con|y|en|al|sin)\b"


def guess_language(titles: pa.Array | pa.ChunkedArray) -> pa.Array:
    """"portuguese" where a title has more Portuguese than Spanish markers, else "spanish"."""
    lower = pc.utf8_lower(pc.fill_null(titles, ""))
    pt = pc.count_substring_regex(lower, _PORTUGUESE_MARKERS)
    es = pc.count_substring_regex(lower, _SPANISH_MARKERS)
    return pc.if_else(pc.greater(pt, es), "portuguese", "spanish")


def clean_title_python(title: str | None, cfg: Mapping | None = None, language: str = "spanish") -> str:
    """The same cleaning as `clean_array`, one title at a time in plain Python.

    The readable reference: tests check the vectorized path against it, and the data benchmark
    times it as the naive per-row baseline. Not used in the pipeline.
    """
    import unicodedata

    opt = _options(cfg)
    text = title or ""
    if opt["lowercase"]:
        text = text.lower()
    if opt["strip_accents"]:
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) != "Mn")
    if opt["strip_punctuation"]:
        text = "".join(c if c.isalnum() or c.isspace() or unicodedata.category(c).startswith("M") else " " for c in text)
    if opt["strip_numbers"]:
        text = "".join(" " if unicodedata.category(c).startswith("N") else c for c in text)
    stop = set(stopword_set(language, True, opt["strip_accents"]).to_pylist()) if opt["remove_stopwords"] else set()
    return " ".join(t for t in text.split() if len(t) >= opt["min_token_length"] and t.lower() not in stop)
