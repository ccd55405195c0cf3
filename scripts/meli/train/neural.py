"""Train one MLP or CNN combination: early stopping on validation bacc, resumable per epoch.

    python -m meli.train.neural --family mlp --params '{"embedding": "w2v", ...}' \
        --features results/features --matrix results/embeddings/w2v/matrix.npy \
        --out-dir results/runs/mlp/<combo> --device auto --threads 8
    python -m meli.train.neural --family mlp --params '{"input": "tfidf", "hidden": [512], ...}' \
        --features results/features --tfidf results/features/tfidf --out-dir ...

An MLP with ``input: tfidf`` reads the shared sparse TF-IDF rows (meli.train.sparse.CsrRows,
batched the same way) instead of token ids; its sparse bag is optimised by SparseAdam, every
other parameter by the combination's ``optimizer`` (``weight_decay`` applies to those only).

The token matrices are loaded once (onto the GPU when they fit) and batches are gathered by a
seeded index permutation: no per-sample Python, no DataLoader. Every epoch's randomness (the
permutation and dropout) is seeded from ``(seed, epoch)``, and a checkpoint (model, optimizer,
best-so-far, history) is written after every epoch under ``results/checkpoints/...``, so a
killed job restarted with the same arguments resumes and ends exactly where an uninterrupted
run would (on CPU). Outputs are written atomically; metrics.json last.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meli import models, runs
from meli.cli import MeliError
from meli.grid import combo_id
from meli.io import Progress, atomic_path, format_seconds, peak_rss_mb, read_json, setup_logging
from meli.metrics import balanced_accuracy
from meli.models.nets import build_model
from meli.models.runtime import EVAL_BATCH, autocast, iter_logits, predict_labels, select_device
from meli.jobstatus import DIVERGED_EXIT
from meli.train import memory
from meli.train.sparse import CsrRows

log = logging.getLogger("meli.train.neural")

# Each family's defaults live in its definition (meli/models/<family>.py).
DEFAULTS: dict[str, dict[str, Any]] = {name: models.get(name).defaults() for name in models.neural_names()}
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_bacc", "samples_per_s", "elapsed_s")
CHECKPOINT_VERSION = 1
# Fault injection for the resume tests: the process signals itself after checkpointing this epoch
# (SIGKILL, or the signal named in KILL_SIGNAL_ENV: TERM is what SLURM sends at the time limit).
KILL_ENV = "MELI_KILL_AFTER_EPOCH"
KILL_SIGNAL_ENV = "MELI_KILL_SIGNAL"
NAN_CHECK_EVERY = 256  # batches between loss finiteness checks (each one is a device sync)
# Divergence without NaN (Adam with a huge lr: losses of 1e19, chance accuracy): an epoch whose
# mean train loss is over DIVERGE_FACTOR x max(loss before training, log(classes), 1) is a
# diverged epoch; DIVERGE_EPOCHS of them in a row (or every epoch of a shorter run) fail the job.
# A model that is learning stays below log(classes), what guessing uniformly costs.
DIVERGE_FACTOR = 3.0
DIVERGE_EPOCHS = 2


class NonFiniteLoss(MeliError, RuntimeError):
    """The training loss became NaN or infinite, or diverged without becoming NaN."""

    exit_code = DIVERGED_EXIT  # meli.jobstatus records the combination as diverged


class StartStateError(MeliError, ValueError):
    """The previous rung's training state cannot be continued."""


