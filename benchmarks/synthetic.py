"""Synthetic MeLi-2019-shaped data for the scale benchmarks (never used by the workflow itself).

Two generators, both deterministic (same arguments -> same bytes) and vectorised:

* :func:`write_titles_csv` — the official ``train.csv`` format (header ``title,label_quality,
  language,category``; titles with a comma are quoted, as in the real file), any number of rows,
  streamed to disk block by block (peak RSS ~420 MB whatever the row count).
* :func:`write_vectors` — a word2vec text file shaped like SBWCE (1,000,653 x 300).

Rows are generated in fixed blocks of ``BLOCK_ROWS``, each from its own seed, so a file of N rows
is byte-for-byte the first N rows of any larger file with the same seed (1M is a prefix of 4M).

Every row is assembled from byte "pieces" (a word, a separator, the ``,label,language,category``
suffix): a block is one integer array of piece ids turned into bytes by a single gather, which is
what makes ~1M rows/s possible in numpy.

    python benchmarks/synthetic.py csv --rows 1000000 --out bench-out/cache/official-1M.csv.gz
    python benchmarks/synthetic.py vectors --words 1000000 --dim 300 --out bench-out/cache/sbwce.txt.gz
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from meli.io import atomic_path  # noqa: E402

BLOCK_ROWS = 131_072
HEADER = b"title,label_quality,language,category\n"
LANGUAGES = ("spanish", "portuguese")
LABEL_QUALITIES = ("unreliable", "reliable")

# --- Measured shape parameters -------------------------------------------------------------
# Tokens (whitespace-separated) per title, 1..16: histogram of the 38,205 real titles of
# meli2019-es-sample.jsonl.gz (mean 7.78, median 8, p95 11; the official file's first 1,260
# rows agree: mean 7.64, median 8).
TITLE_TOKENS_HIST = np.array(
    [108, 520, 1305, 1961, 2787, 3587, 5221, 7109, 6874, 4780, 2464, 936, 373, 128, 48, 4], dtype=float
)
# Word frequencies. Function words and punctuation ("de", "-", "con", ...) are 10.1% of the
# real tokens, with the counts below. The other words follow a Zipf-Mandelbrot law
# p(rank) ~ (rank + 1)^-1.6, 95% of them drawn from a per-category shifted copy (every category
# has its own frequent words): fitted to the growth of distinct lower-cased words with tokens
# (Heaps' law) in the real titles: 4.8k, 12.5k, 30.4k, 47.0k distinct words in 9k, 37k, 149k,
# 297k tokens; the generator gives 4.9k, 14.8k, 38.4k, 59.5k (rare words are slightly richer).
# Word length: 5.6 characters per token (real 5.4), 50 per title (real 48.7).
FUNCTION_SHARE = 0.10
FUNCTION_COUNTS = np.array([10155, 3607, 2604, 2356, 2230, 2203, 2146, 1175, 1147, 649, 365, 315, 413, 271, 280], float)
WORD_ZIPF, WORD_ZIPF_SHIFT, TOPICAL_SHARE = 1.6, 1.0, 0.95
# Category frequencies ~ rank^-s: s = 0.45 makes 1,260 random rows hit 787 of 1,588 categories,
# which is what the official file's first 1,260 rows do (s=0 would give 870, s=0.8 596).
CATEGORY_ZIPF = 0.45
# Share of tokens that are the first-letter capitalised form (titles are Title Case): 0.85;
# tokens with a digit (model numbers, sizes): 0.16; tokens with an accent: 0.029.
CAPITALISED_SHARE = 0.92
CODE_WORD_SHARE = 0.2  # of vocabulary ranks after the function words: ~0.16 of tokens
# 5.4% of real titles contain a comma (and are then quoted in the CSV): a separator is ", "
# with probability q where 1 - (1 - q)^6.8 separators = 0.054.
COMMA_SEPARATOR_SHARE = 0.0082
# Official train.csv: 1,184,245 reliable of 20,000,000 rows (5.9%), 10M Spanish + 10M
# Portuguese, as published with the challenge data (the raw-head sample the other parameters were measured on has no such column).
RELIABLE_SHARE = 0.059

# The function words of FUNCTION_COUNTS (Spanish as measured; Portuguese equivalents). They
# head each language's vocabulary; the cleaning stage drops most of them as stopwords.
FUNCTION_WORDS = {
    "spanish": ["de", "-", "con", "para", "+", "x", "y", "a", "en", "/", "la", "el", "sin", "por", "del"],
    "portuguese": ["de", "-", "com", "para", "+", "x", "e", "a", "em", "/", "do", "da", "o", "kit", "sem"],
}
_ONSETS = {
    "spanish": "b c d f g l m n p r s t v ch br tr pl gr ll j z ñ cr pr bl fl".split(),
    "portuguese": "b c d f g l m n p r s t v ch br tr pl gr lh nh j z ç cr pr bl x".split(),
    "category": "b c d f g l m n p r s t v ch br tr pl gr k w sh st".split(),
}
_VOWELS = {
    "spanish": (list("aeiou") + list("áéíóú"), [0.25, 0.24, 0.2, 0.2, 0.08] + [0.006] * 5),
    "portuguese": (list("aeiou") + list("ãõêâé"), [0.25, 0.24, 0.2, 0.2, 0.08] + [0.006] * 5),
    "category": (list("aeiou"), [0.25, 0.24, 0.2, 0.2, 0.11]),
}
_CODAS = {"spanish": ["", "n", "s", "r", "l"], "portuguese": ["", "m", "s", "r", "o"], "category": ["", "n", "s", "r"]}
_UNITS = np.array(["w", "gb", "ml", "cm", "kg", "v", "mm", "mah", "hp", "cc", "lts", "m"])


@dataclass(frozen=True)
class Shape:
    """What the generated titles look like; the presets are the two real datasets."""

    categories: int = 1588
    portuguese_share: float = 0.5
    reliable_share: float = RELIABLE_SHARE
    vocab_size: int = 500_000  # words per language (distinct words keep growing with rows)
    seed: int = 0


PRESETS = {
    # train.csv of the challenge: 20M rows, Spanish + Portuguese, 1,588 categories.
    "official": Shape(),
    # The course's Spanish subset: 632 categories, Spanish only.
    "course-es": Shape(categories=632, portuguese_share=0.0),
}


# --- Vocabulary -----------------------------------------------------------------------------
def _pseudo_words(rng: np.random.Generator, n: int, style: str) -> np.ndarray:
    """``n`` pronounceable candidates (1-4 syllables, ~5.4 characters like the real words)."""
    onsets = np.array(["", *_ONSETS[style]])
    onset_p = np.array([2.0] + [3.0 if len(o) == 1 else 1.0 for o in _ONSETS[style]])  # mostly single consonants
    vowels, vowel_p = _VOWELS[style]
    codas = np.array(_CODAS[style])
    coda_p = [0.8] + [0.2 / (len(codas) - 1)] * (len(codas) - 1)
    n_syl = rng.choice(np.arange(1, 5), size=n, p=[0.2, 0.62, 0.16, 0.02])
    words = np.full(n, "", dtype="U16")
    for k in range(4):
        syl = np.strings.add(
            np.strings.add(onsets[rng.choice(len(onsets), n, p=onset_p / onset_p.sum())], np.array(vowels)[rng.choice(len(vowels), n, p=vowel_p)]),
            codas[rng.choice(len(codas), n, p=coda_p)],
        )
        words = np.where(n_syl > k, np.strings.add(words, syl), words)
    return words


def _code_words(rng: np.random.Generator, n: int) -> np.ndarray:
    """Model numbers and sizes: "2", "120", "s21", "bd5298", "1700w"."""
    number = np.floor(np.exp(rng.uniform(0, np.log(5000), n))).astype(np.int64).astype("U8")
    letters = np.array(list("abcdefghijklmnprstvwxz"))
    prefix = np.strings.add(letters[rng.integers(0, len(letters), n)], np.where(rng.random(n) < 0.4, letters[rng.integers(0, len(letters), n)], ""))
    kind = rng.integers(0, 3, n)
    return np.where(
        kind == 0, number, np.where(kind == 1, np.strings.add(prefix, number), np.strings.add(number, _UNITS[rng.integers(0, len(_UNITS), n)]))
    )


def _candidate_stream(seed: int, style: str, block: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 7, sum(map(ord, style)), block])
    n = 65_536
    words = _pseudo_words(rng, n, style)
    if style != "category":
        words = np.where(rng.random(n) < CODE_WORD_SHARE, _code_words(rng, n), words)
    return words


def _unique_prefix(seed: int, style: str, n: int, exclude: list[str] = ()) -> np.ndarray:
    """The first ``n`` distinct words of a seeded candidate stream (prefix-stable in ``n``)."""
    seen = dict.fromkeys(exclude)
    words: list[str] = []
    block = 0
    while len(words) < n:
        for w in _candidate_stream(seed, style, block).tolist():
            if w not in seen:
                seen[w] = None
                words.append(w)
        block += 1
    return np.array(words[:n])


def vocabulary(language: str, size: int, seed: int = 0) -> np.ndarray:
    """Lower-case words of one language, most frequent first (function words, then pseudo-words)."""
    head = FUNCTION_WORDS[language][:size]
    return np.concatenate([np.array(head, dtype="U32"), _unique_prefix(seed, language, size - len(head), head)])


def category_names(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct upper-case names like the real ``ELECTRIC_PRESSURE_WASHERS``."""
    rng = np.random.default_rng([seed, 11])
    parts = _unique_prefix(seed, "category", 3 * n)
    n_parts = rng.choice([1, 2, 3], size=3 * n, p=[0.35, 0.45, 0.2])
    names = parts.copy()
    for k in (1, 2):
        names = np.where(n_parts > k, np.strings.add(np.strings.add(names, "_"), np.roll(parts, k * 7919)), names)
    _, first = np.unique(names, return_index=True)
    return np.strings.upper(names[np.sort(first)[:n]])


