"""The MLP over the shared sparse TF-IDF rows (input: tfidf), its options, and the CUDA code path on CPU.

Tiny data: 4 classes whose titles share a class word stem (misspelled variants: only the char
n-grams tie them together) among noise words.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from meli.embeddings import tfidf as tfidf_features
from meli.inference import load_predictor
from meli.models import mlp
from meli.models import runtime
from meli.models.nets import KimCNN, MeanMLP, TfidfMLP, build_model
from meli.train import neural
from meli.train.sparse import CsrRows

ROOT = Path(__file__).resolve().parents[1]
STEMS = ["taladro", "celular", "bicicleta", "zapatilla"]
PARAMS = {"input": "tfidf", "hidden": [32], "dropout": 0.1, "batch_size": 32, "lr": 0.01, "epochs": 4, "patience": 4,
          "seed": 0}


def _title(rng: np.random.Generator, c: int) -> str:
    stem = STEMS[c]
    i = rng.integers(1, len(stem) - 1)
    word = stem[:i] + stem[i + 1:] if rng.random() < 0.5 else stem  # a typo half of the time
    noise = [f"ruido{rng.integers(30)}" for _ in range(3)]
    return " ".join([word, *noise])


@pytest.fixture(scope="module")
def sparse_data(tmp_path_factory) -> tuple[Path, Path]:
    """results/data (Parquet + summary.json) and results/features (labels, tfidf/) as the workflow writes them."""
    root = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(0)
    data, features = root / "data", root / "features"
    data.mkdir()
    features.mkdir()
    categories = [f"CAT_{c}" for c in range(len(STEMS))]
    for split, n in (("train", 300), ("validation", 120), ("test", 120)):
        y = rng.integers(0, len(STEMS), n)
        texts = [_title(rng, c) for c in y]
        pd.DataFrame({"title": [t.upper() for t in texts], "text": texts,
                      "category": [categories[c] for c in y]}).to_parquet(data / f"{split}.parquet", index=False)
        labels = y.astype(np.int64)
        if split == "validation":
            labels[:2] = -1  # a category unseen in train: kept in val_predictions, left out of the metric
        np.save(features / f"{split}_labels.npy", labels)
    (features / "labels.json").write_text(json.dumps({"categories": categories}))
    (data / "summary.json").write_text(json.dumps({"preprocess": {
        "lowercase": True, "strip_accents": True, "strip_punctuation": True, "strip_numbers": False,
        "remove_stopwords": True, "min_token_length": 2}}))
    tfidf_features.build(data, features / "tfidf", {"min_df": 1, "char_ngrams": [2, 4]})
    return data, features


# ------------------------------------------------------------------------------------ CsrRows
def test_csr_rows_gather_like_scipy():
    m = sp.random(50, 30, density=0.15, format="csr", random_state=0, dtype=np.float32)
    m[7] = 0  # an empty row
    m.eliminate_zeros()
    rows = CsrRows.from_scipy(m)
    assert rows.shape == (50, 30) and len(rows) == 50 and rows.device.type == "cpu"
    for key in (torch.tensor([7, 3, 3, 49, 0]), torch.arange(50) % 2 == 0, slice(5, 20), slice(0, 50, 7),
                torch.tensor([], dtype=torch.long)):
        got = rows[key].to_scipy()
        want = m[key.numpy() if isinstance(key, torch.Tensor) else key]
        assert got.shape == want.shape and (got != want).nnz == 0, key
    batch = rows[torch.tensor([7, 1])]
    assert batch.offsets.tolist() == [0, 0] and batch.nnz_per_row().tolist() == [0, m[1].nnz]
    assert rows.to("cpu", non_blocking=True).nbytes == rows.nbytes


def test_tfidf_mlp_is_a_sparse_first_layer():
    """The bag of a row equals the dense product x @ W (+ bias): the layer a dense MLP would have."""
    torch.manual_seed(0)
    m = sp.random(6, 20, density=0.3, format="csr", random_state=1, dtype=np.float32)
    model = TfidfMLP(20, 3, hidden=[8, 4], dropout=0.0).eval()
    x = torch.from_numpy(m.toarray())
    hidden = torch.relu(x @ model.embedding.weight + model.bias)
    expected = model.out(model.hidden(hidden))
    torch.testing.assert_close(model(CsrRows.from_scipy(m)), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="hidden layer"):
        TfidfMLP(20, 3, hidden=[])
    built = build_model("mlp", {"input": "tfidf", "hidden": [8]}, 20, 0, 3, matrix=torch.zeros(20, 5))
    assert isinstance(built, TfidfMLP) and built.embedding.weight.shape == (20, 8)  # no matrix copied in


# ------------------------------------------------------------------------- options and params
def test_params_of_the_new_options():
    p = neural.resolve_params("mlp", {"input": "tfidf", "embedding": "w2v", "freeze_embeddings": True,
                                      "hidden": [64]})
    assert "embedding" not in p and "freeze_embeddings" not in p  # do not apply to tfidf input
    assert p["lr_schedule"] == "constant" and p["label_smoothing"] == 0.0 and p["input"] == "tfidf"
    for bad, match in (({"lr_schedule": "step"}, "lr_schedule"), ({"label_smoothing": 1.0}, "label_smoothing"),
                       ({"input": "chars"}, "input"), ({"input": "tfidf", "hidden": []}, "hidden layer")):
        with pytest.raises(ValueError, match=match):
            neural.resolve_params("mlp", {"embedding": "w2v", **bad})
    assert neural.resolve_params("cnn", {"embedding": "w2v", "lr_schedule": "cosine"})["lr_schedule"] == "cosine"


def test_cosine_schedule_is_stateless():
    assert neural.lr_factor("constant", 500, 100) == 1.0
    assert neural.lr_factor("cosine", 0, 100) == 1.0
    assert neural.lr_factor("cosine", 50, 100) == pytest.approx(0.5)
    assert neural.lr_factor("cosine", 100, 100) == pytest.approx(0.0)


def test_sparse_bag_gets_lazy_adam_and_the_rest_weight_decay():
    from meli.train.sparse import LazyAdam

    model = TfidfMLP(50, 3, hidden=[8])
    opt = neural.make_optimizer(model, {"lr": 0.01, "weight_decay": 0.1, "optimizer": "adamw"})
    assert isinstance(opt, neural.Optimizers)
    sparse, dense = opt.parts
    assert isinstance(sparse, LazyAdam) and sparse.param_groups[0]["params"] == [model.embedding.weight]
    assert isinstance(dense, torch.optim.AdamW) and dense.param_groups[0]["weight_decay"] == 0.1
    assert all(p is not model.embedding.weight for p in dense.param_groups[0]["params"])
    rows = CsrRows.from_scipy(sp.random(4, 50, density=0.2, format="csr", random_state=0, dtype=np.float32))
    F.cross_entropy(model(rows), torch.tensor([0, 1, 2, 0])).backward()
    touched, grad = model.embedding.row_grad  # the touched rows' gradient, not a dense or sparse .grad
    assert model.embedding.weight.grad is None and torch.equal(touched, torch.unique(rows.indices))
    assert grad.shape == (touched.numel(), 8)
    opt.step()
    state = opt.state_dict()
    fresh = neural.make_optimizer(model, {"lr": 0.01, "weight_decay": 0.1, "optimizer": "adamw"})
    fresh.load_state_dict(state)  # checkpoints round-trip both parts
    assert fresh.parts[0].state_dict()["state"].keys() == sparse.state_dict()["state"].keys()


# ------------------------------------------------------------------------------ training + predict
def test_tfidf_mlp_trains_writes_the_contract_and_predicts(sparse_data, tmp_path):
    data, features = sparse_data
    params = {**PARAMS, "lr_schedule": "cosine", "label_smoothing": 0.1, "weight_decay": 0.01, "optimizer": "adamw"}
    out = tmp_path / "runs" / "mlp" / "tfidf"
    metrics = neural.run("mlp", params, features, None, out, "cpu", 1)
    assert metrics["val_bacc"] > 0.9 and metrics["n_val"] == 118 and metrics["n_val_unseen_category"] == 2
    assert metrics["params"]["input"] == "tfidf" and "embedding" not in metrics["params"]
    assert metrics["combo"].startswith("in-tfidf_h-32_") and "sch-cosine_ls-0.1" in metrics["combo"]
    bundle = torch.load(out / "model.pt", weights_only=True)
    n_features = json.loads((features / "tfidf" / "stats.json").read_text())["n_features"]
    assert bundle["input"] == "tfidf" and bundle["vocab_size"] == n_features and bundle["max_len"] == 0

    predictor = load_predictor(out, data, features, "cpu")
    preds = pd.read_parquet(out / "val_predictions.parquet")
    pred, prob = predictor.predict_split("validation", batch_size=16)
    np.testing.assert_array_equal(pred, preds["pred"])
    np.testing.assert_allclose(prob, preds["prob"], rtol=1e-5)
    test_pred, _ = predictor.predict_split("test")
    test_y = np.load(features / "test_labels.npy")
    assert (test_pred == test_y).mean() > 0.9
    # Raw titles: cleaned like the data stage, vectorized by the shared vectorizer; typos still land.
    proba = predictor.predict_proba(["BICICLTA Ruido3", "Taldro ruido9", ""])
    assert proba.shape == (3, 4) and list(proba[:2].argmax(axis=1)) == [2, 0]
    assert predictor.known_words(["bicicleta", "", "qqq"]).tolist()[1:] == [0, 0]
    assert predictor.known_words(["bicicleta"])[0] > 1  # its word and char n-grams


@pytest.mark.parametrize("view,block", [("char", "char_wb"), ("word", "word")])
def test_a_tfidf_view_reads_one_block_in_training_and_prediction(sparse_data, tmp_path, view, block):
    data, features = sparse_data
    out = tmp_path / "runs" / "mlp" / view
    metrics = neural.run("mlp", {**PARAMS, "tfidf_view": view}, features, None, out, "cpu", 1)
    blocks = json.loads((features / "tfidf" / "stats.json").read_text())["blocks"]
    assert f"_view-{view}_" in metrics["combo"] and metrics["val_bacc"] > 0.5
    bundle = torch.load(out / "model.pt", weights_only=True)
    assert bundle["vocab_size"] == blocks[block] < sum(blocks.values())  # its bag has only that block's rows
    predictor = load_predictor(out, data, features, "cpu")
    pred, _ = predictor.predict_split("validation")
    np.testing.assert_array_equal(pred, pd.read_parquet(out / "val_predictions.parquet")["pred"])
    assert predictor.predict_proba(["BICICLTA Ruido3", "Taldro ruido9"]).shape == (2, 4)
    # rows of the other block only (a title of one unseen word has char n-grams but no known word)
    # give the model nothing to read: its bias alone, the same answer for any such title
    if view == "word":
        p = predictor.predict_proba(["qzxv", "wqyk"])
        np.testing.assert_allclose(p[0], p[1], rtol=1e-6)


def test_tfidf_view_ids_and_checks():
    assert "tfidf_view" not in mlp.prune({"input": "tfidf", "tfidf_view": "all", "hidden": [8]})  # ids as before
    assert mlp.prune({"input": "tfidf", "tfidf_view": "char", "hidden": [8]})["tfidf_view"] == "char"
    assert "tfidf_view" not in mlp.prune({"input": "embedding", "tfidf_view": "char", "embedding": "w2v"})
    assert mlp.view_columns({"input": "tfidf", "tfidf_view": "word"}, {"word": 5, "char_wb": 7}) == slice(0, 5)
    assert mlp.view_columns({"input": "tfidf", "tfidf_view": "char"}, {"word": 5, "char_wb": 7}) == slice(5, 12)
    assert mlp.view_columns({"input": "tfidf", "tfidf_view": "all"}, {"word": 5, "char_wb": 7}) is None
    with pytest.raises(ValueError, match="no word block"):
        mlp.view_columns({"input": "tfidf", "tfidf_view": "word"}, {"char_wb": 7})
    with pytest.raises(ValueError, match="needs input tfidf"):
        mlp.validate({"input": "embedding", "tfidf_view": "char", "hidden": [8]})


def test_meli_predict_serves_a_tfidf_mlp(sparse_data, tmp_path, capsys):
    from meli import predict

    data, features = sparse_data
    out = tmp_path / "results" / "runs" / "mlp" / "r"
    neural.run("mlp", {**PARAMS, "epochs": 2}, features, None, out, "cpu", 1)
    # meli-predict's layout: results/{data,features,runs}
    for name, src in (("data", data), ("features", features)):
        (tmp_path / "results" / name).symlink_to(src)
    assert predict.main(["--run", str(out), "--json", "--top-k", "2", "--device", "cpu", "zapatila ruido1"]) == 0
    answer = json.loads(capsys.readouterr().out)
    first = answer[0] if isinstance(answer, list) else answer["predictions"][0]
    assert json.dumps(first).count("CAT_3") >= 1


@pytest.mark.parametrize("sparse", [{}, {"sparse_optimizer": "rowwise_rmsprop", "sparse_lr_scale": 0.3}])
def test_kill_and_resume_with_sparse_adam_and_cosine(sparse, sparse_data, tmp_path):
    """The checkpoint holds both optimizers (LazyAdam's moments, or the row-wise accumulator); the
    stateless schedule resumes where it was (with the row-wise bag's own lr multiple)."""
    _, features = sparse_data
    params = {**PARAMS, "epochs": 2, "lr_schedule": "cosine", **sparse}
    straight = neural.run("mlp", params, features, None, tmp_path / "runs" / "mlp" / "a", "cpu", 1)

    def cli(env):
        return subprocess.run(
            [sys.executable, "-m", "meli.train.neural", "--family", "mlp", "--params", json.dumps(params),
             "--features", str(features), "--tfidf", str(features / "tfidf"), "--out-dir",
             str(tmp_path / "runs" / "mlp" / "b"), "--device", "cpu", "--threads", "1"],
            env={**os.environ, "PYTHONPATH": str(ROOT / "scripts"), **env}, capture_output=True, text=True,
            timeout=120)

    assert cli({neural.KILL_ENV: "1"}).returncode == -9
    done = cli({})
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((tmp_path / "runs" / "mlp" / "b" / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == 1
    for key in ("val_bacc", "val_loss", "final_train_loss", "best_epoch"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5), key


# ---------------------------------------------------------------------- the CUDA path on CPU
@pytest.mark.parametrize("kind", ["mean_mlp", "cnn", "tfidf_mlp"])
def test_bf16_autocast_and_device_resident_batches_on_cpu(kind, monkeypatch):
    """What runs on a GPU, run on the CPU: bfloat16 autocast (MELI_CPU_AUTOCAST=1) and batches
    gathered from matrices that already live on the training device (``on_device``)."""
    monkeypatch.setenv(runtime.CPU_AUTOCAST_ENV, "1")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, classes = 256, 3
    y = torch.from_numpy(rng.integers(0, classes, n))
    if kind == "tfidf_mlp":
        dense = rng.random((n, 40)).astype(np.float32) * (rng.random((n, 40)) < 0.1)
        dense[np.arange(n), y.numpy()] += 2.0  # column k marks class k
        x = CsrRows.from_scipy(sp.csr_matrix(dense))
        model = TfidfMLP(40, classes, hidden=[16])
    else:
        ids = rng.integers(2, 12, (n, 6)).astype(np.int32)
        ids[:, 0] = 12 + y.numpy()  # token 12+k marks class k
        x = torch.from_numpy(ids)
        model = MeanMLP(15, 8, classes, hidden=[16]) if kind == "mean_mlp" else KimCNN(15, 8, classes, filters=8)
    device = torch.device("cpu")
    with runtime.autocast(device):
        assert model(x[torch.arange(4)]).dtype == torch.bfloat16  # autocast is really on
    opt = neural.make_optimizer(model, {"lr": 0.02, "weight_decay": 0.0, "optimizer": "adam"})
    losses = []
    for epoch in range(6):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        losses.append(neural.train_epoch(model, opt, x, y, 32, perm, device, label_smoothing=0.05,
                                         lr_at_batch=lambda b: 0.02 * neural.lr_factor("cosine", b, 8)))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    val_loss, bacc = neural.evaluate(model, neural.Split(x, y, 0), classes, device)
    assert bacc > 0.9 and math.isfinite(val_loss)


def test_bench_training_keeps_a_cuda_option():
    text = (ROOT / "benchmarks" / "bench_training.py").read_text()
    assert '"cuda"' in text and "--device" in text