def resolve_params(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """The combination completed with the family's defaults; unknown keys and bad values fail."""
    if family not in DEFAULTS:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(DEFAULTS)}")
    allowed = set(DEFAULTS[family]) | {"embedding"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown {family} hyperparameter(s) {unknown}; known: {sorted(allowed)}")
    out = {**DEFAULTS[family], **params}
    prune = models.get(family).prune
    if prune is not None:
        out = prune(out)
    if out["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer {out['optimizer']!r} not one of {OPTIMIZERS}")
    if out["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {out['lr_schedule']!r} not one of {LR_SCHEDULES}")
    if not 0 <= float(out["label_smoothing"]) < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {out['label_smoothing']!r}")
    if out.get("input", "embedding") not in ("embedding", "tfidf"):
        raise ValueError(f"input {out['input']!r} not one of ('embedding', 'tfidf')")
    if uses_tfidf(out) and not out["hidden"]:
        raise ValueError("input tfidf needs a hidden layer: hidden[0] is the width of its sparse bag (e.g. [512])")
    for key in ("batch_size", "epochs", "patience"):
        if int(out[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {out[key]!r}")
    if not 0 <= float(out["dropout"]) < 1:
        raise ValueError(f"dropout must be in [0, 1), got {out['dropout']!r}")
    return out


def uses_tfidf(params: dict[str, Any]) -> bool:
    """The combination reads the shared sparse TF-IDF rows instead of token ids + an embedding matrix."""
    return params.get("input", "embedding") == "tfidf"


# ----------------------------------------------------------------------------------------- data
@dataclass
class Split:
    ids: torch.Tensor | CsrRows  # int32 [rows, max_len] token ids, or sparse TF-IDF rows; known labels only
    labels: torch.Tensor  # int64 [rows]
    unseen: int  # rows dropped because their category is absent from train (label -1)


@dataclass
class Data:
    train: Split
    validation: Split
    val_ids_all: np.ndarray | CsrRows  # every validation row, for val_predictions in row order
    val_labels_all: np.ndarray
    categories: list[str]
    matrix: torch.Tensor | None  # the embedding matrix; None for TF-IDF rows
    n_features: int = 0  # TF-IDF columns (input tfidf)

    @property
    def n_classes(self) -> int:
        return len(self.categories)

    @property
    def input_shape(self) -> tuple[int, int]:
        """(vocab_size, dim) the network is built with: (TF-IDF columns, 0) for sparse rows."""
        return tuple(self.matrix.shape) if self.matrix is not None else (self.n_features, 0)

    @property
    def max_len(self) -> int:
        return 0 if isinstance(self.val_ids_all, CsrRows) else int(self.val_ids_all.shape[1])


def _load_split(features: Path, split: str, n_classes: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    ids_path, y_path = features / f"{split}_ids.npy", features / f"{split}_labels.npy"
    ids, y = np.load(ids_path), np.load(y_path)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{ids_path}: expected an integer [rows, max_len] matrix, got {ids.dtype} {ids.shape}")
    if y.shape != (ids.shape[0],):
        raise ValueError(f"{y_path}: {y.shape[0] if y.ndim else 0} labels for {ids.shape[0]} rows in {ids_path}")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"{ids_path}: token ids in [{ids.min()}, {ids.max()}], the matrix has {vocab_size} rows")
    if y.size and (y.min() < -1 or y.max() >= n_classes):
        raise ValueError(f"{y_path}: labels in [{y.min()}, {y.max()}], labels.json has {n_classes} categories")
    return ids.astype(np.int32, copy=False), y.astype(np.int64, copy=False)


def load_data(features: str | os.PathLike, matrix_path: str | os.PathLike) -> Data:
    features = Path(features)
    categories = list(read_json(features / "labels.json")["categories"])
    matrix = np.load(matrix_path)
    if matrix.ndim != 2 or matrix.shape[0] < 2:
        raise ValueError(f"{matrix_path}: expected a [vocab, dim] matrix, got shape {matrix.shape}")
    bad_rows = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"{matrix_path}: {bad_rows.size} row(s) contain NaN/inf (first: token id {bad_rows[0]})")
    raw = {split: _load_split(features, split, len(categories), matrix.shape[0]) for split in ("train", "validation")}
    splits = _known_splits(features, raw, torch.from_numpy)
    if raw["train"][0].shape[1] != raw["validation"][0].shape[1]:
        raise ValueError(f"{features}: train and validation ids have different max_len")
    return Data(
        train=splits["train"],
        validation=splits["validation"],
        val_ids_all=raw["validation"][0],
        val_labels_all=raw["validation"][1],
        categories=categories,
        matrix=torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)),
    )


def _known_splits(features: Path, raw: dict[str, tuple[Any, np.ndarray]], rows) -> dict[str, Split]:
    """Train and validation rows with a known label (``rows`` turns the kept input rows into
    tensors); rows whose category train never saw (label -1) are counted, not trained on."""
    splits = {}
    for split, (x, y) in raw.items():
        known = y >= 0
        splits[split] = Split(rows(x[known]), torch.from_numpy(y[known]), int((~known).sum()))
    if len(splits["train"].labels) == 0:
        raise ValueError(f"{features}/train_labels.npy: no training rows with a known label")
    return splits


def _load_labels(features: Path, split: str, n_classes: int, rows: int, what: Path) -> np.ndarray:
    y_path = features / f"{split}_labels.npy"
    y = np.load(y_path)
    if y.shape != (rows,):
        raise ValueError(f"{y_path}: {y.shape[0] if y.ndim else 0} labels for {rows} rows in {what}")
    if y.size and (y.min() < -1 or y.max() >= n_classes):
        raise ValueError(f"{y_path}: labels in [{y.min()}, {y.max()}], labels.json has {n_classes} categories")
    return y.astype(np.int64, copy=False)


