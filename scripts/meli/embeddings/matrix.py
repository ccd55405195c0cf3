"""One embedding matrix [vocab_size, dim] (float32, row 0 = [PAD] = zeros) per configured embedding.

    python -m meli.embeddings.matrix --vocab results/features/vocab.tsv --source PATH \
        --spec '{"name": ..., "kind": ..., "dim": ...}' --out-dir results/embeddings/NAME

kind: pretrained  ``--source`` is a word2vec-format file: text with a ``count dim`` header or,
                  as GloVe writes it, without one (plain, gzip or bzip2, told apart by their
                  magic bytes), the C binary format
                  (``binary: true``), or a gensim KeyedVectors ``.kv`` file. The file is streamed
                  and only vocabulary words are kept: a line is split at its first space, the word
                  looked up in a dict, and only kept lines are parsed, in chunks, by Arrow's CSV
                  reader (C++, fast_float). Every line's field count is checked (cheaply, by counting spaces);
                  values are parsed, hence checked, for kept words only. With
                  ``normalize_words`` a file word that is not in the vocabulary is matched again
                  lowercased and without accents ("Camión" -> "camion"), as the data stage cleans
                  titles; an exact match always wins.
kind: word2vec |  ``--source`` is train.parquet: gensim is trained on the train split's tokens,
      fasttext    streamed from Parquet. One worker and a fixed seed give the same matrix in
                  every run, whatever PYTHONHASHSEED (gensim 4.4 initialises from the seed; its
                  ``hashfxn``, used when seeding vectors per word, is a stable hash here, not
                  Python's per-process salted ``hash``). tests/test_embeddings.py checks it.

Vocabulary words without a vector get seeded normal noise with the found vectors' standard
deviation (or, with ``oov_init: fasttext`` and FastText vectors, their subword vector); the noise
for a word depends only on the seed and its id. Outputs ``matrix.npy`` and ``coverage.json`` are
written together, atomically: a bad input leaves neither.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import queue
import threading
import time
import unicodedata
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from meli.cli import entry_point
from meli.embeddings.features import PAD_ID, UNK_ID, FeatureError, Vocab, load_vocab
from meli.io import Progress, atomic_path, compression, open_decompressed, peak_rss_mb, setup_logging

KINDS = ("pretrained", "word2vec", "fasttext")
SPEC_DEFAULTS = {
    "source": None,
    "sha256": None,
    "binary": False,
    "epochs": 5,
    "window": 5,
    "min_count": 1,
    "sg": False,
    "seed": 42,
    "workers": 1,
    "oov_init": "random",
    "normalize_words": True,
}
# How a matrix row got its vector (coverage.json counts them).
NONE, NORMALIZED, EXACT, SUBWORD = 0, 1, 2, 3
PARSE_CHUNK = 4096  # kept lines parsed per Arrow call (~10 MB of text at dim 300)


class EmbeddingError(FeatureError):
    """Bad vectors file, spec or vocabulary; the message names the file and line."""


def stable_hash(text: str) -> int:
    """Deterministic replacement for gensim's default ``hashfxn=hash`` (salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def normalize_word(word: str) -> str:
    """Lowercase, NFKD, combining marks dropped: the data stage's lowercase + strip_accents."""
    return "".join(c for c in unicodedata.normalize("NFKD", word.lower()) if not unicodedata.combining(c))


def check_spec(spec: Mapping) -> dict:
    """The spec with defaults filled in; a clear error for a missing, unknown or bad key."""
    name = spec.get("name", "?")
    unknown = set(spec) - set(SPEC_DEFAULTS) - {"name", "kind", "dim"}
    if unknown:
        raise EmbeddingError(f"embeddings.{name}: unknown key(s) {sorted(unknown)}")
    for key in ("name", "kind", "dim"):
        if key not in spec:
            raise EmbeddingError(f"embeddings.{name}: missing key `{key}`")
    spec = {**SPEC_DEFAULTS, **spec}
    if spec["kind"] not in KINDS:
        raise EmbeddingError(f"embeddings.{name}.kind: {spec['kind']!r} is not one of {KINDS}")
    if not isinstance(spec["dim"], int) or spec["dim"] < 1:
        raise EmbeddingError(f"embeddings.{name}.dim: expected a positive integer, got {spec['dim']!r}")
    if spec["oov_init"] not in ("random", "fasttext"):
        raise EmbeddingError(f"embeddings.{name}.oov_init: {spec['oov_init']!r} is not random|fasttext")
    if spec["oov_init"] == "fasttext" and spec["kind"] == "word2vec":
        raise EmbeddingError(f"embeddings.{name}: oov_init: fasttext needs kind: fasttext (word2vec has no subwords)")
    return spec


