"""Issue 17: shared stores, hostile files, careless edits: nothing lost, nothing rerun for nothing.

Unit-level checks of each behaviour (tiny inputs, no snakemake); the workflow-level ones (a
cosmetic config change plans no training job, a checkout path with braces) are in
tests/test_workflow.py, the download checks against a local HTTP server in tests/test_fetch.py.
"""
from __future__ import annotations

import bz2
import gzip
import io
import json
import logging
import re
import tarfile
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import yaml

from meli import predict
from meli.config import ConfigError, OPERATIONAL_KEYS, check_config, check_sources, stage_config
from meli.data import duplicates
from meli.data.prepare import PrepareError, prepare
from meli.data.readers import Limits, SourceError, read_chunks
from meli.redact import redact_config, redact_config_text, redact_text, redact_url
from meli.train import memory

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
CATS = ("CELLPHONE_COVERS", "KITCHEN_KNIVES", "BICYCLES")
WORDS = {"CELLPHONE_COVERS": "funda silicona celular", "KITCHEN_KNIVES": "cuchillo cocina acero",
         "BICYCLES": "bicicleta rodado aluminio"}


def base_config(**split) -> dict:
    return {
        "dataset": {"name": "t", "source": "x", "format": "auto", "languages": ["spanish"],
                    "label_quality": ["reliable", "unreliable"], "max_bad_row_fraction": 0.01, "sha256": None},
        "preprocess": {"lowercase": True, "strip_accents": True, "strip_punctuation": True, "strip_numbers": False,
                       "remove_stopwords": True, "min_token_length": 2, "chunk_rows": 1000},
        "split": {"use_source_splits": True, "validation_fraction": 0.2, "test_fraction": 0.2, "subsample": 1.0,
                  "seed": 3, "rare_category_policy": "train_only", "min_rows_per_category": 3,
                  "keep_duplicates_together": "none", **split},
    }


# ------------------------------------------------------------------ 2. operational keys are not params
def test_stage_config_leaves_out_what_cannot_change_the_output():
    cfg = base_config()
    cfg["dataset"].update(download_retries=3, download_timeout_s=60, max_line_bytes=1 << 20, demo_rows=100)
    prepared = stage_config(cfg, "prepare")
    for section, keys in OPERATIONAL_KEYS.items():
        assert not keys & set(prepared[section]), section
    assert prepared["split"] == cfg["split"] and prepared["dataset"]["languages"] == ["spanish"]
    # every operational key is a real schema key (a rename would silently make it a param again)
    for section, keys in OPERATIONAL_KEYS.items():
        assert keys <= set(SCHEMA["properties"][section]["properties"]), section


# ------------------------------------------------------------------ 4. bounded memory whatever the input
def jsonl_gz(lines: list[bytes]) -> bytes:
    return gzip.compress(b"\n".join(lines) + b"\n", mtime=0)


def record(title: str, category: str) -> bytes:
    return json.dumps({"title": title, "category": category}).encode()


def test_a_line_without_end_stops_naming_max_line_bytes(tmp_path):
    bomb = tmp_path / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(b"x" * 200_000, mtime=0))  # ~200 bytes on disk, no newline
    with pytest.raises(SourceError, match=r"bomb.jsonl.gz.*longer than dataset.max_line_bytes=4,096"):
        list(read_chunks(bomb, limits=Limits(max_line_bytes=4096)))
    long_row = tmp_path / "long.csv"
    long_row.write_bytes(b"title,category\n" + b"a b,C\n" * 10 + b"y" * 50_000 + b",C\n")
    with pytest.raises(SourceError, match="longer than dataset.max_line_bytes"):
        list(read_chunks(long_row, limits=Limits(max_line_bytes=4096)))


def test_decompressed_size_is_capped(tmp_path):
    src = tmp_path / "big.csv.bz2"
    src.write_bytes(bz2.compress(b"title,category\n" + b"funda celular negra,C\n" * 200_000))  # 4.4 MB inflated
    assert src.stat().st_size < 10_000
    with pytest.raises(SourceError, match=r"over dataset.max_source_bytes=1,000,000 bytes after decompression"):
        list(read_chunks(src, limits=Limits(max_source_bytes=1_000_000)))
    jl = tmp_path / "big.jsonl.gz"
    jl.write_bytes(jsonl_gz([record("funda celular negra", "C")] * 40_000))
    with pytest.raises(SourceError, match="max_source_bytes"):
        list(read_chunks(jl, limits=Limits(max_source_bytes=1_000_000)))


