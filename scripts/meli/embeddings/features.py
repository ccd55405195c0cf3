"""Vocabulary (train split only) and fixed-width token-id matrices for every split.

    python -m meli.embeddings.features --data-dir results/data --out-dir results/features --config '{...}'

Everything is vectorized with Arrow compute kernels: titles are split on whitespace, flattened,
counted (`value_counts`) or looked up in the vocabulary (`index_in`), and scattered into the
[rows, max_len] matrix with NumPy. Parquet files are read in record batches and the matrices are
written through a memory map, so memory stays bounded by one batch plus the vocabulary.

Outputs (docs/design.md): vocab.tsv, labels.json, {split}_ids.npy, {split}_labels.npy,
stats.json. The [UNK] line of vocab.tsv carries the count of train tokens outside the
vocabulary, so the counts column sums to all train tokens (token coverage is computed from it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meli.cli import MeliError, entry_point
from meli.io import Progress, atomic_path, peak_rss_mb, setup_logging

PAD, UNK = "[PAD]", "[UNK]"
PAD_ID, UNK_ID = 0, 1
SPLITS = ("train", "validation", "test")
DEFAULTS = {"min_count": 2, "max_size": 50000, "max_len": 20}
BATCH_ROWS = 500_000  # rows per Parquet record batch: ~100 MB of Arrow buffers for titles

class FeatureError(MeliError, ValueError):
    """Bad input to the embedding stage; the message names the file (and line or key)."""


class Vocab(Mapping):
    """Token -> id (a read-only mapping) plus the train counts, in id order.

    ``words[0]`` is [PAD], ``words[1]`` is [UNK]; ``counts[1]`` is the number of train tokens that
    map to [UNK].
    """

    def __init__(self, words: list[str], counts: Iterable[int]):
        if words[:2] != [PAD, UNK]:
            raise FeatureError(f"a vocabulary starts with {PAD}, {UNK}; got {words[:2]}")
        self.words = list(words)
        self.counts = np.asarray(list(counts) if not isinstance(counts, np.ndarray) else counts, np.int64)
        self._index = {w: i for i, w in enumerate(self.words)}
        if len(self._index) != len(self.words):
            raise FeatureError("duplicate token in the vocabulary")
        # Words from id 2 on, for Arrow's index_in: a literal "[PAD]" in a title is then [UNK].
        self.lookup = pa.array(self.words[2:], pa.string())

    def to_tsv(self) -> str:
        return "".join(f"{w}\t{c}\n" for w, c in zip(self.words, self.counts.tolist()))

    def __getitem__(self, word: str) -> int:
        return self._index[word]

    def __iter__(self) -> Iterator[str]:
        return iter(self.words)

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, int]) -> Vocab:
        if isinstance(mapping, Vocab):
            return mapping
        words = sorted(mapping, key=mapping.__getitem__)
        if [mapping[w] for w in words] != list(range(len(words))):
            raise FeatureError("vocabulary ids must be 0..n-1")
        return cls(words, np.zeros(len(words), np.int64))


def load_vocab(path: str | os.PathLike) -> Vocab:
    """Read vocab.tsv (``token<TAB>count``; line index = id)."""
    words, counts = [], []
    with open(path, encoding="utf-8", newline="\n") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
                raise FeatureError(f"{path}, line {lineno}: expected 'token<TAB>count', got {line[:80]!r}")
            words.append(parts[0])
            counts.append(int(parts[1]))
    if len(words) < 2:
        raise FeatureError(f"{path}: empty vocabulary (needs at least {PAD} and {UNK})")
    try:
        return Vocab(words, counts)
    except FeatureError as err:
        raise FeatureError(f"{path}: {err}") from None


# --------------------------------------------------------------------------------------------
# Tokens and encoding


def tokenize(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """All tokens of ``texts`` flattened in order, and the number of tokens per title.

    Splits on any whitespace; nulls, empty titles and leading/trailing blanks yield no tokens.
    """
    # Arrow's split gives one "" for an empty string and one per leading/trailing blank.
    lists = pc.utf8_split_whitespace(pc.fill_null(texts.cast(pa.string()), ""))
    flat = lists.flatten()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    row_of = np.repeat(np.arange(len(lists)), np.diff(offsets))
    nonempty = pc.greater(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False)
    if not nonempty.all():
        flat, row_of = flat.filter(pa.array(nonempty)), row_of[nonempty]
    return flat, np.bincount(row_of, minlength=len(lists)).astype(np.int64)


def _as_arrow(texts) -> pa.Array:
    if isinstance(texts, pa.ChunkedArray):
        return texts.combine_chunks()
    if isinstance(texts, pa.Array):
        return texts
    if hasattr(texts, "to_numpy") and not isinstance(texts, np.ndarray):  # pandas Series
        return pa.array(texts.to_numpy(dtype=object), pa.string(), from_pandas=True)
    return pa.array(list(texts), pa.string(), from_pandas=True)


@dataclass
class EncodeCounts:
    """What encoding one batch found, summed over batches for stats.json."""

    rows: int = 0
    tokens: int = 0
    unk_tokens: int = 0
    truncated_rows: int = 0
    empty_rows: int = 0

    def add(self, other: EncodeCounts) -> None:
        for key in vars(self):
            setattr(self, key, getattr(self, key) + getattr(other, key))


def _encode_batch(texts: pa.Array, vocab: Vocab, out: np.ndarray) -> EncodeCounts:
    """Fill ``out`` ([rows, max_len], zeroed) with token ids of ``texts``; return the counts."""
    flat, lengths = tokenize(texts)
    # index_in gives the position among words from id 2 on, null when absent: null -> -1 -> [UNK].
    ids = pc.fill_null(pc.index_in(flat, value_set=vocab.lookup), -1).to_numpy().astype(np.int32) + 2
    max_len = out.shape[1]
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(len(flat)) - np.repeat(starts, lengths)
    keep = pos < max_len
    out[rows[keep], pos[keep]] = ids[keep]
    return EncodeCounts(
        rows=len(lengths),
        tokens=len(flat),
        unk_tokens=int(np.count_nonzero(ids == UNK_ID)),
        truncated_rows=int(np.count_nonzero(lengths > max_len)),
        empty_rows=int(np.count_nonzero(lengths == 0)),
    )


def encode(texts, vocab: Mapping[str, int], max_len: int) -> np.ndarray:
    """int32 [len(texts), max_len] token ids, left aligned, PAD=0, unknown tokens [UNK]=1.

    ``texts`` are cleaned titles (tokens separated by whitespace): a list, pandas Series or
    Arrow array. ``vocab`` is what :func:`load_vocab` returns (any token -> id mapping works).
    """
    vocab = Vocab.from_mapping(vocab)
    arr = _as_arrow(texts)
    out = np.zeros((len(arr), max_len), np.int32)
    _encode_batch(arr, vocab, out)
    return out


# --------------------------------------------------------------------------------------------
# The stage


def _open_split(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise FeatureError(f"{path}: missing (run the data stage first)")
    pf = pq.ParquetFile(path)
    missing = {"text", "category"} - set(pf.schema_arrow.names)
    if missing:
        raise FeatureError(f"{path}: missing column(s) {sorted(missing)}; has {pf.schema_arrow.names}")
    return pf


def _batches(pf: pq.ParquetFile, columns: list[str], path: Path) -> Iterator[pa.RecordBatch]:
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=columns):
        if "category" in columns and batch.column("category").null_count:
            raise FeatureError(f"{path}: {batch.column('category').null_count} row(s) with a null category")
        yield batch


def count_train(pf: pq.ParquetFile, path: Path, logger) -> tuple[pa.Table, list[str]]:
    """Token counts (table token, count) and the sorted categories of the train split."""
    parts, categories = [], set()
    progress = Progress(logger, pf.metadata.num_rows, "counting train tokens")
    for batch in _batches(pf, ["text", "category"], path):
        counts = pc.value_counts(tokenize(batch.column("text"))[0])
        parts.append(pa.table({"token": counts.field("values"), "count": counts.field("counts")}))
        categories.update(pc.unique(batch.column("category").cast(pa.string())).to_pylist())
        progress.update(batch.num_rows)
    logger.info(progress.line())
    if not parts:
        return pa.table({"token": pa.array([], pa.string()), "count": pa.array([], pa.int64())}), []
    table = pa.concat_tables(parts).group_by("token").aggregate([("count", "sum")])
    return table.rename_columns(["token", "count"]), sorted(categories)


def build_vocab(token_counts: pa.Table, min_count: int, max_size: int) -> Vocab:
    """Most frequent tokens with count >= min_count (ties by token), at most max_size, + PAD/UNK."""
    tokens = token_counts.column("token").to_numpy(zero_copy_only=False)
    counts = token_counts.column("count").to_numpy().astype(np.int64)
    special = np.isin(tokens, [PAD, UNK])
    keep = (counts >= min_count) & ~special
    order = np.lexsort((tokens[keep], -counts[keep]))[:max_size]
    words, kept_counts = tokens[keep][order], counts[keep][order]
    unk_count = int(counts.sum() - kept_counts.sum())
    return Vocab([PAD, UNK, *words.tolist()], np.concatenate([[0, unk_count], kept_counts]))


def encode_split(
    pf: pq.ParquetFile, path: Path, vocab: Vocab, categories: pa.Array, max_len: int,
    ids_out: np.ndarray, labels_out: np.ndarray, logger,
) -> tuple[EncodeCounts, dict[str, int]]:
    """Write the split's ids and labels into the (memory-mapped) arrays; return its counts."""
    total, unseen, start = EncodeCounts(), {}, 0
    progress = Progress(logger, pf.metadata.num_rows, f"encoding {path.name}")
    for batch in _batches(pf, ["text", "category"], path):
        n = batch.num_rows
        block = np.zeros((n, max_len), np.int32)
        total.add(_encode_batch(batch.column("text"), vocab, block))
        ids_out[start : start + n] = block
        category = batch.column("category").cast(pa.string())
        label = pc.fill_null(pc.index_in(category, value_set=categories), -1).to_numpy().astype(np.int64)
        labels_out[start : start + n] = label
        if (label < 0).any():
            for row in pc.value_counts(pc.filter(category, pa.array(label < 0))).to_pylist():
                unseen[row["values"]] = unseen.get(row["values"], 0) + row["counts"]
        start += n
        progress.update(n)
    logger.info(progress.line())
    return total, unseen


