"""Data stage: read a source in chunks, count and drop bad rows, clean + tokenize, split.

    python -m meli.data.prepare --source PATH --out-dir results/data --config JSON

JSON holds the `dataset`, `preprocess` and `split` config sections (defaults filled by the
schema). Writes `{train,validation,test}.parquet` (title, text, category, label_quality,
language) and `summary.json`, all or nothing.

- Bad rows (empty title, missing category, unparsable line, not UTF-8, title not text, unknown
  language, no token left after cleaning) are dropped and counted per reason, the first ones
  quoted with file and line (`bad_row_examples`); above `dataset.max_bad_row_fraction` of all
  rows read the run stops and writes nothing. When no row is usable the message says why.
- Splits that cannot train or evaluate a classifier (one category, an empty validation/test
  split) stop here, naming the setting that would help (`check_label_sets`). Rows of languages or label qualities the
  config does not select are filtered (counted separately, not bad).
- A source without a language column (the header-less `title,category` CSV) takes the single
  configured language, or, with several, a rough per-title guess (`meli.data.text.guess_language`).
- Splits: the source's own train/validation/test when it has all three and
  `split.use_source_splits`; otherwise stratified by category with `split.seed`. Categories
  with fewer than `split.min_rows_per_category` rows go to train (`train_only`) or are dropped
  (`drop`). `split.subsample` then keeps a stratified fraction of every split.
- Everything is Arrow columns and numpy arrays on category codes: no Python loop per row.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from meli.cli import MeliError, entry_point
from meli.data.fetch import FetchError
from meli.io import UnsupportedSource, atomic_path, format_seconds, local_path, peak_rss_mb, setup_logging, sha256_file
from meli.data.readers import (DEFAULT_MAX_LINE_BYTES, DEFAULT_MAX_SOURCE_BYTES, READER_BAD_REASONS, Chunk, Limits,
                               SourceError, detect_format, read_chunks)
from meli.data import duplicates
from meli.data.text import clean_array, guess_language

log = logging.getLogger("meli.data.prepare")

SPLITS = ("train", "validation", "test")
TRAIN, VALIDATION, TEST, DROPPED = 0, 1, 2, -1
KNOWN_LANGUAGES = ("spanish", "portuguese")
BAD_REASONS = ("unparsable", *READER_BAD_REASONS, "empty_title", "missing_category", "unknown_language", "empty_text")
MAX_EXAMPLES = 10  # bad lines quoted in the log, summary.json and error messages
# Why a reason drops rows, for the message when no row is usable.
EXPLAIN = {
    "unparsable": "lines that do not parse as the format",
    "invalid_utf8": "rows that are not UTF-8 (a latin-1 export? convert with: iconv -f latin1 -t utf-8)",
    "title_not_text": "titles that are numbers or lists, not text",
    "empty_title": "empty titles",
    "missing_category": "rows without a category (is the category column empty?)",
    "unknown_language": "languages other than spanish/portuguese",
    "empty_text": "titles with no word left after cleaning (see preprocess)",
    "language_not_selected": "rows of languages not in dataset.languages",
    "label_quality_not_selected": "rows of label qualities not in dataset.label_quality",
}
FILTER_REASONS = ("language_not_selected", "label_quality_not_selected")
OUTPUT_COLUMNS = ("title", "text", "category", "label_quality", "language")
QUANTILES = (0.5, 0.9, 0.95, 0.99, 1.0)


class PrepareError(MeliError, RuntimeError):
    """The source cannot become a dataset (too many bad rows, nothing left, bad checksum)."""


# ----------------------------------------------------------------------------- reading + cleaning


def _blank(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), True)


def process_chunk(table: pa.Table, dataset: Mapping, preprocess: Mapping, has_language: bool) -> tuple[pa.Table, dict[str, int]]:
    """Drop bad/unselected rows of one chunk (counted per reason) and add `text` + `n_tokens`."""
    counts: dict[str, int] = {}
    selected_languages = list(dataset["languages"])

    def drop(name: str, mask: pa.Array) -> None:
        nonlocal table
        n = pc.sum(mask).as_py() or 0
        counts[name] = counts.get(name, 0) + n
        if n:
            table = table.filter(pc.invert(mask))

    drop("empty_title", _blank(table["title"]))
    drop("missing_category", _blank(table["category"]))
    if not has_language:
        language = (pa.array([selected_languages[0]] * len(table), pa.string()) if len(selected_languages) == 1
                    else guess_language(table["title"]))
        table = table.set_column(table.schema.get_field_index("language"), "language", language)
    language = pc.utf8_lower(pc.utf8_trim_whitespace(table["language"]))
    table = table.set_column(table.schema.get_field_index("language"), "language", language)
    drop("unknown_language", pc.invert(pc.fill_null(pc.is_in(table["language"], pa.array(KNOWN_LANGUAGES)), False)))
    drop("language_not_selected", pc.invert(pc.is_in(table["language"], pa.array(selected_languages))))

    quality = pc.fill_null(pc.utf8_lower(pc.utf8_trim_whitespace(table["label_quality"])), "unknown")
    quality = pc.if_else(pc.equal(quality, ""), "unknown", quality)
    table = table.set_column(table.schema.get_field_index("label_quality"), "label_quality", quality)
    keep_quality = pa.array(list(dataset["label_quality"]) + ["unknown"])
    drop("label_quality_not_selected", pc.invert(pc.is_in(table["label_quality"], keep_quality)))

    cleaned = clean_array(table["title"], preprocess, table["language"])
    table = table.append_column("text", cleaned.text).append_column("n_tokens", pa.array(cleaned.n_tokens, pa.int32()))
    drop("empty_text", pc.equal(table["n_tokens"], 0))
    table = table.set_column(table.schema.get_field_index("category"), "category",
                             pc.utf8_trim_whitespace(table["category"]))
    # Low-cardinality columns as dictionaries: 20M rows stay small in memory.
    for name in ("category", "label_quality", "language", "split"):
        table = table.set_column(table.schema.get_field_index(name), name, pc.dictionary_encode(table[name]))
    return table, counts


def _processed(chunks: Iterator[Chunk], dataset: Mapping, preprocess: Mapping,
               threads: int) -> Iterator[tuple[Chunk, pa.Table, dict[str, int]]]:
    """process_chunk over the chunks in source order, ``threads`` at a time (Arrow kernels
    release the GIL); at most threads + 1 chunks are in flight, which bounds memory."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque = deque()
        for chunk in chunks:
            has_language = chunk.table["language"].null_count < len(chunk.table)
            pending.append((chunk, pool.submit(process_chunk, chunk.table, dataset, preprocess, has_language)))
            if len(pending) > threads:
                done, future = pending.popleft()
                yield (done, *future.result())
        while pending:
            done, future = pending.popleft()
            yield (done, *future.result())


