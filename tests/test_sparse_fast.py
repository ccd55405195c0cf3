"""Issue 25's fast paths: hashed n-gram TF-IDF (meli.embeddings.ngrams) and the sparse bag's LazyAdam."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from meli.embeddings import tfidf
from meli.embeddings.ngrams import Chunk, bucket_counts
from meli.models.nets import TfidfMLP
from meli.train import neural
from meli.train.sparse import CsrRows, FastSparseBag, LazyAdam, make_sparse_optimizer

TEXTS = ["taladro percutor bosch 650w", "funda celular silicona", "", "  a\tb  c ", "x", "ñandú über alles",
         "taladro inalambrico", "funda silicona samsung s21", "celular samsung s21 128gb", "bicicleta rodado 29"]


@pytest.mark.parametrize("kind,lo,hi", [("char_wb", 2, 5), ("char_wb", 1, 3), ("char_wb", 4, 6), ("word", 1, 2),
                                        ("word", 2, 3)])
def test_hashed_ngrams_are_sklearns(kind, lo, hi):
    from sklearn.feature_extraction.text import CountVectorizer

    if kind == "word":
        cv = CountVectorizer(token_pattern=r"\S+", ngram_range=(lo, hi), lowercase=False)
    else:
        cv = CountVectorizer(analyzer="char_wb", ngram_range=(lo, hi), lowercase=False)
    want = cv.fit_transform(TEXTS)
    chunk = Chunk(TEXTS)
    rows, cols = chunk.words(lo, hi, 30) if kind == "word" else chunk.chars_wb(lo, hi, 30)
    got = bucket_counts(rows, cols, len(TEXTS), 30)
    # Same n-grams with the same counts in every row (columns differ: buckets vs sklearn's sorted names).
    assert got.shape[0] == want.shape[0] and got.sum() == want.sum()
    for i in range(len(TEXTS)):
        assert sorted(got[i].data.tolist()) == sorted(want[i].data.tolist()), TEXTS[i]
    assert np.unique(cols).size == want.shape[1]  # distinct n-grams = distinct buckets (no collision here)


def test_hashed_tfidf_matches_sklearn_values_and_is_chunk_and_thread_invariant(monkeypatch):
    texts = [t for t in TEXTS if t.strip()] * 3 + ["taladro bosch", "funda samsung"]
    old = tfidf.TitleVectorizer({"engine": "sklearn", "min_df": 2})
    new = tfidf.TitleVectorizer({"min_df": 2})
    x_old, x_new = old.fit_transform(texts), new.fit_transform(texts)
    assert old.block_sizes() == new.block_sizes() and x_new.dtype == np.float32 and x_new.has_sorted_indices
    for i in range(len(texts)):  # the same TF-IDF values per row, in other columns
        np.testing.assert_allclose(np.sort(x_new[i].data), np.sort(x_old[i].data), rtol=1e-5)
    monkeypatch.setattr(tfidf, "CHUNK_ROWS", 4)
    again = tfidf.TitleVectorizer({"min_df": 2})
    assert (again.fit_transform(texts, threads=3) != x_new).nnz == 0
    assert (again.transform(texts, threads=2) != x_new).nnz == 0
    monkeypatch.setattr(tfidf, "KEEP_COUNTS_ROWS", 5)  # large inputs: counts summed, then recounted when weighed
    twice = tfidf.TitleVectorizer({"min_df": 2})
    assert (twice.fit_transform(texts, threads=2) != x_new).nnz == 0 and twice.block_sizes() == new.block_sizes()
    restored = pickle.loads(pickle.dumps(again))  # predict loads it from vectorizer.joblib
    assert (restored.transform(texts[:5]) != x_new[:5]).nnz == 0
    assert restored.transform([]).shape == (0, x_new.shape[1])
    assert restored.transform(["zzzz qqqq"]).nnz == 0


def test_max_features_keeps_the_most_frequent_and_bad_keys_are_named():
    texts = ["aa bb", "aa cc", "aa bb", "dd"]
    vec = tfidf.TitleVectorizer({"char_ngrams": [], "min_df": 1, "max_features": 100, "word_ngrams": [1, 1]})
    assert vec.fit_transform(texts).shape[1] == 4
    top = tfidf.TitleVectorizer({"char_ngrams": [], "min_df": 1, "max_features": 100, "word_ngrams": [1, 1]})
    top.blocks[0][1].max_features = 2
    x = top.fit_transform(texts)
    assert x.shape[1] == 2 and x[3].nnz == 0  # "aa" (3) and "bb" (2) kept, "dd" dropped
    with pytest.raises(tfidf.TfidfFeatureError, match="engine"):
        tfidf.TitleVectorizer({"engine": "fast"})
    with pytest.raises(tfidf.TfidfFeatureError, match="min_df"):
        tfidf.TitleVectorizer({"min_df": 5}).fit_transform(texts)


def test_old_pickled_vectorizers_load_as_the_sklearn_engine():
    vec = tfidf.TitleVectorizer({"engine": "sklearn", "min_df": 1})
    x = vec.fit_transform(TEXTS)
    state = vec.__dict__.copy()
    state["config"] = {k: v for k, v in vec.config.items() if k not in ("engine", "hash_bits")}
    old = tfidf.TitleVectorizer.__new__(tfidf.TitleVectorizer)
    old.__setstate__(state)  # what unpickling a vectorizer.joblib written before issue 25 does
    assert old.engine == "sklearn" and (old.transform(TEXTS) != x).nnz == 0


def _batches(n_features=40, rows=64, seed=0):
    m = sp.random(rows, n_features, density=0.15, format="csr", random_state=seed, dtype=np.float32)
    y = torch.from_numpy(np.random.default_rng(seed).integers(0, 3, rows))
    return CsrRows.from_scipy(m), y


def test_fast_bag_gradient_is_autograds():
    rows, y = _batches()
    torch.manual_seed(0)
    ref = TfidfMLP(40, 3, hidden=[8])
    fast = TfidfMLP(40, 3, hidden=[8])
    fast.load_state_dict(ref.state_dict())
    F.cross_entropy(ref(rows), y).backward()
    make_sparse_optimizer(fast.embedding, {"lr": 0.01})
    assert isinstance(fast.embedding, FastSparseBag)
    F.cross_entropy(fast(rows), y).backward()
    touched, grad = fast.embedding.row_grad
    dense = ref.embedding.weight.grad.to_dense()
    assert torch.equal(torch.nonzero(dense.abs().sum(1) > 0).squeeze(1), touched[grad.abs().sum(1) > 0])
    torch.testing.assert_close(grad, dense[touched], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fast.out.weight.grad, ref.out.weight.grad)
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(rows), ref.eval()(rows))  # inference: the plain bag


def test_lazy_adam_follows_sparse_adam_and_round_trips():
    torch.manual_seed(0)
    ref = TfidfMLP(40, 3, hidden=[8])
    fast = TfidfMLP(40, 3, hidden=[8])
    fast.load_state_dict(ref.state_dict())
    opt_ref = make_sparse_optimizer(ref.embedding, {"lr": 0.05}, kind="sparse_adam")
    opt_fast = make_sparse_optimizer(fast.embedding, {"lr": 0.05})
    assert isinstance(opt_ref, torch.optim.SparseAdam) and isinstance(opt_fast, LazyAdam)
    for seed in range(6):  # different touched rows each step: untouched rows' moments must stay
        rows, y = _batches(seed=seed)
        for model, opt in ((ref, opt_ref), (fast, opt_fast)):
            opt.zero_grad()
            F.cross_entropy(model(rows), y).backward()
            opt.step()
    torch.testing.assert_close(fast.embedding.weight, ref.embedding.weight, rtol=1e-4, atol=1e-6)
    a, b = opt_fast.state_dict()["state"][0], opt_ref.state_dict()["state"][0]
    assert a["step"] == b["step"] == 6
    torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    again = make_sparse_optimizer(TfidfMLP(40, 3, hidden=[8]).embedding, {"lr": 0.05})
    again.load_state_dict(opt_ref.state_dict())  # a SparseAdam checkpoint resumes under LazyAdam
    assert again.state_dict()["state"][0]["step"] == 6
    with pytest.raises(ValueError, match="not one of"):
        make_sparse_optimizer(fast.embedding, {"lr": 0.1}, kind="adagrad")


def test_int32_rows_feed_the_bag():
    rows, y = _batches()
    small = CsrRows(rows.indptr, rows.indices.int(), rows.values, rows.n_features)
    model = TfidfMLP(40, 3, hidden=[8])
    opt = neural.make_optimizer(model, {"lr": 0.01, "weight_decay": 0.0, "optimizer": "adam"})
    F.cross_entropy(model(small[torch.arange(10)]), y[:10]).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(small), model(rows))


@pytest.mark.parametrize("kind", ["rowwise_adagrad", "rowwise_rmsprop"])
def test_rowwise_optimizers_are_their_formula_with_one_accumulator_per_row(kind, monkeypatch):
    from meli.train.optim import set_lr
    from meli.train.sparse import RowwiseAdagrad

    monkeypatch.delenv("MELI_SPARSE_OPTIMIZER", raising=False)
    torch.manual_seed(0)
    model = TfidfMLP(40, 3, hidden=[8])
    params = {"lr": 0.01, "weight_decay": 0.0, "optimizer": "adam", "sparse_optimizer": kind, "sparse_lr_scale": 10}
    opt = neural.make_optimizer(model, params)
    bag_opt, dense = opt.parts
    assert isinstance(bag_opt, RowwiseAdagrad) and bag_opt.param_groups[0]["lr"] == pytest.approx(0.1)
    set_lr(opt, 0.005)  # the schedule keeps the bag's multiple
    assert bag_opt.param_groups[0]["lr"] == pytest.approx(0.05) and dense.param_groups[0]["lr"] == 0.005
    acc = torch.zeros(40)
    for seed in range(3):  # different rows each step: an untouched row's weight and accumulator stay
        rows, y = _batches(seed=seed)
        opt.zero_grad()
        F.cross_entropy(model(rows[torch.arange(4)]), y[:4]).backward()
        touched, grad = (t.clone() for t in model.embedding.row_grad)
        before = model.embedding.weight.detach().clone()
        opt.step()
        want, lr = before.clone(), 0.05
        if kind == "rowwise_adagrad":  # the sum of the row's mean squared gradients
            acc[touched] += grad.square().mean(1)
        else:  # their average (beta2 0.999), bias-corrected by the global step
            acc[touched] = 0.999 * acc[touched] + 0.001 * grad.square().mean(1)
            lr *= (1 - 0.999 ** (seed + 1)) ** 0.5
        want[touched] -= lr * grad / (acc[touched].sqrt() + 1e-8).unsqueeze(1)
        torch.testing.assert_close(model.embedding.weight.detach(), want, rtol=1e-5, atol=1e-7)
    state = bag_opt.state_dict()["state"][0]
    assert state["step"] == 3 and state["sum"].shape == (40,)  # 4 B per column, not 2 x width x 4 B
    torch.testing.assert_close(state["sum"], acc)
    again = neural.make_optimizer(TfidfMLP(40, 3, hidden=[8]), params)
    again.load_state_dict(opt.state_dict())  # a checkpoint round-trips
    torch.testing.assert_close(again.parts[0].state_dict()["state"][0]["sum"], acc)


def test_sparse_optimizer_choice_and_its_checks(monkeypatch):
    from meli.train.sparse import RowwiseAdagrad

    params = {"lr": 0.01, "sparse_optimizer": "rowwise_adagrad"}
    monkeypatch.delenv("MELI_SPARSE_OPTIMIZER", raising=False)
    assert isinstance(make_sparse_optimizer(TfidfMLP(40, 3, hidden=[8]).embedding, params), RowwiseAdagrad)
    assert isinstance(make_sparse_optimizer(TfidfMLP(40, 3, hidden=[8]).embedding, {"lr": 0.01}), LazyAdam)
    monkeypatch.setenv("MELI_SPARSE_OPTIMIZER", "sparse_adam")  # benchmarks' side-by-side override
    assert isinstance(make_sparse_optimizer(TfidfMLP(40, 3, hidden=[8]).embedding, params), torch.optim.SparseAdam)
    base = {"input": "tfidf", "hidden": [16]}
    p = neural.resolve_params("mlp", {**base, "sparse_optimizer": "rowwise_adagrad", "sparse_lr_scale": 10})
    assert p["sparse_optimizer"] == "rowwise_adagrad" and p["sparse_lr_scale"] == 10
    assert neural.resolve_params("mlp", base)["sparse_optimizer"] == "lazy_adam"  # the documented default
    for bad, match in (({"sparse_optimizer": "adagrad"}, "sparse_optimizer"), ({"sparse_lr_scale": 0}, "sparse_lr_scale")):
        with pytest.raises(ValueError, match=match):
            neural.resolve_params("mlp", {**base, **bad})
    words = neural.resolve_params("mlp", {"embedding": "w2v", "sparse_optimizer": "rowwise_adagrad"})
    assert "sparse_optimizer" not in words and "sparse_lr_scale" not in words  # no sparse bag: pruned


def test_streamed_stack_is_vstack_and_grows_when_the_first_part_is_sparse():
    from meli.embeddings.tfidf import _stack_stream

    parts = [sp.random(r, 30, density=d, format="csr", random_state=i, dtype=np.float32)
             for i, (r, d) in enumerate([(5, 0.05), (7, 0.5), (0, 0.1), (9, 0.9), (4, 0.3)])]
    for p in parts:
        p.sort_indices()
    want = sp.vstack(parts, format="csr")
    for threads in (1, 2, 3):
        got = _stack_stream(threads, lambda p: p, parts, sum(p.shape[0] for p in parts))
        assert got.shape == want.shape and got.dtype == np.float32 and (got != want).nnz == 0
        assert np.array_equal(got.indptr, want.indptr)
