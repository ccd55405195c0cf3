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
import math
import re
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from meli.cli import MeliError
from meli.io import compression as compression_of

COLUMNS = ("title", "category", "label_quality", "language", "split")
SCHEMA = pa.schema([(name, pa.string()) for name in COLUMNS])
FORMATS = ("raw_csv", "course_jsonl", "course_archive", "parquet")
RAW_HEADER = ("title", "label_quality", "language", "category")
COURSE_MEMBER = re.compile(r"(?:^|/)(spanish|portuguese)\.(train|validation|test)\.jsonl(?:\.gz)?$")
NEWLINE = b"\n"
BYTES_PER_ROW = 120  # rough size of one CSV/JSON-lines row, turns chunk_rows into read block sizes


DEFAULT_MAX_LINE_BYTES = 1 << 20  # dataset.max_line_bytes: a title line is ~100 bytes, a course line ~1 kB
DEFAULT_MAX_SOURCE_BYTES = 50_000_000_000  # dataset.max_source_bytes: decompressed bytes read in all

READER_BAD_REASONS = ("invalid_utf8", "title_not_text")  # rows a reader drops besides unparsable ones
MAX_EXAMPLES = 5  # bad lines quoted per chunk (the log and the error messages show them)


class SourceError(MeliError, ValueError):
    """The source cannot be read as the requested format (message names the file)."""


