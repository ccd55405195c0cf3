"""TF-IDF + linear SVM baseline: the reference a practitioner writes first, made to scale.

Features are the workflow's shared sparse TF-IDF matrix (rule ``tfidf_features``, config section
``tfidf_features``: word 1-2 + char_wb 2-5 n-grams, min_df 2, sublinear tf by default), so the
baseline and the MLP's ``input: tfidf`` see the same columns and no job refits a vectorizer.

The classifier is one-vs-rest ``LinearSVC(C)`` (squared hinge, liblinear), default ``C = 0.5``:
on the real MeLi sample it is 1.3 points of balanced accuracy above the log-loss SGD this family
used before (val 0.9271 vs 0.9141; issue 12). liblinear solves the classes one after another on
one core, so :func:`fit_ovr_svc` splits the classes into chunks and fits the chunks in threads
(liblinear releases the GIL): each chunk is one ``LinearSVC`` on labels where the other classes
become one "rest" label, whose binary problems are exactly those of the single multi-class fit
(class k against every other row), so the model is the same as ``LinearSVC(C).fit(X, y)``; the
"rest" problem is solved and dropped. Each chunk's float64 coefficients are cast into one
float32 ``[classes, features]`` matrix as soon as it is done (half the memory and disk).

At the course's full size liblinear's one-vs-rest fit is the sweep's most expensive job (~96 GB,
hours on CPU). ``solver: squared_hinge`` fits the same model (one-vs-rest squared hinge, the same
``LinearOvr`` file and predictor) by minibatch SGD with torch over the same sparse rows
(:func:`fit_sparse_linear`: per-coordinate LazyAdam on the columns a batch touches, a GPU when
there is one, memory ~ the rows + 3 x classes x 4 B per column); ``solver: softmax`` is the
multinomial logistic regression on the same path. On the real sample squared_hinge matches or
beats LinearSVC on validation (benchmarks/README.md, issue 25).

Probabilities (the predictor contract needs them; an SVM has none) are the softmax of the
decision values. The argmax, hence balanced accuracy, is the SVM's; ``val_loss`` is the
cross-entropy of those softmaxed margins, comparable between SVM runs, not calibrated.

CLI (rules/baseline.smk)::

    python -m meli.train.baseline --params JSON --data-dir results/data --features results/features \
        --tfidf results/features/tfidf --out-dir results/runs/tfidf/{combo} --threads N

Writes the training contract of docs/design.md (metrics.json last, so its presence means the
run is complete): metrics.json, history.csv (one row), model.joblib, val_predictions.parquet.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from meli.cli import entry_point
from meli import models, runs
from meli.embeddings.tfidf import load_csr, load_vectorizer
from meli.grid import combo_id
from meli.io import Progress, atomic_path, format_seconds, peak_rss_mb, read_json, setup_logging
from meli.metrics import balanced_accuracy

log = logging.getLogger("meli.train.baseline")

CHUNK_ROWS = 100_000  # rows scored at once: bounds the dense [rows, n_classes] decision block
# Classes per liblinear fit: bounds the float64 coefficients in flight per thread (64 x 524k
# columns x 8 B x 2 copies = 0.5 GB) at the cost of one extra "rest" problem per chunk (+1.6%).
# Each fit also holds liblinear's own copy of X (16 B per non-zero): memory grows by ~2x the
# float32 X per thread (benchmarks/README.md).
MAX_CLASSES_PER_FIT = 64
PARAM_KEYS = models.get("tfidf").parameters
DEFAULTS: dict[str, Any] = models.get("tfidf").defaults()  # defined in meli/models/tfidf.py
SOLVERS = ("linearsvc", "softmax", "squared_hinge")
TORCH_SOLVERS = ("softmax", "squared_hinge")  # fit_sparse_linear
LINEAR_OPTIMIZERS = ("lazy_adam", "rowwise_adagrad", "rowwise_rmsprop")  # meli.train.sparse


def load_categories(features_dir: str | Path) -> list[str]:
    path = Path(features_dir) / "labels.json"
    cats = read_json(path).get("categories")
    if not isinstance(cats, list) or not cats or len(set(cats)) != len(cats):
        raise ValueError(f"{path}: 'categories' must be a non-empty list of unique names")
    return cats


def read_split(data_dir: str | Path, split: str, columns: Sequence[str] = ("text", "category")) -> pd.DataFrame:
    path = Path(data_dir) / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: split {split!r} not found")
    import pyarrow.parquet as pq

    have = set(pq.read_schema(path).names)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} (has {sorted(have)})")
    df = pd.read_parquet(path, columns=list(columns))
    if "text" in df and df["text"].isna().any():
        raise ValueError(f"{path}: column 'text' has {int(df['text'].isna().sum())} missing value(s)")
    return df


def label_ids(categories: Sequence[str], values: pd.Series) -> np.ndarray:
    """Category names -> label ids (index in labels.json); -1 for a category absent from it."""
    index = pd.Index(categories)
    return index.get_indexer(values.astype(str)).astype(np.int64)


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(PARAM_KEYS))
    if unknown:
        raise ValueError(f"--params: unknown key(s) {unknown} for the tfidf family; known: {list(PARAM_KEYS)} "
                         "(n-gram ranges, min_df and max_features are in the tfidf_features config section)")
    p = {**DEFAULTS, **params}
    if not p["C"] > 0:
        raise ValueError(f"--params: C must be > 0, got {p['C']!r}")
    if p["solver"] not in SOLVERS:
        raise ValueError(f"--params: solver {p['solver']!r} is not one of {list(SOLVERS)}")
    if not (p["lr"] > 0 and int(p["epochs"]) >= 1 and int(p["batch_size"]) >= 1 and p["weight_decay"] >= 0):
        raise ValueError(f"--params: the torch solvers need lr > 0, epochs >= 1, batch_size >= 1, weight_decay >= 0 (got "
                         f"{p['lr']}, {p['epochs']}, {p['batch_size']}, {p['weight_decay']})")
    if p["sparse_optimizer"] not in LINEAR_OPTIMIZERS:
        raise ValueError(f"--params: sparse_optimizer {p['sparse_optimizer']!r} is not one of {list(LINEAR_OPTIMIZERS)}")
    return p


class LinearOvr:
    """One-vs-rest linear scores ``X @ coef.T + intercept`` (float32); probabilities by softmax."""

    def __init__(self, coef: np.ndarray, intercept: np.ndarray):
        self.coef_ = np.ascontiguousarray(coef, dtype=np.float32)
        self.intercept_ = np.ascontiguousarray(intercept, dtype=np.float32)
        self.classes_ = np.arange(self.coef_.shape[0])

    def decision_function(self, x) -> np.ndarray:
        return np.asarray(x @ self.coef_.T, dtype=np.float32) + self.intercept_

    def predict_proba(self, x) -> np.ndarray:
        return softmax(self.decision_function(x))

    def predict(self, x) -> np.ndarray:
        return self.decision_function(x).argmax(axis=1)


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def class_chunks(n_classes: int, threads: int, max_per_fit: int = MAX_CLASSES_PER_FIT) -> list[np.ndarray]:
    """Classes split into at least ``threads`` chunks of at most ``max_per_fit`` (one chunk: all)."""
    n_chunks = max(min(threads, n_classes), -(-n_classes // max_per_fit))
    return [c for c in np.array_split(np.arange(n_classes), n_chunks) if c.size]


def fit_ovr_svc(x, y: np.ndarray, n_classes: int, C: float, class_weight: dict[int, float] | None = None,
                threads: int = 1, seed: int = 0, max_per_fit: int = MAX_CLASSES_PER_FIT) -> LinearOvr:
    """Exactly ``LinearSVC(C).fit(x, y)``'s one-vs-rest model, its classes fitted in parallel chunks."""
    import scipy.sparse as sp
    from sklearn.svm import LinearSVC

    x = sp.csr_matrix(x, dtype=np.float64)  # once: each fit would convert float32 to float64 itself
    coef = np.zeros((n_classes, x.shape[1]), dtype=np.float32)
    intercept = np.zeros(n_classes, dtype=np.float32)
    chunks = class_chunks(n_classes, threads, max_per_fit)
    progress = Progress(log, n_classes, "LinearSVC classes", every_s=30)

    def fit(chunk: np.ndarray) -> None:
        in_chunk = np.isin(y, chunk)
        rest = not in_chunk.all()
        y_chunk = np.where(in_chunk, y, -1) if rest else y
        weights = None if class_weight is None else {int(k): class_weight[int(k)] for k in chunk}
        clf = LinearSVC(C=C, class_weight=weights, random_state=seed).fit(x, y_chunk)
        labels = list(clf.classes_)
        if len(labels) == 2:  # liblinear fits one problem: the score of labels[1]; labels[0] gets its negative
            scores = {labels[1]: (clf.coef_[0], clf.intercept_[0]), labels[0]: (-clf.coef_[0], -clf.intercept_[0])}
        else:
            scores = {k: (clf.coef_[i], clf.intercept_[i]) for i, k in enumerate(labels)}
        for k in chunk:
            coef[k], intercept[k] = scores[int(k)]
        progress.update(len(chunk))

    if threads > 1 and len(chunks) > 1:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(fit, chunks))  # list(): re-raise a chunk's exception here
    else:
        for chunk in chunks:
            fit(chunk)
    return LinearOvr(coef, intercept)


