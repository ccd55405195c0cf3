"""Bad input as a new user makes it (issue 11): every case is a clear error naming file/line/key, or
a counted bad row. docs/design.md's "Bad input" table lists each case with its test here.

Tiny inputs and unit calls only, except one parametrized dry run that checks the parse-time
checks are wired into the Snakefile.
"""
from __future__ import annotations

import gzip
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import TINY_CONFIG, snakemake
from meli import config as config_mod
from meli.config import ConfigError
from meli.grid import check_job_count
from meli.data.prepare import PrepareError, prepare
from meli.data.readers import SourceError, read_chunks

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
HEADER = "title,label_quality,language,category\n"


def sections(dataset=None, split=None) -> dict:
    """The data stage's config sections with the schema's defaults."""
    return {
        "dataset": {"name": "t", "languages": ["spanish"], "label_quality": ["reliable", "unreliable"],
                    "max_bad_row_fraction": 0.05, "format": "auto", "sha256": None, **(dataset or {})},
        "preprocess": {"lowercase": True, "strip_accents": True, "strip_punctuation": True, "strip_numbers": False,
                       "remove_stopwords": True, "min_token_length": 2, "chunk_rows": 1000},
        "split": {"use_source_splits": True, "validation_fraction": 0.1, "test_fraction": 0.1, "subsample": 1.0,
                  "seed": 1, "rare_category_policy": "train_only", "min_rows_per_category": 3, **(split or {})},
    }


def csv_rows(n: int = 60, categories: int = 3, start: int = 0) -> str:
    return "".join(f"Taladro percutor modelo {i},reliable,spanish,CAT_{i % categories}\n"
                   for i in range(start, start + n))


def jsonl_rows(n: int = 60, categories: int = 3) -> str:
    return "".join(json.dumps({"title": f"Taladro percutor modelo {i}", "category": f"CAT_{i % categories}",
                               "language": "spanish"}) + "\n" for i in range(n))


def run_prepare(path: Path, tmp_path: Path, **cfg) -> dict:
    return prepare(path, tmp_path / "ok", sections(**cfg))


def fails(path: Path, tmp_path: Path, pattern: str, error=(PrepareError, SourceError), **cfg) -> str:
    out = tmp_path / "failed"
    with pytest.raises(error, match=pattern) as info:
        prepare(path, out, sections(**cfg))
    assert not out.exists() or not any(out.iterdir()), "a failed data stage left files behind"
    return str(info.value)


# ------------------------------------------------------------------------------ encoding


def test_latin1_row_in_csv_is_a_counted_bad_row_with_its_row_number(tmp_path):
    path = tmp_path / "train.csv"
    latin1 = "Café con leña,reliable,spanish,CAT_1\n".encode("latin-1")
    path.write_bytes((HEADER + csv_rows(50)).encode() + latin1 + csv_rows(50, start=50).encode())
    summary = run_prepare(path, tmp_path)
    assert summary["dropped"]["invalid_utf8"] == 1 and summary["rows_read"] == 101
    assert summary["rows"]["total"] == 100
    assert summary["bad_row_examples"][0].startswith("train.csv, data row 51: title is not UTF-8")
    # over the threshold, the stop names the row too
    message = fails(path, tmp_path, r"over dataset.max_bad_row_fraction", dataset={"max_bad_row_fraction": 0.001})
    assert "data row 51" in message and "iconv" in message


def test_latin1_line_in_json_lines_is_counted_not_an_arrow_traceback(tmp_path):
    path = tmp_path / "spanish.train.jsonl"
    bad = '{"title": "Café leña", "category": "CAT_1", "language": "spanish"}\n'.encode("latin-1")
    path.write_bytes(jsonl_rows(50).encode() + bad + jsonl_rows(50).encode())
    summary = run_prepare(path, tmp_path, split={"use_source_splits": False})
    assert summary["dropped"]["invalid_utf8"] == 1 and summary["rows"]["total"] == 100
    assert summary["bad_row_examples"][0].startswith("spanish.train.jsonl, line 51: not UTF-8")


def test_a_latin1_file_says_what_to_do(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes((HEADER + csv_rows(20).replace("Taladro", "Taladró")).encode("latin-1"))
    message = fails(path, tmp_path, r"no usable rows: all 20 rows read were dropped: 20 rows that are not UTF-8")
    assert "iconv -f latin1" in message and "latin1.csv, data row 1" in message


# ------------------------------------------------------------------------------ CSV shapes


def test_excel_csv_utf8_with_bom_and_crlf_reads_every_row(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + csv_rows(60)).replace("\n", "\r\n").encode())
    summary = run_prepare(path, tmp_path)
    assert summary["rows_read"] == 60 and summary["rows"]["total"] == 60 and summary["bad_rows"] == 0
    assert summary["categories"]["count"] == 3


