"""The recurrent family (meli/models/rnn.py, nets.RecurrentNet): shapes, padding, training, resume, memory, serving."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from meli import models, predict
from meli.inference import Predictor, load_predictor
from meli.models import runtime
from meli.models.nets import RecurrentNet, Recurrence, build_model
from meli.train import memory, neural
from meli.train.neural import KILL_ENV, run
from tests.test_train import make_features, train_cli

RNN = {"embedding": "toy", "hidden_size": 12, "hidden": [], "dropout": 0.2, "batch_size": 32, "lr": 0.01,
       "epochs": 4, "patience": 3, "seed": 1}


def _ids(rows: list[list[int]], max_len: int) -> torch.Tensor:
    out = torch.zeros((len(rows), max_len), dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("pooling", ["max", "mean", "last"])
def test_padding_never_counts(cell, pooling):
    torch.manual_seed(0)
    net = RecurrentNet(30, 6, 4, Recurrence(cell=cell, hidden_size=5, layers=2, pooling=pooling), hidden=[7]).eval()
    rows = [[2, 3, 4, 5], [9], []]
    out = net(_ids(rows, 4))
    assert out.shape == (3, 4) and torch.isfinite(out).all()  # the empty title too
    # More trailing PAD, or another PAD row, changes nothing (packed: PAD never enters the recurrence).
    with torch.no_grad():
        net.embedding.weight[0] = 50.0
    torch.testing.assert_close(net(_ids(rows, 11)), out)
    # A title's logits do not depend on the other titles of its batch.
    torch.testing.assert_close(net(_ids(rows[:1], 4)), out[:1])


def test_the_backward_direction_reads_the_title_not_its_padding():
    """Bidirectional 'last': the backward state ends at the first token, having started at the last real one."""
    torch.manual_seed(0)
    net = RecurrentNet(30, 6, 3, Recurrence(hidden_size=4, pooling="last")).eval()
    a, b = net(_ids([[2, 3, 4]], 3)), net(_ids([[2, 3, 9]], 3))
    assert not torch.allclose(a, b)  # the last token matters, so PAD is not what the backward pass started from


def test_build_gives_the_family_defaults_and_the_network_contract():
    net = build_model("rnn", {}, 20, 6, 3)
    defaults = models.get("rnn").defaults()
    assert isinstance(net.rnn, torch.nn.LSTM) and net.rnn.hidden_size == defaults["hidden_size"] == 128
    assert net.rnn.bidirectional and net.pooling == "max" and net.n_classes == 3
    assert net.input_table is net.embedding
    frozen = build_model("rnn", {"freeze_embeddings": True, "cell": "gru"}, 20, 6, 3, matrix=torch.ones(20, 6))
    assert isinstance(frozen.rnn, torch.nn.GRU) and not frozen.input_table.weight.requires_grad
    assert torch.equal(frozen.input_table.weight, torch.ones(20, 6))
    for bad, match in (({"cell": "rnn"}, "cell"), ({"pooling": "sum"}, "pooling"), ({"layers": 0}, "layers")):
        with pytest.raises(ValueError, match=match):
            neural.resolve_params("rnn", {"embedding": "w2v", **bad})


def test_memory_estimate_is_the_rnns_own():
    base = dict(rows=10_000, max_len=20, vocab_size=5_000, dim=100, n_classes=50)
    lstm = memory.estimate("rnn", {"hidden_size": 128, "batch_size": 128}, **base)
    gru = memory.estimate("rnn", {"hidden_size": 128, "batch_size": 128, "cell": "gru"}, **base)
    wide = memory.estimate("rnn", {"hidden_size": 512, "batch_size": 128}, **base)
    mlp = memory.estimate("mlp", {"hidden": [], "batch_size": 128}, **base)
    assert gru.weights_mb < lstm.weights_mb < wide.weights_mb and gru.batch_mb < lstm.batch_mb < wide.batch_mb
    assert lstm.weights_mb > mlp.weights_mb and lstm.batch_mb > 5 * mlp.batch_mb  # not the MLP's estimate
    # 2 directions x 4 gates x 128 x (100 + 128 + 2) + the head (256 -> 50), float32 with grad and 2 moments
    weights = 2 * 4 * 128 * (100 + 128 + 2) + 256 * 50 + 50
    assert lstm.weights_mb == pytest.approx(weights * 4 * 4 / 2**20)
    huge = memory.estimate("rnn", {"hidden_size": 4096, "layers": 8, "batch_size": 4096}, **{**base, "max_len": 512})
    with pytest.raises(memory.MemoryEstimateError, match=r"this rnn job needs .* train\.rnn\.resources\.mem_mb"):
        memory.check(huge, 4000, "rnn")


def test_bf16_autocast_on_cpu_trains(monkeypatch):
    """The GPU's mixed-precision path without a GPU (MELI_CPU_AUTOCAST=1), as for the other families."""
    monkeypatch.setenv(runtime.CPU_AUTOCAST_ENV, "1")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, classes = 256, 3
    y = torch.from_numpy(rng.integers(0, classes, n))
    ids = rng.integers(2, 12, (n, 6)).astype(np.int32)
    ids[:, 0] = 12 + y.numpy()  # token 12+k marks class k
    ids[: n // 2, 4:] = 0  # half the titles shorter
    x = torch.from_numpy(ids)
    model = RecurrentNet(15, 8, classes, Recurrence(hidden_size=16))
    device = torch.device("cpu")
    with runtime.autocast(device):
        assert model(x[:4]).dtype == torch.bfloat16  # autocast is really on
    opt = neural.make_optimizer(model, {"lr": 0.02, "weight_decay": 0.0, "optimizer": "adam"})
    losses = []
    for epoch in range(6):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        losses.append(neural.train_epoch(model, opt, x, y, 32, perm, device))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    _, bacc = neural.evaluate(model, neural.Split(x, y, 0), classes, device)
    assert bacc > 0.9


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_features(tmp_path_factory.mktemp("rnn_toy"))


def test_kill_and_resume_ends_like_an_uninterrupted_run(toy, tmp_path):
    features, matrix = toy
    params = {**RNN, "epochs": 3, "patience": 3}
    straight = tmp_path / "runs" / "rnn" / "straight"
    a = run("rnn", params, features, matrix, straight, "cpu", 1, combo="the-grids-id")
    assert a["combo"] == "the-grids-id" and a["val_bacc"] > 0.5  # the id passed in is the one recorded
    resumed = tmp_path / "runs" / "rnn" / "resumed"
    killed = train_cli("rnn", params, features, matrix, resumed, env={KILL_ENV: "2"}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (resumed / "metrics.json").exists()
    train_cli("rnn", params, features, matrix, resumed)
    b = json.loads((resumed / "metrics.json").read_text())
    assert b["resumed_from_epoch"] == 2
    for key in ("val_bacc", "val_loss", "final_train_loss", "best_epoch", "epochs_run", "params"):
        assert a[key] == b[key], key
    wa, wb = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    # Served like every family: the Predictor protocol, and meli-predict on raw titles.
    (tmp_path / "summary.json").write_text(json.dumps({"preprocess": {"lowercase": True, "strip_punctuation": True}}))
    predictor = load_predictor(resumed, tmp_path, features, device="cpu")
    assert isinstance(predictor, Predictor)
    titles = [" ".join(f"tok{c}x{j}" for j in range(5)) for c in range(4)]
    proba = predictor.predict_proba([*titles, ""])
    assert proba.shape == (5, 4) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    assert predictor.predict(titles).tolist() == [0, 1, 2, 3] == proba[:4].argmax(1).tolist()
    labels, _ = predictor.predict_split("validation", batch_size=7)
    saved = __import__("pandas").read_parquet(resumed / "val_predictions.parquet")
    assert (labels == saved["pred"].to_numpy()).all()
    out = predict.predict(resumed, [titles[2], "zzz"], 2, tmp_path, features, "cpu")
    assert out[0]["top"][0]["category"] == "CAT_2" and out[1]["known_words"] == 0