def score_rows(classifier: Any, rows, n: int, labels: np.ndarray | None = None, what: str = "rows",
               batch_size: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per row: int64 argmax, float32 its probability and (given ``labels``, -1 allowed) the float32
    probability of the true label; ``rows(slice)`` gives a chunk's sparse rows, so one chunk x classes
    is in memory, never rows x classes (also how meli.inference.TfidfPredictor streams a split)."""
    pred, prob = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
    true_prob = None if labels is None else np.empty(n, dtype=np.float32)
    progress = Progress(log, n, f"scoring {what}", every_s=30)
    for start in range(0, n, batch_size):
        done = slice(start, min(start + batch_size, n))
        proba = classifier.predict_proba(rows(done)).astype(np.float32, copy=False)
        idx = np.arange(proba.shape[0])
        pred[done] = proba.argmax(axis=1)
        prob[done] = proba[idx, pred[done]]
        if true_prob is not None:
            true_prob[done] = proba[idx, np.maximum(labels[done], 0)]
        progress.update(proba.shape[0])
    return pred, prob, true_prob


def mean_log_loss(proba: np.ndarray, labels: np.ndarray) -> float:
    """Cross-entropy of the true labels (probabilities clipped away from 0)."""
    return mean_neg_log(proba[np.arange(len(labels)), labels])


def mean_neg_log(true_prob: np.ndarray) -> float:
    """Cross-entropy from each row's probability of its true label."""
    return float(-np.mean(np.log(np.clip(true_prob, 1e-15, 1.0))))


def squared_hinge(scores, labels, weights=None):
    """LinearSVC's loss, one-vs-rest: the mean over rows of ``sum_k max(0, 1 - s_ik * score_ik)**2``
    with ``s_ik = +1`` for the row's class and -1 for every other; ``weights`` (per class) weigh
    each row by its class's weight in every binary problem, as LinearSVC's ``class_weight``."""
    import torch

    sign = torch.full_like(scores, -1.0).scatter_(1, labels.unsqueeze(1), 1.0)
    per_row = torch.relu(1.0 - sign * scores).square().sum(1)
    if weights is None:
        return per_row.mean()
    w = weights[labels]
    return (per_row * w).sum() / w.sum()


def fit_sparse_linear(x, y: np.ndarray, n_classes: int, params: dict[str, Any], class_weight: np.ndarray | None = None,
                      device: str = "auto") -> tuple[LinearOvr, str]:
    """A linear model ``x @ W + b`` over sparse rows, trained with torch: ``solver: softmax``
    (multinomial logistic regression, cross-entropy) or ``solver: squared_hinge`` (LinearSVC's
    one-vs-rest squared hinge: LinearSVC's model, found by SGD instead of liblinear).

    ``W [columns, classes]`` is a sparse bag (meli.train.sparse.FastSparseBag: each batch touches
    only its rows' columns) trained by ``sparse_optimizer`` (LazyAdam: Adam per coordinate on the
    touched rows, what a linear model over rare n-grams needs; or row-wise Adagrad/RMSprop), with an
    optional lazy L2 ``weight_decay``; ``b`` plain Adam/Adagrad; the learning rate decays to 0
    (cosine) over ``epochs``; batches are a seeded permutation (deterministic on CPU). Returns the
    :class:`LinearOvr` (``coef_ = W.T``: the same model file and predictor as LinearSVC) and the device.
    """
    import torch
    import torch.nn.functional as F

    from meli.models.runtime import select_device
    from meli.train.optim import lr_factor, set_lr
    from meli.train.sparse import CsrRows, make_sparse_optimizer

    dev = select_device(device)
    solver = params["solver"]
    seed, epochs, batch = int(params["seed"]), int(params["epochs"]), int(params["batch_size"])
    torch.manual_seed(seed)
    rows = CsrRows.from_scipy(x)
    if dev.type == "cuda":
        rows = rows.to(dev)
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(dev)
    bag = torch.nn.EmbeddingBag(x.shape[1], n_classes, mode="sum", sparse=True).to(dev)
    torch.nn.init.zeros_(bag.weight)  # convex: start from the uniform prediction
    bias = torch.nn.Parameter(torch.zeros(n_classes, device=dev))
    lr, kind = float(params["lr"]), params.get("sparse_optimizer", "lazy_adam")
    sparse = make_sparse_optimizer(bag, {"lr": lr}, kind=kind)
    if float(params.get("weight_decay", 0.0)) > 0:
        sparse.param_groups[0]["weight_decay"] = float(params["weight_decay"])
    dense = torch.optim.Adagrad([bias], lr=lr) if kind == "rowwise_adagrad" else torch.optim.Adam([bias], lr=lr)
    opts = [sparse, dense]
    weights = None if class_weight is None else torch.as_tensor(class_weight, dtype=torch.float32, device=dev)
    n = len(y)
    steps, total_steps = 0, epochs * -(-n // batch)
    progress = Progress(log, epochs * n, f"{solver} rows", every_s=30)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).to(dev)
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            b = rows[idx]
            for opt in opts:
                set_lr(opt, lr * lr_factor("cosine", steps, total_steps))
                opt.zero_grad()
            scores = bag(b.indices, b.offsets, per_sample_weights=b.values) + bias
            if solver == "squared_hinge":
                loss = squared_hinge(scores, labels[idx], weights)
            else:
                loss = F.cross_entropy(scores, labels[idx], weight=weights)
            loss.backward()
            for opt in opts:
                opt.step()
            loss_sum += loss.detach() * idx.numel()
            steps += 1
            progress.update(idx.numel())
        log.info("%s epoch %d/%d: train loss %.4f", solver, epoch + 1, epochs, float(loss_sum) / max(n, 1))
    coef = bag.weight.detach().t().contiguous().cpu().numpy()
    return LinearOvr(coef, bias.detach().cpu().numpy()), dev.type


def train(params: dict[str, Any], data_dir: str | Path, features_dir: str | Path, out_dir: str | Path,
          threads: int = 1, tfidf_dir: str | Path | None = None, combo: str | None = None, device: str = "auto") -> dict[str, Any]:
    """Fit, score validation, write the run directory; returns metrics.json's content.

    ``tfidf_dir`` (default ``features_dir/tfidf``) holds the shared sparse matrices and vectorizer;
    ``combo`` is the grid's combination id (default: computed from ``params`` as given).
    """
    from sklearn.utils.class_weight import compute_class_weight
    from threadpoolctl import threadpool_limits

    given = params
    params = check_params(given)
    combo = combo if combo is not None else combo_id(given)  # the id the rule named the run directory after
    out_dir = Path(out_dir)
    tfidf_dir = Path(tfidf_dir) if tfidf_dir is not None else Path(features_dir) / "tfidf"
    categories = load_categories(features_dir)
    n_classes = len(categories)
    train_df = read_split(data_dir, "train", ("category",))
    val_df = read_split(data_dir, "validation", ("category",))
    y_train = label_ids(categories, train_df["category"])
    y_val = label_ids(categories, val_df["category"])
    if (y_train < 0).any():
        bad = sorted(set(train_df["category"][y_train < 0]))[:5]
        raise ValueError(f"{data_dir}/train.parquet has categories missing from {features_dir}/labels.json: {bad}")
    absent = np.setdiff1d(np.arange(n_classes), y_train)
    if absent.size:
        raise ValueError(f"{features_dir}/labels.json lists {absent.size} categories with no training row, "
                         f"e.g. {categories[absent[0]]!r}: labels.json must come from this train split")
    known = y_val >= 0
    n_unseen = int((~known).sum())
    if not known.any():
        raise ValueError(f"{data_dir}/validation.parquet has no row of a training category")
    x_train, x_val = load_csr(tfidf_dir / "train.npz"), load_csr(tfidf_dir / "validation.npz")
    for name, x, y in (("train", x_train, y_train), ("validation", x_val, y_val)):
        if x.shape[0] != len(y):
            raise ValueError(f"{tfidf_dir}/{name}.npz has {x.shape[0]:,} rows, {data_dir}/{name}.parquet "
                             f"{len(y):,}: the features are stale; delete {tfidf_dir} and rerun")
    vectorizer = load_vectorizer(tfidf_dir / "vectorizer.joblib")
    if vectorizer.n_features != x_train.shape[1]:
        raise ValueError(f"{tfidf_dir}/vectorizer.joblib has {vectorizer.n_features:,} features, train.npz "
                         f"{x_train.shape[1]:,}: delete {tfidf_dir} and rerun")
    log.info("params %s; train %s rows, validation %s rows (%s with a category absent from train, not scored), "
             "%d classes, %s features (%.1f non-zeros per row), %d threads", json.dumps(params),
             f"{len(y_train):,}", f"{len(y_val):,}", f"{n_unseen:,}", n_classes, f"{x_train.shape[1]:,}",
             x_train.nnz / max(x_train.shape[0], 1), threads)

    start = time.monotonic()
    with threadpool_limits(1):  # the parallelism is over class chunks; no nested BLAS threads
        classes = np.arange(n_classes)
        class_weight = None
        if params["class_weights"]:
            class_weight = dict(zip(classes.tolist(), compute_class_weight("balanced", classes=classes, y=y_train)))
        device_used = "cpu"
        if params["solver"] in TORCH_SOLVERS:
            import torch

            torch.set_num_threads(threads)
            cw = None if class_weight is None else np.array([class_weight[k] for k in range(n_classes)])
            clf, device_used = fit_sparse_linear(x_train, y_train, n_classes, params, cw, device)
        else:
            clf = fit_ovr_svc(x_train, y_train, n_classes, float(params["C"]), class_weight, threads,
                              int(params["seed"]))
        train_time = time.monotonic() - start
        log.info("%s: %s classes in %s", {"linearsvc": "LinearSVC"}.get(params["solver"], params["solver"]),
                 f"{n_classes:,}", format_seconds(train_time))
        train_loss = _chunked_log_loss(clf, x_train, y_train, "train")
        pred, prob, true_prob = score_rows(clf, lambda s: x_val[s], x_val.shape[0], y_val, "validation")
    val_bacc = balanced_accuracy(y_val[known], pred[known])
    val_loss = mean_neg_log(true_prob[known])
    elapsed = time.monotonic() - start
    samples_per_s = len(y_train) / train_time
    log.info("validation bacc %.4f, log loss of the softmaxed margins %.4f (train %.4f), train %s, %s rows/s",
             val_bacc, val_loss, train_loss, format_seconds(train_time), f"{samples_per_s:,.0f}")

    import joblib

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "model.joblib") as tmp:
        joblib.dump({"vectorizer": vectorizer, "classifier": clf, "categories": categories, "params": params}, tmp)
    predictions = pd.DataFrame({"label": y_val, "pred": pred, "prob": prob.astype(np.float64)})
    with atomic_path(out_dir / "val_predictions.parquet") as tmp:
        predictions.to_parquet(tmp, index=False)
    metrics = {
        "family": "tfidf",
        "combo": combo,
        "params": params,
        "epochs_run": 1,
        "best_epoch": 1,
        "val_bacc": val_bacc,
        "val_loss": val_loss,
        "final_train_loss": train_loss,
        "train_time_s": train_time,
        "samples_per_s": samples_per_s,
        "peak_mem_mb": peak_rss_mb(),
        "device": device_used,
        "threads": threads,
        "n_train": int(len(y_train)),
        "n_val": int(known.sum()),
        "n_val_unseen_category": n_unseen,
        "n_classes": n_classes,
        "n_features": int(x_train.shape[1]),
        "stopped_early": False,
        "finished_at": runs.finished_at(),  # the importer's identity
    }
    history = [{"epoch": 1, "train_loss": train_loss, "val_loss": val_loss, "val_bacc": val_bacc,
                "samples_per_s": samples_per_s, "elapsed_s": elapsed}]
    runs.write_record(out_dir, history, metrics)  # metrics.json last: its presence marks a complete run
    log.info("wrote %s", out_dir)
    return metrics