@dataclass
class Limits:
    """How much of a source the data stage is willing to read (dataset.max_line_bytes and
    dataset.max_source_bytes): a small archive that expands to gigabytes, or a member with no
    newline, stops with a clear error instead of exhausting memory or disk time."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_source_bytes: int = DEFAULT_MAX_SOURCE_BYTES
    read: int = 0  # decompressed bytes read so far, all files together

    def take(self, n: int, where: object) -> None:
        self.read += n
        if self.read > self.max_source_bytes:
            raise SourceError(
                f"{where}: over dataset.max_source_bytes={self.max_source_bytes:,} bytes after decompression "
                "(a compressed file that expands far beyond its size?); raise dataset.max_source_bytes if the "
                "source really is this large")

    def line_error(self, where: object, length: int | None = None) -> SourceError:
        found = f"a line of {length:,} bytes" if length is not None else "a line"
        return SourceError(
            f"{where}: {found} is longer than dataset.max_line_bytes={self.max_line_bytes:,} (no newline: not a "
            "CSV/JSON-lines file, or a damaged one?); raise dataset.max_line_bytes if the lines really are this long")


class _CappedStream:
    """A binary stream that counts what it delivers against ``Limits.take``."""

    def __init__(self, stream, limits: Limits, where: object):
        self.stream, self.limits, self.where = stream, limits, where
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.limits.take(len(data), self.where)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def _longest_line(block: bytes) -> int:
    """Length of the longest newline-terminated line in ``block`` (vectorized)."""
    import numpy as np

    ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
    return int(np.diff(ends, prepend=-1).max()) - 1 if len(ends) else len(block)


@dataclass
class Chunk:
    table: pa.Table  # columns COLUMNS, all strings
    unparsable: int  # lines of this chunk that could not be parsed (skipped)
    progress: float | None  # share of the source consumed so far (0..1), when known
    bad: dict[str, int] = field(default_factory=dict)  # other skipped rows per READER_BAD_REASONS reason
    examples: list[str] = field(default_factory=list)  # where the first skipped rows are, and why
    splits: tuple[str, ...] = ()  # splits the source declares here even if every row was skipped (course files)

    @property
    def rows_read(self) -> int:
        return len(self.table) + self.unparsable + sum(self.bad.values())


def _sample(data: bytes | str, width: int = 80) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "backslashreplace")
    return repr(text if len(text) <= width else text[:width] + "...")


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
    if not magic:
        raise SourceError(f"{path}: the file is empty (0 bytes)")
    if tarfile.is_tarfile(path):
        return "course_archive"
    with _open_text_bytes(path) as f:
        first = f.read(1)
    return "course_jsonl" if first == b"{" else "raw_csv"


def read_chunks(path: str | Path, fmt: str = "auto", chunk_rows: int = 500_000,
                languages: tuple[str, ...] | None = None, limits: Limits | None = None) -> Iterator[Chunk]:
    """Chunks of ``path`` in format ``fmt`` (auto-detected by default).

    ``languages`` lets the archive reader skip members of other languages without parsing them;
    ``limits`` bounds line length and decompressed bytes (Parquet is read by row group, bounded
    by its own metadata).
    """
    limits = limits or Limits()
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    _refuse_foreign(path)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "raw_csv":
        return read_raw_csv(path, chunk_rows, limits)
    if fmt == "course_jsonl":
        return read_course_jsonl(path, chunk_rows, limits)
    if fmt == "course_archive":
        return read_course_archive(path, chunk_rows, languages, limits)
    if fmt == "parquet":
        return read_parquet(path, chunk_rows)
    raise SourceError(f"{path}: unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def _refuse_foreign(path: Path) -> None:
    """Stop early on files that are none of the formats, with what to do instead."""
    if path.is_dir():
        return
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty (0 bytes)")
    with open(path, "rb") as f:
        start = f.read(512)
    magic = start[:4]
    if start.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise SourceError(f"{path}: this is an HTML page, not data (a download link that needs a login or a "
                          "confirmation page?); download the file itself")
    if magic == b"PK\x03\x04":
        what = "an Excel workbook; save it as CSV UTF-8" if path.suffix.lower() in (".xlsx", ".xlsm") \
            else "a zip archive; unzip it and point dataset.source at the CSV/JSON-lines file inside"
        raise SourceError(f"{path}: this is {what}")
    if compression_of(path) == "gzip" and not path.name.lower().endswith((".tar.gz", ".tgz")):
        try:  # a gzip whose member is cut short or damaged fails here, not 10 minutes into the read
            with gzip.open(path, "rb") as f:
                f.read(1 << 16)
        except (OSError, EOFError, zlib.error) as err:
            raise SourceError(f"{path}: corrupt or truncated gzip file ({err}); download it again") from None


def _open_text_bytes(path: Path) -> BinaryIO:
    return pa.input_stream(str(path), compression=compression_of(path))


def _conform(table: pa.Table, path: object, first_row: int = 1,
             what: str = "row") -> tuple[pa.Table, dict[str, int], list[str]]:
    """Exactly COLUMNS as strings, in order, plus rows dropped as not UTF-8 (count, examples).

    Column names match case-insensitively ("Title" is title); a missing title/category column
    or a title column of numbers is an error. ``first_row`` numbers the table's first row in
    the examples ("line 41" / "data row 41").
    """
    by_lower = {name.strip().lower(): name for name in reversed(table.column_names)}
    missing = [c for c in ("title", "category") if c not in by_lower]
    if missing:
        raise SourceError(
            f"{path}: no {' or '.join(missing)} column (has {', '.join(table.column_names) or 'no columns'}); "
            "the source needs `title` and `category` columns: rename them (e.g. pandas "
            "df.rename(columns={...}).to_parquet(...))")
    title_type = table[by_lower["title"]].type
    if pa.types.is_dictionary(title_type):
        title_type = title_type.value_type
    if not (pa.types.is_string(title_type) or pa.types.is_large_string(title_type) or pa.types.is_binary(title_type)
            or pa.types.is_large_binary(title_type) or pa.types.is_null(title_type)):
        raise SourceError(f"{path}: the title column holds {title_type} values, not text "
                          "(are the columns swapped, or is it a token-id column?)")
    columns, valid, examples = [], None, []
    for name in COLUMNS:
        if name not in by_lower:
            columns.append(pa.nulls(len(table), pa.string()))
            continue
        column = table[by_lower[name]]
        try:
            columns.append(column.cast(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # invalid UTF-8 bytes: find the rows, in Python
            values = column.cast(pa.binary()).to_pylist()
            ok = [v is None or _is_utf8(v) for v in values]
            for i in [i for i, good in enumerate(ok) if not good][:MAX_EXAMPLES - len(examples)]:
                examples.append(f"{Path(str(path)).name}, {what} {first_row + i:,}: {name} is not UTF-8 "
                                f"{_sample(values[i])} (latin-1? convert with: iconv -f latin1 -t utf-8)")
            valid = pa.array(ok) if valid is None else pc.and_(valid, pa.array(ok))
            kept = pa.array([v if good else None for v, good in zip(values, ok)], pa.binary())
            columns.append(kept.cast(pa.string()))
    out = pa.Table.from_arrays(columns, schema=SCHEMA)
    if valid is None:
        return out, {}, []
    return out.filter(valid), {"invalid_utf8": len(out) - pc.sum(valid).as_py()}, examples


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


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


def _csv_header(path: Path) -> tuple[list[str], bool]:
    """The first line's fields (lowercased, BOM and quotes stripped) and whether it is a header."""
    with _open_text_bytes(path) as f:
        first_line = f.read(4096).split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").strip().lower()
    fields = [h.strip().strip('"').strip() for h in first_line.split(",")]
    if "title" in fields and "category" in fields:
        duplicated = sorted({h for h in fields if fields.count(h) > 1 and h in RAW_HEADER})
        if duplicated:
            raise SourceError(f"{path}, line 1: the header names {', '.join(duplicated)} more than once "
                              f"(found {', '.join(fields)})")
        return fields, True
    if "title" in fields or "category" in fields:  # a header, but not ours: reading it as data would be silent
        raise SourceError(
            f"{path}, line 1: header not recognised (found {', '.join(fields)}): it needs both a `title` and a "
            f"`category` column ({','.join(RAW_HEADER)}), or no header and two columns title,category")
    return fields, False


