"""Test scores of the selected runs: bootstrap CI on known cases, metrics against sklearn, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from meli.report import aggregate, evaluate
from tests.test_aggregate import CATEGORIES, N_TEST, N_UNSEEN, RUNS, FakePredictor, make_results


class StreamingPredictor(FakePredictor):
    """The fake with the streaming API; evaluate must not ask for a full [rows, classes] matrix."""

    def predict_split(self, split: str):
        proba = super().predict_proba_split(split)
        return proba.argmax(axis=1), proba.max(axis=1)

    def predict_proba_split(self, split: str):
        raise AssertionError("evaluate asked for test rows x classes probabilities")


def _loop_bootstrap(y, pred, n_boot, seed):
    """The obvious implementation, drawing the same indices as the vectorized one."""
    rng = np.random.default_rng(seed)
    out = []
    per_chunk = max(1, evaluate.CHUNK_INDICES // len(y))
    for start in range(0, n_boot, per_chunk):
        idx = rng.integers(0, len(y), size=(min(per_chunk, n_boot - start), len(y)))
        out += [balanced_accuracy_score(y[i], pred[i]) for i in idx]
    return np.array(out)


def test_bootstrap_matches_a_loop_over_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 7, 400)
    pred = np.where(rng.random(400) < 0.7, y, rng.integers(0, 7, 400))
    fast = evaluate.bootstrap_bacc(y, pred, 200, seed=5)
    np.testing.assert_allclose(fast, _loop_bootstrap(y, pred, 200, 5), rtol=1e-12)


def test_ci_known_cases():
    y = np.repeat(np.arange(4), 50)
    assert evaluate.confidence_interval(evaluate.bootstrap_bacc(y, y, 300)) == (1.0, 1.0)
    # One class: bacc is accuracy, a binomial proportion: CI ~ p +- 1.96 sqrt(p(1-p)/n).
    n, p = 20000, 0.8
    y = np.zeros(n, dtype=int)
    pred = np.where(np.arange(n) < p * n, 0, 1)
    lo, hi = evaluate.confidence_interval(evaluate.bootstrap_bacc(y, pred, 1000, seed=0))
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    assert lo == pytest.approx(p - half, abs=0.0015) and hi == pytest.approx(p + half, abs=0.0015)
    assert evaluate.confidence_interval(np.empty(0)) == (None, None)


def test_score_against_sklearn_and_unseen_rows_excluded():
    rng = np.random.default_rng(0)
    k = 12
    y = rng.integers(0, k, 3000)
    pred = np.where(rng.random(3000) < 0.6, y, rng.integers(0, k, 3000))
    y_with_unseen = np.concatenate([y, [-1, -1, -1]])
    pred_with_unseen = np.concatenate([pred, [0, 1, 2]])
    quality = np.array(["reliable", "unreliable"] * 1501 + ["unknown"])[: len(y_with_unseen)]
    cats = [f"cat{i:02d}" for i in range(k)]
    r = evaluate.score(y_with_unseen, pred_with_unseen, cats, quality, {"bootstrap": 200, "worst_categories": 3,
                                                                         "top_confusions": 4})
    assert r["n_unseen_category"] == 3 and r["n_scored"] == 3000 and r["n_test"] == 3003
    assert r["bacc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert r["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert r["accuracy"] == pytest.approx((y == pred).mean())
    assert r["bacc_ci_low"] < r["bacc"] < r["bacc_ci_high"]
    recalls = [c["recall"] for c in r["per_category"]]
    assert [c["recall"] for c in r["worst_categories"]] == sorted(recalls)[:3]
    assert len(r["confusions"]) == 4
    counts = [c["count"] for c in r["confusions"]]
    assert counts == sorted(counts, reverse=True)
    top = r["confusions"][0]
    ti, pi = cats.index(top["true"]), cats.index(top["predicted"])
    assert top["count"] == int(((y == ti) & (pred == pi)).sum()) and ti != pi
    rel = quality[:3000] == "reliable"
    assert r["label_quality"]["reliable"]["bacc"] == pytest.approx(balanced_accuracy_score(y[rel], pred[rel]))
    assert set(r["label_quality"]) == {"reliable", "unreliable"}


def test_score_rejects_bad_input():
    with pytest.raises(ValueError, match="labels but"):
        evaluate.score(np.zeros(3), np.zeros(2), ["a"])
    with pytest.raises(ValueError, match="no test row"):
        evaluate.score(np.full(3, -1), np.zeros(3), ["a"])
    with pytest.raises(ValueError, match="outside"):
        evaluate.score(np.array([0, 1]), np.array([0, 5]), ["a", "b"])


def test_evaluate_selected_runs_only(tmp_path, monkeypatch):
    results = make_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    run_dirs = sorted(str(p.relative_to(tmp_path)) for p in (results / "runs").glob("*/*"))
    aggregate.aggregate(run_dirs, "results/tables")
    scored = []

    def loader(run_dir, data_dir, features, device):
        scored.append(run_dir.name)
        return StreamingPredictor(run_dir, data_dir, features, device)

    table = evaluate.evaluate("results/tables/selection.json", "results/data", "results/features",
                              {"bootstrap": 200}, "cpu", "results/tables", load_predictor=loader)
    selection = json.loads((results / "tables" / "selection.json").read_text())["families"]
    assert sorted(scored) == sorted(s["combo"] for s in selection.values()), "only the selected runs are scored"
    test = pd.read_csv(results / "tables" / "test.csv").set_index("family")
    assert list(test.index) == ["mlp", "cnn", "tfidf"]
    # The selected MLP keeps its (worse) test score: selection never looked at test.
    mlp_acc = next(acc for f, p, vb, _, acc in RUNS if f == "mlp" and vb == 0.80)
    assert test.loc["mlp", "accuracy"] == pytest.approx(mlp_acc, abs=0.03)
    assert (test["n_unseen_category"] == N_UNSEEN).all() and (test["n_scored"] == N_TEST - N_UNSEEN).all()
    assert {"bacc_reliable", "bacc_unreliable", "bacc_ci_low", "bacc_ci_high", "macro_f1"} <= set(test.columns)
    assert (test["bacc_ci_low"] <= test["test_bacc"]).all() and (test["test_bacc"] <= test["bacc_ci_high"]).all()
    details = json.loads((results / "tables" / "test_details.json").read_text())["families"]
    assert {c["category"] for c in details["cnn"]["per_category"]} == set(CATEGORIES)
    assert len(table) == 3 and (table["load_s"] >= 0).all() and (table["predict_s"] >= 0).all()


def test_evaluate_checks_shapes(tmp_path, monkeypatch):
    results = make_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    aggregate.aggregate(sorted(str(p) for p in (results / "runs").glob("*/*")), "results/tables")
    np.save(results / "features" / "test_labels.npy", np.zeros(5, dtype=np.int64))
    with pytest.raises(ValueError, match="test.parquet has 600 rows"):
        evaluate.evaluate("results/tables/selection.json", "results/data", "results/features", {}, "cpu",
                          "results/tables", load_predictor=StreamingPredictor)
    assert not (results / "tables" / "test.csv").exists()


def test_paired_bootstrap_difference():
    rng = np.random.default_rng(7)
    n, k = 2000, 5
    y = rng.integers(0, k, n)
    good = np.where(rng.random(n) < 0.9, y, (y + 1) % k)
    # b: the same errors as a plus 1% more rows wrong: strongly correlated, a tiny true gap.
    extra = (good == y) & (rng.random(n) < 0.01)
    close = np.where(extra, (y + 1) % k, good)
    bad = np.where(rng.random(n) < 0.5, y, (y + 2) % k)
    samples = evaluate.bootstrap_baccs(y, [good, close, bad], 300, seed=3)
    # Each model's row is exactly its own bootstrap (same indices): per-model CIs are unchanged.
    np.testing.assert_allclose(samples[2], evaluate.bootstrap_bacc(y, bad, 300, seed=3))
    # Against the obvious loop on the same resamples.
    loop = _loop_bootstrap(y, good, 300, 3) - _loop_bootstrap(y, close, 300, 3)
    np.testing.assert_allclose(samples[0] - samples[1], loop, rtol=1e-12)

    bacc = {name: balanced_accuracy_score(y, p) for name, p in (("good", good), ("close", close), ("bad", bad))}
    better = evaluate.paired_difference(samples[0], samples[2], bacc["good"], bacc["bad"])
    assert better["verdict"] == "better" and better["ci_low"] > 0 and better["diff"] == pytest.approx(
        bacc["good"] - bacc["bad"])
    assert evaluate.paired_difference(samples[2], samples[0], bacc["bad"], bacc["good"])["verdict"] == "worse"
    same = evaluate.paired_difference(samples[0], samples[0], bacc["good"], bacc["good"])
    assert same["verdict"] == "not distinguishable" and same["ci_low"] == same["ci_high"] == 0.0
    # Pairing: the 1% gap is resolved although the two unpaired intervals overlap.
    paired = evaluate.paired_difference(samples[0], samples[1], bacc["good"], bacc["close"])
    lo_a, hi_a = evaluate.confidence_interval(samples[0])
    lo_b, hi_b = evaluate.confidence_interval(samples[1])
    assert lo_a < hi_b and paired["verdict"] == "better"
    assert evaluate.paired_difference(np.empty(0), np.empty(0), 0.5, 0.5)["verdict"] == "not distinguishable"


def test_evaluate_compares_the_selected_models_on_the_same_rows(tmp_path, monkeypatch):
    results = make_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    aggregate.aggregate(sorted(str(p.relative_to(tmp_path)) for p in (results / "runs").glob("*/*")), "results/tables")
    evaluate.evaluate("results/tables/selection.json", "results/data", "results/features", {"bootstrap": 200}, "cpu",
                      "results/tables", load_predictor=StreamingPredictor)
    out = json.loads((results / "tables" / "test_details.json").read_text())
    comparisons = out["comparisons"]
    # Headline first: the best neural model on validation (MLP, 0.80) against the baseline.
    assert [(c["a"], c["b"]) for c in comparisons] == [("mlp", "tfidf"), ("mlp", "cnn"), ("cnn", "tfidf")]
    fams = out["families"]
    for c in comparisons:
        assert c["diff"] == pytest.approx(fams[c["a"]]["bacc"] - fams[c["b"]]["bacc"])
        assert c["n_rows"] == N_TEST - N_UNSEEN and c["resamples"] == 200
        assert c["ci_low"] <= c["diff"] <= c["ci_high"]
        expected = "better" if c["ci_low"] > 0 else "worse" if c["ci_high"] < 0 else "not distinguishable"
        assert c["verdict_unadjusted"] == expected
        # three pairs are three tests: the verdict is Holm-corrected (issue 24)
        holm = "not distinguishable" if c["p_holm"] >= 0.05 else "better" if c["diff"] > 0 else "worse"
        assert c["verdict"] == holm and c["p_holm"] >= c["p"]
    assert out["correction"].startswith("Holm")
    by_pair = {(c["a"], c["b"]): c for c in comparisons}
    assert by_pair[("cnn", "tfidf")]["verdict"] == "better"  # test accuracy 0.75 vs 0.61
    assert by_pair[("mlp", "cnn")]["verdict"] == "worse"  # 0.60 vs 0.75: selection on validation can lose