def test_unrecognised_header_says_so_and_counts_fields(tmp_path):
    path = tmp_path / "es.csv"
    path.write_text("titulo,calidad,idioma,categoria\n" + csv_rows(30))
    message = fails(path, tmp_path, r"no usable rows: all 31 rows read were dropped")
    assert "4 field(s), expected 2" in message
    assert "first line was not recognised as the header title,label_quality,language,category" in message
    assert "found titulo,calidad,idioma,categoria" in message


@pytest.mark.parametrize("header, pattern", [
    ("title,label\n", r"line 1: header not recognised \(found title, label\)"),
    ("name,category\n", r"line 1: header not recognised \(found name, category\)"),
    ("title,category,category\n", r"line 1: the header names category more than once"),
])
def test_header_without_a_category_column_or_duplicated(tmp_path, header, pattern):
    path = tmp_path / "h.csv"
    path.write_text(header + "".join(f"Taladro {i},CAT_{i % 3},X\n" for i in range(10)))
    fails(path, tmp_path, pattern, error=SourceError)


def test_header_is_matched_case_insensitively(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text('"TITLE", Label_Quality,LANGUAGE,Category\n' + csv_rows(60).replace("CAT_", ""))
    summary = run_prepare(path, tmp_path)
    assert summary["rows"]["total"] == 60 and summary["label_quality"]["train"] == {"reliable": 48}


def test_numeric_titles_in_a_csv_are_text(tmp_path):
    path = tmp_path / "numbers.csv"
    path.write_text(HEADER.upper() + "".join(f"{1000 + i},reliable,spanish,C{i % 3}\n" for i in range(60)))
    assert run_prepare(path, tmp_path)["rows"]["total"] == 60


@pytest.mark.parametrize("content, pattern", [
    (b"", r"the file is empty \(0 bytes\)"),
    (gzip.compress(b""), r"no rows \(the file holds no data, not even a header\)"),
    (HEADER.encode(), r"no usable rows: the file has no data rows \(only a header\?\)"),
    ((HEADER + "".join(f"Taladro {i},reliable,spanish,\n" for i in range(20))).encode(),
     r"all 20 rows read were dropped: 20 rows without a category \(is the category column empty\?\)"),
    (b"<!DOCTYPE html>\n<html><body>Sign in to continue</body></html>\n", r"this is an HTML page, not data"),
    (b"\x1f\x8b\x08\x00" + b"definitely not deflate data" * 4, r"corrupt or truncated gzip file"),
], ids=["empty", "empty-gzip", "header-only", "category-empty", "html", "gzip-not-gzip"])
def test_files_with_nothing_usable(tmp_path, content, pattern):
    path = tmp_path / "train.csv.gz"
    path.write_bytes(content)
    fails(path, tmp_path, pattern)


def test_plain_text_named_gz_reads_fine(tmp_path):
    """A browser that already decompressed train.csv.gz: the magic bytes decide, not the name."""
    path = tmp_path / "train.csv.gz"
    path.write_text(HEADER + csv_rows(60))
    assert run_prepare(path, tmp_path)["rows"]["total"] == 60


def test_zip_and_excel_workbook_say_what_to_do(tmp_path):
    for name, pattern in (("train.zip", "a zip archive; unzip it"),
                          ("train.xlsx", "an Excel workbook; save it as CSV UTF-8")):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("train.csv", HEADER + csv_rows(5))
        fails(path, tmp_path, pattern, error=SourceError)


def test_wrong_format_setting_points_at_format_auto(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text(HEADER + csv_rows(30))
    fails(path, tmp_path, r"cannot read as Parquet", dataset={"format": "parquet"})
    message = fails(path, tmp_path, r"no usable rows", dataset={"format": "course_jsonl"})
    assert "dataset.format is course_jsonl, but the file looks like raw_csv: try format: auto" in message


# ------------------------------------------------------------------------------ JSON lines values


def test_nan_and_null_in_json_lines_are_bad_rows_not_the_category_nan(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(jsonl_rows(60) + '{"title": NaN, "category": "CAT_1", "language": "spanish"}\n'
                    '{"title": "Taladro Bosch", "category": NaN, "language": "spanish"}\n'
                    '{"title": "Taladro Makita", "category": null, "language": "spanish"}\n'
                    '{"title": Infinity, "category": "CAT_2", "language": "spanish"}\n')
    summary = run_prepare(path, tmp_path, dataset={"max_bad_row_fraction": 0.1})
    assert summary["dropped"]["empty_title"] == 2 and summary["dropped"]["missing_category"] == 2
    assert summary["categories"]["count"] == 3 and summary["rows"]["total"] == 60
    train = pq.read_table(tmp_path / "ok" / "train.parquet").to_pydict()
    assert "nan" not in train["category"] and "nan" not in train["title"]


def test_json_title_that_is_a_number_is_a_bad_row_and_numeric_categories_are_text(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(jsonl_rows(60) + '{"title": 12345, "category": "CAT_1", "language": "spanish"}\n'
                    '{"title": [3, 4], "category": "CAT_1", "language": "spanish"}\n'
                    + "".join(json.dumps({"title": f"Lijadora orbital {i}", "category": 7,
                                          "language": "spanish"}) + "\n" for i in range(5)))
    summary = run_prepare(path, tmp_path)
    assert summary["dropped"]["title_not_text"] == 2 and summary["categories"]["count"] == 4
    assert any("line 61: the title is a int, not text" in e for e in summary["bad_row_examples"])


# ------------------------------------------------------------------------------ Parquet


def test_parquet_with_other_column_names(tmp_path):
    titles = [f"Taladro percutor modelo {i}" for i in range(60)]
    cats = [f"CAT_{i % 3}" for i in range(60)]
    ok = tmp_path / "caps.parquet"
    pq.write_table(pa.table({"Title": titles, "CATEGORY": cats}), ok)
    assert run_prepare(ok, tmp_path)["rows"]["total"] == 60
    other = tmp_path / "es.parquet"
    pq.write_table(pa.table({"titulo": titles, "categoria": cats}), other)
    fails(other, tmp_path, r"no title or category column \(has titulo, categoria\).*rename them", error=SourceError)


def test_parquet_title_of_integers_and_integer_categories(tmp_path):
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"title": list(range(60)), "category": [f"C{i % 3}" for i in range(60)]}), path)
    fails(path, tmp_path, r"the title column holds int64 values, not text", error=SourceError)
    numeric = tmp_path / "numeric_labels.parquet"
    pq.write_table(pa.table({"title": [f"Taladro percutor {i}" for i in range(60)],
                             "category": [i % 3 for i in range(60)]}), numeric)
    summary = run_prepare(numeric, tmp_path)
    assert summary["categories"]["count"] == 3


def test_parquet_binary_title_with_latin1_is_counted(tmp_path):
    titles = [f"Taladro percutor modelo {i}".encode() for i in range(60)] + ["Café".encode("latin-1")]
    path = tmp_path / "bin.parquet"
    categories = [f"C{i % 3}" for i in range(61)]
    pq.write_table(pa.table({"title": pa.array(titles, pa.binary()), "category": categories}), path)
    chunks = list(read_chunks(path))
    assert sum(c.bad.get("invalid_utf8", 0) for c in chunks) == 1 and sum(len(c.table) for c in chunks) == 60
    assert "row 61: title is not UTF-8" in chunks[0].examples[0]


# ------------------------------------------------------------------------------ degenerate labels


def test_one_category_overall_stops_in_the_data_stage(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text(HEADER + csv_rows(40, categories=1))
    fails(path, tmp_path, r"every usable row has the same category \('CAT_0', 40 rows\): there is nothing to classify")


def test_every_category_too_rare_names_min_rows_per_category(tmp_path):
    path = tmp_path / "rare.csv"
    path.write_text(HEADER + "".join(f"Taladro modelo {i},reliable,spanish,CAT_{i // 2}\n" for i in range(40)))
    message = fails(path, tmp_path, r"the validation and test splits are empty: all 20 categories have fewer than "
                                    r"split.min_rows_per_category=3 rows")
    assert "lower split.min_rows_per_category" in message
    fails(path, tmp_path, r"drops them all", split={"rare_category_policy": "drop"})


def test_drop_policy_leaving_one_category_stops(tmp_path):
    path = tmp_path / "drop.csv"
    path.write_text(HEADER + csv_rows(40, categories=1) + "Sierra circular,reliable,spanish,SAWS\n" * 2)
    fails(path, tmp_path, r"train has 1 category: rare_category_policy=drop removed the 1 categories",
          split={"rare_category_policy": "drop", "min_rows_per_category": 5})


# ------------------------------------------------------------------------------ config


def tiny_config() -> dict:
    return yaml.safe_load(TINY_CONFIG.read_text())


@pytest.mark.parametrize("family, combination, pattern", [
    ("mlp", {"dropout": 1.5}, r"train.mlp.combinations\[0\].dropout: 1.5 is greater than the maximum of 0.95"),
    ("cnn", {"lr": -0.01}, r"train.cnn.combinations\[0\].lr: -0.01 is less than or equal to the minimum of 0"),
    ("tfidf", {"C": -1}, r"train.tfidf.combinations\[0\].C: -1 is less than or equal to the minimum of 0"),
    ("tfidf", {"dropout": 0.1}, r"train.tfidf.combinations\[0\]: unknown key\(s\) \['dropout'\]"),
    ("mlp", {"hidden": 64}, r"train.mlp.combinations\[0\].hidden: 64 is not of type 'array'"),
])
def test_explicit_combinations_are_validated_like_the_grid(family, combination, pattern):
    cfg = tiny_config()
    cfg["train"][family]["combinations"] = [combination]
    with pytest.raises(ConfigError, match=pattern):
        config_mod.check_config(cfg, SCHEMA)


def test_valid_combinations_pass():
    cfg = tiny_config()
    cfg["train"]["mlp"]["combinations"] = [{"dropout": 0.5, "lr": 0.1, "hidden": [8]}]
    cfg["train"]["tfidf"]["combinations"] = [{"C": 0.5}]
    config_mod.check_config(cfg, SCHEMA)


@pytest.mark.parametrize("cfg, pattern", [
    (["a", "b"], r"the config must be a mapping of sections .*got a list"),
    ("just text", r"got the string 'just text'"),
    ({"dataset": "demo"}, r"dataset: 'demo' is not of type 'object' \(a section is a mapping"),
    ({"dataset": {"name": "x", "source": "demo"}, "embeddings": {"w": {"kind": "word2vec", "dim": 8}},
      "split": {"subsample": 0}}, r"split.subsample: 0 is less than or equal to the minimum of 0"),
])
def test_config_that_is_not_a_mapping_names_the_key(cfg, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_mod.check_config(cfg, SCHEMA)


@pytest.mark.parametrize("source, pattern", [
    ("ftp://example.org/train.csv", r"config dataset.source: unsupported URL scheme 'ftp'"),
    ("s3://bucket/train.csv", r"unsupported URL scheme 's3'"),
    ("data/nope.csv", r"config dataset.source: 'data/nope.csv': no such file or directory"),
    ("Demo", r"did you mean `demo`"),
])
def test_sources_the_workflow_cannot_get(tmp_path, source, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_mod.check_source("dataset.source", source, tmp_path)


def test_vectors_source_scheme_is_checked(tmp_path):
    cfg = {"dataset": {"source": "demo"},
           "embeddings": {"sbwce": {"kind": "pretrained", "dim": 300, "source": "ftp://host/sbwce.txt.gz"}}}
    with pytest.raises(ConfigError, match=r"config embeddings.sbwce.source: unsupported URL scheme 'ftp'"):
        config_mod.check_sources(cfg, tmp_path)
    (tmp_path / "v.txt").write_text("1 3\na 1 2 3\n")
    cfg["embeddings"]["sbwce"]["source"] = "v.txt"
    config_mod.check_sources(cfg, tmp_path)  # an existing local file is fine
    cfg["embeddings"]["sbwce"]["source"] = "http://example.org/v.txt"
    config_mod.check_sources(cfg, tmp_path)  # downloaded by the workflow


def test_thousands_of_jobs_stop_unless_allowed():
    combos = {"mlp": {f"c{i}": {} for i in range(1210)}, "cnn": {"a": {}}, "tfidf": {"b": {}}}
    train = {"mlp": {"grid": {"lr": [0.1] * 11, "dropout": [0.1] * 11, "seed": list(range(10)), "epochs": [3]}}}
    with pytest.raises(ValueError, match=r"1,212 training jobs \(mlp 1,210 \(11 lr x 11 dropout x 10 seed\); cnn 1; "
                                         r"tfidf 1\), over train.max_combinations=1,000.*sample: N"):
        check_job_count(combos, train, 1000)
    check_job_count(combos, train, 2000)


@pytest.mark.parametrize("case", ["not-a-mapping", "ftp-source", "big-grid", "bad-combination"])
def test_parse_time_checks_stop_snakemake_before_any_job(workflow_dir, tmp_path, case):
    cfg = tiny_config()
    if case == "not-a-mapping":
        text, expected = "- dataset\n- train\n", "Config file must be given as JSON or YAML with keys at top level"
    else:
        if case == "ftp-source":
            cfg["dataset"]["source"] = "ftp://example.org/train.csv"
            expected = "config dataset.source: unsupported URL scheme 'ftp'"
        elif case == "big-grid":
            cfg["train"]["mlp"]["grid"]["lr"] = [round(0.001 * i, 3) for i in range(1, 41)]
            cfg["train"]["mlp"]["grid"]["seed"] = list(range(30))
            expected = "over train.max_combinations=1,000"
        else:
            cfg["train"]["mlp"]["combinations"] = [{"dropout": 1.5}]
            expected = "train.mlp.combinations[0].dropout: 1.5 is greater than the maximum of 0.95"
        text = yaml.safe_dump(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = snakemake(workflow_dir, "-n", "--configfile", str(path), check=False)
    assert proc.returncode != 0 and expected in proc.stdout + proc.stderr
    assert not (workflow_dir / "results").exists()


# ------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    from tests.test_train import make_features

    return make_features(tmp_path_factory.mktemp("toy"), n_train=300, n_val=100)


def test_silent_divergence_fails_naming_lr(toy, tmp_path):
    from meli.train.neural import NonFiniteLoss, run
    from tests.test_train import MLP

    features, matrix = toy
    out = tmp_path / "runs" / "mlp" / "huge-lr"
    with pytest.raises(NonFiniteLoss, match=r"training diverged: mean train loss .* at epoch 2, over .* for "
                                            r"2 epoch\(s\) in a row .*lr=10.0, optimizer=adam; "
                                            r"set in train.mlp.grid.lr"):
        run("mlp", {**MLP, "lr": 10.0, "epochs": 4}, features, matrix, out, "cpu", 1)
    assert not out.exists() or not any(out.iterdir())


def test_divergence_rule():
    from meli.train.neural import NonFiniteLoss, check_divergence

    params = {"lr": 1.0, "optimizer": "adam"}
    state = {"initial_loss": 3.4}
    check_divergence(state, 50.0, 1, 30, params, "cnn", last_epoch=False)  # one bad epoch may recover
    check_divergence(state, 3.0, 2, 30, params, "cnn", last_epoch=False)
    assert state["diverged_epochs"] == 0
    check_divergence(state, 1e19, 3, 30, params, "cnn", last_epoch=False)
    with pytest.raises(NonFiniteLoss, match="epoch 4"):
        check_divergence(state, 1e18, 4, 30, params, "cnn", last_epoch=False)
    with pytest.raises(NonFiniteLoss, match="epoch 1"):  # a one-epoch run that diverged
        check_divergence({"initial_loss": 3.4}, 1e19, 1, 30, params, "cnn", last_epoch=True)
    check_divergence({"initial_loss": None}, math.log(30) * 2.9, 1, 30, params, "cnn", last_epoch=True)


# ------------------------------------------------------------------------------ vectors


@pytest.fixture
def vocab(tmp_path) -> Path:
    path = tmp_path / "vocab.tsv"
    path.write_text("[PAD]\t0\n[UNK]\t3\ncasa\t5\nperro\t4\n")
    return path


def build_matrix(vocab: Path, source: Path, out: Path, **spec):
    import logging

    from meli.embeddings.matrix import run

    spec = {"name": "v", "kind": "pretrained", "dim": 3, **spec}
    return run(vocab, source, spec, out, logging.getLogger("meli.test"))


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_vectors_with_nan_or_inf_name_file_and_line(vocab, tmp_path, value):
    from meli.embeddings.matrix import EmbeddingError

    path = tmp_path / "v.txt"
    path.write_text(f"3 3\nzzz 1 {value} 2\ncasa 1 2 3\nperro 0.5 {value} 1\n")
    with pytest.raises(EmbeddingError, match=rf"v\.txt, line 4: value\(s\) {value} are not finite numbers"):
        build_matrix(vocab, path, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_binary_vectors_with_nan_name_the_word(vocab, tmp_path):
    from meli.embeddings.matrix import EmbeddingError

    path = tmp_path / "v.bin"
    path.write_bytes(b"1 3\ncasa " + np.array([1, np.nan, 2], "<f4").tobytes() + b"\n")
    with pytest.raises(EmbeddingError, match=r"v\.bin, vector 1 \('casa'\): values that are not finite"):
        build_matrix(vocab, path, tmp_path / "out", binary=True)


def test_word2vec_bin_without_binary_true_is_read_as_binary(vocab, tmp_path, caplog):
    vectors = {"casa": [1.0, 2.0, 3.0], "perro": [-1.0, 0.5, 0.25]}
    text = tmp_path / "v.txt"
    text.write_text("2 3\n" + "".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()))
    binary = tmp_path / "v.bin"
    binary.write_bytes(b"2 3\n" + b"".join(w.encode() + b" " + np.array(v, "<f4").tobytes() + b"\n"
                                           for w, v in vectors.items()))
    build_matrix(vocab, text, tmp_path / "text")
    expected = np.load(tmp_path / "text" / "matrix.npy")
    with caplog.at_level("WARNING"):
        build_matrix(vocab, binary, tmp_path / "bin")  # binary: false (the default)
        build_matrix(vocab, text, tmp_path / "text-as-bin", binary=True)  # and the other way round
    assert np.array_equal(np.load(tmp_path / "bin" / "matrix.npy"), expected)
    assert np.array_equal(np.load(tmp_path / "text-as-bin" / "matrix.npy"), expected)
    assert "looks like the word2vec binary format but embeddings.v.binary is false" in caplog.text
    assert "looks like the word2vec text format but embeddings.v.binary is true" in caplog.text


# ------------------------------------------------------------------------------ predict


@pytest.fixture(scope="module")
def trained_run(toy, tmp_path_factory):
    from meli.train.neural import run
    from tests.test_train import MLP

    features, matrix = toy
    results = features.parent
    run_dir = results / "runs" / "mlp" / "toy"
    run("mlp", {**MLP, "epochs": 2}, features, matrix, run_dir, "cpu", 1)
    (results / "data").mkdir(exist_ok=True)
    (results / "data" / "summary.json").write_text(json.dumps({"preprocess": {"lowercase": True,
                                                                              "strip_punctuation": True}}))
    return run_dir


def test_predict_flags_empty_titles_and_titles_without_a_known_word(trained_run, capsys):
    from meli import predict
    from tests.test_train import token

    known = " ".join(token(1, j) for j in range(4))
    args = ["--run", str(trained_run), "--device", "cpu", "--top-k", "2"]
    assert predict.main([*args, "--json", known, "", "zzzz qqqq"]) == 0
    out = json.loads(capsys.readouterr().out)["predictions"]
    assert out[0]["known_words"] == 4 and "warning" not in out[0]
    for p in out[1:]:
        assert p["known_words"] == 0 and p["warning"].startswith("no known word")
        assert len(p["top"]) == 2  # still printed, flagged
    assert predict.main([*args, known, "zzzz qqqq"]) == 0
    text = capsys.readouterr().out
    assert text.count("(no known word:") == 1
    assert text.index("zzzz qqqq") < text.index("(no known word:")


def test_predict_titles_file_in_latin1_names_the_file(tmp_path, capsys):
    from meli import predict

    path = tmp_path / "titles.txt"
    path.write_bytes("Taladro percutor\nCafé leña\n".encode("latin-1"))
    assert predict.main(["--run", str(tmp_path), "--file", str(path)]) == 2
    assert f"{path}: not UTF-8" in capsys.readouterr().err


def test_tfidf_predictor_counts_known_ngrams(tmp_path):
    from meli.embeddings.tfidf import TitleVectorizer
    from meli.inference import TfidfPredictor
    from meli.train.baseline import fit_ovr_svc

    texts = ["taladro percutor", "funda celular", "taladro bosch", "funda silicona"]
    vectorizer = TitleVectorizer({"word_ngrams": [1, 1], "char_ngrams": [], "min_df": 1})
    x = vectorizer.fit_transform(texts)
    classifier = fit_ovr_svc(x, np.array([0, 1, 0, 1]), 2, C=1.0)
    predictor = TfidfPredictor(vectorizer, classifier, ["DRILLS", "COVERS"], tmp_path,
                               {"lowercase": True, "strip_punctuation": True}, "spanish")
    assert predictor.known_words(["Taladro Makita", "", "zzzz"]).tolist() == [1, 0, 0]