def course_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:bz2") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def titles(n: int, offset: int = 0) -> list[bytes]:
    return [record(f"{WORDS[c]} modelo{offset + i}", c) for i in range(n) for c in CATS]


def test_a_split_that_vanishes_is_an_error_not_a_silent_re_split(tmp_path):
    # the train member is one unparsable line (1 bad row of 361: under the 1% threshold)
    archive = course_archive(tmp_path / "course.tar.bz2", {
        "spanish.train.jsonl.gz": gzip.compress(b"{" + b"z" * 3000 + b"\n", mtime=0),
        "spanish.validation.jsonl.gz": jsonl_gz(titles(60)),
        "spanish.test.jsonl.gz": jsonl_gz(titles(60, 1000)),
    })
    with pytest.raises(PrepareError, match=r"the source's train split has no usable row left \(1 unparsable\).*"
                                           r"use_source_splits: false"):
        prepare(archive, tmp_path / "out", base_config())
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # asked for explicitly, the remaining rows are split here
    summary = prepare(archive, tmp_path / "out", base_config(use_source_splits=False))
    assert summary["split"]["from"] == "stratified"


@pytest.mark.parametrize("key, value", [("vocab.max_len", 100_000), ("vocab.max_len", 10**9),
                                        ("train.cnn.grid.filters", [100_000]),
                                        ("train.mlp.grid.batch_size", [10**7])])
def test_sizes_are_bounded_in_the_schema(key, value):
    section, *rest = key.split(".")
    cfg: dict = {"dataset": {"name": "t", "source": "demo"}}
    node = cfg.setdefault(section, {})
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value
    with pytest.raises(ConfigError, match=rf"{rest[-1]}.*greater than the maximum"):
        check_config(cfg, SCHEMA)


def test_memory_estimate_names_the_figure_and_the_mem_mb_needed():
    cnn = {"filters": 100, "kernel_sizes": [2, 3, 4], "hidden": [], "batch_size": 128}
    # vocab.max_len 100000 on 300 rows (the case, now also refused by the schema): > 6 GB
    big = memory.estimate("cnn", cnn, rows=300, max_len=100_000, vocab_size=2000, dim=300, n_classes=20)
    assert big.total_mb > 6000
    with pytest.raises(memory.MemoryEstimateError) as err:
        memory.check(big, 4000, "cnn")
    msg = str(err.value)
    assert "mem_mb=4,000" in msg and "train.cnn.resources.mem_mb" in msg and "one batch's activations" in msg
    assert int(re.search(r"at least ([\d,]+)", msg).group(1).replace(",", "")) >= big.total_mb
    small = memory.estimate("mlp", {"hidden": [32], "batch_size": 64}, rows=1000, max_len=16, vocab_size=500, dim=16,
                            n_classes=8)
    memory.check(small, 1000, "mlp")  # the tiny test config fits its 1,000 MB
    # the full MeLi config: ~10M rows x 20 tokens, SBWCE 50k x 300, fits the 32 GB it asks for
    full = memory.estimate("cnn", {**cnn, "filters": 200, "batch_size": 256}, rows=10_000_000, max_len=20,
                           vocab_size=50_002, dim=300, n_classes=632)
    memory.check(full, 32000, "cnn")
    assert 900 < full.total_mb < 8000


def test_training_job_fails_before_loading_when_memory_does_not_fit(tmp_path):
    from tests.test_train import MLP, make_features
    from meli.train.neural import run

    features, matrix = make_features(tmp_path)
    with pytest.raises(memory.MemoryEstimateError, match=r"needs about .* MB .* more than its mem_mb=100"):
        run("mlp", MLP, features, matrix, tmp_path / "run", "cpu", 1, mem_mb=100)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ 5. untrusted files run no code
