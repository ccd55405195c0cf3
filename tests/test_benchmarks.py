"""The synthetic-data generator and the scale benchmark harness (correctness, not speed)."""
from __future__ import annotations

import csv
import gzip
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_scale, synthetic

ROOT = Path(__file__).resolve().parents[1]
SMALL = replace(synthetic.PRESETS["official"], categories=60, vocab_size=20_000)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], rows[1:]


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gen") / "sample.csv"
    synthetic.write_titles_csv(path, 30_000, SMALL)
    return path


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, sample):
    again = tmp_path / "again.csv"
    synthetic.write_titles_csv(again, 30_000, SMALL)
    assert again.read_bytes() == sample.read_bytes()
    other = tmp_path / "other.csv"
    synthetic.write_titles_csv(other, 30_000, replace(SMALL, seed=1))
    assert other.read_bytes() != sample.read_bytes()
    a, b = tmp_path / "a.csv.gz", tmp_path / "b.csv.gz"
    synthetic.write_titles_csv(a, 2_000, SMALL)
    synthetic.write_titles_csv(b, 2_000, SMALL)
    assert a.read_bytes() == b.read_bytes()  # no file name or time in the gzip header
    assert gzip.decompress(a.read_bytes()) == sample.read_bytes()[: len(gzip.decompress(a.read_bytes()))]


def test_smaller_file_is_a_prefix_of_a_larger_one(tmp_path, sample):
    # Rows come in seeded blocks: 1M rows are the first 1M rows of the 4M file.
    rows = synthetic.BLOCK_ROWS + 17
    big = tmp_path / "big.csv"
    synthetic.write_titles_csv(big, rows + 5_000, SMALL)
    small = tmp_path / "small.csv"
    synthetic.write_titles_csv(small, rows, SMALL)
    assert big.read_bytes().startswith(small.read_bytes())
    assert len(read_rows(small)[1]) == rows


def test_official_format_rows_and_columns(sample):
    header, rows = read_rows(sample)
    assert header == ["title", "label_quality", "language", "category"]
    assert len(rows) == 30_000
    assert all(len(r) == 4 for r in rows)
    assert {r[1] for r in rows} == {"reliable", "unreliable"}
    assert {r[2] for r in rows} == {"spanish", "portuguese"}
    assert len({r[3] for r in rows}) == SMALL.categories
    assert all(r[0] and r[0] == r[0].strip() for r in rows)
    # Titles with a comma are quoted, as in the official file (and parse back whole).
    with_comma = [r[0] for r in rows if "," in r[0]]
    assert 0.03 < len(with_comma) / len(rows) < 0.08
    raw = sample.read_text(encoding="utf-8")
    assert f'"{with_comma[0]}",' in raw


def test_distributions_match_the_measured_real_ones(sample):
    _, rows = read_rows(sample)
    n_tokens = np.array([len(r[0].split()) for r in rows])
    # Real titles: median 8 tokens, p5 3, p95 11, max 16.
    assert np.median(n_tokens) == 8
    assert 2 <= np.quantile(n_tokens, 0.05) <= 4 and 10 <= np.quantile(n_tokens, 0.95) <= 12
    assert n_tokens.min() >= 1 and n_tokens.max() <= 16
    chars = np.array([len(r[0]) for r in rows])
    assert 40 < chars.mean() < 60  # real: 48.7
    reliable = np.mean([r[1] == "reliable" for r in rows])
    assert abs(reliable - synthetic.RELIABLE_SHARE) < 0.01
    assert abs(np.mean([r[2] == "portuguese" for r in rows]) - 0.5) < 0.02
    # Zipf-like category skew: the largest category is several times the smallest.
    counts = np.array(sorted(np.unique([r[3] for r in rows], return_counts=True)[1]))
    assert counts[-1] / counts[0] > 3
    top_share = counts[-1] / counts.sum()
    expected = 1 / (np.arange(1, SMALL.categories + 1) ** -synthetic.CATEGORY_ZIPF).sum()
    assert abs(top_share - expected) < 0.3 * expected
    # Function words lead the word frequencies ("de" ~3.4% of real tokens); distinct words grow
    # like the real ones (47k in 38k real titles; here capped by the 2 x 20k-word vocabulary).
    words = [w.lower().rstrip(",") for r in rows for w in r[0].split()]
    values, freq = np.unique(words, return_counts=True)
    assert values[np.argmax(freq)] == "de" and 0.02 < freq.max() / len(words) < 0.05
    assert len(values) > 12_000


