"""TF-IDF baseline: learns a small learnable problem and writes the training contract; its parallel
one-vs-rest LinearSVC is LinearSVC's model; the shared TF-IDF features it reads."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest

from meli.embeddings import tfidf as tfidf_features
from meli.grid import combo_id
from meli.inference import load_predictor
from meli.train import baseline

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 6
METRIC_KEYS = {
    "family", "combo", "params", "epochs_run", "best_epoch", "val_bacc", "val_loss", "final_train_loss",
    "train_time_s", "samples_per_s", "peak_mem_mb", "device", "n_train", "n_val", "n_classes",
    "stopped_early", "finished_at",
}


def _rows(rng: np.random.Generator, n: int, counts: list[int] | None = None) -> pd.DataFrame:
    """Titles: two class-specific words among shared noise words; categories named cat_k."""
    labels = rng.integers(0, N_CLASSES, n) if counts is None else np.repeat(np.arange(N_CLASSES), counts)
    noise = [f"w{i}" for i in range(40)]
    texts = []
    for y in labels:
        words = [f"c{y}a", f"c{y}b{rng.integers(3)}"] + list(rng.choice(noise, 4))
        rng.shuffle(words)
        texts.append(" ".join(words))
    return pd.DataFrame({"title": [t.upper() for t in texts], "text": texts,
                         "category": [f"cat_{y}" for y in labels]})


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    data, features = tmp_path / "data", tmp_path / "features"
    data.mkdir()
    features.mkdir()
    # Imbalanced train (class 5 is rare) so class weighting has something to do.
    train = _rows(rng, 0, counts=[120, 120, 120, 120, 120, 12])
    val = _rows(rng, 180)
    val.loc[:2, "category"] = "never_in_train"  # excluded from metrics and counted
    test = _rows(rng, 60)
    for name, df in (("train", train), ("validation", val), ("test", test)):
        df.to_parquet(data / f"{name}.parquet", index=False)
    (features / "labels.json").write_text(json.dumps({"categories": sorted(set(train["category"]))}))
    preprocess = {"lowercase": True, "strip_accents": True, "strip_punctuation": True, "strip_numbers": False,
                  "remove_stopwords": True, "min_token_length": 2}
    (data / "summary.json").write_text(json.dumps({"preprocess": preprocess}))
    tfidf_features.build(data, features / "tfidf", {"min_df": 1})
    return data, features


def test_fit_writes_contract_and_learns(dataset, tmp_path):
    data, features = dataset
    params = {"C": 10.0, "class_weights": False, "seed": 0}
    out = tmp_path / "run"
    metrics = baseline.train(params, data, features, out, threads=1)

    assert METRIC_KEYS <= set(metrics)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["family"] == "tfidf" and metrics["device"] == "cpu"
    assert metrics["combo"] == combo_id(params)
    assert metrics["n_classes"] == N_CLASSES and metrics["n_train"] == 612
    assert metrics["n_val"] == 177 and metrics["n_val_unseen_category"] == 3
    assert metrics["val_bacc"] > 0.9  # chance is 1/6
    assert 0 < metrics["val_loss"] < np.log(N_CLASSES)

    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_bacc", "samples_per_s", "elapsed_s"]
    assert len(history) == 1 and history["val_bacc"][0] == pytest.approx(metrics["val_bacc"])

    preds = pd.read_parquet(out / "val_predictions.parquet")
    assert list(preds.columns) == ["label", "pred", "prob"]
    assert len(preds) == 180 and (preds["label"][:3] == -1).all() and (preds["label"][3:] >= 0).all()
    assert preds["pred"].between(0, N_CLASSES - 1).all() and preds["prob"].between(0, 1).all()
    assert (out / "model.joblib").exists()
    assert not list(out.glob(".*"))  # no temporary file left behind

    predictor = load_predictor(out, data, features)  # the family from the run record: tfidf
    assert predictor.categories == [f"cat_{k}" for k in range(N_CLASSES)]
    proba = predictor.predict_proba_split("validation")
    assert proba.dtype == np.float32 and proba.shape == (180, N_CLASSES)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), preds["pred"])
    pred, prob = predictor.predict_split("validation", batch_size=7)  # streamed in chunks: same answers
    assert pred.dtype == np.int64 and prob.dtype == np.float32
    np.testing.assert_array_equal(pred, preds["pred"])
    np.testing.assert_array_equal(prob, preds["prob"].astype(np.float32))
    _, _, true_prob = predictor.score_cleaned(pd.read_parquet(data / "validation.parquet")["text"],
                                              preds["label"].to_numpy(), batch_size=50)
    known = preds["label"].to_numpy() >= 0
    assert baseline.mean_neg_log(true_prob[known]) == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert baseline.mean_log_loss(proba[known], preds["label"].to_numpy()[known]) == pytest.approx(metrics["val_loss"])
    test = pd.read_parquet(data / "test.parquet")
    test_proba = predictor.predict_proba_split("test")
    expected = test["category"].map(predictor.categories.index).to_numpy()
    assert (test_proba.argmax(axis=1) == expected).mean() > 0.9  # columns align with labels.json


def test_predict_proba_texts_cleans_raw_titles(dataset, tmp_path):
    data, features = dataset
    out = tmp_path / "run"
    baseline.train({"C": 10.0}, data, features, out)
    predictor = load_predictor(out, data, features)  # the family from the run record: tfidf
    # Upper case, punctuation and a stopword: only the data stage's cleaner (summary.json's
    # preprocess section) turns these into the training vocabulary.
    proba = predictor.predict_proba_texts(["C3A, W1 ¡C3B0! para W7", "Cámara C0A de W2 c0b1"])
    assert proba.shape == (2, N_CLASSES) and proba.dtype == np.float32
    assert list(proba.argmax(axis=1)) == [3, 0]
    assert proba.max(axis=1).min() > 0.5
    raw = predictor.predict_proba_cleaned(["C3A, W1 ¡C3B0! para W7"])  # uncleaned: no known token
    assert raw.max() < proba[0].max()


def test_class_weights_help_the_rare_class(dataset, tmp_path):
    data, features = dataset
    base = {"C": 0.01, "seed": 1}  # strong regularisation: the rare class suffers
    plain = baseline.train({**base, "class_weights": False}, data, features, tmp_path / "plain")
    weighted = baseline.train({**base, "class_weights": True}, data, features, tmp_path / "weighted")
    assert weighted["combo"] != plain["combo"]

    def rare_recall(run: str) -> float:
        p = pd.read_parquet(tmp_path / run / "val_predictions.parquet")
        rare = p[p["label"] == N_CLASSES - 1]
        return float((rare["pred"] == rare["label"]).mean())

    assert rare_recall("weighted") > rare_recall("plain")
    assert weighted["val_bacc"] > plain["val_bacc"]


def test_labels_must_match_train(dataset, tmp_path):
    data, features = dataset
    (features / "labels.json").write_text(json.dumps({"categories": [f"cat_{k}" for k in range(N_CLASSES + 1)]}))
    with pytest.raises(ValueError, match="no training row"):
        baseline.train({"C": 1.0}, data, features, tmp_path / "run")
    (features / "labels.json").write_text(json.dumps({"categories": ["cat_0", "cat_1"]}))
    with pytest.raises(ValueError, match="missing from"):
        baseline.train({"C": 1.0}, data, features, tmp_path / "run")
    with pytest.raises(ValueError, match="unknown key"):
        baseline.train({"dropout": 0.1}, data, features, tmp_path / "run")  # lr: a softmax key since issue 25
    with pytest.raises(ValueError, match="tfidf_features config section"):
        baseline.train({"ngram_max": 2}, data, features, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_end_to_end(dataset, tmp_path):
    data, features = dataset
    params = {"C": 10.0, "class_weights": False, "seed": 3}
    out = tmp_path / "runs" / "tfidf" / combo_id(params)
    proc = subprocess.run(
        [sys.executable, "-m", "meli.train.baseline", "--params", json.dumps(params), "--data-dir", str(data),
         "--features", str(features), "--tfidf", str(features / "tfidf"), "--out-dir", str(out), "--threads", "2"],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT / "scripts"), "PATH": ""}, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LinearSVC" in proc.stderr and "validation bacc" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["combo"] == out.name and metrics["val_bacc"] > 0.9
    bad = subprocess.run(
        [sys.executable, "-m", "meli.train.baseline", "--params", "{C: 1}", "--data-dir", str(data),
         "--features", str(features), "--out-dir", str(tmp_path / "x")],
        cwd=ROOT, env={"PYTHONPATH": str(ROOT / "scripts")}, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode != 0 and "not valid JSON" in bad.stderr


@pytest.mark.parametrize("n_classes, threads, max_per_fit", [(6, 2, 256), (6, 3, 2), (6, 1, 256), (2, 2, 256)])
def test_parallel_ovr_is_linearsvc(n_classes, threads, max_per_fit):
    """Chunked, threaded one-vs-rest gives LinearSVC's own scores (float32), whatever the chunking."""
    import scipy.sparse as sp
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(1)
    x = sp.random(300, 40, density=0.2, format="csr", random_state=2, dtype=np.float32)
    y = rng.integers(0, n_classes, 300)
    x[np.arange(300), y] += 1.0  # learnable: column k marks class k
    ours = baseline.fit_ovr_svc(x, y, n_classes, C=0.5, threads=threads, max_per_fit=max_per_fit)
    ref = LinearSVC(C=0.5, random_state=0).fit(x, y)
    ref_scores = ref.decision_function(x)
    if n_classes == 2:
        ref_scores = np.stack([-ref_scores, ref_scores], axis=1)
    assert ours.coef_.dtype == np.float32 and ours.coef_.shape == (n_classes, 40)
    np.testing.assert_allclose(ours.decision_function(x), ref_scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(ours.predict(x), ref.predict(x))
    proba = ours.predict_proba(x)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=1), ref.predict(x))