def pretrained(source: str, sha256: str | None = None) -> dict:
    return {"dataset": {"source": "demo", "sha256": None},
            "embeddings": {"v": {"kind": "pretrained", "source": source, "dim": 8, "sha256": sha256}}}


def test_pickled_vectors_from_the_network_need_a_sha256(tmp_path):
    with pytest.raises(ConfigError, match=r"embeddings.v.source: vectors.kv is a pickle.*sha256"):
        check_sources(pretrained("https://example.org/vectors.kv"))
    check_sources(pretrained("https://example.org/vectors.kv", "a" * 64))
    check_sources(pretrained("https://example.org/vectors.txt.gz"))  # parsed, not unpickled
    local = tmp_path / "mine.kv"
    local.write_bytes(b"")
    check_sources(pretrained(str(local)))  # your own disk: trusted


class Loaded:
    """A predictor stand-in: what matters here is whether predict gets as far as loading."""

    categories = ["A", "B"]

    def __init__(self, run_dir, data_dir, features_dir, device="auto"):
        pass

    def predict_proba(self, titles):
        return np.full((len(titles), 2), 0.5, np.float32)


def test_predict_refuses_a_pickled_model_outside_this_workflow(tmp_path, monkeypatch, capsys):
    FakePredictor = Loaded

    elsewhere = tmp_path / "downloads" / "runs" / "tfidf" / "x"
    elsewhere.mkdir(parents=True)
    (elsewhere / "model.joblib").write_bytes(b"not loaded")
    here = tmp_path / "wf"
    (here / "results" / "runs").mkdir(parents=True)
    monkeypatch.chdir(here)
    assert predict.main(["--run", str(elsewhere), "t"], load_predictor=FakePredictor) == 2
    err = capsys.readouterr().err
    assert "is a pickle" in err and "--trust-model" in err and "Traceback" not in err
    assert predict.main(["--run", str(elsewhere), "--trust-model", "t"], load_predictor=FakePredictor) == 0
    mine = here / "results" / "runs" / "tfidf" / "x"
    mine.mkdir(parents=True)
    (mine / "model.joblib").write_bytes(b"")
    assert predict.main(["--run", "results/runs/tfidf/x", "t"], load_predictor=FakePredictor) == 0


@pytest.mark.parametrize("model_file, content", [("model.pt", b"garbage"), ("model.joblib", b"garbage")])
def test_predict_on_a_damaged_model_is_one_line_without_traceback(tmp_path, monkeypatch, capsys, model_file, content):
    run = tmp_path / "results" / "runs" / "x" / "c"
    run.mkdir(parents=True)
    (run / model_file).write_bytes(content)
    # The run record names the family (meli.inference dispatches on it, not on the file name).
    (run / "metrics.json").write_text(json.dumps({"family": "tfidf" if model_file == "model.joblib" else "mlp"}))
    monkeypatch.chdir(tmp_path)
    assert predict.main(["--run", "results/runs/x/c", "--device", "cpu", "t"]) == 2
    err = capsys.readouterr().err
    assert f"{model_file}: cannot read the model" in err and "Traceback" not in err


# ------------------------------------------------------------------ 7. secrets never shown
PRESIGNED = ("https://bucket.s3.amazonaws.com/meli.tar.bz2?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAEXAMPLE%2F20261130&X-Amz-Signature=deadbeefcafe&X-Amz-Expires=3600")


def test_urls_and_secret_keys_are_redacted():
    shown = redact_url(PRESIGNED)
    assert "deadbeefcafe" not in shown and "AKIAEXAMPLE" not in shown and "X-Amz-Expires=3600" in shown
    assert redact_url("https://ana:hunter2@mirror.example/d.csv") == "https://ana:***@mirror.example/d.csv"
    tokened = redact_url("https://h/x?token=tok123&page=2")
    assert "tok123" not in tokened and "page=2" in tokened
    assert redact_url("results/data/x.csv") == "results/data/x.csv"
    assert "hunter2" not in redact_text("download of https://ana:hunter2@mirror.example/d.csv failed")
    cfg = {"dataset": {"source": PRESIGNED, "name": "x"}, "mlflow": {"tracking_uri": "https://u:pw@ml.example"},
           "extra": {"api_key": "sk-123", "min_token_length": 2}}
    text = json.dumps(redact_config(cfg))
    assert "deadbeefcafe" not in text and ":pw@" not in text and "sk-123" not in text
    assert '"min_token_length": 2' in text
    yaml_text = f"dataset:\n  source: {PRESIGNED}\n  api_key: sk-123  # mine\npreprocess:\n  min_token_length: 2\n"
    shown_yaml = redact_config_text(yaml_text)
    assert "deadbeefcafe" not in shown_yaml and "sk-123" not in shown_yaml and "min_token_length: 2" in shown_yaml