def read_source(source: Path, cfg: Mapping, threads: int = 1,
                source_splits: set[str] | None = None) -> tuple[pa.Table, dict[str, int], int, str, list[str]]:
    """All kept rows of ``source`` (chunked Arrow table), drop counts, rows read, format, and
    where the first bad lines are (file, line, why). ``source_splits`` collects the splits the
    source declares (course member names, a split column), kept rows or not."""
    dataset, preprocess = cfg["dataset"], cfg["preprocess"]
    fmt = detect_format(source) if dataset.get("format", "auto") == "auto" else dataset["format"]
    chunk_rows = preprocess.get("chunk_rows", 500_000)
    log.info("reading %s as %s in chunks of %s rows, %d thread(s)", source, fmt, f"{chunk_rows:,}", threads)
    dropped = dict.fromkeys(BAD_REASONS + FILTER_REASONS, 0)
    parts: list[pa.Table] = []
    rows_read = kept = 0
    start = time.monotonic()
    limits = Limits(dataset.get("max_line_bytes", DEFAULT_MAX_LINE_BYTES),
                    dataset.get("max_source_bytes", DEFAULT_MAX_SOURCE_BYTES))
    chunks = read_chunks(source, fmt, chunk_rows, tuple(dataset["languages"]), limits)
    examples: list[str] = []
    source_splits = set() if source_splits is None else source_splits
    for chunk, table, counts in _processed(chunks, dataset, preprocess, threads):
        source_splits.update(chunk.splits)
        source_splits.update(v for v in pc.unique(chunk.table["split"]).to_pylist() if v in SPLITS)
        rows_read += chunk.rows_read
        dropped["unparsable"] += chunk.unparsable
        for reason, n in [*chunk.bad.items(), *counts.items()]:
            dropped[reason] += n
        for example in chunk.examples[:MAX_EXAMPLES - len(examples)]:
            log.warning("skipped %s", example)
            examples.append(example)
        if len(table):
            parts.append(table)
        kept += len(table)
        elapsed = time.monotonic() - start
        eta = elapsed * (1 - chunk.progress) / chunk.progress if chunk.progress else float("nan")
        log.info("read %s rows (%s kept), %s of the source, %s rows/s, elapsed %s, ETA %s",
                 f"{rows_read:,}", f"{kept:,}", f"{100 * chunk.progress:.1f}%" if chunk.progress is not None else "?",
                 f"{rows_read / max(elapsed, 1e-9):,.0f}", format_seconds(elapsed), format_seconds(eta))
    if not parts:
        raise PrepareError(_no_usable_rows(source, fmt, dataset, rows_read, dropped, examples))
    table = pa.concat_tables(parts, promote_options="permissive").unify_dictionaries()
    return table, dropped, rows_read, fmt, examples