def test_class_chunks_cover_every_class_once():
    chunks = baseline.class_chunks(1588, threads=8, max_per_fit=256)
    assert len(chunks) == 8 and np.array_equal(np.concatenate(chunks), np.arange(1588))
    assert max(len(c) for c in baseline.class_chunks(1588, threads=2)) <= baseline.MAX_CLASSES_PER_FIT
    assert [len(c) for c in baseline.class_chunks(3, threads=8)] == [1, 1, 1]


def test_shared_features_are_word_and_char_blocks(dataset):
    data, features = dataset
    stats = json.loads((features / "tfidf" / "stats.json").read_text())
    assert set(stats["blocks"]) == {"word", "char_wb"} and stats["n_features"] == sum(stats["blocks"].values())
    x = tfidf_features.load_csr(features / "tfidf" / "validation.npz")
    assert x.dtype == np.float32 and x.shape == (180, stats["n_features"])
    vec = tfidf_features.load_vectorizer(features / "tfidf" / "vectorizer.joblib")
    texts = pd.read_parquet(data / "validation.parquet")["text"]
    assert (vec.transform(texts) != x).nnz == 0  # row order = Parquet order; predict transforms the same way
    # Each block is l2-normalised: a row's squared norm is the number of non-empty blocks (2 here).
    np.testing.assert_allclose(np.asarray(x.multiply(x).sum(axis=1)).ravel(), 2.0, rtol=1e-5)
    word_only = tfidf_features.TitleVectorizer({"char_ngrams": [], "min_df": 1})
    assert word_only.fit_transform(texts).shape[1] == word_only.block_sizes()["word"] == word_only.n_features
    with pytest.raises(tfidf_features.TfidfFeatureError, match="both off"):
        tfidf_features.TitleVectorizer({"char_ngrams": [], "word_ngrams": []})