# --------------------------------------------------------------------------------------------
# Pretrained vectors


class _Collector:
    """Decides which file words fill which vocabulary rows and stores their vectors."""

    def __init__(self, vocab: Vocab, dim: int, normalize: bool):
        self.index = {w.encode("utf-8"): i for i, w in enumerate(vocab.words) if i >= 2}
        self.str_index = {w: i for i, w in enumerate(vocab.words) if i >= 2}
        self.normalize = normalize
        self.matrix = np.zeros((len(vocab), dim), np.float32)
        self.how = np.zeros(len(vocab), np.int8)

    def claim(self, word: bytes) -> int:
        """The row this word fills (and mark it), or -1: exact matches win, first one kept."""
        row = self.index.get(word)
        if row is not None:
            if self.how[row] == EXACT:
                return -1
            self.how[row] = EXACT
            return row
        if self.normalize and (not word.isascii() or word != word.lower()):
            try:
                row = self.str_index.get(normalize_word(word.decode("utf-8")))
            except UnicodeDecodeError:
                return -1
            if row is not None and self.how[row] == NONE:
                self.how[row] = NORMALIZED
                return row
        return -1


class _Prefetched:
    """A binary reader whose blocks are decompressed ahead, in a background thread.

    zlib and bz2 release the GIL while they decompress, so the thread runs on the other core
    while the main thread parses the previous block (an external ``gzip -dc`` pipe would stall
    on its 64 KiB pipe buffer, and GNU gzip inflates ~1.8x slower than zlib). Errors raised by
    the decompressor (truncated or corrupt file) are re-raised in the reading thread.
    """

    _END = object()

    def __init__(self, fh, block: int = 1 << 22, depth: int = 4):
        self._fh, self._block = fh, block
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._buffer, self._pos, self._eof = b"", 0, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="decompress", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self) -> None:
        try:
            while data := self._fh.read(self._block):
                if not self._put(data):
                    return
            self._put(self._END)
        except BaseException as err:  # handed to the reader, which raises it with its context
            self._put(err)

    def _next_block(self) -> bool:
        if self._eof:
            return False
        item = self._queue.get()
        if item is self._END:
            self._eof = True
            return False
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        self._buffer, self._pos = item, 0
        return True

    def read(self, size: int = -1) -> bytes:
        """Exactly ``size`` bytes (fewer only at the end); all the rest with ``size < 0``."""
        parts, wanted = [], size
        while wanted != 0:
            if self._pos >= len(self._buffer) and not self._next_block():
                break
            end = len(self._buffer) if wanted < 0 else min(len(self._buffer), self._pos + wanted)
            parts.append(self._buffer[self._pos:end])
            if wanted > 0:
                wanted -= end - self._pos
            self._pos = end
        return b"".join(parts)

    def readline(self) -> bytes:
        parts = []
        while True:
            if self._pos >= len(self._buffer) and not self._next_block():
                break
            newline = self._buffer.find(b"\n", self._pos)
            end = len(self._buffer) if newline < 0 else newline + 1
            parts.append(self._buffer[self._pos:end])
            self._pos = end
            if newline >= 0:
                break
        return b"".join(parts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._fh.close()


@contextlib.contextmanager
def _open(path: Path) -> Iterator:
    """A binary file object, decompressing gzip/bzip2 (recognised by magic bytes) ahead of the
    parser in a background thread."""
    if compression(path) is None:
        with open(path, "rb") as fh:
            yield fh
        return
    reader = _Prefetched(open_decompressed(path))
    try:
        yield reader
    finally:
        reader.close()


def _lines(fh, block: int = 1 << 22) -> Iterator[bytes]:
    """Lines without their newline, cut from 4 MiB blocks (far fewer calls than readline)."""
    tail = b""
    while data := fh.read(block):
        lines = (tail + data).split(b"\n")
        tail = lines.pop()
        yield from lines
    if tail:
        yield tail


def _read_header(fh, path: Path, dim: int, headerless_ok: bool = False) -> tuple[int | None, bytes | None]:
    """``(count, None)`` after a word2vec header ``count dim``; with ``headerless_ok``, ``(None, line)``
    when line 1 is already a vector (GloVe's text format: a word and ``dim`` numbers, no header)."""
    line = fh.readline()
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        count, file_dim = int(parts[0]), int(parts[1])
        if file_dim != dim:
            raise EmbeddingError(f"{path}, line 1: the vectors have dimension {file_dim}, the config says dim: {dim}")
        return count, None
    if headerless_ok and len(parts) == dim + 1 and _numbers(parts[1:]):
        return None, line
    if headerless_ok and len(parts) > 2 and _numbers(parts[-2:]):
        raise EmbeddingError(f"{path}, line 1: a vector of dimension {len(parts) - 1} without a header (GloVe "
                             f"format?), the config says dim: {dim}")
    raise EmbeddingError(
        f"{path}, line 1: expected a word2vec header 'count dim' or (GloVe text) a word and {dim} values, "
        f"got {line[:60]!r} (gensim binary needs `binary: true`)"
    )


def _numbers(fields: list[bytes]) -> bool:
    try:
        [float(f) for f in fields]
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4)
def _csv_options(dim: int) -> tuple[pcsv.ReadOptions, pcsv.ParseOptions, pcsv.ConvertOptions]:
    """Arrow's CSV reader (fast_float, in C) for space-separated float32 rows; no nulls, no quotes."""
    names = [f"v{i}" for i in range(dim)]
    return (
        pcsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 26),
        pcsv.ParseOptions(delimiter=" ", quote_char=False, escape_char=False),
        pcsv.ConvertOptions(
            column_types={n: pa.float32() for n in names}, null_values=[], strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _parse_rows(chunk: list[tuple[int, int, bytes]], collector: _Collector, path: Path, dim: int) -> None:
    """Parse kept lines (row, lineno, values) in one Arrow call; on failure find the bad line."""
    try:
        table = pcsv.read_csv(pa.BufferReader(b"\n".join(rest for _, _, rest in chunk)), *_csv_options(dim))
        values = np.column_stack([col.to_numpy() for col in table.columns]) if table.num_rows == len(chunk) else None
    except pa.ArrowInvalid:
        values = None
    if values is None:  # slow path: NumPy line by line names the line (or parses what Arrow would not)
        rows = []
        for _, lineno, rest in chunk:
            try:
                rows.append(np.array(rest.split(), dtype=np.float32))
            except ValueError as err:
                raise EmbeddingError(f"{path}, line {lineno}: not a number ({err})") from None
        values = np.stack(rows)
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():  # Arrow and NumPy both parse "nan" and "inf": one such row poisons every model
        _, lineno, rest = chunk[int(np.flatnonzero(~finite)[0])]
        bad = [v for v in rest.split() if not np.isfinite(np.float32(v))][:3]
        raise EmbeddingError(f"{path}, line {lineno}: value(s) {b' '.join(bad).decode(errors='replace')} are not "
                             "finite numbers; fix or drop this line (every vocabulary word's vector must be finite)")
    collector.matrix[[row for row, _, _ in chunk]] = values


def _corrupt(path: Path, err: Exception, lineno: int) -> EmbeddingError:
    where = f", after line {lineno}" if lineno > 1 else ""
    return EmbeddingError(f"{path}{where}: corrupt or truncated file ({err})")


def read_text_vectors(path: Path, collector: _Collector, dim: int, logger: logging.Logger) -> int:
    """Stream a word2vec text file into ``collector``; return the number of vectors in the file."""
    pending: list[tuple[int, int, bytes]] = []
    lineno = first_line = 2  # line 1 is the header ...
    with _open(path) as fh:
        try:
            count, first = _read_header(fh, path, dim, headerless_ok=True)
            lines = _lines(fh)
            if first is not None:  # ... unless the file has none (GloVe): then line 1 is a vector
                lines, first_line = itertools.chain([first.rstrip(b"\n")], lines), 1
                logger.info("%s has no 'count dim' header: reading it as GloVe-style text vectors", path.name)
            lineno = first_line - 1
            progress = Progress(logger, count, f"reading {path.name}")
            for lineno, line in enumerate(lines, first_line):
                line = line.rstrip()  # the trailing blank the C tool writes, a \r
                if line.count(b" ") != dim and len(line.split()) != dim + 1:
                    raise EmbeddingError(
                        f"{path}, line {lineno}: expected a word and {dim} values, got {len(line.split()) - 1}"
                    )
                word, _, rest = line.partition(b" ")
                row = collector.claim(word)
                if row >= 0:
                    pending.append((row, lineno, rest))
                    if len(pending) >= PARSE_CHUNK:
                        _parse_rows(pending, collector, path, dim)
                        pending.clear()
                if lineno % 100_000 == 0:
                    progress.update(100_000)
        except (EOFError, OSError, zlib.error) as err:  # truncated or corrupt compressed file
            raise _corrupt(path, err, lineno) from None
        if pending:
            _parse_rows(pending, collector, path, dim)
        progress.update(lineno - 1 - progress.done, force=True)
    n = lineno - first_line + 1
    if count is not None and n != count:
        raise EmbeddingError(f"{path}: the header announces {count} vectors, the file has {n} (truncated?)")
    return n


def _binary_records(fh, path: Path, dim: int, count: int) -> Iterator[tuple[bytes, bytes]]:
    """(word, raw float32 bytes) of the word2vec C binary format, read in 1 MiB blocks."""
    width = 4 * dim
    buf, pos = b"", 0
    for record in range(1, count + 1):
        while True:
            space = buf.find(b" ", pos)
            if space >= 0 and len(buf) - space - 1 >= width:
                break
            block = fh.read(1 << 20)
            if not block:
                raise EmbeddingError(f"{path}: ends inside vector {record} of {count} (truncated?)")
            buf, pos = buf[pos:] + block, 0
        yield buf[pos:space].lstrip(b"\n"), buf[space + 1 : space + 1 + width]
        pos = space + 1 + width


def read_binary_vectors(path: Path, collector: _Collector, dim: int, logger: logging.Logger) -> int:
    with _open(path) as fh:
        try:
            count, _ = _read_header(fh, path, dim)
            progress = Progress(logger, count, f"reading {path.name}")
            for i, (word, raw) in enumerate(_binary_records(fh, path, dim, count), 1):
                row = collector.claim(word)
                if row >= 0:
                    vector = np.frombuffer(raw, "<f4")
                    if not np.isfinite(vector).all():
                        raise EmbeddingError(f"{path}, vector {i} ({word.decode(errors='replace')!r}): "
                                             "values that are not finite numbers (nan/inf)")
                    collector.matrix[row] = vector
                if i % 100_000 == 0:
                    progress.update(100_000)
        except (EOFError, OSError, zlib.error) as err:
            raise _corrupt(path, err, 0) from None
    return count


def read_keyed_vectors(path: Path, collector: _Collector, dim: int):
    """A gensim KeyedVectors file, memory-mapped; returns it (FastText ones can fill OOV words)."""
    from gensim.models import KeyedVectors

    try:
        kv = KeyedVectors.load(str(path), mmap="r")
    except Exception as err:  # gensim raises pickle/IO errors of many kinds
        raise EmbeddingError(f"{path}: not a gensim KeyedVectors file ({err})") from None
    if kv.vector_size != dim:
        raise EmbeddingError(f"{path}: the vectors have dimension {kv.vector_size}, the config says dim: {dim}")
    for i, key in enumerate(kv.index_to_key):
        row = collector.claim(str(key).encode("utf-8"))
        if row >= 0:
            if not np.isfinite(kv.vectors[i]).all():
                raise EmbeddingError(f"{path}: the vector of {key!r} (index {i}) has values that are not finite "
                                     "(nan/inf)")
            collector.matrix[row] = kv.vectors[i]
    return kv


TEXT_BYTES = frozenset(b"0123456789.eE+-naifNAIF \t\r\n")


def sniff_binary(path: Path, dim: int) -> bool | None:
    """True for the word2vec C binary format, False for text, None when unsure.

    Both start with the text header 'count dim'; after the first word, a text line is ``dim``
    numbers (digits, signs, dots, spaces), while 4-byte floats are raw bytes that almost never
    stay in that set.
    """
    try:
        with _open(path) as fh:
            fh.readline()
            sample = fh.read(max(1 << 12, 64 * dim))
    except (EOFError, OSError, zlib.error):  # corrupt or truncated: the reader says so properly
        return None
    _, space, rest = sample.partition(b" ")
    values = rest.split(b"\n", 1)[0].rstrip(b"\r")
    if not space or not values:
        return None
    if set(values) <= TEXT_BYTES and len(values.split()) == dim:
        return False
    return not set(values) <= TEXT_BYTES or None


# --------------------------------------------------------------------------------------------
# Trained here


class TrainSentences:
    """Re-iterable token lists of train.parquet's `text`, streamed in record batches."""

    def __init__(self, path: Path, batch_rows: int = 100_000):
        self.path, self.batch_rows = path, batch_rows
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise EmbeddingError(f"{path}: no `text` column (has {pf.schema_arrow.names})")
        self.rows = pf.metadata.num_rows

    def __iter__(self) -> Iterator[list[str]]:
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=self.batch_rows, columns=["text"]):
            for text in batch.column("text").to_pylist():
                if text:
                    yield text.split()