def _format_hint(source: Path, fmt: str, dataset: Mapping) -> str:
    """' (dataset.format: X, but the file looks like Y ...)' when a forced format disagrees with the file."""
    if dataset.get("format", "auto") == "auto":
        return ""
    try:
        looks = detect_format(source)
    except (SourceError, OSError):
        return ""
    return "" if looks == fmt else f"; dataset.format is {fmt}, but the file looks like {looks}: try format: auto"


def _no_usable_rows(source: Path, fmt: str, dataset: Mapping, rows_read: int, dropped: Mapping[str, int],
                    examples: list[str]) -> str:
    """Why not a single row survived, in words: what was read, what dropped it, the first bad lines."""
    if rows_read == 0:
        why = "the file has no data rows (only a header?)"
    else:
        reasons = sorted(_nonzero(dropped).items(), key=lambda kv: -kv[1])
        why = f"all {rows_read:,} rows read were dropped: " + "; ".join(
            f"{n:,} {EXPLAIN.get(r, r)}" for r, n in reasons)
    where = "".join(f"\n  {e}" for e in examples[:MAX_EXAMPLES])
    return f"{source} (read as {fmt}): no usable rows: {why}{_format_hint(source, fmt, dataset)}{where}"


def _nonzero(counts: Mapping[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


def check_bad_rows(dropped: Mapping[str, int], rows_read: int, max_fraction: float, source: object,
                   examples: list[str] | None = None) -> float:
    bad = sum(dropped[r] for r in BAD_REASONS)
    fraction = bad / max(rows_read, 1)
    if fraction > max_fraction:
        where = "".join(f"\n  {e}" for e in (examples or [])[:MAX_EXAMPLES])
        raise PrepareError(
            f"{source}: {bad:,} of {rows_read:,} rows are bad ({100 * fraction:.2f}%: "
            f"{ {r: dropped[r] for r in BAD_REASONS if dropped[r]} }), over dataset.max_bad_row_fraction="
            f"{max_fraction}; fix the source or raise the threshold{where}"
        )
    return fraction


# ----------------------------------------------------------------------------- splitting


def codes_of(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """int32 codes and their values for a dictionary column whose chunks share one dictionary."""
    if not column.num_chunks:
        return np.zeros(0, np.int32), []
    dictionary = column.chunk(0).dictionary
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in column.chunks]).astype(np.int32)
    return codes, dictionary.to_pylist()


def random_ranks(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each row's position in a random order of the rows sharing its key (0-based)."""
    n = len(keys)
    order = np.lexsort((rng.random(n), keys))
    sorted_keys = keys[order]
    group_start = np.r_[0, np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1]
    starts = np.repeat(group_start, np.diff(np.r_[group_start, n]))
    ranks = np.empty(n, np.int64)
    ranks[order] = np.arange(n) - starts
    return ranks


def _stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """floor(x + u): unbiased, so many small categories still sum to the requested fraction."""
    return np.floor(x + rng.random(len(x))).astype(np.int64)


def stratified_split(codes: np.ndarray, validation_fraction: float, test_fraction: float, seed: int,
                     min_rows: int = 3, rare_policy: str = "train_only") -> tuple[np.ndarray, np.ndarray]:
    """Assign each row to TRAIN/VALIDATION/TEST (or DROPPED), stratified by category code.

    Per category, validation and test get its size times their fraction (stochastically
    rounded) and train keeps at least one row. Categories with fewer than ``min_rows`` rows are
    rare: all in train (``train_only``) or DROPPED (``drop``). Returns (assignment int8, rare mask
    per code).
    """
    rng = np.random.default_rng(seed)
    counts = np.bincount(codes, minlength=(codes.max() + 1) if len(codes) else 0)
    n_test = _stochastic_round(counts * test_fraction, rng)
    n_val = _stochastic_round(counts * validation_fraction, rng)
    over = np.maximum(n_test + n_val - (counts - 1), 0)  # keep one row for train
    cut = np.minimum(over, n_val)
    n_val -= cut
    n_test -= over - cut
    rare = (counts > 0) & (counts < min_rows)
    n_test[rare] = n_val[rare] = 0
    ranks = random_ranks(codes, rng)
    assign = np.full(len(codes), TRAIN, np.int8)
    assign[ranks < n_test[codes]] = TEST
    assign[(ranks >= n_test[codes]) & (ranks < (n_test + n_val)[codes])] = VALIDATION
    if rare_policy == "drop":
        assign[rare[codes]] = DROPPED
    elif rare_policy != "train_only":
        raise ValueError(f"split.rare_category_policy: unknown policy {rare_policy!r} (train_only or drop)")
    return assign, rare


def stratified_subsample(codes: np.ndarray, assign: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Keep ``fraction`` of each (split, category) group, at least one row; returns the new assignment."""
    if fraction >= 1.0:
        return assign
    rng = np.random.default_rng(seed + 1)  # independent of the split's draws
    keys = (assign.astype(np.int64) + 1) * (int(codes.max()) + 1) + codes
    _, group, sizes = np.unique(keys, return_inverse=True, return_counts=True)
    quota = np.maximum(_stochastic_round(sizes * fraction, rng), 1)
    keep = random_ranks(group, rng) < quota[group]
    return np.where(keep & (assign != DROPPED), assign, DROPPED).astype(np.int8)


def source_assignment(column: pa.ChunkedArray, declared: set[str] | frozenset = frozenset(),
                      source: object = "the source", dropped: Mapping[str, int] | None = None) -> np.ndarray | None:
    """The source's own split per row when every row has one of train/validation/test and all
    three occur; None otherwise (the rows are then split here).

    A split the source declares (``declared``: a course member, values of its split column) but
    whose rows were all dropped is an error, never a silent re-split of what is left."""
    if column.null_count:
        return None
    codes, values = codes_of(column)
    if not set(values) <= set(SPLITS):
        return None
    mapping = np.array([SPLITS.index(v) for v in values], np.int8)
    assign = mapping[codes]
    present = {SPLITS[i] for i in np.unique(assign)}
    vanished = sorted(set(declared) & set(SPLITS) - present, key=SPLITS.index)
    if vanished and set(declared) >= set(SPLITS):
        why = ", ".join(f"{n:,} {r}" for r, n in sorted(_nonzero(dropped or {}).items(), key=lambda kv: -kv[1]))
        raise PrepareError(
            f"{source}: the source's {'/'.join(vanished)} split has no usable row left ({why or 'no rows'}); "
            "refusing to re-split the other splits silently. Fix the source, or set split.use_source_splits: false "
            "to split all usable rows here")
    if len(present) < len(SPLITS):
        return None
    return assign


def check_label_sets(codes: np.ndarray, categories: list[str], assign: np.ndarray, rare: np.ndarray,
                     split_cfg: Mapping, splits_from: str, source: object) -> None:
    """Stop here, in the data stage, when the splits cannot train or evaluate a classifier: one
    category only (every model is trivially "perfect", TF-IDF fails), or an empty split (every
    category too rare to stratify); the message says which setting would help."""
    present = np.unique(codes)
    if len(present) == 1:
        raise PrepareError(
            f"{source}: every usable row has the same category ({categories[present[0]]!r}, {len(codes):,} rows): "
            "there is nothing to classify. Is the category column the right one? dataset.languages and "
            "dataset.label_quality may also have filtered the other categories out.")
    min_rows, policy = split_cfg["min_rows_per_category"], split_cfg["rare_category_policy"]
    train_categories = np.unique(codes[assign == TRAIN])
    empty = [name for index, name in enumerate(SPLITS) if not (assign == index).any()]
    if not empty and len(train_categories) >= 2:
        return
    if splits_from == "source":
        raise PrepareError(
            f"{source}: the source's own {'/'.join(empty) or 'train'} split is "
            f"{'empty' if empty else 'a single category'} after filtering; set split.use_source_splits: false "
            "to split the rows here instead")
    sizes = np.bincount(codes, minlength=len(categories))[present]
    if rare[present].all():
        cause = (f"all {len(present)} categories have fewer than split.min_rows_per_category={min_rows} rows "
                 f"(largest: {sizes.max()}), so rare_category_policy={policy} "
                 f"{'puts all their rows in train' if policy == 'train_only' else 'drops them all'}")
        fix = ("use more rows per category (a larger source, split.subsample: 1.0) or lower "
               "split.min_rows_per_category (a category needs 3 rows to reach every split)")
    elif policy == "drop" and len(train_categories) < 2:
        cause = (f"rare_category_policy=drop removed the {int(rare.sum())} categories with fewer than "
                 f"split.min_rows_per_category={min_rows} rows, leaving nothing to tell apart")
        fix = "lower split.min_rows_per_category or use rare_category_policy: train_only"
    else:
        cause = (f"{len(present)} categories of at most {sizes.max()} rows each, with validation_fraction="
                 f"{split_cfg['validation_fraction']}, test_fraction={split_cfg['test_fraction']} and "
                 f"subsample={split_cfg['subsample']}")
        fix = "raise split.validation_fraction / split.test_fraction or split.subsample, or use more rows"
    what = f"the {' and '.join(empty)} split{'s are' if len(empty) > 1 else ' is'} empty" if empty \
        else f"train has {len(train_categories)} category"
    raise PrepareError(f"{source}: {what}: {cause}. {fix[0].upper()}{fix[1:]}.")


# ----------------------------------------------------------------------------- the stage


def source_fingerprint(source: Path) -> dict[str, Any]:
    files = sorted(p for p in source.iterdir() if p.is_file()) if source.is_dir() else [source]
    if source.is_dir():
        digest = hashlib.sha256()
        for p in files:
            digest.update(f"{p.name}\0{sha256_file(p)}\n".encode())
        sha = digest.hexdigest()
    else:
        sha = sha256_file(source)
    return {"path": str(source), "bytes": sum(p.stat().st_size for p in files), "sha256": sha}


def _quantiles(n_tokens: np.ndarray) -> dict[str, float]:
    if not len(n_tokens):
        return {}
    values = np.quantile(n_tokens, QUANTILES)
    return {("max" if q == 1.0 else f"p{round(q * 100)}"): float(v) for q, v in zip(QUANTILES, values)}


def prepare(source: str | Path, out_dir: str | Path, cfg: Mapping, threads: int = 1) -> dict[str, Any]:
    """Run the data stage; returns the summary written to ``out_dir/summary.json``."""
    start = time.monotonic()
    dataset, split_cfg = cfg["dataset"], cfg["split"]
    path = local_path(source)
    if path is None:
        raise PrepareError(f"{source}: prepare reads local files; download it first (meli.data.fetch)")
    if not path.exists():
        raise PrepareError(f"{path}: no such file or directory")
    fingerprint = source_fingerprint(path)
    expected = (dataset.get("sha256") or "").lower()
    if expected and not path.is_dir() and fingerprint["sha256"] != expected:
        raise PrepareError(f"{path}: sha256 {fingerprint['sha256']} does not match dataset.sha256 {expected}")

    declared: set[str] = set()
    table, dropped, rows_read, fmt, examples = read_source(path, cfg, threads, declared)
    hint = _format_hint(path, fmt, dataset)
    bad_fraction = check_bad_rows(dropped, rows_read, dataset["max_bad_row_fraction"], path,
                                  examples + ([hint.lstrip("; ")] if hint else []))
    codes, categories = codes_of(table["category"])

    assign = (source_assignment(table["split"], declared, path, dropped) if split_cfg["use_source_splits"]
              else None)
    splits_from = "source" if assign is not None else "stratified"
    rare = np.zeros(len(categories), bool)
    keys = {"exact": duplicates.hash_column(table["title"]), "cleaned": duplicates.hash_column(table["text"])}
    if assign is None:
        def split(category_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return stratified_split(category_codes, split_cfg["validation_fraction"], split_cfg["test_fraction"],
                                    split_cfg["seed"], split_cfg["min_rows_per_category"],
                                    split_cfg["rare_category_policy"])

        together = split_cfg.get("keep_duplicates_together", "none")
        if together == "none":
            assign, rare = split(codes)
        else:  # every copy of a title (raw, or as cleaned) in one split, stratified by category
            assign, rare = duplicates.group_split(keys[together], codes, split)
            splits_from = f"stratified, {together} duplicates kept together"
    rare_rows = int(rare[codes].sum())
    if split_cfg["rare_category_policy"] == "drop" and splits_from == "stratified":
        dropped["rare_category"] = rare_rows
    before_subsample = int((assign != DROPPED).sum())
    assign = stratified_subsample(codes, assign, split_cfg["subsample"], split_cfg["seed"])
    log.info("splits from %s; %s rows before subsample, %s after", splits_from,
             f"{before_subsample:,}", f"{int((assign != DROPPED).sum()):,}")

    check_label_sets(codes, categories, assign, rare, split_cfg, splits_from, path)
    dupes = {kind: duplicates.count(k, assign, codes) for kind, k in keys.items()}
    del keys
    for kind, d in dupes.items():
        log.log(logging.WARNING if d["test_share_seen"] > 0.05 else logging.INFO,
                "%s duplicates: %s of %s test rows (%.1f%%) repeat a train/validation title, %s validation rows "
                "repeat a train title; within splits %s; %s titles appear with conflicting categories (%s rows)%s",
                kind, f"{d['test_in_train_or_validation']:,}", f"{int((assign == TEST).sum()):,}",
                100 * d["test_share_seen"], f"{d['validation_in_train']:,}", d["within"],
                f"{d['conflicting_categories']['titles']:,}", f"{d['conflicting_categories']['rows']:,}",
                "; test scores partly measure memory: consider split.keep_duplicates_together"
                if d["test_share_seen"] > 0.05 and splits_from == "stratified" else "")

    n_tokens = np.concatenate([c.to_numpy() for c in table["n_tokens"].chunks])
    summary: dict[str, Any] = {
        "source": {**fingerprint, "format": fmt},
        "dataset": {"languages": list(dataset["languages"]),
                    "label_quality": list(dataset["label_quality"])},
        "preprocess": dict(cfg["preprocess"]),
        "split": {"from": splits_from, **dict(split_cfg)},
        "rows": {},
        "categories": {"count": 0},
        "label_quality": {},
        "language": {},
        "token_length_quantiles": {},
        "rows_read": rows_read,
        "dropped": dropped,
        "bad_rows": sum(dropped[r] for r in BAD_REASONS),
        "bad_row_fraction": bad_fraction,
        "bad_row_examples": examples,
        "duplicates": dupes,
        "rare_categories": {"policy": split_cfg["rare_category_policy"], "applied": splits_from == "stratified",
                            "min_rows": split_cfg["min_rows_per_category"], "count": int(rare.sum()),
                            "rows": rare_rows},
    }
    out_dir = Path(out_dir)
    seen: set[int] = set()
    with contextlib.ExitStack() as stack:  # every file renamed into place only if all succeed
        for index, name in enumerate(SPLITS):
            mask = assign == index
            tmp = stack.enter_context(atomic_path(out_dir / f"{name}.parquet"))
            counts = write_split(table, mask, tmp)
            split_codes = np.unique(codes[mask])
            seen.update(split_codes.tolist())
            summary["rows"][name] = int(mask.sum())
            summary["categories"][name] = int(len(split_codes))
            summary["label_quality"][name] = counts["label_quality"]
            summary["language"][name] = counts["language"]
            summary["token_length_quantiles"][name] = _quantiles(n_tokens[mask])
            log.info("%s: %s rows, %d categories", name, f"{summary['rows'][name]:,}", len(split_codes))
        summary["rows"]["total"] = sum(summary["rows"][s] for s in SPLITS)
        summary["categories"]["count"] = len(seen)
        elapsed = time.monotonic() - start
        summary["elapsed_s"] = round(elapsed, 3)
        summary["rows_per_s"] = round(rows_read / max(elapsed, 1e-9), 1)
        summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
        tmp = stack.enter_context(atomic_path(out_dir / "summary.json"))
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    log.info("dropped: %s; %s rows/s, peak RSS %.0f MB", _nonzero(dropped), f"{summary['rows_per_s']:,.0f}",
             summary["peak_rss_mb"])
    return summary


def write_split(table: pa.Table, mask: np.ndarray, path: Path) -> dict[str, dict[str, int]]:
    """Stream the rows of ``table`` where ``mask`` holds to Parquet, one source chunk at a time
    (no second full copy of the split in memory); returns label_quality and language counts."""
    schema = pa.schema([(c, pa.string()) for c in OUTPUT_COLUMNS])
    counts: dict[str, dict[str, int]] = {"label_quality": {}, "language": {}}
    offset = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in table.select(list(OUTPUT_COLUMNS)).to_batches():
            part = batch.filter(pa.array(mask[offset:offset + batch.num_rows]))
            offset += batch.num_rows
            if part.num_rows:
                writer.write_batch(pa.record_batch([part[c].cast(pa.string()) for c in OUTPUT_COLUMNS], schema=schema))
                for column, tally in counts.items():
                    for value, n in _value_counts(part[column]).items():
                        tally[value] = tally.get(value, 0) + n
    return counts


def _value_counts(column: pa.Array) -> dict[str, int]:
    counts = pc.value_counts(column)
    return {v.as_py(): c.as_py() for v, c in zip(counts.field("values"), counts.field("counts"))}


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="local file or directory (file:// URLs too)")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--config", required=True, help="JSON with the dataset, preprocess and split sections")
    parser.add_argument("--threads", type=int, default=1, help="chunks cleaned in parallel (and Arrow's CPU pool)")
    # How much to read at once and at most: not in --config (the rule's params), since they never
    # change the output, and a changed param would redo this stage and everything after it.
    parser.add_argument("--chunk-rows", type=int, help="preprocess.chunk_rows")
    parser.add_argument("--max-line-bytes", type=int, help="dataset.max_line_bytes")
    parser.add_argument("--max-source-bytes", type=int, help="dataset.max_source_bytes")
    args = parser.parse_args(argv)
    setup_logging("meli.data.prepare")
    pa.set_cpu_count(max(args.threads, 1))
    cfg = json.loads(args.config)
    for section, key, value in (("preprocess", "chunk_rows", args.chunk_rows),
                                ("dataset", "max_line_bytes", args.max_line_bytes),
                                ("dataset", "max_source_bytes", args.max_source_bytes)):
        if value is not None:
            cfg[section][key] = value
    try:
        prepare(args.source, args.out_dir, cfg, max(args.threads, 1))
    except (PrepareError, SourceError, FetchError, UnsupportedSource) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
