"""The data stage: bad rows, splits, subsample, rare categories, source splits, the workflow run."""
from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from snakemake.utils import validate

from conftest import ROOT, TINY_CONFIG, snakemake
from meli.data.demo import generate
from meli.data.prepare import DROPPED, PrepareError, main, prepare, stratified_split, stratified_subsample

SPLITS = ("train", "validation", "test")


def sections(**overrides: dict) -> dict:
    """dataset/preprocess/split sections with the schema's defaults, as the rule passes them."""
    cfg = {"dataset": {"name": "t", "source": "x"}, "preprocess": {}, "split": {},
           "embeddings": {"w2v": {"kind": "word2vec", "dim": 8}}}
    for section, values in overrides.items():
        cfg[section].update(values)
    validate(cfg, str(ROOT / "config" / "schema.yaml"))
    return {k: cfg[k] for k in ("dataset", "preprocess", "split")}


def write_csv(path: Path, records: list[tuple], header=("title", "label_quality", "language", "category"), extra=""):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(records)
    path.write_bytes(gzip.compress((text.getvalue() + extra).encode(), mtime=0))
    return path


def unique_demo(tmp_path: Path, rows=3000, categories=12, seed=1) -> Path:
    """Demo rows with a unique token per title (and no bad rows), so rows can be followed."""
    records = [(f"{t} u{i}", q, "spanish", c) for i, (t, q, _, c) in enumerate(generate(rows, categories, seed))
               if t.strip() and c]
    return write_csv(tmp_path / "unique.csv.gz", records)


def load(out: Path) -> dict[str, pd.DataFrame]:
    return {s: pd.read_parquet(out / f"{s}.parquet") for s in SPLITS}


def test_stratified_split_fractions_per_category_and_determinism():
    codes = np.repeat(np.arange(40), np.linspace(20, 2000, 40).astype(int))
    assign, rare = stratified_split(codes, 0.1, 0.2, seed=3)
    assert not rare.any()
    for c in (0, 20, 39):
        share = np.bincount(assign[codes == c], minlength=3) / (codes == c).sum()
        assert share[1] == pytest.approx(0.1, abs=0.06) and share[2] == pytest.approx(0.2, abs=0.06)
    assert np.bincount(assign)[1:].tolist() == pytest.approx([0.1 * len(codes), 0.2 * len(codes)], rel=0.03)
    assert (stratified_split(codes, 0.1, 0.2, seed=3)[0] == assign).all()
    assert (stratified_split(codes, 0.1, 0.2, seed=4)[0] != assign).any()


def test_every_category_keeps_a_training_row_and_rare_ones_follow_the_policy():
    codes = np.array([0] * 50 + [1, 1] + [2] + [3] * 3)
    assign, rare = stratified_split(codes, 0.45, 0.45, seed=0, min_rows=3, rare_policy="train_only")
    assert rare.tolist() == [False, True, True, False]
    assert (assign[codes == 1] == 0).all() and (assign[codes == 2] == 0).all()
    assert all((assign[codes == c] == 0).any() for c in range(4))
    dropped, _ = stratified_split(codes, 0.45, 0.45, seed=0, min_rows=3, rare_policy="drop")
    assert (dropped[np.isin(codes, [1, 2])] == DROPPED).all() and (dropped[codes == 0] != DROPPED).all()


def test_subsample_keeps_the_fraction_of_each_split_and_every_category():
    codes = np.repeat(np.arange(30), 300)
    assign, _ = stratified_split(codes, 0.1, 0.1, seed=0)
    sub = stratified_subsample(codes, assign, 0.2, seed=0)
    for s in range(3):
        assert (sub == s).sum() == pytest.approx(0.2 * (assign == s).sum(), rel=0.1)
        assert set(codes[sub == s]) == set(codes[assign == s])
    assert ((sub == assign) | (sub == DROPPED)).all()  # subsampling never moves a row between splits