def test_course_preset_is_spanish_with_632_categories(tmp_path):
    path = tmp_path / "course.csv"
    synthetic.write_titles_csv(path, 20_000, replace(synthetic.PRESETS["course-es"], vocab_size=20_000))
    _, rows = read_rows(path)
    assert {r[2] for r in rows} == {"spanish"}
    assert 550 < len({r[3] for r in rows}) <= 632


def test_vectors_file_is_word2vec_text(tmp_path):
    path = tmp_path / "vectors.txt.gz"
    synthetic.write_vectors(path, words=700, dim=12)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    assert lines[0] == "700 12"
    assert len(lines) == 701
    parsed = [line.split(" ") for line in lines[1:]]
    assert all(len(p) == 13 for p in parsed)
    values = np.array([[float(x) for x in p[1:]] for p in parsed])
    assert values.std() > 0.05
    words = [p[0] for p in parsed]
    assert len(set(words)) == 700
    assert words[:15] == synthetic.vocabulary("spanish", 15).tolist()
    again = tmp_path / "again.txt.gz"
    synthetic.write_vectors(again, words=700, dim=12)
    assert again.read_bytes() == path.read_bytes()


def test_bad_row_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        synthetic.write_titles_csv(tmp_path / "x.csv", 0, SMALL)
    assert not (tmp_path / "x.csv").exists()


def test_extrapolation_is_a_least_squares_line():
    ms = [bench_scale.Measure("data", n, 2.0 + n / 1e5, 100 + n / 1e4, n) for n in (1_000, 2_000, 4_000)]
    e = bench_scale.extrapolate(ms, "data", 20_000_000)
    assert e["rows"] == 20_000_000
    assert e["wall_s"] == pytest.approx(202.0)
    assert e["peak_rss_mb"] == pytest.approx(2_100.0)
    assert bench_scale.extrapolate(ms[:1], "data", 20_000_000) is None
    # Start-up-dominated tiny runs can give a falling line: no figure rather than a negative one.
    falling = [bench_scale.Measure("data", n, 5.0 - n / 1e4, 100 + n / 1e4, n) for n in (1_000, 2_000)]
    e = bench_scale.extrapolate(falling, "data", 20_000_000)
    assert e["wall_s"] is None and e["rows_per_s"] is None and e["peak_rss_mb"] == pytest.approx(2_100.0)


def test_peak_rss_is_the_stage_process_own(tmp_path):
    # A small child of a big parent must not report the parent's size (ru_maxrss would).
    ballast = np.ones(300 * 2**20, dtype=np.uint8)  # noqa: F841 - 300 MB in this process
    (tmp_path / "allocate.py").write_text("import sys\nblob = bytearray(int(sys.argv[1]) * 2**20)\n")
    _, small = bench_scale.run_measured("allocate", ["1"], tmp_path / "small.log", cwd=tmp_path)
    _, big = bench_scale.run_measured("allocate", ["400"], tmp_path / "big.log", cwd=tmp_path)
    assert small < 100 and 400 <= big < 500
    with pytest.raises(bench_scale.StageFailed, match="allocate"):
        bench_scale.run_measured("allocate", ["not-a-number"], tmp_path / "bad.log", cwd=tmp_path)