def load_sparse_data(features: str | os.PathLike, tfidf_dir: str | os.PathLike) -> Data:
    """The shared TF-IDF rows (rule tfidf_features) with the label ids of the embedding stage."""
    from meli.embeddings.tfidf import load_csr

    features, tfidf_dir = Path(features), Path(tfidf_dir)
    categories = list(read_json(features / "labels.json")["categories"])
    raw = {}
    for split in ("train", "validation"):
        path = tfidf_dir / f"{split}.npz"
        x = load_csr(path)
        raw[split] = (x, _load_labels(features, split, len(categories), x.shape[0], path))
    splits = _known_splits(features, raw, CsrRows.from_scipy)
    if raw["train"][0].shape[1] != raw["validation"][0].shape[1]:
        raise ValueError(f"{tfidf_dir}: train and validation have different numbers of columns")
    return Data(
        train=splits["train"],
        validation=splits["validation"],
        val_ids_all=CsrRows.from_scipy(raw["validation"][0]),
        val_labels_all=raw["validation"][1],
        categories=categories,
        matrix=None,
        n_features=int(raw["train"][0].shape[1]),
    )


def place(split: Split, device: torch.device) -> Split:
    """The split's tensors on ``device`` when they fit comfortably, else pinned host memory."""
    if device.type != "cuda":
        return split
    need = split.ids.nbytes + split.labels.nbytes
    free, _ = torch.cuda.mem_get_info(device)
    if need < 0.4 * free:
        return Split(split.ids.to(device), split.labels.to(device), split.unseen)
    log.warning("token matrix (%.0f MB) kept in host memory: only %.0f MB free on %s", need / 1e6, free / 1e6, device)
    return Split(split.ids.pin_memory(), split.labels.pin_memory(), split.unseen)


# ------------------------------------------------------------------------------------- training
def epoch_seed(seed: int, epoch: int) -> int:
    """Every epoch's randomness depends on (seed, epoch) only: resuming needs no RNG state."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63)


class Optimizers:
    """Several optimizers stepped as one (a sparse bag's SparseAdam + the dense rest's optimizer)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for part in self.parts for g in part.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, sd in zip(self.parts, state["parts"], strict=True):
            part.load_state_dict(sd)


def make_optimizer(model: nn.Module, params: dict[str, Any]) -> torch.optim.Optimizer | Optimizers:
    """The combination's optimizer over the trainable parameters (frozen embeddings excluded).

    The fused kernels (CPU and CUDA) update all parameters in one call: about 3x faster steps
    than the default per-parameter loop, and still deterministic. A sparse bag (input tfidf)
    gets SparseAdam (sparse gradients; it has no weight decay) and the rest the chosen optimizer.
    """
    bag = getattr(model, "embedding", None)
    if isinstance(bag, nn.EmbeddingBag) and bag.sparse and bag.weight.requires_grad:
        dense = [p for p in model.parameters() if p.requires_grad and p is not bag.weight]
        sparse = torch.optim.SparseAdam([bag.weight], lr=float(params["lr"]))
        return Optimizers([sparse, _dense_optimizer(dense, params)])
    return _dense_optimizer([p for p in model.parameters() if p.requires_grad], params)


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The learning rate's multiplier at a global step (0-based): stateless, so a resumed run agrees."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return 1.0


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _dense_optimizer(trainable: list[torch.nn.Parameter], params: dict[str, Any]) -> torch.optim.Optimizer:
    lr, wd = float(params["lr"]), float(params["weight_decay"])
    if params["optimizer"] == "adam":
        return torch.optim.Adam(trainable, lr=lr, weight_decay=wd, fused=True)
    if params["optimizer"] == "adamw":
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=wd, fused=True)
    return torch.optim.SGD(trainable, lr=lr, weight_decay=wd, momentum=0.9, fused=True)