def test_report_and_mlflow_hint_show_no_secret(tmp_path):
    from meli.report.sections import section_provenance
    from meli.tracking import ui_hint

    configfile = tmp_path / "c.yaml"
    configfile.write_text(f"dataset:\n  source: {PRESIGNED}\n")
    results = types.SimpleNamespace(summary={}, coverage=[])
    html = section_provenance(results, {"dataset": {"source": PRESIGNED}}, [str(configfile)], tmp_path)
    assert "deadbeefcafe" not in html and "AKIAEXAMPLE" not in html and "X-Amz-Signature=***" in html
    assert "pw" not in ui_hint("https://u:pw@mlflow.example")


# ------------------------------------------------------------------ 8. duplicates counted and kept together
def test_duplicate_counts_within_across_and_conflicting():
    keys = np.array([1, 1, 2, 3, 2, 4, 3, 5, 5], np.uint64)
    assign = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2], np.int8)  # train 1,1,2,3 | val 2,4 | test 3,5,5
    codes = np.array([0, 1, 0, 0, 0, 0, 0, 1, 1])  # key 1 has two categories
    d = duplicates.count(keys, assign, codes)
    assert d["within"] == {"train": 1, "validation": 0, "test": 1}
    assert d["validation_in_train"] == 1 and d["test_in_train"] == 1 and d["test_in_train_or_validation"] == 1
    assert d["conflicting_categories"] == {"titles": 1, "rows": 2}


def relisted_csv(path: Path) -> Path:
    """A third of the rows are relisted copies (same title, a few with another category)."""
    rows = [f"{WORDS[c]} modelo{i},{c}" for i in range(80) for c in CATS]
    copies = rows[::2] + [rows[1].rsplit(",", 1)[0] + ",BICYCLES"]
    path.write_text("title,category\n" + "\n".join(rows + copies) + "\n")
    return path


def test_summary_counts_relisted_titles_and_the_group_split_keeps_them_together(tmp_path, caplog):
    src = relisted_csv(tmp_path / "relisted.csv")
    with caplog.at_level(logging.WARNING, logger="meli.data.prepare"):
        plain = prepare(src, tmp_path / "plain", base_config())
    d = plain["duplicates"]["exact"]
    assert d["test_in_train"] > 0 and d["conflicting_categories"]["titles"] == 1
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["duplicates"] == plain["duplicates"]
    assert "keep_duplicates_together" in caplog.text
    grouped = prepare(src, tmp_path / "grouped", base_config(keep_duplicates_together="cleaned"))
    for kind in ("exact", "cleaned"):
        g = grouped["duplicates"][kind]
        assert g["test_in_train_or_validation"] == 0 and g["validation_in_train"] == 0, kind
    assert grouped["duplicates"]["exact"]["within"]["train"] + grouped["duplicates"]["exact"]["within"]["test"] > 0
    assert grouped["categories"]["test"] == len(CATS)  # still stratified


def test_report_shows_duplicates_beside_the_test_scores():
    from meli.report.sections import section_duplicates

    d = duplicates.count(np.array([1, 1, 2], np.uint64), np.array([0, 2, 2], np.int8), np.zeros(3, int))
    html = section_duplicates(types.SimpleNamespace(summary={"duplicates": {"exact": d, "cleaned": d},
                                                             "rows": {"test": 2}, "split": {"from": "stratified"}}))
    assert "Repeated titles" in html and "test rows seen in train/validation" in html and "1 (50" in html
    assert section_duplicates(types.SimpleNamespace(summary={})) == ""