def test_softmax_solver_writes_the_same_contract_and_learns(dataset, tmp_path):
    data, features = dataset
    given = {"solver": "softmax", "lr": 0.05, "epochs": 5, "batch_size": 64}
    out = tmp_path / "run"
    metrics = baseline.train(given, data, features, out, threads=1, device="cpu")
    assert metrics["combo"] == combo_id(given) and "C" not in metrics["combo"]
    assert metrics["device"] == "cpu" and metrics["val_bacc"] > 0.9 and 0 < metrics["val_loss"] < np.log(N_CLASSES)
    predictor = load_predictor(out, data, features)  # model.joblib: the same LinearOvr as LinearSVC
    preds = pd.read_parquet(out / "val_predictions.parquet")
    pred, prob = predictor.predict_split("validation", batch_size=7)
    np.testing.assert_array_equal(pred, preds["pred"])
    np.testing.assert_allclose(prob, preds["prob"], rtol=1e-5)
    again = baseline.train(given, data, features, tmp_path / "again", threads=1, device="cpu")
    assert again["val_bacc"] == metrics["val_bacc"] and again["val_loss"] == metrics["val_loss"]  # seeded
    with pytest.raises(ValueError, match="solver"):
        baseline.check_params({"solver": "sgd"})


def test_softmax_row_wise_adagrad_weight_decay_and_their_checks(dataset, tmp_path):
    data, features = dataset
    given = {"solver": "softmax", "lr": 0.1, "epochs": 5, "batch_size": 64, "sparse_optimizer": "rowwise_adagrad",
             "class_weights": True}
    plain = baseline.train(given, data, features, tmp_path / "a", threads=1, device="cpu")
    assert plain["val_bacc"] > 0.9 and "sopt-rowwise_adagrad" in plain["combo"]
    decayed = baseline.train({**given, "weight_decay": 1.0}, data, features, tmp_path / "b", threads=1, device="cpu")
    coef = [np.abs(joblib.load(tmp_path / d / "model.joblib")["classifier"].coef_).sum() for d in ("a", "b")]
    assert coef[1] < 0.9 * coef[0]  # the L2 on the touched rows shrinks the weights
    assert "wd-1" in decayed["combo"] and decayed["combo"] != plain["combo"]
    for bad, match in (({"sparse_optimizer": "sgd"}, "sparse_optimizer"), ({"weight_decay": -1}, "weight_decay")):
        with pytest.raises(ValueError, match=match):
            baseline.check_params({**given, **bad})


