"""Aggregation of handmade run directories: runs table, selection on validation only, effects.

Also home of the fixture factory the other report tests use (``make_run``, ``make_results``).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meli.report import aggregate
from meli.grid import combo_id

CATEGORIES = ["AUDIO", "CELULARES", "HERRAMIENTAS", "JUGUETES", "LIBROS", "MOTOS"]


# combo -> the test accuracy FakePredictor gives that run (filled by make_run)
TEST_ACCURACY: dict[str, float] = {}


def make_run(results: Path, family: str, params: dict, val_bacc: float, val_loss: float | None = 1.0,
             epochs: int = 4, test_accuracy: float | None = None, **extra) -> Path:
    """A finished run directory as the training stage writes it (metrics, history, val predictions)."""
    combo = combo_id(params)
    if test_accuracy is not None:
        TEST_ACCURACY[combo] = test_accuracy
    run_dir = results / "runs" / family / combo
    run_dir.mkdir(parents=True)
    metrics = {
        "family": family, "combo": combo, "params": params, "epochs_run": epochs, "best_epoch": max(1, epochs - 1),
        "val_bacc": val_bacc, "val_loss": val_loss, "final_train_loss": 0.5, "train_time_s": 12.5 * epochs,
        "samples_per_s": 4000.0, "peak_mem_mb": 900.0, "device": "cpu", "n_train": 600, "n_val": 120,
        "n_classes": len(CATEGORIES), "stopped_early": False, "finished_at": "2025-01-01T00:00:00+00:00", **extra,
    }
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    epochs_ = np.arange(1, epochs + 1)
    best = max(1, epochs - 1)  # the record's best_epoch: its val_bacc is the record's (runs.check_record)
    curve = np.where(epochs_ <= best, val_bacc * (1 - 0.5 ** epochs_) / (1 - 0.5 ** best), val_bacc - 0.01)
    pd.DataFrame({"epoch": epochs_, "train_loss": 2.0 / epochs_, "val_loss": 2.2 / epochs_, "val_bacc": curve,
                  "samples_per_s": 4000.0, "elapsed_s": 12.5 * epochs_}).to_csv(run_dir / "history.csv", index=False)
    pd.DataFrame({"label": [0, 1], "pred": [0, 1], "prob": [0.9, 0.8]}).to_parquet(run_dir / "val_predictions.parquet")
    bench = results / "benchmarks" / "train" / family / f"{combo}.tsv"
    bench.parent.mkdir(parents=True, exist_ok=True)
    bench.write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                     f"{13.0 * epochs}\t0:00:50\t812.5\t2000\t700\t710\t1\t2\t95.0\t{12.0 * epochs}\n")
    return run_dir


MLP = dict(embedding="w2v", freeze_embeddings=False, hidden=[128], dropout=0.3, batch_size=64, lr=0.003, seed=0)
CNN = dict(embedding="w2v", freeze_embeddings=False, filters=64, kernel_sizes=[2, 3], hidden=[], dropout=0.3, seed=0)
TFIDF = dict(C=1.0, class_weights=False)

# (family, params, val_bacc, val_loss, test accuracy the fake predictor gives the run)
RUNS = [
    ("mlp", {**MLP, "dropout": 0.3}, 0.80, 0.70, 0.60),  # best on validation, worse on test
    ("mlp", {**MLP, "dropout": 0.7}, 0.70, 0.90, 0.95),
    ("mlp", {**MLP, "dropout": 0.3, "freeze_embeddings": True}, 0.75, 0.80, 0.90),
    ("mlp", {**MLP, "dropout": 0.7, "freeze_embeddings": True}, 0.65, 1.00, 0.50),
    ("cnn", {**CNN, "lr": 0.001}, 0.78, 0.75, 0.70),
    ("cnn", {**CNN, "lr": 0.01}, 0.78, 0.72, 0.75),  # tie on bacc: lower val loss wins
    ("tfidf", {**TFIDF, "C": 1.0}, 0.60, None, 0.58),
    ("tfidf", {**TFIDF, "C": 10.0}, 0.62, None, 0.61),
]


def make_runs(results: Path) -> list[Path]:
    return [make_run(results, f, p, vb, vl, epochs=1 if f == "tfidf" else 4, test_accuracy=acc)
            for f, p, vb, vl, acc in RUNS]


def test_runs_table_sorted_with_every_hyperparameter(tmp_path):
    dirs = make_runs(tmp_path / "results")
    df = aggregate.runs_table([aggregate.load_run(d) for d in reversed(dirs)])
    assert list(df["family"]) == ["mlp"] * 4 + ["cnn"] * 2 + ["tfidf"] * 2
    for family in ("mlp", "cnn", "tfidf"):
        assert df[df["family"] == family]["val_bacc"].is_monotonic_decreasing
    params = aggregate.hyperparameters(df)
    for key in ("embedding", "freeze_embeddings", "hidden", "dropout", "filters", "kernel_sizes", "C", "class_weights"):
        assert key in params
    assert df.loc[df["family"] == "cnn", "kernel_sizes"].iloc[0] == "[2,3]"
    assert df.loc[df["family"] == "tfidf", "filters"].isna().all()
    assert {"epochs_run", "best_epoch", "val_loss", "final_train_loss", "train_time_s", "samples_per_s",
            "peak_mem_mb", "device"} <= set(df.columns)


def test_selection_on_validation_only_and_deterministic_ties(tmp_path):
    dirs = make_runs(tmp_path / "results")
    out = tmp_path / "tables"
    selection = aggregate.aggregate(dirs, out)
    fam = selection["families"]
    # The MLP with the best validation bacc wins although another one is better on test.
    assert fam["mlp"]["combo"] == combo_id({**MLP, "dropout": 0.3}) and fam["mlp"]["val_bacc"] == 0.80
    assert fam["cnn"]["combo"] == combo_id({**CNN, "lr": 0.01}), "tie on bacc must go to the lower val loss"
    assert fam["tfidf"]["params"]["C"] == 10.0
    assert fam["cnn"]["params"]["kernel_sizes"] == [2, 3]
    assert selection["split"] == "validation"
    assert json.loads((out / "selection.json").read_text()) == selection
    # Order of the inputs does not change anything.
    assert aggregate.aggregate(list(reversed(dirs)), tmp_path / "again") == selection
    runs_csv = pd.read_csv(out / "runs.csv")
    assert len(runs_csv) == len(RUNS) and set(runs_csv["combo"]) == {d.name for d in dirs}
    md = (out / "runs.md").read_text()
    assert f"**{fam['mlp']['combo']}**" in md and "## cnn (2 runs)" in md


def test_effects_group_swept_hyperparameters(tmp_path):
    dirs = make_runs(tmp_path / "results")
    aggregate.aggregate(dirs, tmp_path / "tables")
    eff = pd.read_csv(tmp_path / "tables" / "effects.csv")
    mlp = eff[eff["family"] == "mlp"]
    assert set(mlp["hyperparameter"]) == {"freeze_embeddings", "dropout"}
    dropout = mlp[mlp["hyperparameter"] == "dropout"].set_index("value")
    assert dropout.loc["0.3", "mean_val_bacc"] == pytest.approx((0.80 + 0.75) / 2)
    assert dropout.loc["0.7", "max_val_bacc"] == pytest.approx(0.70)
    assert (dropout["n"] == 2).all()
    assert set(eff[eff["family"] == "cnn"]["hyperparameter"]) == {"lr"}
    assert set(eff[eff["family"] == "tfidf"]["hyperparameter"]) == {"C"}


def test_missing_or_broken_metrics_name_the_run(tmp_path, capsys):
    dirs = make_runs(tmp_path / "results")
    (dirs[0] / "metrics.json").unlink()
    with pytest.raises(aggregate.RunError, match=re.escape(str(dirs[0]))):
        aggregate.aggregate(dirs, tmp_path / "tables")
    (dirs[0] / "metrics.json").write_text('{"family": "mlp", "params": {}, "val_bacc": NaN}')
    with pytest.raises(aggregate.RunError, match="val_bacc"):
        aggregate.load_run(dirs[0])
    (dirs[0] / "metrics.json").write_text('{"family": "mlp", "val_bacc": 0.5}')
    with pytest.raises(aggregate.RunError, match="params"):
        aggregate.load_run(dirs[0])
    assert not (tmp_path / "tables" / "runs.csv").exists(), "nothing written when an input is bad"


def test_cli(tmp_path):
    dirs = make_runs(tmp_path / "results")
    assert aggregate.main(["--out-dir", str(tmp_path / "t"), *map(str, dirs)]) == 0
    assert {p.name for p in (tmp_path / "t").iterdir()} == {"runs.csv", "runs.md", "effects.csv", "selection.json", "statistics.json"}


# ------------------------------------------------------------------ a whole results/ tree
N_TEST = 600
N_UNSEEN = 12  # test rows whose category is absent from train (label -1)


def make_results(root: Path, make: bool = True) -> Path:
    """results/ as the upstream stages leave it: data, features, embeddings, runs, benchmarks.

    ``make=False`` leaves the run directories to the caller (tests/report_pages.py's sweep).
    """
    results = root / "results"
    dirs = make_runs(results) if make else []
    results.mkdir(parents=True, exist_ok=True)
    labels = np.arange(N_TEST) % len(CATEGORIES)
    labels[:N_UNSEEN] = -1
    category = np.array([CATEGORIES[i] if i >= 0 else "NUEVA" for i in labels])
    quality = np.where(np.arange(N_TEST) % 3 == 0, "reliable", "unreliable")
    (results / "data").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"title": [f"titulo {i}" for i in range(N_TEST)], "text": [f"titulo {i}" for i in range(N_TEST)],
                  "category": category, "label_quality": quality, "language": "spanish"}
                 ).to_parquet(results / "data" / "test.parquet")
    (results / "data" / "summary.json").write_text(json.dumps({
        "source": {"path": "results/data/source/demo.csv.gz", "format": "raw_csv", "bytes": 123456,
                   "sha256": "ab" * 32},
        "rows": {"train": 3000, "validation": 600, "test": N_TEST},
        "categories": {"count": len(CATEGORIES) + 1, "per_split": {"train": 6, "validation": 6, "test": 7}},
        "label_quality": {"train": {"reliable": 1000, "unreliable": 2000},
                          "test": {"reliable": 200, "unreliable": 400}},
        "token_length_quantiles": {"0.5": 6, "0.9": 9, "0.99": 12},
        "dropped": {"empty_text": 3, "unknown_language": 1},
        "rare_categories": {"policy": "train_only", "count": 1},
        "preprocess": {"lowercase": True},
    }))
    features = results / "features"
    features.mkdir()
    np.save(features / "test_labels.npy", labels.astype(np.int64))
    (features / "labels.json").write_text(json.dumps({"categories": CATEGORIES}))
    (features / "stats.json").write_text(json.dumps({"vocab_size": 902, "max_len": 24, "splits": {
        "train": {"rows": 3000, "truncated_share": 0.01, "unk_token_share": 0.0, "unseen_category_rows": 0,
                  "unseen_categories": {}},
        "test": {"rows": N_TEST, "truncated_share": 0.02, "unk_token_share": 0.05, "unseen_category_rows": N_UNSEEN,
                 "unseen_categories": {"NUEVA": N_UNSEEN}},
    }}))
    emb = results / "embeddings" / "w2v"
    emb.mkdir(parents=True)
    (emb / "coverage.json").write_text(json.dumps({"name": "w2v", "kind": "word2vec", "dim": 64, "vocab_size": 900,
                                                   "found": 880, "vocab_coverage": 0.978,
                                                   "token_coverage": 0.995,
                                                   "most_frequent_missing": [["xyz", 7], ["qqq", 2]]}))
    stage = results / "benchmarks" / "prepare_data.tsv"
    stage.parent.mkdir(parents=True, exist_ok=True)
    stage.write_text("s\th:m:s\tmax_rss\tcpu_time\n3.5\t0:00:03\t250.0\t3.1\n")
    assert not make or len(dirs) == len(RUNS)
    return results


class FakePredictor:
    """Stands in for meli.inference: each run gets the test accuracy listed in RUNS."""

    def __init__(self, run_dir, data_dir, features_dir, device="auto"):
        self.run_dir = Path(run_dir)
        self.features_dir = Path(features_dir)
        self.categories = list(CATEGORIES)
        combo = self.run_dir.name
        self.accuracy = TEST_ACCURACY[combo]

    def predict_proba_split(self, split: str) -> np.ndarray:
        y = np.load(self.features_dir / f"{split}_labels.npy")
        k = len(self.categories)
        truth = np.where(y >= 0, y, 0)
        wrong = np.random.default_rng(1).permutation(len(y))[: int(round((1 - self.accuracy) * len(y)))]
        pred = truth.copy()
        pred[wrong] = (truth[wrong] + 1) % k
        proba = np.full((len(y), k), 0.02, dtype=np.float32)
        proba[np.arange(len(y)), pred] = 0.9
        return proba

    def predict_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        proba = self.predict_proba_split(split)
        return proba.argmax(axis=1), proba.max(axis=1)

    def predict_proba(self, titles):
        proba = np.full((len(titles), len(self.categories)), 0.1, dtype=np.float32)
        for i, t in enumerate(titles):
            proba[i, len(t) % len(self.categories)] = 0.5
        return proba / proba.sum(axis=1, keepdims=True)


def test_seeds_are_averaged_and_selection_is_on_the_mean(tmp_path):
    """A combination repeated over seeds is judged by its mean: one lucky seed does not win."""
    results = tmp_path / "results"
    steady = {**MLP, "dropout": 0.3}
    lucky = {**MLP, "dropout": 0.7}
    dirs = [make_run(results, "mlp", {**steady, "seed": s}, v) for s, v in ((0, 0.80), (1, 0.82), (2, 0.81))]
    dirs += [make_run(results, "mlp", {**lucky, "seed": s}, v) for s, v in ((0, 0.85), (1, 0.70))]
    df = aggregate.runs_table([aggregate.load_run(d) for d in dirs])
    top = df.iloc[0]
    assert top["seed_group"] == aggregate.seed_group(combo_id(steady)) and "seed-" not in top["seed_group"]
    assert top["val_bacc"] == 0.82 and top["n_seeds"] == 3  # best seed of the best-mean group
    assert top["val_bacc_mean"] == pytest.approx(0.81) and top["val_bacc_sd"] == pytest.approx(0.01)
    assert list(df["val_bacc"]) == [0.82, 0.81, 0.80, 0.85, 0.70]  # groups by mean, seeds within by bacc
    best = aggregate.select(df)["families"]["mlp"]
    assert best["combo"] == combo_id({**steady, "seed": 1}) and best["n_seeds"] == 3
    assert best["val_bacc_mean"] == pytest.approx(0.81) and len(best["seed_runs"]) == 3
    assert best["runner_up"]["val_bacc_mean"] == pytest.approx(0.775)  # the other group, not another seed
    md = aggregate.markdown(df, aggregate.select(df))
    assert "0.8100 ± 0.0100 (3 seeds)" in md and "0.7750 ± 0.1061 (2 seeds)" in md
    single = aggregate.runs_table([aggregate.load_run(dirs[0])])
    assert single["n_seeds"][0] == 1 and np.isnan(single["val_bacc_sd"][0])


def test_halving_pruned_runs_are_tabled_but_never_selected(tmp_path):
    """A pruned run stays in runs.csv with the rung it stopped at; selection and effects use final runs."""
    base = {"embedding": "w2v", "hidden": [32], "seed": 0}
    final = make_run(tmp_path, "mlp", {**base, "lr": 0.01}, 0.70, epochs=6, rung=2, pruned_at_rung=None)
    other = make_run(tmp_path, "mlp", {**base, "lr": 0.02}, 0.65, epochs=6, rung=2, pruned_at_rung=None)
    # an exact bacc tie with a lower loss: among all runs it would win, but it was not trained to the end
    stopped = make_run(tmp_path, "mlp", {**base, "lr": 0.1}, 0.70, val_loss=0.1, epochs=1, rung=0, pruned_at_rung=0)
    out = tmp_path / "tables"
    selection = aggregate.aggregate([final, other, stopped], out)
    chosen = selection["families"]["mlp"]
    assert chosen["combo"] == final.name and chosen["n_runs"] == 2 and chosen["n_pruned"] == 1
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["pruned_at_rung"].isna()) == [False, True, True]  # sorted by bacc, then loss
    assert runs.set_index("combo").loc[stopped.name, "rung"] == 0
    assert set(pd.read_csv(out / "effects.csv")["n"]) == {1}  # lr 0.01 and 0.02 only
    md = (out / "runs.md").read_text()
    assert f"**{final.name}**" in md
    # counts stay whole numbers although the final runs' NaN pruned_at_rung made the column float
    stopped_row = next(line for line in md.splitlines() if stopped.name in line).split(" | ")
    assert stopped_row[-2:] == ["0", "0 |"] and "0.0000" not in stopped_row[-2:]
    # a grid's tables have no search columns
    grid = make_run(tmp_path / "g", "mlp", base, 0.5)
    aggregate.aggregate([grid], tmp_path / "g" / "tables")
    assert not {"rung", "pruned_at_rung"} & set(pd.read_csv(tmp_path / "g" / "tables" / "runs.csv").columns)