# --- Pieces -> bytes ------------------------------------------------------------------------
class _Pieces:
    """A table of byte strings (one blob + offsets); ``render(ids)`` concatenates them."""

    def __init__(self, strings: list[bytes]):
        self.lengths = np.fromiter((len(s) for s in strings), dtype=np.int32, count=len(strings))
        self.starts = (np.cumsum(self.lengths, dtype=np.int64) - self.lengths).astype(np.int32)
        self.blob = np.frombuffer(b"".join(strings), dtype=np.uint8)
        if len(self.blob) >= 2**31:
            raise ValueError("piece table over 2 GB")

    def render(self, ids: np.ndarray) -> bytes:
        """Concatenated bytes of ``ids`` (int32 offsets: keep one call's output under 2 GB)."""
        lengths = self.lengths[ids]
        out_starts = np.cumsum(lengths, dtype=np.int32) - lengths
        # Byte k of the output comes from blob[start(piece) + (k - out_start(piece))].
        src = np.repeat(self.starts[ids] - out_starts, lengths)
        src += np.arange(len(src), dtype=np.int32)
        return self.blob[src].tobytes()


def _encode(words: np.ndarray) -> list[bytes]:
    return [w.encode() for w in words.tolist()]


class TitleGenerator:
    """Blocks of official-format CSV rows for one :class:`Shape`."""

    def __init__(self, shape: Shape):
        self.shape = shape
        v, k = shape.vocab_size, shape.categories
        self.cats = category_names(k, shape.seed)
        strings: list[bytes] = []
        for lang in LANGUAGES:  # piece id = lang * 2v + capitalised * v + word rank
            words = vocabulary(lang, v, shape.seed)
            strings += _encode(words) + _encode(np.strings.capitalize(words))
        self.space, self.comma, self.empty, self.quote = len(strings), len(strings) + 1, len(strings) + 2, len(strings) + 3
        strings += [b" ", b", ", b"", b'"']
        self.suffix0 = len(strings)  # + ((quoted * 2 + reliable) * 2 + lang) * k + category
        for quoted in (b"", b'"'):
            for lq in LABEL_QUALITIES:
                for lang in LANGUAGES:
                    strings += [quoted + f",{lq},{lang},{c}\n".encode() for c in self.cats.tolist()]
        self.pieces = _Pieces(strings)
        rng = np.random.default_rng([shape.seed, 3])
        cat_p = np.arange(1, k + 1, dtype=float) ** -CATEGORY_ZIPF
        self.cat_cdf = np.cumsum(rng.permutation(cat_p / cat_p.sum()))  # frequent ranks, random names
        self.n_function = len(FUNCTION_COUNTS)
        self.n_words = v - self.n_function  # ranks of the non-function words
        self.topic_offset = rng.integers(0, self.n_words, k)
        self.function_cdf = np.cumsum(FUNCTION_COUNTS / FUNCTION_COUNTS.sum())
        self.function_cdf[-1] = 1.0
        self.len_cdf = np.cumsum(TITLE_TOKENS_HIST / TITLE_TOKENS_HIST.sum())
        self.len_cdf[-1] = 1.0

    def _word_ranks(self, u: np.ndarray) -> np.ndarray:
        """Inverse CDF of the continuous law (x + q)^-s on [0, v): ranks 0..v-1 from uniforms."""
        a, q, v = 1.0 - WORD_ZIPF, WORD_ZIPF_SHIFT, self.n_words
        lo, hi = q**a, (v + q) ** a
        return np.minimum((lo - u * (lo - hi)) ** (1.0 / a) - q, v - 1).astype(np.int64)

    def block(self, index: int) -> bytes:
        """Rows ``index * BLOCK_ROWS`` onwards: always a whole block, so its rows never depend on N."""
        s, k, rows = self.shape, self.shape.categories, BLOCK_ROWS
        rng = np.random.default_rng([s.seed, 1, index])
        cat = np.minimum(np.searchsorted(self.cat_cdf, rng.random(rows)), k - 1)
        lang = (rng.random(rows) < s.portuguese_share).astype(np.int64)
        reliable = (rng.random(rows) < s.reliable_share).astype(np.int64)
        ntok = np.searchsorted(self.len_cdf, rng.random(rows)) + 1
        row = np.repeat(np.arange(rows), ntok)
        total = int(ntok.sum())
        rank = self._word_ranks(rng.random(total))
        rank = np.where(rng.random(total) < TOPICAL_SHARE, (rank + self.topic_offset[cat[row]]) % self.n_words, rank)
        word = np.where(
            rng.random(total) < FUNCTION_SHARE,
            np.searchsorted(self.function_cdf, rng.random(total)),
            rank + self.n_function,
        )
        capital = rng.random(total) < CAPITALISED_SHARE
        seps = np.where(rng.random(total) < COMMA_SEPARATOR_SHARE, self.comma, self.space)
        # Per row: [open quote], w1, sep, w2, ..., wn, suffix  ->  2 * ntok + 1 pieces.
        row_start = np.cumsum(2 * ntok + 1) - (2 * ntok + 1)
        pos_in_row = np.arange(total) - np.repeat(np.cumsum(ntok) - ntok, ntok)
        last = pos_in_row == ntok[row] - 1
        quoted = (np.bincount(row[~last], weights=(seps[~last] == self.comma), minlength=rows) > 0).astype(np.int64)
        ids = np.empty(int(row_start[-1] + 2 * ntok[-1] + 1), dtype=np.int64)
        ids[row_start] = np.where(quoted == 1, self.quote, self.empty)
        word_pos = row_start[row] + 1 + 2 * pos_in_row
        ids[word_pos] = (2 * lang[row] + capital) * s.vocab_size + word
        ids[word_pos[~last] + 1] = seps[~last]
        ids[word_pos[last] + 1] = self.suffix0 + ((quoted * 2 + reliable) * 2 + lang) * k + cat
        return self.pieces.render(ids)

    def blocks(self, rows: int) -> Iterator[bytes]:
        """The first ``rows`` rows: whole blocks, the last one cut after its row ``rows % BLOCK_ROWS``."""
        for index, start in enumerate(range(0, rows, BLOCK_ROWS)):
            data = self.block(index)
            if rows - start < BLOCK_ROWS:  # titles never contain a newline: cut after the n-th one
                newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
                data = data[: newlines[rows - start - 1] + 1]
            yield data


