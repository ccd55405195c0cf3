"""Ensembles of finished runs (issue 24.4): candidates on validation, calibration, test scoring,
the paired comparison with the best single run, meli-predict, and the report."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from meli import ensemble, predict
from meli.report import aggregate, evaluate, render
from tests.test_aggregate import CATEGORIES, TEST_ACCURACY, FakePredictor, make_results

N_VAL = 600


def fake_member_proba(run_dir, data_dir, features, device="auto", split=None, titles=None):
    """Each run right on its share of rows, wrong elsewhere with its own errors (independent
    across runs, as different models are): the mean of several is right more often. The right
    class keeps some probability on a wrong row, as real models' second choices do."""
    run_dir = Path(run_dir)
    k = len(CATEGORIES)
    if titles is not None:
        proba = np.full((len(titles), k), 0.1, dtype=np.float32)
        proba[:, zlib.crc32(run_dir.name.encode()) % k] = 0.5
        return proba / proba.sum(axis=1, keepdims=True), list(CATEGORIES)
    y = np.load(Path(features) / f"{split}_labels.npy")
    acc = (json.loads((run_dir / "metrics.json").read_text())["val_bacc"] if split == "validation"
           else TEST_ACCURACY[run_dir.name])
    rng = np.random.default_rng(zlib.crc32(f"{run_dir.name}/{split}".encode()))
    truth = np.where(y >= 0, y, 0)
    right = rng.random(len(y)) < acc
    pred = np.where(right, truth, (truth + rng.integers(1, k, len(y))) % k)
    proba = np.full((len(y), k), 0.05, dtype=np.float32)
    proba[np.arange(len(y)), truth] = 0.3
    proba[np.arange(len(y)), pred] = 0.6
    return proba / proba.sum(axis=1, keepdims=True), list(CATEGORIES)


@pytest.fixture
def built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ensemble, "member_proba", fake_member_proba)
    results = make_results(tmp_path)
    np.save(results / "features" / "validation_labels.npy", np.arange(N_VAL) % len(CATEGORIES))
    aggregate.aggregate(sorted(str(p.relative_to(tmp_path)) for p in (results / "runs").glob("*/*")), "results/tables")
    out = ensemble.build("results/tables/selection.json", "results/tables/runs.csv", "results/data",
                         "results/features", {"top_k": 3}, "cpu", "results/ensembles", "results/tables/ensembles.json")
    return results, out


def test_candidates_are_chosen_on_validation_and_beat_their_members(built):
    results, out = built
    assert set(out["candidates"]) == {"mlp/top-3", "cnn/top-2", "tfidf/top-2", "all/best-of-families", "all/top-3",
                                      "all/greedy"}
    best = out["candidates"][out["chosen"]]
    assert out["chosen"] == max(out["candidates"], key=lambda n: out["candidates"][n]["val_bacc"])
    assert best["val_bacc"] > max(m["val_bacc"] for m in best["members"])  # averaging helps here
    folder = results / "ensembles" / out["chosen"]
    record = json.loads((folder / "ensemble.json").read_text())
    assert all(m["run_dir"].startswith("results/runs/") for m in record["members"])  # relative: the copy works
    assert sum(m["weight"] for m in record["members"]) == pytest.approx(1)
    assert all(ensemble.TEMPERATURES[0] <= m["temperature"] <= ensemble.TEMPERATURES[-1] for m in record["members"])
    assert (folder / "val_predictions.parquet").exists() and (folder / "metrics.json").exists()


def test_temperature_calibration_lowers_the_log_loss():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 2000)
    logits = rng.normal(0, 1, (2000, 5))
    logits[np.arange(2000), y] += 1.0
    over = np.exp(8 * logits) / np.exp(8 * logits).sum(axis=1, keepdims=True)  # far too confident (an SVM's margins)
    t = ensemble.fit_temperature(over, y)
    assert t > 3 and ensemble.log_loss(ensemble.tempered(over, t), y) < ensemble.log_loss(over, y)
    np.testing.assert_array_equal(ensemble.tempered(over, t).argmax(1), over.argmax(1))  # same predictions


