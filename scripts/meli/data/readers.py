"""Chunked readers for every MeLi 2019 source format, yielding Arrow tables of string columns.

Every reader yields `Chunk`s whose table has exactly the columns of `COLUMNS` (null where the
source lacks a field) plus the reader's unparsable-line count, so the official 20M-row CSV is
never held in memory as Python objects.

Formats (`detect_format` picks one from the name and magic bytes; `dataset.format` forces one):
- raw_csv: the official `title,label_quality,language,category` CSV (gzip/bz2 or not) with a
  header, or the header-less `title,category` form (no language column: rows get the
  configured language, see `prepare`).
- course_jsonl: the course's `{language}.{split}.jsonl.gz` records, a single file or a directory
  of them (`*_token_to_index.json.gz` files are ignored).
- course_archive: the course `.tar.bz2` holding `{spanish,portuguese}.{train,validation,test}.jsonl.gz`.
- parquet: any Parquet file with at least `title` and `category` columns.
"""
from __future__ import annotations

import gzip
import io
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from meli.cli import MeliError

COLUMNS = ("title", "category", "label_quality", "language", "split")
SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])
FORMATS = ("raw_csv", "course_jsonl", "course_archive", "parquet")
RAW_HEADER = ("title", "label_quality", "language", "category")
COURSE_MEMBER = re.compile(r"(?:^|/)(spanish|portuguese)\.(train|validation|test)\.jsonl(?:\.gz)?$")
BYTES_PER_ROW = 120  # rough size of one CSV/JSON-lines row, turns chunk_rows into read block sizes


class SourceError(MeliError, ValueError):
    """The source cannot be read as the requested format (message names the file)."""


@dataclass
class Chunk:
    table: pa.Table  # columns COLUMNS, all strings
    unparsable: int  # lines of this chunk that could not be parsed (skipped)
    progress: float | None  # share of the source consumed so far (0..1), when known


def detect_format(path: str | Path) -> str:
    """raw_csv / course_jsonl / course_archive / parquet from the name, then magic bytes."""
    path = Path(path)
    if path.is_dir():
        return "course_jsonl"
    name = path.name.lower()
    for suffixes, fmt in (
        ((".parquet", ".pq"), "parquet"),
        ((".tar.bz2", ".tbz2", ".tar.gz", ".tgz", ".tar"), "course_archive"),
        ((".jsonl", ".jsonl.gz", ".jsonl.bz2", ".json.gz", ".ndjson"), "course_jsonl"),
        ((".csv", ".csv.gz", ".csv.bz2"), "raw_csv"),
    ):
        if name.endswith(suffixes):
            return fmt
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PAR1":
        return "parquet"
    if tarfile.is_tarfile(path):
        return "course_archive"
    with _open_text_bytes(path) as f:
        first = f.read(1)
    return "course_jsonl" if first == b"{" else "raw_csv"


def read_chunks(path: str | Path, fmt: str = "auto", chunk_rows: int = 500_000,
                languages: tuple[str, ...] | None = None) -> Iterator[Chunk]:
    """Chunks of ``path`` in format ``fmt`` (auto-detected by default).

    ``languages`` lets the archive reader skip members of other languages without parsing them.
    """
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "raw_csv":
        return read_raw_csv(path, chunk_rows)
    if fmt == "course_jsonl":
        return read_course_jsonl(path, chunk_rows)
    if fmt == "course_archive":
        return read_course_archive(path, chunk_rows, languages)
    if fmt == "parquet":
        return read_parquet(path, chunk_rows)
    raise SourceError(f"{path}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def _compression(path: Path) -> str | None:
    with open(path, "rb") as f:
        magic = f.read(3)
    return "gzip" if magic[:2] == b"\x1f\x8b" else "bz2" if magic == b"BZh" else None


def _open_text_bytes(path: Path) -> BinaryIO:
    return pa.input_stream(str(path), compression=_compression(path))


def _conform(table: pa.Table, path: object) -> pa.Table:
    """Exactly COLUMNS as strings, in order; a missing title/category column is an error."""
    missing = [c for c in ("title", "category") if c not in table.column_names]
    if missing:
        raise SourceError(f"{path}: no {' or '.join(missing)} column (has {', '.join(table.column_names)})")
    columns = [
        table[name].cast(pa.string()) if name in table.column_names else pa.nulls(len(table), pa.string())
        for name in COLUMNS
    ]
    return pa.Table.from_arrays(columns, schema=SCHEMA)


class _Position:
    """Tracks how far a file has been read (through any decompression) for progress/ETA."""

    def __init__(self, path: Path):
        self.raw = open(path, "rb")
        self.size = max(path.stat().st_size, 1)

    def fraction(self) -> float:
        try:
            return min(self.raw.tell() / self.size, 1.0)
        except ValueError:  # closed
            return 1.0


def read_raw_csv(path: Path, chunk_rows: int = 500_000) -> Iterator[Chunk]:
    """The official CSV, with or without header, streamed in blocks of about ``chunk_rows``."""
    with _open_text_bytes(path) as f:
        first_line = f.read(4096).split(b"\n", 1)[0].decode("utf-8", "replace").strip().lower()
    header = [h.strip().strip('"') for h in first_line.split(",")]
    has_header = "title" in header and "category" in header
    bad = [0]

    def skip(row: pcsv.InvalidRow) -> str:
        bad[0] += 1
        return "skip"

    position = _Position(path)
    compression = _compression(path)
    stream = pa.CompressedInputStream(position.raw, compression) if compression else pa.PythonFile(position.raw)
    read = pcsv.ReadOptions(
        block_size=max(chunk_rows * BYTES_PER_ROW, 1 << 20),
        column_names=None if has_header else ["title", "category"],
    )
    names = header if has_header else ["title", "category"]
    convert = pcsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                  quoted_strings_can_be_null=False)
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=pcsv.ParseOptions(invalid_row_handler=skip),
                               convert_options=convert)
        for batch in reader:
            counted, bad[0] = bad[0], 0
            yield Chunk(_conform(pa.Table.from_batches([batch]), path), counted, position.fraction())
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        raise SourceError(f"{path}: cannot read as CSV: {err}") from err
    finally:
        position.raw.close()