def class_weight_tensor(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over the classes present (absent classes: 0)."""
    counts = torch.bincount(labels.cpu(), minlength=n_classes).double()
    present = counts > 0
    weights = torch.zeros(n_classes, dtype=torch.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights.float()


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ids: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    perm: torch.Tensor,
    device: torch.device,
    class_weights: torch.Tensor | None = None,
    progress: Progress | None = None,
    label_smoothing: float = 0.0,
    lr_at_batch=None,
) -> float:
    """One pass over ``ids[perm]`` in batches; returns the mean training loss.

    ``perm`` lives where ``ids`` does; batches are gathered by indexing (on the GPU when the
    matrices are device-resident) and moved only when they are not. ``lr_at_batch(b)``, when
    given, sets the learning rate before batch ``b`` (the schedule).
    """
    model.train()
    on_device = ids.device == device
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = perm.numel()
    for b, start in enumerate(range(0, n, batch_size)):
        idx = perm[start : start + batch_size]
        x, y = ids[idx], labels[idx]
        if not on_device:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if lr_at_batch is not None:
            set_lr(optimizer, lr_at_batch(b))
        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, weight=class_weights, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach() * idx.numel()
        if progress is not None:
            progress.update(idx.numel())
        if (b + 1) % NAN_CHECK_EVERY == 0:
            _check_finite(total, f"after {start + idx.numel():,} samples")
    _check_finite(total, "at the end of the epoch")
    return float(total) / max(n, 1)


def _check_finite(total_loss: torch.Tensor, where: str) -> None:
    if not torch.isfinite(total_loss):
        raise NonFiniteLoss(
            f"training loss is {float(total_loss)} {where}: the run diverged. Lower lr, check the "
            "embedding matrix for huge values, or use another optimizer; no outputs were written."
        )


def initial_loss(model: nn.Module, split: Split, device: torch.device, class_weights: torch.Tensor | None = None,
                 rows: int = EVAL_BATCH) -> float:
    """Mean loss of the untrained model on the first ``rows`` train rows: where training starts."""
    if len(split.labels) == 0:
        return float("nan")
    (_, logits), = list(iter_logits(model, split.ids[:rows], device, rows))
    return float(F.cross_entropy(logits, split.labels[:rows].to(device), weight=class_weights))


def check_divergence(state: dict[str, Any], train_loss: float, epoch: int, n_classes: int, params: dict[str, Any],
                     family: str, last_epoch: bool) -> None:
    """Count diverged epochs in ``state``; raise NonFiniteLoss once they are DIVERGE_EPOCHS in a row."""
    start = state.get("initial_loss")
    start = start if start is not None and math.isfinite(start) else math.log(max(n_classes, 2))
    limit = DIVERGE_FACTOR * max(start, math.log(max(n_classes, 2)), 1.0)
    state["diverged_epochs"] = state.get("diverged_epochs", 0) + 1 if train_loss > limit else 0
    if state["diverged_epochs"] >= min(DIVERGE_EPOCHS, epoch) and (state["diverged_epochs"] >= DIVERGE_EPOCHS
                                                                    or last_epoch):
        raise NonFiniteLoss(
            f"training diverged: mean train loss {train_loss:.3g} at epoch {epoch}, over {limit:.3g} for "
            f"{state['diverged_epochs']} epoch(s) in a row (loss before training {start:.3g}; guessing uniformly "
            f"costs log({n_classes}) = {math.log(max(n_classes, 2)):.2f}): the model is worse than guessing. "
            f"Lower the learning rate (this combination has lr={params['lr']}, optimizer={params['optimizer']}; "
            f"set in train.{family}.grid.lr or train.{family}.combinations); no outputs were written.")


def evaluate(
    model: nn.Module, split: Split, n_classes: int, device: torch.device, batch_size: int = EVAL_BATCH
) -> tuple[float, float]:
    """(unweighted mean cross-entropy, balanced accuracy) on a split's known-label rows.

    Batch by batch: only the summed loss and each row's argmax are kept.
    """
    y = split.labels.to(device)
    if y.numel() == 0:
        return float("nan"), float("nan")
    total = torch.zeros((), dtype=torch.float64, device=device)
    pred = torch.empty_like(y)
    for start, logits in iter_logits(model, split.ids, device, batch_size):
        rows = slice(start, start + logits.shape[0])
        total += F.cross_entropy(logits, y[rows], reduction="sum").double()
        pred[rows] = logits.argmax(1)
    return float(total) / y.numel(), balanced_accuracy(y.cpu().numpy(), pred.cpu().numpy())


# ---------------------------------------------------------------------------------- checkpoints
def default_checkpoint_dir(out_dir: Path) -> Path:
    """results/runs/{family}/{combo} -> results/checkpoints/{family}/{combo}."""
    parts = list(out_dir.parts)
    if "runs" in parts:
        i = len(parts) - 1 - parts[::-1].index("runs")
        return Path(*parts[:i], "checkpoints", *parts[i + 1 :])
    return out_dir.parent / f".{out_dir.name}.checkpoint"


def fingerprint(family: str, params: dict[str, Any], inputs: list[Path]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the combination and the exact input files."""
    files = {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in inputs}
    return {"version": CHECKPOINT_VERSION, "family": family, "params": json.loads(json.dumps(params)), "inputs": files}


def _cpu_state(module_or_opt) -> dict[str, Any]:
    state = module_or_opt.state_dict()

    def to_cpu(v):
        if isinstance(v, torch.Tensor):
            return v.detach().to("cpu", copy=True)
        if isinstance(v, dict):
            return {k: to_cpu(x) for k, x in v.items()}
        if isinstance(v, list):
            return [to_cpu(x) for x in v]
        return v

    return to_cpu(state)


def load_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file cannot happen (atomic writes) but a foreign one can
        log.warning("ignoring unreadable checkpoint %s: %s", path, err)
        return None
    if ckpt.get("fingerprint") != expected:
        log.warning("ignoring checkpoint %s: it belongs to other parameters or input files", path)
        return None
    return ckpt


# ------------------------------------------------------------------------------------------ run
class Terminated(SystemExit):
    """A termination signal arrived during training (logged); ``signum`` is the signal."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


@contextlib.contextmanager
def log_termination(saved: dict[str, int], ckpt_path: Path):
    """SIGTERM (SLURM's time limit, scancel, preemption) ends the job with a log line saying which
    epoch it interrupted and where the next run resumes (``saved["epoch"]``: the last epoch whose
    checkpoint is on disk), instead of a log that just stops."""
    def handler(signum, frame):
        done = saved["epoch"]
        where = (f"the rerun resumes after epoch {done} from {ckpt_path}" if done
                 else "no epoch was finished, so the rerun starts from epoch 1")
        log.warning("received %s (the scheduler's time limit, scancel or preemption?) during epoch %d: stopping; %s",
                    signal.Signals(signum).name, done + 1, where)
        raise Terminated(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (a test running this in a worker): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def check_memory(family: str, params: dict[str, Any], features: Path, matrix_path: Path, mem_mb: int | None):
    """Estimate the job's memory from its inputs' shapes (memory-mapped, nothing loaded) and fail
    early when it exceeds ``mem_mb``; returns the estimate."""
    ids = [np.load(features / f"{split}_ids.npy", mmap_mode="r") for split in ("train", "validation")]
    matrix = np.load(matrix_path, mmap_mode="r")
    n_classes = len(read_json(features / "labels.json")["categories"])
    if matrix.ndim != 2 or any(i.ndim != 2 for i in ids):
        return None  # load_data says what is wrong with the shapes
    est = memory.estimate(family, params, sum(i.shape[0] for i in ids), ids[0].shape[1], matrix.shape[0],
                          matrix.shape[1], n_classes, EVAL_BATCH)
    log.info("memory estimate: %s; mem_mb %s", est.describe(), f"{mem_mb:,}" if mem_mb else "not given")
    memory.check(est, mem_mb, family)
    return est


def run(
    family: str,
    params: dict[str, Any],
    features: str | os.PathLike,
    matrix_path: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    device_name: str = "auto",
    threads: int = 1,
    checkpoint_dir: str | os.PathLike | None = None,
    mem_mb: int | None = None,
    tfidf_dir: str | os.PathLike | None = None,
    until_epoch: int | None = None,
    start_from: str | os.PathLike | None = None,
    snapshot: str | os.PathLike | None = None,
    rung: int | None = None,
) -> dict[str, Any]:
    """Train one combination and write its outputs; returns metrics.json's content.

    ``mem_mb`` (the job's memory, resources.mem_mb): fail before loading anything when the
    estimate (meli.train.memory) does not fit. ``matrix_path`` is the embedding matrix (token-id
    input); an ``input: tfidf`` combination reads ``tfidf_dir`` (default ``features/tfidf``) instead.

    Successive halving (meli.search) trains a combination in rungs, one job each: ``start_from``
    is the previous rung's training state (``snapshot`` of that job), ``until_epoch`` the rung's
    epoch budget. A rung with a ``snapshot`` writes that state and its record (metrics.json with
    ``rung``, history.csv) but no model; the last rung (no ``until_epoch``) trains to the configured
    epochs with early stopping and writes the complete run. Training is seeded per epoch, so a
    combination continued rung by rung ends exactly like the same combination trained in one job.
    """
    if snapshot is not None and until_epoch is None:
        raise ValueError("--snapshot needs --until-epoch (a rung's state is written at its epoch budget)")
    if until_epoch is not None and int(until_epoch) < 1:
        raise ValueError(f"--until-epoch must be >= 1, got {until_epoch}")
    t_start = time.monotonic()
    prune = models.get(family).prune if family in DEFAULTS else None
    # The id of the params as given (the rule named the run directory after them); keys left to
    # the family default (e.g. lr_schedule) are not in it.
    combo = combo_id(prune(params) if prune else params)
    params = resolve_params(family, params)
    features, out_dir = Path(features), Path(out_dir)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(out_dir)
    ckpt_path = ckpt_dir / "checkpoint.pt"
    device = select_device(device_name)
    torch.set_num_threads(max(1, int(threads)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if uses_tfidf(params):
        # (meli.train.memory estimates token-id inputs; the sparse rows' size is their .npz size.)
        tfidf_dir = Path(tfidf_dir) if tfidf_dir is not None else features / "tfidf"
        inputs = [features / f for f in ("labels.json", "train_labels.npy", "validation_labels.npy")] + [
            tfidf_dir / "train.npz", tfidf_dir / "validation.npz"]
        data = load_sparse_data(features, tfidf_dir)
    else:
        if matrix_path is None:
            raise ValueError(f"{family} with input embedding needs --matrix (the embedding matrix.npy)")
        inputs = [features / f for f in ("labels.json", "train_ids.npy", "train_labels.npy",
                                         "validation_ids.npy", "validation_labels.npy")] + [Path(matrix_path)]
        check_memory(family, params, features, Path(matrix_path), mem_mb)
        data = load_data(features, matrix_path)
    vocab_size, dim = data.input_shape
    n_classes = data.n_classes
    log.info(
        "%s %s on %s (%d threads): %s train rows, %s validation rows (%s / %s with categories unseen in "
        "train left out), vocab %s x %d, %d classes",
        family, combo, device, threads, f"{len(data.train.labels):,}", f"{len(data.validation.labels):,}",
        f"{data.train.unseen:,}", f"{data.validation.unseen:,}", f"{vocab_size:,}", dim, n_classes,
    )
    train, val = place(data.train, device), place(data.validation, device)

    torch.manual_seed(int(params["seed"]))
    model = build_model(family, params, vocab_size, dim, n_classes, matrix=data.matrix).to(device)
    optimizer = make_optimizer(model, params)
    weights = class_weight_tensor(data.train.labels, n_classes).to(device) if params["class_weights"] else None

    expected = fingerprint(family, params, inputs)
    state: dict[str, Any] = {
        "epoch": 0, "history": [], "best_epoch": 0, "best_bacc": -math.inf, "best_state": None,
        "bad_epochs": 0, "done": False, "train_time_s": 0.0, "train_samples": 0, "elapsed_s": 0.0,
    }
    start_epoch = 0
    if start_from is not None:
        start = load_checkpoint(Path(start_from), expected)
        if start is None:
            raise StartStateError(
                f"{start_from}: missing, unreadable or made for other parameters or input files; "
                "delete that rung's directory to retrain it"
            )
        start_epoch = start["state"]["epoch"]
    ckpt = load_checkpoint(ckpt_path, expected)
    if ckpt is not None and not start_epoch <= ckpt["state"]["epoch"] <= (until_epoch or math.inf):
        log.info("ignoring %s: epoch %d is outside this job's epochs %d..%s", ckpt_path, ckpt["state"]["epoch"],
                 start_epoch, until_epoch or "end")
        ckpt = None
    if ckpt is None and start_from is not None:
        ckpt = start
        log.info("continuing from %s (epoch %d)", start_from, start_epoch)
    resumed_from = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        resumed_from = state["epoch"]
        log.info("resuming from %s after epoch %d", ckpt_path, resumed_from)
    elapsed_before = state["elapsed_s"]
    if state["epoch"] == 0:
        state["initial_loss"] = initial_loss(model, train, device, weights)

    max_epochs, batch_size = int(params["epochs"]), int(params["batch_size"])
    n_train = len(train.labels)
    saved = {"epoch": state["epoch"]}
    with log_termination(saved, ckpt_path):
        _train_epochs(state, params, model, optimizer, train, val, device, weights, n_classes, family, ckpt_path,
                      expected, elapsed_before, t_start, max_epochs, batch_size, n_train, saved, until_epoch)

    if snapshot is not None:
        with atomic_path(Path(snapshot)) as tmp:
            torch.save({"fingerprint": expected, "model": _cpu_state(model), "optimizer": _cpu_state(optimizer),
                        "state": state}, tmp)
        metrics = _write_rung_record(family, params, state, data, device, out_dir, resumed_from, threads, combo, rung)
    else:
        model.load_state_dict(state["best_state"])
        metrics = _write_outputs(family, params, model, data, state, device, out_dir, resumed_from, threads, combo,
                                 rung)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    for parent in (ckpt_dir.parent, ckpt_dir.parent.parent):  # checkpoints/{family}/, checkpoints/ when empty
        with contextlib.suppress(OSError):
            parent.rmdir()
    log.info("done: best epoch %d, val_bacc %.4f -> %s", metrics["best_epoch"], metrics["val_bacc"], out_dir)
    return metrics


def _train_epochs(state, params, model, optimizer, train: Split, val: Split, device, weights, n_classes: int,
                  family: str, ckpt_path: Path, expected, elapsed_before: float, t_start: float, max_epochs: int,
                  batch_size: int, n_train: int, saved: dict[str, int], until_epoch: int | None = None) -> None:
    """Epochs until early stopping, max_epochs or ``until_epoch`` (a rung's budget), a checkpoint after each (``state`` is updated,
    ``saved["epoch"]`` once the checkpoint is on disk)."""
    steps_per_epoch = math.ceil(n_train / batch_size)
    base_lr, schedule = float(params["lr"]), params["lr_schedule"]
    while not state["done"] and (until_epoch is None or state["epoch"] < int(until_epoch)):
        epoch = state["epoch"] + 1
        seed = epoch_seed(params["seed"], epoch)
        torch.manual_seed(seed)  # dropout (CPU and CUDA generators)
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).to(train.ids.device)
        progress = Progress(log, n_train, f"epoch {epoch}/{max_epochs}", every_s=30.0)
        t0 = time.monotonic()
        first_step = (epoch - 1) * steps_per_epoch
        lr_at_batch = None if schedule == "constant" else (
            lambda b, s=first_step: base_lr * lr_factor(schedule, s + b, max_epochs * steps_per_epoch))
        train_loss = train_epoch(model, optimizer, train.ids, train.labels, batch_size, perm, device, weights, progress,
                                 label_smoothing=float(params["label_smoothing"]), lr_at_batch=lr_at_batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_s = time.monotonic() - t0
        check_divergence(state, train_loss, epoch, n_classes, params, family, last_epoch=epoch >= max_epochs)
        val_loss, val_bacc = evaluate(model, val, n_classes, device)
        state["train_time_s"] += train_s
        state["train_samples"] += n_train
        elapsed = elapsed_before + time.monotonic() - t_start
        state["history"].append({
            "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_bacc": val_bacc,
            "samples_per_s": n_train / max(train_s, 1e-9), "elapsed_s": elapsed,
        })
        improved = val_bacc > state["best_bacc"]
        if improved:
            state.update(best_bacc=val_bacc, best_epoch=epoch, best_state=_cpu_state(model), bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        stop_early = state["bad_epochs"] >= int(params["patience"])
        state.update(epoch=epoch, done=stop_early or epoch >= max_epochs, stopped_early=stop_early and epoch < max_epochs,
                     elapsed_s=elapsed)
        per_epoch = elapsed / epoch
        log.info(
            "epoch %d/%d: train_loss %.4f  val_loss %.4f  val_bacc %.4f%s  %s samples/s  elapsed %s  ETA %s%s",
            epoch, max_epochs, train_loss, val_loss, val_bacc, " (best)" if improved else "",
            f"{n_train / max(train_s, 1e-9):,.0f}", format_seconds(elapsed),
            format_seconds(0 if state["done"] else per_epoch * (max_epochs - epoch)),
            f"  -> early stop (no improvement for {params['patience']} epochs)" if stop_early else "",
        )
        with atomic_path(ckpt_path) as tmp:
            torch.save({"fingerprint": expected, "model": _cpu_state(model), "optimizer": _cpu_state(optimizer),
                        "state": state}, tmp)
        saved["epoch"] = epoch
        if os.environ.get(KILL_ENV) == str(epoch):
            sig = signal.Signals["SIG" + os.environ.get(KILL_SIGNAL_ENV, "KILL").upper().removeprefix("SIG")]
            log.warning("%s=%d: sending %s to this process (fault injection)", KILL_ENV, epoch, sig.name)
            os.kill(os.getpid(), sig)


def _write_outputs(family, params, model, data: Data, state, device, out_dir: Path, resumed_from: int, threads: int,
                   combo: str, rung: int | None = None):
    import pandas as pd

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size, dim = data.input_shape
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save({
            "format": "meli-model/1", "family": family, "params": params, "vocab_size": int(vocab_size),
            "dim": int(dim), "n_classes": data.n_classes, "max_len": data.max_len,
            "input": "tfidf" if uses_tfidf(params) else "embedding",
            "categories": data.categories, "state_dict": state["best_state"],
        }, tmp)

    val_rows = data.val_ids_all
    pred, prob = predict_labels(model, val_rows if isinstance(val_rows, CsrRows) else torch.from_numpy(val_rows),
                                device)
    preds = pd.DataFrame({"label": data.val_labels_all.astype(np.int64), "pred": pred, "prob": prob.astype(np.float64)})
    with atomic_path(out_dir / "val_predictions.parquet") as tmp:
        preds.to_parquet(tmp, index=False)

    return _write_record(family, params, state, data, device, out_dir, resumed_from, threads, combo,
                         {} if rung is None else {"rung": rung, "pruned_at_rung": None})


def _write_rung_record(family, params, state, data: Data, device, out_dir: Path, resumed_from: int, threads: int,
                       combo: str, rung: int | None):
    """An intermediate rung's record: history.csv and metrics.json (its best epoch so far), no model."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return _write_record(family, params, state, data, device, out_dir, resumed_from, threads, combo,
                         {"rung": rung})


def _write_record(family, params, state, data: Data, device, out_dir: Path, resumed_from: int, threads: int,
                  combo: str, search: dict[str, Any]):
    """history.csv, then metrics.json (last: its presence marks a complete record)."""
    import pandas as pd

    best = state["history"][state["best_epoch"] - 1]
    history = pd.DataFrame(state["history"], columns=list(HISTORY_COLUMNS))
    with atomic_path(out_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)

    metrics = {
        "family": family,
        "combo": combo,
        "params": params,
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "val_bacc": best["val_bacc"],
        "val_loss": best["val_loss"],
        "final_train_loss": state["history"][-1]["train_loss"],
        "train_time_s": state["train_time_s"],
        "samples_per_s": state["train_samples"] / max(state["train_time_s"], 1e-9),
        "peak_mem_mb": peak_rss_mb(),
        "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": threads,
        "n_train": int(len(data.train.labels)),
        "n_val": int(len(data.validation.labels)),
        "n_train_unseen_category": data.train.unseen,
        "n_val_unseen_category": data.validation.unseen,
        "n_classes": data.n_classes,
        "stopped_early": bool(state["stopped_early"]),
        "resumed_from_epoch": resumed_from,
        "elapsed_s": state["elapsed_s"],
        "torch": torch.__version__,
        **search,
        "finished_at": runs.finished_at(),
    }
    runs.write_metrics(out_dir, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", required=True, choices=sorted(DEFAULTS))
    ap.add_argument("--params", required=True, help="the combination as one JSON object")
    ap.add_argument("--features", required=True, help="directory with {train,validation}_{ids,labels}.npy, labels.json")
    ap.add_argument("--matrix", default=None, help="embedding matrix.npy, float32 [vocab, dim] (input embedding)")
    ap.add_argument("--tfidf", default=None, help="shared sparse TF-IDF directory (input tfidf; default FEATURES/tfidf)")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--checkpoint-dir", default=None, help="default: out-dir with its 'runs' component -> 'checkpoints'")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-mb", type=int, default=None, help="the job's memory (resources.mem_mb): fail early if the "
                    "estimate does not fit")
    search = ap.add_argument_group("successive halving (meli.search): one rung of a combination")
    search.add_argument("--until-epoch", type=int, default=None, help="stop after this epoch (the rung's budget)")
    search.add_argument("--start-from", default=None, help="the previous rung's training state (checkpoint.pt)")
    search.add_argument("--snapshot", default=None, help="write the training state here (a rung before the last)")
    search.add_argument("--rung", type=int, default=None, help="recorded in metrics.json")
    args = ap.parse_args(argv)
    setup_logging()
    try:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ValueError("--params must be a JSON object")
        run(args.family, params, args.features, args.matrix, args.out_dir, args.device, args.threads, args.checkpoint_dir,
            args.mem_mb, tfidf_dir=args.tfidf, until_epoch=args.until_epoch, start_from=args.start_from,
            snapshot=args.snapshot, rung=args.rung)
    except Terminated as stop:  # logged; now end *by* the signal, so the caller (meli.jobstatus, SLURM) sees it
        logging.shutdown()
        signal.signal(stop.signum, signal.SIG_DFL)
        os.kill(os.getpid(), stop.signum)
        return 128 + stop.signum
    except NonFiniteLoss as err:
        log.error("%s", err)
        return err.exit_code
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