def test_the_ensemble_is_scored_on_test_compared_served_and_reported(built, tmp_path, capsys):
    results, out = built
    evaluate.evaluate("results/tables/selection.json", "results/data", "results/features", {"bootstrap": 200}, "cpu",
                      "results/tables", ensembles="results/tables/ensembles.json",
                      load_predictor=lambda d, *a: (ensemble.EnsemblePredictor(d, *a) if ensemble.is_ensemble(d)
                                                    else FakePredictor(d, *a)))
    details = json.loads((results / "tables" / "test_details.json").read_text())
    assert "ensemble" in details["families"] and details["families"]["ensemble"]["members"]
    pairs = [(c["a"], c["b"]) for c in details["comparisons"]]
    assert pairs[1] == ("ensemble", "mlp")  # against the best single run on validation, after the headline
    assert predict.main(["--run", str(results / "ensembles" / out["chosen"]), "--json", "Funda iPhone"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got["predictions"][0]["top"]) == 5
    assert predict.main(["--family", "ensemble", "--top-k", "1", "x"]) == 0
    assert out["chosen"] in capsys.readouterr().out
    (tmp_path / "config.yaml").write_text("dataset:\n  name: demo\n")
    html = render.render(results, {"dataset": {"name": "demo"}}, ["config.yaml"], workdir=tmp_path)
    assert f"Ensemble <code>{out['chosen']}</code>" in html and "meli-predict --run results/ensembles/" in html
    assert "Ensemble" in html and "calibrated on validation" in html
    # the fakes' members err independently: the weighted greedy candidate wins here, and says how it was made
    assert out["chosen"] == "all/greedy" and "greedy forward selection" in html and "cross-fitted over 5 folds" in html


def _members(y, accs, k, seed=0):
    """Members right on a share ``acc`` of the rows with independent errors, the right class kept second."""
    rng = np.random.default_rng(seed)
    out = []
    for acc in accs:
        right = rng.random(len(y)) < acc
        pred = np.where(right, y, (y + rng.integers(1, k, len(y))) % k)
        p = np.full((len(y), k), 0.02)
        p[np.arange(len(y)), y] += 0.2
        p[np.arange(len(y)), pred] += 0.6
        out.append((p / p.sum(axis=1, keepdims=True)).astype(np.float32))
    return out


@pytest.mark.parametrize("metric", ["bacc", "log_loss"])
def test_greedy_selection_picks_the_useful_members_and_beats_each(metric):
    y = np.arange(3000) % 10
    good_a, good_b, bad = _members(y, [0.8, 0.8, 0.2], 10)
    probas = [good_a, good_b, bad, good_a]  # the last is a duplicate of the first: picking it adds nothing new
    counts = ensemble.greedy_counts(probas, y, rounds=20, metric=metric)
    assert counts.sum() == 20 and counts[1] > 0 and counts[0] + counts[3] > 0  # both independent good members
    assert counts[2] < min(counts[1], counts[0] + counts[3]) and counts[2] <= 4  # the weak one least (bacc: a tie-breaker)
    mixed = ensemble.weighted_mean(probas, counts)
    assert ensemble.val_bacc(mixed, y) > max(ensemble.val_bacc(p, y) for p in probas[:3]) + 0.03
    if metric == "log_loss":
        assert ensemble.log_loss(mixed, y) < min(ensemble.log_loss(p, y) for p in probas[:3])
    np.testing.assert_allclose(mixed.sum(axis=1), 1, rtol=1e-5)


def test_cross_fitting_removes_the_optimism_of_weights_chosen_on_the_same_rows():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 20, 1500)
    noise = [(p / p.sum(axis=1, keepdims=True)).astype(np.float32) for p in rng.random((25, 1500, 20)) ** 4]
    for metric, worse in (("log_loss", lambda oof, fit: ensemble.log_loss(oof, y) > ensemble.log_loss(fit, y) + 0.01),
                          ("bacc", lambda oof, fit: ensemble.val_bacc(oof, y) < ensemble.val_bacc(fit, y) - 0.02)):
        counts = ensemble.greedy_counts(noise, y, rounds=10, metric=metric)
        oof = ensemble.cross_fitted(noise, y, rounds=10, folds=5, metric=metric)
        # fitted on noise: the weights look better on the rows they were chosen on than elsewhere
        assert worse(oof, ensemble.weighted_mean(noise, counts)), metric
        assert ensemble.val_bacc(oof, y) < 0.1  # out of fold it is what it is: chance (1/20)
    with pytest.raises(ensemble.EnsembleError, match="metric"):
        ensemble.greedy_counts(noise, y, 3, metric="f1")
    # with one clearly better member, every fold picks it: out-of-fold predictions are its own
    useful = _members(y, [0.9], 20, seed=2)[0]
    np.testing.assert_array_equal(ensemble.cross_fitted([useful, *noise[:3]], y, 5, 5).argmax(1), useful.argmax(1))


def test_the_greedy_candidate_is_scored_cross_fitted_and_served_with_its_weights(built):
    results, out = built
    greedy = out["candidates"]["all/greedy"]
    runs = pd.read_csv(results / "tables" / "runs.csv")
    assert greedy["val_scored_by"] == "cross-fitting" and greedy["library"] == min(12, len(runs))  # any family
    record = json.loads((results / "ensembles" / "all" / "greedy" / "ensemble.json").read_text())
    weights = [m["weight"] for m in record["members"]]
    assert sum(weights) == pytest.approx(1) and all(w > 0 for w in weights)
    assert all(w * greedy["rounds"] == pytest.approx(round(w * greedy["rounds"])) for w in weights)
    # served: the weighted mean of the members' tempered probabilities
    pred = ensemble.EnsemblePredictor(results / "ensembles" / "all" / "greedy", "results/data", "results/features")
    got = pred.predict_proba_split("validation")
    want = sum(m["weight"] * ensemble.tempered(fake_member_proba(results.parent / m["run_dir"], "results/data",
                                                                 "results/features", split="validation")[0],
                                               m["temperature"]) for m in record["members"])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # disabled by library 0 or rounds 1
    off = ensemble.build("results/tables/selection.json", "results/tables/runs.csv", "results/data", "results/features",
                         {"top_k": 3, "greedy": {"library": 0}}, "cpu", "results/ens2", "results/tables/e2.json")
    assert "all/greedy" not in off["candidates"]