def test_squared_hinge_is_linearsvc_loss_and_its_solver_learns_like_linearsvc(dataset, tmp_path):
    """Issue 25: LinearSVC's one-vs-rest squared hinge, trained by torch over the same rows."""
    import torch

    scores = torch.tensor([[2.0, 0.5, -3.0], [0.0, -0.5, 1.5]])
    labels = torch.tensor([0, 2])
    # row 0: class 0 margin 2 (no loss), class 1 wrongly at +0.5 -> (1 + 0.5)^2, class 2 at -3 (none);
    # row 1: class 0 at 0 -> 1, class 1 at -0.5 -> 0.25, class 2 margin 1.5 (none)
    assert baseline.squared_hinge(scores, labels).item() == pytest.approx((2.25 + 1.25) / 2)
    weights = torch.tensor([1.0, 1.0, 3.0])
    assert baseline.squared_hinge(scores, labels, weights).item() == pytest.approx((2.25 + 3 * 1.25) / 4)

    data, features = dataset
    given = {"solver": "squared_hinge", "lr": 0.05, "epochs": 5, "batch_size": 64}
    out = tmp_path / "run"
    metrics = baseline.train(given, data, features, out, threads=1, device="cpu")
    svc = baseline.train({"C": 0.5}, data, features, tmp_path / "svc", threads=1)
    assert "solver-squared_hinge" in metrics["combo"] and "C" not in metrics["combo"]
    assert metrics["val_bacc"] > svc["val_bacc"] - 0.03 and metrics["val_bacc"] > 0.9, (metrics, svc)
    # the same model file and predictor as LinearSVC's: margins, argmax = the scored predictions
    clf = joblib.load(out / "model.joblib")["classifier"]
    assert isinstance(clf, baseline.LinearOvr) and clf.coef_.shape[0] == N_CLASSES
    pred, _ = load_predictor(out, data, features).predict_split("validation", batch_size=9)
    np.testing.assert_array_equal(pred, pd.read_parquet(out / "val_predictions.parquet")["pred"])
    assert baseline.check_params({**given, "sparse_optimizer": "rowwise_rmsprop"})["solver"] == "squared_hinge"


def test_solver_keys_are_pruned_from_ids():
    from meli.models import tfidf as family

    assert family.prune({"C": 0.5, "seed": 0, "lr": 0.1}) == {"C": 0.5, "seed": 0}
    assert family.prune({"solver": "softmax", "C": 0.5, "lr": 0.1}) == {"solver": "softmax", "lr": 0.1}
    assert family.prune({"solver": "squared_hinge", "C": 0.5, "lr": 0.1, "epochs": 3}) == {
        "solver": "squared_hinge", "lr": 0.1, "epochs": 3}