_JSON_PARSE = pjson.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")


def _parse_json_lines(block: bytes, defaults: dict[str, str]) -> tuple[pa.Table, int]:
    """Parse a block of whole lines; on a malformed line, fall back to line by line and skip it."""
    try:
        table = pjson.read_json(io.BytesIO(block), parse_options=_JSON_PARSE)
        unparsable = 0
    except pa.ArrowInvalid:
        rows, unparsable = [], 0
        for line in block.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not an object")
            except ValueError:
                unparsable += 1
                continue
            rows.append({k: (None if record.get(k) is None else str(record[k])) for k in COLUMNS})
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
    for name, value in defaults.items():  # fields the file name implies, where the record lacks them
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.fill_null(table[name], value))
    return table, unparsable


def _course_defaults(name: str) -> dict[str, str]:
    match = COURSE_MEMBER.search(name)
    return {"language": match.group(1), "split": match.group(2)} if match else {}


def _jsonl_chunks(stream: BinaryIO, name: str, chunk_rows: int, fraction: Callable[[], float | None]) -> Iterator[Chunk]:
    defaults = _course_defaults(name)
    block_bytes = max(chunk_rows * BYTES_PER_ROW * 3, 1 << 20)  # course lines also carry token ids
    rest = b""
    while True:
        data = stream.read(block_bytes)
        block = rest + data
        if not data:
            rest = b""
        else:
            cut = block.rfind(b"\n") + 1
            block, rest = block[:cut], block[cut:]
        if block.strip():
            table, unparsable = _parse_json_lines(block, defaults)
            yield Chunk(_conform(table, name), unparsable, fraction())
        if not data:
            return


def read_course_jsonl(path: Path, chunk_rows: int = 500_000) -> Iterator[Chunk]:
    """A course JSON-lines file, or every `*.jsonl[.gz]` in a directory (sorted)."""
    files = sorted(p for p in path.iterdir() if re.search(r"\.jsonl(\.gz|\.bz2)?$", p.name)) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{path}: no *.jsonl or *.jsonl.gz files in this directory")
    total = sum(p.stat().st_size for p in files) or 1
    done = 0
    for file in files:
        position = _Position(file)
        compression = _compression(file)
        try:
            stream = pa.CompressedInputStream(position.raw, compression) if compression else pa.PythonFile(position.raw)
            yield from _jsonl_chunks(stream, file.name, chunk_rows,
                                     lambda: (done + position.fraction() * position.size) / total)
        except (OSError, EOFError, pa.ArrowInvalid) as err:
            raise SourceError(f"{file}: cannot read as JSON lines: {err}") from err
        finally:
            position.raw.close()
        done += position.size


def read_course_archive(path: Path, chunk_rows: int = 500_000,
                        languages: tuple[str, ...] | None = None) -> Iterator[Chunk]:
    """The course archive, streamed: each `{language}.{split}.jsonl.gz` member in archive order."""
    position = _Position(path)
    found = 0
    try:
        with tarfile.open(fileobj=position.raw, mode="r|*") as archive:
            for member in archive:
                match = COURSE_MEMBER.search(member.name)
                if not member.isfile() or not match:
                    continue
                found += 1
                if languages and match.group(1) not in languages:
                    continue
                member_file = archive.extractfile(member)
                stream = gzip.GzipFile(fileobj=member_file) if member.name.endswith(".gz") else member_file
                yield from _jsonl_chunks(stream, member.name, chunk_rows, position.fraction)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SourceError(f"{path}: truncated or corrupt archive: {err}") from err
    finally:
        position.raw.close()
    if not found:
        raise SourceError(f"{path}: no {{spanish,portuguese}}.{{train,validation,test}}.jsonl.gz member in the archive")


def read_parquet(path: Path, chunk_rows: int = 500_000) -> Iterator[Chunk]:
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceError(f"{path}: cannot read as Parquet: {err}") from err
    columns = [c for c in COLUMNS if c in file.schema_arrow.names]
    rows, done = max(file.metadata.num_rows, 1), 0
    for batch in file.iter_batches(batch_size=chunk_rows, columns=columns):
        done += batch.num_rows
        yield Chunk(_conform(pa.Table.from_batches([batch]), path), 0, done / rows)