def split_stats(counts: EncodeCounts, unseen: dict[str, int]) -> dict:
    rows, tokens = counts.rows, counts.tokens
    return {
        "rows": rows,
        "tokens": tokens,
        "mean_tokens_per_title": round(tokens / rows, 3) if rows else 0.0,
        "truncated_share": counts.truncated_rows / rows if rows else 0.0,
        "unk_token_share": counts.unk_tokens / tokens if tokens else 0.0,
        "empty_rows": counts.empty_rows,
        "unseen_category_rows": sum(unseen.values()),
        "unseen_categories": dict(sorted(unseen.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def run(data_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: Mapping, logger) -> dict:
    """The whole stage; every output is written to a temporary file and renamed only at the end."""
    cfg = {**DEFAULTS, **cfg}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise FeatureError(f"vocab config: unknown key(s) {sorted(unknown)}")
    min_count, max_size, max_len = int(cfg["min_count"]), int(cfg["max_size"]), int(cfg["max_len"])
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    started = time.monotonic()
    paths = {s: data_dir / f"{s}.parquet" for s in SPLITS}
    files = {s: _open_split(p) for s, p in paths.items()}  # check every input before any work
    if files["train"].metadata.num_rows == 0:
        raise FeatureError(f"{paths['train']}: no rows")

    token_counts, categories = count_train(files["train"], paths["train"], logger)
    vocab = build_vocab(token_counts, min_count, max_size)
    if len(vocab) <= 2:
        raise FeatureError(
            f"{paths['train']}: empty vocabulary: no token occurs at least min_count={min_count} times"
        )
    logger.info(
        "vocabulary: %d words + %s/%s from %d distinct train tokens (min_count=%d, max_size=%d)",
        len(vocab) - 2, PAD, UNK, token_counts.num_rows, min_count, max_size,
    )
    category_set = pa.array(categories, pa.string())

    stats: dict = {
        "vocab_size": len(vocab),
        "max_len": max_len,
        "min_count": min_count,
        "max_size": max_size,
        "distinct_train_tokens": token_counts.num_rows,
        "train_tokens": int(vocab.counts.sum()),
        "categories": len(categories),
        "splits": {},
    }
    with contextlib.ExitStack() as stack:
        tmp = lambda name: stack.enter_context(atomic_path(out_dir / name))  # noqa: E731
        for split in SPLITS:
            n = files[split].metadata.num_rows
            ids = np.lib.format.open_memmap(tmp(f"{split}_ids.npy"), "w+", np.int32, (n, max_len))
            labels = np.lib.format.open_memmap(tmp(f"{split}_labels.npy"), "w+", np.int64, (n,))
            counts, unseen = encode_split(
                files[split], paths[split], vocab, category_set, max_len, ids, labels, logger
            )
            if counts.rows != n:
                raise FeatureError(f"{paths[split]}: read {counts.rows} rows, metadata says {n}")
            ids.flush(), labels.flush()
            del ids, labels
            stats["splits"][split] = split_stats(counts, unseen)
            if unseen:
                logger.warning(
                    "%s: %d row(s) in %d categor(ies) absent from train get label -1",
                    split, sum(unseen.values()), len(unseen),
                )
        tmp("vocab.tsv").write_text(vocab.to_tsv(), encoding="utf-8")
        tmp("labels.json").write_text(json.dumps({"categories": categories}, indent=2, ensure_ascii=False) + "\n")
        stats["elapsed_s"] = round(time.monotonic() - started, 3)
        stats["peak_rss_mb"] = round(peak_rss_mb(), 1)
        tmp("stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    for split, s in stats["splits"].items():
        logger.info(
            "%s: %d rows, %.2f%% truncated at %d tokens, %.2f%% [UNK] tokens, %d unseen-category rows",
            split, s["rows"], 100 * s["truncated_share"], max_len, 100 * s["unk_token_share"],
            s["unseen_category_rows"],
        )
    logger.info("done in %.1fs, peak RSS %.0f MB", stats["elapsed_s"], stats["peak_rss_mb"])
    return stats


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="directory with {train,validation,test}.parquet")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--config", default="{}", help="the `vocab` config section as JSON")
    args = parser.parse_args(argv)
    logger = setup_logging("meli.embeddings.features")
    try:
        run(args.data_dir, args.out_dir, json.loads(args.config), logger)
    except FeatureError as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