@pytest.mark.workflow
def test_quick_benchmark_reports_every_stage(tmp_path):
    # Through `make bench`'s entry point: run_all.py runs bench_scale.py and writes the summary.
    out = tmp_path / "bench-out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick", "--only", "scale",
           "--sizes", "4000,8000", "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "scale.json").read_text())
    by_stage: dict[str, list[dict]] = {}
    for m in report["measures"]:
        by_stage.setdefault(m["stage"], []).append(m)
    expected = {"data": 2, "features": 2, "vectors": 1, "train": 2, "dry run": 1}
    for stage, count in expected.items():
        if stage in bench_scale.STAGE_MODULES and not bench_scale.present(stage):
            continue  # only while a teammate's module is not in yet
        assert len(by_stage.get(stage, [])) == count, (stage, proc.stderr[-2000:])
        for m in by_stage[stage]:
            assert m["wall_s"] > 0 and m["peak_rss_mb"] > 20 and m["rows_per_s"] > 0
    assert [m["rows"] for m in by_stage["data"]] == [4000, 8000]
    assert all(0.7 * m["size"] < m["rows"] < 0.9 * m["size"] for m in by_stage.get("train", []))  # train share
    assert by_stage["dry run"][0]["extra"]["train_neural_jobs"] >= 27
    assert {"data", "features"} <= set(report["extrapolated"])
    assert report["extrapolated"]["data"]["rows"] == 20_000_000
    table = (out / "scale.md").read_text()
    for row in ("| data | 4,000 |", "| features | 8,000 |", "| dry run |", "20,000,000 (extrapolated)"):
        assert row in table
    assert "| target | measured | verdict |" in table and "dry run of 27 combinations" in table
    summary = (out / "summary.md").read_text()
    assert summary == proc.stdout and "| scale | ok |" in summary and table.strip() in summary


def test_tfidf_benchmark_prints_old_and_new_side_by_side(tmp_path):
    # benchmarks/bench_tfidf.py --quick, tinier still: every part runs old and new and prints the ratio.
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_tfidf.py"), "--quick", "--rows", "1200",
           "--skip-linearsvc", "--seeds", "0,1", "--threads", "2", "--workdir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| sklearn | 1,200 |" in out and "| hashed | 1,200 |" in out and "x faster**" in out
    assert "before issue 25: sklearn features + SparseAdam" in out and "new: hashed features + row-wise RMSprop" in out
    assert "x train rows/s**" in out and re.search(r"\| 0\.\d{4} ± 0\.\d{4} \(2 seeds: 0\.\d{4}, 0\.\d{4}\) \|", out)
    assert "squared_hinge (torch, LazyAdam, 8 epochs)" in out and "softmax (torch, row-wise Adagrad, 5 epochs)" in out
    assert not list(tmp_path.iterdir())  # the work directory is removed


def test_course_benchmark_measures_each_family_and_the_torch_baseline(tmp_path):
    """benchmarks/bench_course.py (issue 25, part 4) on a tiny course-shaped file: the stages run as
    processes with config/meli2019.yaml's settings, and the training stages report rows/s, the
    validation pass and peak memory (here whole epochs: the file is tiny)."""
    from benchmarks import bench_course

    cfg = bench_course.course_config()
    hinge = bench_course.linear_params(cfg, "squared_hinge")
    assert hinge["solver"] == "squared_hinge" and hinge["epochs"] == 1 and hinge["sparse_optimizer"] == "lazy_adam"
    assert bench_course.token_params(cfg, "rnn")["cell"] == cfg["train"]["rnn"]["grid"]["cell"][0]

    csv_path = tmp_path / "course.csv.gz"
    synthetic.write_titles_csv(csv_path, 2500, synthetic.PRESETS["course-es"])
    stages = "data,features,tfidf,squared-hinge,cnn"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_course.py"), "--csv", str(csv_path),
                           "--work", str(tmp_path / "work"), "--stages", stages, "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert list(results) == stages.split(",")
    for stage in ("squared-hinge", "cnn"):
        r = results[stage]
        assert r["epoch_done"] and r["rows"] == r["n_train"] > 1500 and r["rows_per_s"] > 0 and r["peak_rss_mb"] > 100
        assert 0.0 <= r["val_bacc_after_rows"] <= 1.0 and f"| {stage} | {r['rows']:,} |" in proc.stdout
    assert results["squared-hinge"]["optimizer"] == "LazyAdam"