def train_vectors(path: Path, spec: Mapping, collector: _Collector, logger: logging.Logger):
    """Train gensim Word2Vec/FastText on the train split; fill ``collector``; return the KeyedVectors."""
    from gensim.models import FastText, Word2Vec

    sentences = TrainSentences(path)
    model_cls = FastText if spec["kind"] == "fasttext" else Word2Vec
    logger.info("training %s on %d titles of %s", model_cls.__name__, sentences.rows, path)
    model = model_cls(
        vector_size=spec["dim"], window=spec["window"], min_count=spec["min_count"], sg=int(spec["sg"]),
        seed=spec["seed"], workers=spec["workers"], epochs=spec["epochs"], hashfxn=stable_hash,
    )
    model.build_vocab(sentences)
    if not model.wv.index_to_key:
        raise EmbeddingError(f"{path}: no token occurs min_count={spec['min_count']} times: nothing to train")
    model.train(sentences, total_examples=model.corpus_count, epochs=spec["epochs"])
    for i, key in enumerate(model.wv.index_to_key):
        row = collector.claim(key.encode("utf-8"))
        if row >= 0:
            collector.matrix[row] = model.wv.vectors[i]
    return model.wv


# --------------------------------------------------------------------------------------------
# The matrix


def _binary(source: Path, spec: Mapping, logger: logging.Logger) -> bool:
    """Whether to read ``source`` as word2vec C binary: what the file is, whatever `binary` says
    (a `.bin` read as text fails on line 2; text read as binary would be silent garbage)."""
    looks_binary = sniff_binary(source, spec["dim"])
    if looks_binary is None or looks_binary == spec["binary"]:
        return spec["binary"]
    logger.warning("%s looks like the word2vec %s format but embeddings.%s.binary is %s: reading it as %s "
                   "(set binary: %s to silence this)", source, "binary" if looks_binary else "text", spec["name"],
                   str(spec["binary"]).lower(), "binary" if looks_binary else "text", str(looks_binary).lower())
    return looks_binary