@contextlib.contextmanager
def _writer(path: Path, compresslevel: int) -> Iterator[BinaryIO]:
    """Atomic binary writer for ``path``, gzip-compressed when its name ends in .gz."""
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        if path.name.endswith(".gz"):
            # filename="" and mtime=0: no name or time in the gzip header, so bytes are reproducible.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as gz:
                yield gz
        else:
            yield raw


def write_titles_csv(
    path: str | os.PathLike, rows: int, shape: Shape = PRESETS["official"], compresslevel: int = 1
) -> dict:
    """Write ``rows`` official-format rows to ``path`` (gzip when it ends in .gz), atomically."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    path = Path(path)
    t0 = time.perf_counter()
    gen = TitleGenerator(shape)
    with _writer(path, compresslevel) as out:
        out.write(HEADER)
        for chunk in gen.blocks(rows):
            out.write(chunk)
    return {"path": str(path), "rows": rows, "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0}


def write_vectors(
    path: str | os.PathLike, words: int = 1_000_000, dim: int = 300, seed: int = 0, compresslevel: int = 1
) -> dict:
    """An SBWCE-shaped word2vec text file: ``words dim`` header, then ``word v1 ... v_dim`` lines.

    Words are the Spanish generator vocabulary (lower case, accents kept as in SBWCE), so the
    benchmark vocabulary is covered like the real one. Values have 6 decimals like SBWCE; they
    come from a table of 4,096 formatted numbers so formatting 300M floats costs a gather.
    """
    path = Path(path)
    t0 = time.perf_counter()
    vocab = vocabulary("spanish", words, seed)
    rng = np.random.default_rng([seed, 5])
    values = np.round(rng.normal(0, 0.12, 4096), 6)
    strings = [f" {x:.6f}".encode() for x in values] + [b"\n"] + [w.encode() for w in vocab.tolist()]
    pieces, newline, word0 = _Pieces(strings), 4096, 4097
    lines = 16_384
    with _writer(path, compresslevel) as out:
        out.write(f"{words} {dim}\n".encode())
        for b, start in enumerate(range(0, words, lines)):
            n = min(lines, words - start)
            ids = np.empty((n, dim + 2), dtype=np.int64)
            ids[:, 0] = word0 + start + np.arange(n)
            ids[:, 1:-1] = np.random.default_rng([seed, 6, b]).integers(0, 4096, (n, dim))
            ids[:, -1] = newline
            out.write(pieces.render(ids.ravel()))
    return {"path": str(path), "words": words, "dim": dim, "bytes": path.stat().st_size, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    c = sub.add_parser("csv", help="official-format titles CSV")
    c.add_argument("--rows", type=int, required=True)
    c.add_argument("--preset", choices=sorted(PRESETS), default="official")
    c.add_argument("--categories", type=int, help="override the preset's category count")
    c.add_argument("--vocab-size", type=int, help="override the preset's words per language")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--compresslevel", type=int, default=1)
    c.add_argument("--out", required=True)
    v = sub.add_parser("vectors", help="SBWCE-shaped word2vec text vectors")
    v.add_argument("--words", type=int, default=1_000_000)
    v.add_argument("--dim", type=int, default=300)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--compresslevel", type=int, default=1)
    v.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.what == "csv":
        shape = replace(PRESETS[args.preset], seed=args.seed)
        if args.categories:
            shape = replace(shape, categories=args.categories)
        if args.vocab_size:
            shape = replace(shape, vocab_size=args.vocab_size)
        info = write_titles_csv(args.out, args.rows, shape, args.compresslevel)
        rate = f"{info['rows'] / info['seconds']:,.0f} rows/s"
    else:
        info = write_vectors(args.out, args.words, args.dim, args.seed, args.compresslevel)
        rate = f"{info['words'] / info['seconds']:,.0f} lines/s"
    print(f"wrote {info['path']}: {info['bytes'] / 1e6:,.1f} MB in {info['seconds']:.1f} s ({rate})", file=sys.stderr)


if __name__ == "__main__":
    main()