def test_prepare_on_demo_rows_no_leak_and_seed_determinism(tmp_path):
    source = unique_demo(tmp_path)
    cfg = sections(split={"validation_fraction": 0.15, "test_fraction": 0.15, "seed": 5})
    summary = prepare(source, tmp_path / "a", cfg)
    parts = load(tmp_path / "a")
    ids = {s: set(df.title.str.extract(r"u(\d+)$")[0]) for s, df in parts.items()}
    assert not ids["train"] & ids["validation"] and not ids["train"] & ids["test"] and not ids["validation"] & ids["test"]
    assert sum(map(len, ids.values())) == summary["rows"]["total"] == summary["rows_read"]
    for s, df in parts.items():
        assert list(df.columns) == ["title", "text", "category", "label_quality", "language"]
        assert (df.text.str.len() > 0).all() and summary["rows"][s] == len(df)
    assert summary["rows"]["test"] == pytest.approx(0.15 * summary["rows"]["total"], rel=0.08)
    # stratified: every category's share is about the same in train and test
    share = pd.concat({s: parts[s].category.value_counts(normalize=True) for s in ("train", "test")}, axis=1)
    assert (share["train"] - share["test"]).abs().max() < 0.03
    prepare(source, tmp_path / "b", cfg)
    for s in SPLITS:
        assert (tmp_path / "a" / f"{s}.parquet").read_bytes() == (tmp_path / "b" / f"{s}.parquet").read_bytes()
    prepare(source, tmp_path / "c", sections(split={"seed": 6}))
    assert not load(tmp_path / "c")["test"].title.equals(parts["test"].title)
    assert set(summary) >= {"source", "preprocess", "rows", "categories", "label_quality", "token_length_quantiles",
                            "dropped", "rare_categories"}
    assert summary["source"]["format"] == "raw_csv" and len(summary["source"]["sha256"]) == 64
    assert summary["preprocess"] == cfg["preprocess"]
    assert summary["categories"] == {"count": 12, "train": 12, "validation": 12, "test": 12}


def test_subsample_through_prepare(tmp_path):
    source = unique_demo(tmp_path, rows=4000)
    full = prepare(source, tmp_path / "full", sections())
    sub = prepare(source, tmp_path / "sub", sections(split={"subsample": 0.25}))
    for s in SPLITS:
        assert sub["rows"][s] == pytest.approx(0.25 * full["rows"][s], rel=0.15)
    assert sub["categories"] == full["categories"]


def test_bad_rows_are_counted_per_reason_and_the_threshold_stops_the_run(tmp_path):
    good = [(f"Funda Silicona Samsung A{i}", "reliable", "spanish", f"CAT_{i % 4}") for i in range(400)]
    bad = [("", "reliable", "spanish", "CAT_0"), ("   ", "reliable", "spanish", "CAT_1"),
           ("Funda Moto G7", "reliable", "spanish", ""), ("Capa Celular", "reliable", "klingon", "CAT_2"),
           ("!!! ...", "unreliable", "spanish", "CAT_3"), ("Mochila Escolar", "reliable", "portuguese", "CAT_1"),
           ("Kit Pesca", "unreliable", "spanish", "CAT_2")]
    source = write_csv(tmp_path / "src.csv.gz", good[:200] + bad + good[200:], extra='"unclosed,reliable\n')
    cfg = sections(dataset={"label_quality": ["reliable"], "max_bad_row_fraction": 0.05})
    summary = prepare(source, tmp_path / "ok", cfg)
    assert summary["dropped"] == {"unparsable": 1, "invalid_utf8": 0, "title_not_text": 0, "empty_title": 2,
                                  "missing_category": 1, "unknown_language": 1,
                                  "empty_text": 0, "language_not_selected": 1, "label_quality_not_selected": 2}
    assert summary["rows_read"] == 408 and summary["rows"]["total"] == 400 and summary["bad_rows"] == 5
    cfg_all = sections(dataset={"max_bad_row_fraction": 0.05})
    assert prepare(source, tmp_path / "ok2", cfg_all)["dropped"]["empty_text"] == 1
    strict = sections(dataset={"max_bad_row_fraction": 0.01})
    with pytest.raises(PrepareError, match=r"6 of 408 rows are bad .*dataset.max_bad_row_fraction=0.01"):
        prepare(source, tmp_path / "strict", strict)
    assert not (tmp_path / "strict").exists() or not any((tmp_path / "strict").iterdir())
    assert main(["--source", str(source), "--out-dir", str(tmp_path / "cli"), "--config", json.dumps(strict)]) == 1


def test_rare_category_policy_in_summary(tmp_path):
    records = [(f"Taladro Bosch {i}", "reliable", "spanish", "DRILLS") for i in range(60)]
    records += [(f"Lijadora Orbital {i}", "reliable", "spanish", "SANDERS") for i in range(30)]
    records += [("Sierra Circular Makita", "reliable", "spanish", "CIRCULAR_SAWS")] * 2
    source = write_csv(tmp_path / "rare.csv.gz", records)
    kept = prepare(source, tmp_path / "kept", sections(split={"min_rows_per_category": 5}))
    assert kept["rare_categories"] == {"policy": "train_only", "applied": True, "min_rows": 5, "count": 1, "rows": 2}
    assert (load(tmp_path / "kept")["train"].category == "CIRCULAR_SAWS").sum() == 2
    gone = prepare(source, tmp_path / "gone", sections(split={"min_rows_per_category": 5, "rare_category_policy": "drop"}))
    assert gone["dropped"]["rare_category"] == 2 and gone["rows"]["total"] == 90