def read_raw_csv(path: Path, chunk_rows: int = 500_000, limits: Limits | None = None) -> Iterator[Chunk]:
    """The official CSV, with or without header, streamed in blocks of about ``chunk_rows``.

    A spreadsheet's "CSV UTF-8" (byte-order mark, CRLF) reads like any other. Rows with the
    wrong number of fields are skipped and counted (unparsable); rows that are not UTF-8 are
    skipped and counted (invalid_utf8); the first few of each are quoted in ``Chunk.examples``.
    """
    header, has_header = _csv_header(path)
    names = header if has_header else ["title", "category"]
    bad: list[int] = [0]
    examples: list[str] = []
    noted = [False]

    def skip(row: pcsv.InvalidRow) -> str:
        bad[0] += 1
        if len(examples) < MAX_EXAMPLES:
            note = ""
            if not has_header and not noted[0]:  # say once why the file is read as header-less
                noted[0] = True
                note = (f" (title,category without a header; the first line was not recognised as the header "
                        f"{','.join(RAW_HEADER)}: found {','.join(header)})")
            examples.append(f"{path.name}: a row has {row.actual_columns} field(s), expected {row.expected_columns}"
                            f"{note}: {_sample(row.text)}")
        return "skip"

    limits = limits or Limits()
    position = _Position(path)
    compression = compression_of(path)
    stream = pa.CompressedInputStream(position.raw, compression) if compression else pa.PythonFile(position.raw)
    stream = pa.PythonFile(_CappedStream(stream, limits, path), mode="r")
    # A block holds whole lines: a line longer than the block fails in Arrow ("straddling"), below.
    block_size = max(chunk_rows * BYTES_PER_ROW, 1 << 20, limits.max_line_bytes + 1)
    read = pcsv.ReadOptions(  # the header's own names, cleaned (BOM, case, quotes), so column_types match
        block_size=block_size, column_names=names, skip_rows=int(has_header),
    )
    # binary, not string: one latin-1 row must be a counted bad row, not a failed read (see _conform)
    convert = pcsv.ConvertOptions(column_types={n: pa.binary() for n in names}, strings_can_be_null=True,
                                  quoted_strings_can_be_null=False)
    first_row = 1
    try:
        reader = pcsv.open_csv(stream, read_options=read, parse_options=pcsv.ParseOptions(invalid_row_handler=skip),
                               convert_options=convert)
        for batch in reader:
            longest = max((pc.max(pc.binary_length(column)).as_py() or 0 for column in batch.columns), default=0)
            if longest > limits.max_line_bytes:
                raise limits.line_error(f"{path}, near data row {first_row:,}", longest)
            table, dropped, utf8_examples = _conform(pa.Table.from_batches([batch]), path, first_row, "data row")
            counted, bad[0] = bad[0], 0
            first_row += batch.num_rows + counted
            yield Chunk(table, counted, position.fraction(), dropped, examples + utf8_examples)
            examples.clear()
        if bad[0]:  # rows skipped after the last batch
            yield Chunk(_conform(pa.table({"title": pa.array([], pa.string()), "category": pa.array([], pa.string())}),
                                 path)[0], bad[0], 1.0, {}, list(examples))
    except (pa.ArrowInvalid, OSError, EOFError) as err:
        if "Empty CSV file" in str(err):
            raise SourceError(f"{path}: no rows (the file holds no data, not even a header)") from err
        if "straddling" in str(err) or "straddles" in str(err):
            raise limits.line_error(path) from None
        raise SourceError(f"{path}: cannot read as CSV: {err}") from err
    finally:
        position.raw.close()