# ------------------------------------------------------------------ 9. rough edges
def test_predict_device_cuda_without_cuda_is_a_clear_message(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run = tmp_path / "results" / "runs" / "mlp" / "c"
    run.mkdir(parents=True)
    (run / "model.pt").write_bytes(b"x")
    (run / "metrics.json").write_text(json.dumps({"family": "mlp"}))  # the record names the family
    monkeypatch.chdir(tmp_path)
    assert predict.main(["--run", "results/runs/mlp/c", "--device", "cuda", "t"]) == 1
    err = capsys.readouterr().err
    assert "--device cuda requested, but" in err and "--device cpu" in err and "Traceback" not in err


def test_sigterm_logs_the_signal_and_where_training_resumes(tmp_path, monkeypatch, caplog):
    from tests.test_train import MLP, make_features
    from meli.train.neural import KILL_ENV, KILL_SIGNAL_ENV, run

    features, matrix = make_features(tmp_path, n_train=200, n_val=60)
    params = {**MLP, "epochs": 2}
    monkeypatch.setenv(KILL_ENV, "1")
    monkeypatch.setenv(KILL_SIGNAL_ENV, "TERM")
    ckpt = tmp_path / "ckpt"
    with caplog.at_level(logging.INFO, logger="meli.train.neural"), pytest.raises(SystemExit) as stop:
        run("mlp", params, features, matrix, tmp_path / "run", "cpu", 1, checkpoint_dir=ckpt)
    assert stop.value.code == 75  # issue 23: saved, then exit 75 (interrupted; Snakemake retries), was 143
    assert "received SIGTERM" in caplog.text and "stopping after epoch 1" in caplog.text
    assert f"saved after epoch 1 in {ckpt / 'checkpoint.pt'}; the next attempt resumes there" in caplog.text
    monkeypatch.delenv(KILL_ENV)
    metrics = run("mlp", params, features, matrix, tmp_path / "run", "cpu", 1, checkpoint_dir=ckpt)
    assert metrics["resumed_from_epoch"] == 1


def test_schema_documents_the_new_limits():
    dataset = SCHEMA["properties"]["dataset"]["properties"]
    for key in ("max_line_bytes", "max_source_bytes"):
        assert dataset[key]["description"] and dataset[key]["default"] > 0
    assert SCHEMA["properties"]["split"]["properties"]["keep_duplicates_together"]["default"] == "none"
    assert pa  # pyarrow is the readers' engine (imported for the Limits tests above)


# ------------------------------------------------------------------ 1 and 3. a shared MLflow store
def test_two_checkouts_sharing_one_store_and_runs_leaving_the_config(tmp_path):
    """Two checkouts import the same combinations into one store and experiment: neither hides
    the other's runs; a checkout replaces only its own re-trained runs, and archives (tags and
    soft-deletes) its own runs that its current config or dataset no longer has."""
    from meli import tracking
    from tests.test_tracking import write_run

    shared = tmp_path / "shared"
    shared.mkdir()
    uri = f"sqlite:///{shared / 'mlflow.db'}"

    def checkout(name: str, sha: str) -> tuple[Path, list[str]]:
        results = tmp_path / name / "results"
        runs = [str(results / "runs" / "mlp" / c) for c in ("c1", "c2")]
        for i, run in enumerate(runs):
            write_run(run, epochs=2, seed=i)
        (results / "data").mkdir(parents=True)
        (results / "data" / "summary.json").write_text(json.dumps({"source": {"sha256": sha, "path": "x"}}))
        return results, runs

    def import_(results: Path, runs: list[str]) -> dict:
        return tracking.import_runs(runs, "shared-exp", uri, results / "mlflow", results / "mlflow" / "imported.json",
                                    dataset="d", summary=results / "data" / "summary.json")

    def active() -> set[str]:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name("shared-exp")
        return {r.info.run_id for r in client.search_runs([exp.experiment_id], max_results=100)}

    a, runs_a = checkout("a", "a" * 64)
    b, runs_b = checkout("b", "a" * 64)  # same dataset, same combinations, another results/
    first_a = import_(a, runs_a)
    first_b = import_(b, runs_b)
    assert first_b["replaced"] == [] and first_b["archived"] == [] and len(first_b["imported"]) == 2
    assert first_a["workflow_id"] != first_b["workflow_id"]
    assert active() == set(first_a["runs"].values()) | set(first_b["runs"].values())

    write_run(runs_a[0], epochs=3, seed=7)  # a re-trains c1: only a's old c1 goes
    again = import_(a, runs_a)
    assert again["replaced"] == [first_a["runs"][runs_a[0]]] and again["archived"] == []
    assert set(first_b["runs"].values()) <= active() and len(active()) == 4

    after_removal = import_(a, runs_a[1:])  # c1 removed from a's grid: archived, b untouched
    assert after_removal["archived"] == [again["runs"][runs_a[0]]]
    assert active() == {again["runs"][runs_a[1]], *first_b["runs"].values()}

    (a / "data" / "summary.json").write_text(json.dumps({"source": {"sha256": "b" * 64, "path": "y"}}))
    other_dataset = import_(a, runs_a[1:])  # a switched dataset: its old-dataset run is archived
    assert other_dataset["imported"] == runs_a[1:] and other_dataset["archived"] == [again["runs"][runs_a[1]]]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(tracking_uri=uri).get_run(again["runs"][runs_a[1]]).data.tags["meli.archived"] == \
        "another dataset"
    assert active() == {other_dataset["runs"][runs_a[1]], *first_b["runs"].values()}


def test_report_shows_only_what_the_current_runs_use(tmp_path):
    """Issue 17 (3): a removed embedding's coverage and benchmarks, and another dataset's download
    benchmark, left in results/ by an earlier config, are not shown."""
    from meli.report import aggregate, sections
    from tests.test_aggregate import make_results

    results = make_results(tmp_path)
    aggregate.aggregate(sorted(str(p) for p in (results / "runs").glob("*/*")), results / "tables")
    old = results / "embeddings" / "sbwce_removed"
    old.mkdir()
    (old / "coverage.json").write_text(json.dumps({"name": "sbwce_removed", "dim": 300}))
    bench = "s\th:m:s\tmax_rss\tcpu_time\n1.0\t0:00:01\t10\t1.0\n"
    for stage in ("embedding_matrix/sbwce_removed", "embedding_matrix/w2v", "download_dataset/old-dataset.tar.bz2",
                  "prepare_data"):
        (results / "benchmarks" / f"{stage}.tsv").parent.mkdir(parents=True, exist_ok=True)
        (results / "benchmarks" / f"{stage}.tsv").write_text(bench)
    r = sections.Results(results)
    assert [c["name"] for c in r.coverage] == ["w2v"]
    assert "embedding_matrix/w2v" in r.stage_benchmarks and "prepare_data" in r.stage_benchmarks
    assert not any("sbwce_removed" in k or "old-dataset" in k for k in r.stage_benchmarks)


def test_sigterm_through_the_jobstatus_wrapper_is_recorded_as_interrupted(tmp_path):
    """The CLI saves its state and exits 75 (issue 23; it used to end by the signal itself), so the
    sweep's record says interrupted, not killed: the next attempt resumes."""
    import os
    import subprocess
    import sys

    from tests.test_train import MLP, make_features

    features, matrix = make_features(tmp_path, n_train=200, n_val=60)
    status = tmp_path / "status.json"
    proc = subprocess.run(
        [sys.executable, "-m", "meli.jobstatus", "--status", str(status), "--", sys.executable, "-m",
         "meli.train.neural", "--family", "mlp", "--params", json.dumps({**MLP, "epochs": 2}), "--features",
         str(features), "--matrix", str(matrix), "--out-dir", str(tmp_path / "run"), "--device", "cpu"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "MELI_KILL_AFTER_EPOCH": "1",
             "MELI_KILL_SIGNAL": "TERM"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert "received SIGTERM" in proc.stderr and "saved after epoch 1" in proc.stderr
    record = json.loads(status.read_text())
    assert record["state"] == "interrupted" and "resumes" in record["detail"]