def test_course_sample_with_a_single_source_split_is_split_here(course_sample, tmp_path):
    summary = prepare(course_sample, tmp_path, sections(split={"subsample": 0.3}))
    assert summary["split"]["from"] == "stratified" and summary["source"]["format"] == "course_jsonl"
    assert summary["rows_read"] == 38_205 and summary["dropped"]["empty_text"] < 20
    assert summary["categories"]["count"] == 632 and summary["label_quality"]["test"] == {"reliable": summary["rows"]["test"]}
    assert summary["rows"]["total"] == pytest.approx(0.3 * (38_205 - summary["bad_rows"]), rel=0.1)


def test_course_directory_splits_are_kept(course_sample, tmp_path):
    with gzip.open(course_sample, "rt") as f:
        lines = [json.loads(next(f)) for _ in range(1500)]
    src = tmp_path / "course"
    src.mkdir()
    for i, s in enumerate(SPLITS):
        with gzip.open(src / f"spanish.{s}.jsonl.gz", "wt") as f:
            f.writelines(json.dumps(dict(r, split=s)) + "\n" for r in lines[i::3])
    summary = prepare(src, tmp_path / "out", sections())
    assert summary["split"]["from"] == "source"
    assert summary["rows"]["total"] == 1500 - summary["bad_rows"]
    assert all(490 <= summary["rows"][s] <= 500 for s in SPLITS)  # the files' own splits, not 10%/10%
    ignored = prepare(src, tmp_path / "out2", sections(split={"use_source_splits": False}))
    assert ignored["split"]["from"] == "stratified"


def test_headerless_csv_takes_the_configured_language(raw_head, tmp_path):
    es = prepare(raw_head, tmp_path / "es", sections(dataset={"max_bad_row_fraction": 0.05}))
    assert es["language"]["train"] == {"spanish": es["rows"]["train"]} and es["rows_read"] == 1260
    both = prepare(raw_head, tmp_path / "both",
                   sections(dataset={"languages": ["spanish", "portuguese"], "max_bad_row_fraction": 0.05}))
    assert both["rows"]["total"] == es["rows"]["total"] and set(both["language"]["train"]) == {"spanish", "portuguese"}


# ----------------------------------------------------------------------------- in the workflow


BAD_VALUES = [
    ("dataset", "languages", ["english"]),
    ("dataset", "max_bad_row_fraction", 1.5),
    ("dataset", "demo_categories", 41),
    ("split", "subsample", -0.1),
    ("split", "rare_category_policy", "keep"),
    ("preprocess", "min_token_lenght", 2),
]


@pytest.mark.parametrize("section, key, value", BAD_VALUES)
def test_bad_config_values_name_the_key(section, key, value):
    with pytest.raises(Exception, match=key):
        sections(**{section: {key: value}})


@pytest.mark.workflow
def test_bad_config_value_stops_the_workflow_before_any_job(workflow_dir):
    cfg = yaml.safe_load(TINY_CONFIG.read_text())
    cfg["split"]["subsample"] = -0.1
    (workflow_dir / "bad.yaml").write_text(yaml.safe_dump(cfg))
    proc = snakemake(workflow_dir, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0 and "subsample" in proc.stdout + proc.stderr
    assert "Job stats" not in proc.stdout + proc.stderr


@pytest.mark.workflow
def test_data_stage_in_the_workflow_then_nothing_to_do(workflow_dir):
    shutil.copy(TINY_CONFIG, workflow_dir / "tiny.yaml")
    target = "results/data/summary.json"
    snakemake(workflow_dir, target, "--cores", "1", "--configfile", "tiny.yaml")
    summary = json.loads((workflow_dir / target).read_text())
    assert summary["categories"]["count"] == 8 and summary["rows_read"] == 1200
    assert 0 < summary["bad_rows"] < 0.01 * 1200 and summary["split"]["from"] == "stratified"
    assert summary["rows"]["validation"] == pytest.approx(0.2 * summary["rows"]["total"], rel=0.1)
    assert (workflow_dir / "results/data/source/demo.csv.gz").exists()
    log = (workflow_dir / "results/logs/prepare_data.log").read_text()
    assert "rows/s" in log and "ETA" in log
    again = snakemake(workflow_dir, target, "--cores", "1", "--configfile", "tiny.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