def _collect(source: Path, spec: Mapping, collector: _Collector, logger: logging.Logger):
    """Feed the spec's vectors into ``collector``: (the gensim KeyedVectors or None, vectors in the source)."""
    dim = spec["dim"]
    if spec["kind"] != "pretrained":
        kv = train_vectors(source, spec, collector, logger)
        return kv, len(kv.index_to_key)
    if source.suffix == ".kv":
        kv = read_keyed_vectors(source, collector, dim)
        return kv, len(kv.index_to_key)
    if _binary(source, spec, logger):
        return None, read_binary_vectors(source, collector, dim, logger)
    return None, read_text_vectors(source, collector, dim, logger)


def _subword_rows(kv, source: Path, vocab, collector: _Collector) -> None:
    """oov_init: fasttext: every real word without a vector gets its FastText subword vector."""
    if not hasattr(kv, "get_vector") or not hasattr(kv, "buckets_word"):
        raise EmbeddingError(f"{source}: oov_init: fasttext needs FastText vectors (kind: fasttext or a FastText .kv)")
    for row in np.flatnonzero(collector.how <= NONE):
        if row > UNK_ID:  # real words only
            collector.matrix[row] = kv.get_vector(vocab.words[row])
            collector.how[row] = SUBWORD


def build(vocab_path: str | os.PathLike, source: str | os.PathLike, spec: Mapping, logger: logging.Logger):
    """(matrix, coverage dict) for one embedding spec; nothing is written."""
    started = time.monotonic()
    spec = check_spec(spec)
    vocab_path, source = Path(vocab_path), Path(source)
    vocab = load_vocab(vocab_path)
    if len(vocab) <= 2:
        raise EmbeddingError(f"{vocab_path}: empty vocabulary (only [PAD] and [UNK])")
    if not source.exists():
        raise EmbeddingError(f"{source}: no such file (embeddings.{spec['name']})")
    if spec["kind"] == "pretrained" and spec["oov_init"] == "fasttext" and source.suffix != ".kv":
        raise EmbeddingError(f"{source}: oov_init: fasttext needs FastText vectors (kind: fasttext or a FastText .kv)")
    dim = spec["dim"]
    collector = _Collector(vocab, dim, normalize=spec["normalize_words"] and spec["kind"] == "pretrained")
    kv, source_vectors = _collect(source, spec, collector, logger)

    matrix, how = collector.matrix, collector.how
    found = how > NONE
    if not found.any():
        raise EmbeddingError(
            f"{source}: none of the {len(vocab) - 2} vocabulary words has a vector"
            " (another language, or the titles cleaned differently?)"
        )
    if spec["oov_init"] == "fasttext":
        _subword_rows(kv, source, vocab, collector)
    # Seeded noise drawn for every row, so a word's noise depends on the seed and its id only.
    scale = float(matrix[found].std()) or 1.0
    noise = np.random.default_rng(spec["seed"]).standard_normal(matrix.shape, dtype=np.float32)
    noise *= scale
    random_rows = how == NONE
    random_rows[PAD_ID] = False
    matrix[random_rows] = noise[random_rows]
    matrix[PAD_ID] = 0.0

    counts = vocab.counts
    words = len(vocab) - 2
    missing = np.flatnonzero(~found)
    missing = missing[missing > UNK_ID]
    top_missing = missing[np.argsort(-counts[missing], kind="stable")[:20]]
    coverage = {
        "name": spec["name"],
        "kind": spec["kind"],
        "dim": dim,
        "vocab_size": len(vocab),
        "words": words,
        "found": int(found.sum()),
        "found_exact": int((how == EXACT).sum()),
        "found_normalized": int((how == NORMALIZED).sum()),
        "filled_subword": int((how == SUBWORD).sum()),
        "random_init": int(random_rows.sum()),
        "random_init_std": scale,
        # Shares of the vocabulary's words and of all train tokens ([UNK] ones count as missing).
        "vocab_coverage": float(found.sum() / words),
        "token_coverage": float(counts[found].sum() / counts.sum()) if counts.sum() else 0.0,
        "most_frequent_missing": [[vocab.words[i], int(counts[i])] for i in top_missing],
        "source": str(source),
        "source_vectors": source_vectors,
        "seed": spec["seed"],
        "elapsed_s": round(time.monotonic() - started, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    return matrix, coverage


def run(vocab_path, source, spec: Mapping, out_dir, logger: logging.Logger) -> dict:
    matrix, coverage = build(vocab_path, source, spec, logger)
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as stack:
        matrix_tmp = stack.enter_context(atomic_path(out_dir / "matrix.npy"))
        coverage_tmp = stack.enter_context(atomic_path(out_dir / "coverage.json"))
        with open(matrix_tmp, "wb") as fh:
            np.save(fh, matrix)
        coverage_tmp.write_text(json.dumps(coverage, indent=2, ensure_ascii=False) + "\n")
    logger.info(
        "%s: %d/%d words found (%.1f%% of the vocabulary, %.1f%% of train tokens), %d random, in %.1fs",
        coverage["name"], coverage["found"], coverage["words"], 100 * coverage["vocab_coverage"],
        100 * coverage["token_coverage"], coverage["random_init"], coverage["elapsed_s"],
    )
    return coverage


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", required=True, help="vocab.tsv of the features stage")
    parser.add_argument("--source", required=True, help="vectors file (pretrained) or train.parquet")
    parser.add_argument("--spec", required=True, help="the embedding's config as JSON (with `name`)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    logger = setup_logging("meli.embeddings.matrix")
    try:
        run(args.vocab, args.source, json.loads(args.spec), args.out_dir, logger)
    except FeatureError as err:
        logger.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
