"""The MLP and CNN modules, the training step and the validation metric."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from meli.models.nets import KimCNN, MeanMLP, build_model
from meli.metrics import balanced_accuracy
from meli.train.neural import class_weight_tensor, make_optimizer, resolve_params, train_epoch

CPU = torch.device("cpu")


def _ids(rows: list[list[int]], max_len: int) -> torch.Tensor:
    out = torch.zeros((len(rows), max_len), dtype=torch.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.int32)
    return out


def test_mlp_shapes_and_mean_ignores_pad():
    torch.manual_seed(0)
    model = MeanMLP(vocab_size=20, dim=5, n_classes=3, hidden=[7, 4], dropout=0.0).eval()
    ids = _ids([[2, 3, 4], [5], []], max_len=6)
    out = model(ids)
    assert out.shape == (3, 3) and torch.isfinite(out).all()  # the all-PAD row too
    # The pooled vector is the mean of the real tokens' rows only.
    pooled = model.embedding(ids)
    w = model.embedding.weight
    torch.testing.assert_close(pooled[0], w[[2, 3, 4]].mean(0))
    torch.testing.assert_close(pooled[1], w[5])
    assert torch.equal(pooled[2], torch.zeros(5))
    # Neither the PAD row's content nor the amount of trailing PAD changes anything.
    with torch.no_grad():
        model.embedding.weight[0] = 100.0
    torch.testing.assert_close(model(ids), out)
    torch.testing.assert_close(model(_ids([[2, 3, 4], [5], []], max_len=3)), out)


def test_cnn_handles_titles_shorter_than_kernels():
    torch.manual_seed(0)
    model = KimCNN(vocab_size=20, dim=6, n_classes=4, filters=5, kernel_sizes=[2, 4, 7], hidden=[8], dropout=0.0).eval()
    one_token = _ids([[3], [9]], max_len=1)  # max_len 1 < every kernel
    out = model(one_token)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    # Same titles with trailing PAD (and a changed PAD row) give the same logits.
    with torch.no_grad():
        model.embedding.weight[0] = -3.0
    torch.testing.assert_close(model(_ids([[3], [9]], max_len=10)), out)
    mixed = _ids([[3, 4, 5, 6, 7, 8, 9, 10], [2, 3], []], max_len=8)
    assert model(mixed).shape == (3, 4) and torch.isfinite(model(mixed)).all()


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_eval_mode_disables_dropout(family):
    torch.manual_seed(0)
    params = {"hidden": [32], "dropout": 0.5, "filters": 16, "kernel_sizes": [2]} if family == "cnn" else {"hidden": [32], "dropout": 0.5}
    model = build_model(family, params, vocab_size=30, dim=8, n_classes=5)
    torch.nn.init.normal_(model.embedding.weight)
    ids = torch.randint(1, 30, (16, 6), dtype=torch.int32)
    model.train()
    assert not torch.equal(model(ids), model(ids))  # dropout active while training
    model.eval()
    torch.testing.assert_close(model(ids), model(ids), rtol=0, atol=0)
    # Logits, not probabilities: the loss gets them directly.
    assert not torch.allclose(model(ids).sum(1), torch.ones(16))


def _learnable(n=512, n_classes=4, max_len=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    ids = 2 + 5 * y.unsqueeze(1) + torch.randint(0, 5, (n, max_len), generator=g)
    ids[:, 3:] *= torch.randint(0, 2, (n, max_len - 3), generator=g)  # some trailing PAD
    return ids.to(torch.int32), y


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_loss_decreases_on_a_learnable_problem(family):
    torch.manual_seed(0)
    ids, y = _learnable()
    params = resolve_params(family, {"hidden": [16], "dropout": 0.1, "lr": 0.01, "filters": 8, "kernel_sizes": [1, 2]}
                            if family == "cnn" else {"hidden": [16], "dropout": 0.1, "lr": 0.01})
    matrix = torch.randn(2 + 5 * 4, 8)
    matrix[0] = 0
    model = build_model(family, params, *matrix.shape, 4, matrix=matrix)
    opt = make_optimizer(model, params)
    losses = [train_epoch(model, opt, ids, y, 32, torch.randperm(len(y)), CPU) for _ in range(6)]
    assert losses[-1] < 0.5 * losses[0], losses
    model.eval()
    assert (model(ids).argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_frozen_embeddings_stay_unchanged_and_fine_tuned_ones_move(family):
    ids, y = _learnable()
    matrix = torch.randn(22, 8)
    matrix[0] = 0
    for freeze in (True, False):
        params = resolve_params(family, {"freeze_embeddings": freeze, "hidden": [8], "lr": 0.01})
        model = build_model(family, params, 22, 8, 4, matrix=matrix)
        opt = make_optimizer(model, params)
        train_epoch(model, opt, ids, y, 64, torch.randperm(len(y)), CPU)
        same = torch.equal(model.embedding.weight.detach(), matrix)
        assert same is freeze
        assert torch.equal(model.embedding.weight.detach()[0], torch.zeros(8))  # PAD row never trained


def test_build_model_errors():
    with pytest.raises(ValueError, match="unknown model family"):
        build_model("transformer", {}, 10, 4, 2)
    with pytest.raises(ValueError, match="shape"):
        build_model("mlp", {}, 10, 4, 2, matrix=torch.zeros(9, 4))


def test_balanced_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 9, 300))  # predicts classes absent from y too
    ours = balanced_accuracy(y, pred)
    assert balanced_accuracy(torch.from_numpy(y), torch.from_numpy(pred)) == ours  # CPU tensors too
    with pytest.warns(UserWarning):
        ref = balanced_accuracy_score(y, pred)
    assert ours == pytest.approx(ref, abs=1e-12)


def test_class_weights_are_inverse_frequency():
    w = class_weight_tensor(torch.tensor([0, 0, 0, 1]), n_classes=3)
    assert w.tolist() == pytest.approx([4 / 6, 4 / 2, 0.0])


def test_resolve_params_rejects_unknown_and_bad_values():
    with pytest.raises(ValueError, match="unknown mlp hyperparameter"):
        resolve_params("mlp", {"filters": 10})
    with pytest.raises(ValueError, match="optimizer"):
        resolve_params("cnn", {"optimizer": "lbfgs"})
    assert resolve_params("cnn", {})["kernel_sizes"] == [2, 3, 4]