def _chunked_log_loss(classifier: Any, x: Any, labels: np.ndarray, what: str) -> float:
    """Mean log loss over the rows of sparse ``x`` without materialising all their probabilities."""
    total = 0.0
    progress = Progress(log, len(labels), f"scoring {what}", every_s=30)
    for start in range(0, len(labels), CHUNK_ROWS):
        proba = classifier.predict_proba(x[start : start + CHUNK_ROWS])
        total += mean_log_loss(proba, labels[start : start + CHUNK_ROWS]) * len(proba)
        progress.update(len(proba))
    return total / len(labels)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meli.train.baseline", description=__doc__.split("\n")[0])
    ap.add_argument("--params", required=True, help="JSON object: C, class_weights, seed")
    ap.add_argument("--combo", default=None, help="the combination id the grid gave it (default: from --params)")
    ap.add_argument("--data-dir", required=True, type=Path)
    ap.add_argument("--features", required=True, type=Path, help="directory with labels.json")
    ap.add_argument("--tfidf", type=Path, default=None, help="shared sparse features (default FEATURES/tfidf)")
    ap.add_argument("--out-dir", required=True, type=Path)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="the torch solvers (softmax, squared_hinge) only")
    args = ap.parse_args(argv)
    setup_logging("meli.train.baseline")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--params is not valid JSON: {err}") from err
    if not isinstance(params, dict):
        raise SystemExit(f"--params must be a JSON object, got {type(params).__name__}")
    # Through the package, not __main__: the pickled model must name meli.train.baseline.LinearOvr.
    from meli.train import baseline

    baseline.train(params, args.data_dir, args.features, args.out_dir, threads=max(1, args.threads),
                   tfidf_dir=args.tfidf, combo=args.combo, device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
