"""Every source format on real MeLi rows: the course JSON-lines sample and the official CSV head."""
from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from meli.data.readers import COLUMNS, SourceError, detect_format, read_chunks


def rows(path, fmt="auto", chunk_rows=500_000, languages=None) -> tuple[list[dict], int]:
    records, unparsable = [], 0
    for chunk in read_chunks(path, fmt, chunk_rows, languages):
        assert chunk.table.column_names == list(COLUMNS)
        assert all(t == pa.string() for t in chunk.table.schema.types)
        records += chunk.table.to_pylist()
        unparsable += chunk.unparsable
    return records, unparsable


@functools.lru_cache(maxsize=1)
def course_lines(course_sample: Path) -> list[dict]:
    with gzip.open(course_sample, "rt") as f:
        return [json.loads(line) for line in f]


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_course_jsonl_sample_read_in_chunks(course_sample):
    expected = course_lines(course_sample)
    got, unparsable = rows(course_sample, chunk_rows=5_000)
    assert unparsable == 0 and len(got) == len(expected) == 38_205
    assert [r["title"] for r in got] == [r["title"] for r in expected]
    assert [r["category"] for r in got] == [r["category"] for r in expected]
    assert {r["language"] for r in got} == {"spanish"} and {r["split"] for r in got} == {"test"}
    assert len({r["category"] for r in got}) == 632


def test_raw_csv_head_without_header(raw_head):
    with open(raw_head, newline="") as f:
        expected = list(csv.reader(f))
    got, unparsable = rows(raw_head, chunk_rows=1_000)
    assert detect_format(raw_head) == "raw_csv"
    assert unparsable == 0 and len(got) == len(expected) == 1_260
    assert [(r["title"], r["category"]) for r in got] == [tuple(e) for e in expected]
    assert all(r["language"] is None and r["label_quality"] is None for r in got)
    assert sum("," in r["title"] for r in got) > 10  # quoted commas stay inside the title


def test_raw_csv_with_header_gzip_and_a_malformed_line(raw_head, tmp_path):
    with open(raw_head, newline="") as f:
        head = list(csv.reader(f))[:200]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["title", "label_quality", "language", "category"])
    for i, (title, category) in enumerate(head):
        writer.writerow([title, "reliable" if i % 2 else "unreliable", "spanish", category])
        if i == 50:
            text.write('"an unclosed quote,reliable,spanish\n"x",y\n')  # one broken record
    path = tmp_path / "train_no_extension"
    path.write_bytes(gzip.compress(text.getvalue().encode()))
    assert detect_format(path) == "raw_csv"  # from the gzip magic + first byte
    got, unparsable = rows(path)
    assert unparsable >= 1
    by_title = {r["title"]: r for r in got}
    assert all(by_title[t]["category"] == c for t, c in head)
    assert by_title[head[1][0]]["label_quality"] == "reliable" and by_title[head[0][0]]["language"] == "spanish"


def test_course_directory_takes_language_and_split_from_file_names(course_sample, tmp_path):
    records = course_lines(course_sample)[:3_000]
    for i, name in enumerate(("train", "validation", "test")):
        part = [{k: v for k, v in r.items() if k not in ("split", "language")} for r in records[i::3]]
        write_jsonl_gz(tmp_path / f"spanish.{name}.jsonl.gz", part)
    (tmp_path / "spanish_token_to_index.json.gz").write_bytes(gzip.compress(b'{"a": 1}'))
    assert detect_format(tmp_path) == "course_jsonl"
    got, _ = rows(tmp_path, chunk_rows=700)
    assert len(got) == 3_000
    assert {r["language"] for r in got} == {"spanish"}
    assert sorted(r["split"] for r in got) == sorted(["train"] * 1000 + ["validation"] * 1000 + ["test"] * 1000)


def test_jsonl_malformed_line_is_counted_and_skipped(course_sample, tmp_path):
    records = course_lines(course_sample)[:100]
    lines = [json.dumps(r) for r in records]
    lines.insert(40, '{"title": "cut off", "categ')
    path = tmp_path / "spanish.test.jsonl"
    path.write_text("\n".join(lines) + "\n")
    got, unparsable = rows(path)
    assert unparsable == 1 and [r["title"] for r in got] == [r["title"] for r in records]


def make_archive(path: Path, course_sample: Path, n: int = 900) -> list[dict]:
    records = course_lines(course_sample)[:n]
    with tarfile.open(path, "w:bz2") as tar:
        members = {f"meli-challenge-2019/spanish.{s}.jsonl.gz": [dict(r, split=s) for r in records[i::3]]
                   for i, s in enumerate(("train", "validation", "test"))}
        members["meli-challenge-2019/portuguese.train.jsonl.gz"] = [dict(r, language="portuguese") for r in records[:10]]
        for name, part in members.items():
            data = gzip.compress("".join(json.dumps(r) + "\n" for r in part).encode())
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("meli-challenge-2019/spanish_token_to_index.json.gz")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"{}\n\n"))
    return records


def test_course_archive_streams_members_and_skips_other_languages(course_sample, tmp_path):
    path = tmp_path / "meli-challenge-2019.tar.bz2"
    records = make_archive(path, course_sample)
    assert detect_format(path) == "course_archive"
    spanish, _ = rows(path, chunk_rows=200, languages=("spanish",))
    assert len(spanish) == len(records) and {r["language"] for r in spanish} == {"spanish"}
    assert {r["split"] for r in spanish} == {"train", "validation", "test"}
    both, _ = rows(path, languages=("spanish", "portuguese"))
    assert len(both) == len(records) + 10
    renamed = tmp_path / "download"  # no extension: recognised as a tar by its content
    renamed.write_bytes(path.read_bytes())
    assert detect_format(renamed) == "course_archive"


def test_truncated_archive_is_a_clear_error(course_sample, tmp_path):
    path = tmp_path / "meli.tar.bz2"
    make_archive(path, course_sample, n=3_000)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        rows(path)


def test_parquet_source_and_missing_columns(raw_head, tmp_path):
    got, _ = rows(raw_head)
    table = pa.Table.from_pylist(got).drop_columns(["split"])
    path = tmp_path / "data"
    pq.write_table(table, path)
    assert detect_format(path) == "parquet"
    back, _ = rows(path, chunk_rows=300)
    assert [r["title"] for r in back] == [r["title"] for r in got] and all(r["split"] is None for r in back)
    pq.write_table(table.drop_columns(["category"]), tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match="bad.parquet: no category column"):
        rows(tmp_path / "bad.parquet")


def test_missing_source_and_unknown_format(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        list(read_chunks(tmp_path / "nope.csv"))
    (tmp_path / "x.csv").write_text("title,category\na,B\n")
    with pytest.raises(SourceError, match="unknown format 'xml'"):
        list(read_chunks(tmp_path / "x.csv", "xml"))