_JSON_PARSE = pjson.ParseOptions(explicit_schema=SCHEMA, unexpected_field_behavior="ignore")


def _parse_json_lines(block: bytes, defaults: dict[str, str], first_line: int = 1,
                      name: str = "") -> tuple[pa.Table, int, dict[str, int], list[str]]:
    """Parse a block of whole lines; on a bad line, fall back to line by line and skip it.

    Returns the table, the unparsable count, other bad rows per reason (invalid_utf8,
    title_not_text) and where the first bad lines are (``first_line`` numbers the block's first).
    """
    try:
        table = pjson.read_json(io.BytesIO(block), parse_options=_JSON_PARSE)
        table.validate(full=True)  # Arrow's JSON reader lets invalid UTF-8 through; this finds it
        unparsable, bad, examples = 0, {}, []
    except pa.ArrowInvalid:
        table, unparsable, bad, examples = _parse_json_lines_slowly(block, first_line, name)
    for column, value in defaults.items():  # fields the file name implies, where the record lacks them
        i = table.schema.get_field_index(column)
        table = table.set_column(i, column, pc.fill_null(table[column], value))
    return table, unparsable, bad, examples


def _json_value(value: object) -> str | None:
    """A record's field as text: null, NaN and infinities are missing, numbers become text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _parse_json_lines_slowly(block: bytes, first_line: int,
                             name: str) -> tuple[pa.Table, int, dict[str, int], list[str]]:
    rows, unparsable, bad, examples = [], 0, {"invalid_utf8": 0, "title_not_text": 0}, []

    def note(lineno: int, why: str) -> None:
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{name}, line {lineno:,}: {why}")

    for lineno, line in enumerate(block.split(b"\n"), first_line):
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            bad["invalid_utf8"] += 1
            note(lineno, f"not UTF-8 {_sample(line)} (latin-1? convert with: iconv -f latin1 -t utf-8)")
            continue
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as err:
            unparsable += 1
            note(lineno, f"not a JSON object ({str(err)[:80]}): {_sample(text)}")
            continue
        title = record.get("title")
        if title is not None and not isinstance(title, str) and _json_value(title) is not None:
            bad["title_not_text"] += 1
            note(lineno, f"the title is a {type(title).__name__}, not text: {_sample(text)}")
            continue
        rows.append({k: _json_value(record.get(k)) for k in COLUMNS})
    return pa.Table.from_pylist(rows, schema=SCHEMA), unparsable, {k: v for k, v in bad.items() if v}, examples


def _course_defaults(name: str) -> dict[str, str]:
    match = COURSE_MEMBER.search(name)
    return {"language": match.group(1), "split": match.group(2)} if match else {}


def _jsonl_chunks(stream: BinaryIO, name: str, chunk_rows: int, fraction: Callable[[], float | None],
                  limits: Limits | None = None) -> Iterator[Chunk]:
    limits = limits or Limits()
    defaults = _course_defaults(name)
    block_bytes = max(chunk_rows * BYTES_PER_ROW * 3, 1 << 20)  # course lines also carry token ids
    rest = b""
    first_line = 1
    while True:
        data = stream.read(block_bytes)
        limits.take(len(data), name)
        block = rest + data
        if not data:
            rest = b""
        else:
            cut = block.rfind(b"\n") + 1
            block, rest = block[:cut], block[cut:]
        # the unfinished line carried to the next read, and every line of this block, are bounded
        if len(rest) > limits.max_line_bytes:
            raise limits.line_error(f"{name}, line {first_line + block.count(NEWLINE):,}")
        longest = _longest_line(block)
        if longest > limits.max_line_bytes:
            raise limits.line_error(f"{name}, after line {first_line:,}", longest)
        if block.strip():
            table, unparsable, bad, examples = _parse_json_lines(block, defaults, first_line, name)
            table, invalid, more = _conform(table, name, first_line, "line")
            for reason, n in invalid.items():
                bad[reason] = bad.get(reason, 0) + n
            yield Chunk(table, unparsable, fraction(), bad, examples + more,
                        (defaults["split"],) if "split" in defaults else ())
        first_line += block.count(b"\n")
        if not data:
            return


def read_course_jsonl(path: Path, chunk_rows: int = 500_000, limits: Limits | None = None) -> Iterator[Chunk]:
    """A course JSON-lines file, or every `*.jsonl[.gz]` in a directory (sorted)."""
    files = sorted(p for p in path.iterdir() if re.search(r"\.jsonl(\.gz|\.bz2)?$", p.name)) if path.is_dir() else [path]
    if not files:
        raise SourceError(f"{path}: no *.jsonl or *.jsonl.gz files in this directory")
    total = sum(p.stat().st_size for p in files) or 1
    done = 0
    for file in files:
        position = _Position(file)
        compression = compression_of(file)
        try:
            stream = pa.CompressedInputStream(position.raw, compression) if compression else pa.PythonFile(position.raw)
            yield from _jsonl_chunks(stream, file.name, chunk_rows,
                                     lambda: (done + position.fraction() * position.size) / total, limits)
        except (OSError, EOFError, pa.ArrowInvalid) as err:
            raise SourceError(f"{file}: cannot read as JSON lines: {err}") from err
        finally:
            position.raw.close()
        done += position.size


def read_course_archive(path: Path, chunk_rows: int = 500_000, languages: tuple[str, ...] | None = None,
                        limits: Limits | None = None) -> Iterator[Chunk]:
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
                yield from _jsonl_chunks(stream, member.name, chunk_rows, position.fraction, limits)
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
    wanted = {c for c in COLUMNS}
    columns = [c for c in file.schema_arrow.names if c.strip().lower() in wanted]
    _conform(file.schema_arrow.empty_table(), path)  # a missing or numeric title column fails before any read
    rows, done = max(file.metadata.num_rows, 1), 0
    for batch in file.iter_batches(batch_size=chunk_rows, columns=columns):
        table, bad, examples = _conform(pa.Table.from_batches([batch]), path, done + 1)
        done += batch.num_rows
        yield Chunk(table, 0, done / rows, bad, examples)
