"""Train one combination of a neural family: early stopping on validation bacc, resumable per epoch.

    python -m meli.train.neural --family mlp --params '{"embedding": "w2v", ...}' \
        --features results/features --matrix results/embeddings/w2v/matrix.npy \
        --out-dir results/runs/mlp/<combo> --combo <combo> --device auto --threads 8
    python -m meli.train.neural --family mlp --params '{"input": "tfidf", "hidden": [512], ...}' \
        --features results/features --tfidf results/features/tfidf --out-dir ...

What the family reads (token ids + an embedding matrix, or the shared sparse TF-IDF rows) is its
``input_kind``; its network its ``build`` (meli/models/<family>.py). The pieces: meli.train.inputs
(loading, checks, device placement), meli.train.memory (the estimate checked against --mem-mb),
meli.train.optim (optimizers, schedule), meli.train.loop (the epochs), meli.train.checkpoint
(state on disk, resuming, stop signals) and meli.runs (the record). Every epoch's randomness is
seeded from ``(seed, epoch)`` and a checkpoint is written after every epoch, within an epoch every
``--checkpoint-minutes`` and at the next batch boundary after SIGTERM/SIGUSR1 (then the job exits
with code 75, to be retried), so a killed job restarted with the same arguments resumes and ends
exactly where an uninterrupted run would (on CPU). Outputs are written atomically; metrics.json last.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meli import models, runs
from meli.cli import entry_point
from meli.grid import combo_id
from meli.io import atomic_path, peak_rss_mb, setup_logging
from meli.models.family import TFIDF
from meli.models.nets import build_model
from meli.models.runtime import predict_labels, select_device
from meli.train import checkpoint
from meli.train.checkpoint import (KILL_ENV, KILL_SIGNAL_ENV, Preemption, StartStateError, Terminated,
                                   default_checkpoint_dir, fingerprint)
from meli.train.inputs import Data, Sources, Split, check_memory, load_data, load_sparse_data, place
from meli.train.loop import Loop, NonFiniteLoss, check_divergence, evaluate, train_epoch
from meli.train.optim import (LR_SCHEDULES, OPTIMIZERS, Optimizers, class_weight_tensor, epoch_seed, lr_factor,
                              make_optimizer)
from meli.train.sparse import CsrRows

__all__ = [  # the trainer's API (tests, benchmarks, meli.search) in one place
    "DEFAULTS", "KILL_ENV", "KILL_SIGNAL_ENV", "LR_SCHEDULES", "OPTIMIZERS", "Data", "Job", "NonFiniteLoss",
    "Optimizers", "Split", "StartStateError", "Terminated", "check_divergence", "class_weight_tensor",
    "default_checkpoint_dir", "epoch_seed", "evaluate", "fingerprint", "load_data", "load_sparse_data",
    "lr_factor", "main", "make_optimizer", "place", "resolve_params", "run", "train", "train_epoch",
]

log = logging.getLogger("meli.train.neural")

# Each family's defaults live in its definition (meli/models/<family>.py), equal to the schema's.
DEFAULTS: dict[str, dict[str, Any]] = {name: models.get(name).defaults() for name in models.neural_names()}


def resolve_params(family: str, params: dict[str, Any]) -> dict[str, Any]:
    """The combination completed with the family's defaults; unknown keys and bad values fail."""
    if family not in DEFAULTS:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(DEFAULTS)}")
    spec = models.get(family)
    allowed = set(DEFAULTS[family]) | {"embedding"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"unknown {family} hyperparameter(s) {unknown}; known: {sorted(allowed)}")
    out = {**DEFAULTS[family], **params}
    if spec.prune is not None:
        out = spec.prune(out)
    _check_shared(out)
    if spec.validate is not None:
        spec.validate(out)
    return out


def _check_shared(out: dict[str, Any]) -> None:
    """The checks of the hyperparameters every neural family has (meli.models.family.NeuralParams)."""
    if out["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer {out['optimizer']!r} not one of {OPTIMIZERS}")
    if out["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {out['lr_schedule']!r} not one of {LR_SCHEDULES}")
    for key in ("label_smoothing", "dropout"):
        if not 0 <= float(out[key]) < 1:
            raise ValueError(f"{key} must be in [0, 1), got {out[key]!r}")
    for key in ("batch_size", "epochs", "patience"):
        if int(out[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {out[key]!r}")


@dataclass
class Job:
    """One training job's settings: the combination, where its inputs and outputs are, and how it runs."""

    family: str
    params: dict[str, Any]  # the combination as given (resolved by train())
    features: Path
    matrix: Path | None  # the embedding matrix (token input)
    out_dir: Path
    device: str = "auto"
    threads: int = 1
    checkpoint_dir: Path | None = None  # default: out_dir with its 'runs' component -> 'checkpoints'
    mem_mb: int | None = None  # the job's memory: fail before loading when the estimate does not fit
    tfidf_dir: Path | None = None  # the shared TF-IDF rows (input tfidf); default features/tfidf
    combo: str | None = None  # the combination id (the grid's); None: computed from params
    # Successive halving (meli.search): one rung of a combination.
    until_epoch: int | None = None  # stop after this epoch (the rung's budget)
    start_from: Path | None = None  # the previous rung's training state
    snapshot: Path | None = None  # write the training state here (a rung before the last)
    rung: int | None = None  # recorded in metrics.json
    checkpoint_minutes: float | None = None  # also checkpoint within an epoch this often (None/0: only on a signal)

    def __post_init__(self):
        for key in ("features", "matrix", "out_dir", "checkpoint_dir", "tfidf_dir", "start_from", "snapshot"):
            value = getattr(self, key)
            setattr(self, key, Path(value) if value is not None else None)
        if self.snapshot is not None and self.until_epoch is None:
            raise ValueError("--snapshot needs --until-epoch (a rung's state is written at its epoch budget)")
        if self.until_epoch is not None and int(self.until_epoch) < 1:
            raise ValueError(f"--until-epoch must be >= 1, got {self.until_epoch}")

    @property
    def checkpoint_path(self) -> Path:
        return (self.checkpoint_dir or default_checkpoint_dir(self.out_dir)) / checkpoint.CHECKPOINT

    def combination_id(self) -> str:
        """The grid's id when given; else the id of the params as given (keys left to the family
        default, e.g. lr_schedule, are not in it)."""
        if self.combo is not None:
            return self.combo
        prune = models.get(self.family).prune if self.family in DEFAULTS else None
        return combo_id(prune(self.params) if prune else self.params)


def run(family: str, params: dict[str, Any], features, matrix_path, out_dir, device_name: str = "auto",
        threads: int = 1, checkpoint_dir=None, **options: Any) -> dict[str, Any]:
    """:func:`train` of ``Job(family, params, features, matrix_path, out_dir, ..., **options)``
    (options: the other :class:`Job` fields)."""
    return train(Job(family, params, features, matrix_path, out_dir, device_name, threads, checkpoint_dir, **options))


def _reuse_equivalent(job: Job, combo: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """A successive-halving final run of this combination, stashed by the Snakefile's onstart
    (meli.sweep.stash_equivalent_runs) for a grid job: exactly what this job would train, so it is
    reused (runs.reuse_equivalent checks family, params and inputs). None for any other job."""
    if job.until_epoch is not None or job.start_from is not None or job.snapshot is not None:
        return None
    ckpt_dir = job.checkpoint_path.parent
    reused = runs.reuse_equivalent(ckpt_dir / runs.EQUIVALENT, job.out_dir, job.family, params)
    if reused is not None:
        log.info("%s %s: reused the successive-halving final run (rung %s) with the same params and inputs: "
                 "the grid job trains exactly that; nothing to train", job.family, combo, reused["equivalent_of"]["rung"])
        with contextlib.suppress(OSError):
            ckpt_dir.rmdir()
    return reused


def train(job: Job, loaded: dict | None = None) -> dict[str, Any]:
    """Train one combination and write its outputs; returns metrics.json's content.

    ``loaded`` (meli.train.pack: several combinations in one process) keeps the last inputs loaded
    across calls, so combinations reading the same splits and matrix load them once.

    Successive halving (meli.search) trains a combination in rungs, one job each: ``start_from``
    is the previous rung's training state (``snapshot`` of that job), ``until_epoch`` the rung's
    epoch budget. A rung with a ``snapshot`` writes that state and its record (metrics.json with
    ``rung``, history.csv) but no model; the last rung (no ``until_epoch``) trains to the configured
    epochs with early stopping and writes the complete run. Training is seeded per epoch, so a
    combination continued rung by rung ends exactly like the same combination trained in one job.
    """
    started = time.monotonic()
    combo = job.combination_id()
    params = resolve_params(job.family, job.params)
    reused = _reuse_equivalent(job, combo, params)
    if reused is not None:
        return reused
    spec = models.get(job.family)
    kind = spec.inputs(params)
    device = select_device(job.device)
    torch.set_num_threads(max(1, int(job.threads)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    sources = Sources(job.features, job.matrix, job.tfidf_dir)
    inputs = sources.files(kind)
    if kind != TFIDF:  # (the sparse rows' size is their .npz size; the estimate is for token input)
        check_memory(job.family, params, job.features, job.matrix, job.mem_mb)
    data = _load(sources, kind, loaded, params, job.family)
    _log_start(job, combo, data, device)

    torch.manual_seed(int(params["seed"]))
    model = build_model(job.family, params, *data.input_shape, data.n_classes, matrix=data.matrix).to(device)
    optimizer = make_optimizer(model, params)
    weights = class_weight_tensor(data.train.labels, data.n_classes).to(device) if params["class_weights"] else None
    expected = fingerprint(job.family, params, inputs)
    resume = checkpoint.Resume(job.checkpoint_path, expected, job.start_from, job.until_epoch)
    state = resume.restore(model, optimizer)
    resumed_from = state["epoch"]
    loop = Loop(job.family, params, model, optimizer, place(data.train, device), place(data.validation, device),
                device, weights, started)

    def save(epoch: int, partial: bool = False) -> None:
        checkpoint.save(job.checkpoint_path, expected, model, optimizer, state)
        if not partial:
            checkpoint.inject_fault(epoch)

    minutes = job.checkpoint_minutes
    with Preemption(every_s=60.0 * minutes if minutes else None).installed() as preemption:
        try:
            loop.run(state, save, job.until_epoch, preemption)
        except Terminated as stop:
            part = state.get("partial")
            where = (f"within epoch {part['epoch']} after batch {part['batch']}" if part
                     else f"after epoch {state['epoch']}")
            log.warning("stopped on %s: the state is saved %s in %s; the next attempt resumes there (exit code %d)",
                        signal.Signals(stop.signum).name, where, job.checkpoint_path, stop.code)
            raise

    record = Record(job, combo, params, data, device, resumed_from)
    if job.snapshot is not None:
        checkpoint.save(job.snapshot, expected, model, optimizer, state)
        metrics = record.write(state, {"rung": job.rung})
    else:
        model.load_state_dict(state["best_state"])
        _write_model(job, params, data, state)
        _write_val_predictions(job.out_dir, model, data, device)
        metrics = record.write(state, {} if job.rung is None else {"rung": job.rung, "pruned_at_rung": None})
    checkpoint.remove(job.checkpoint_path.parent)
    log.info("done: best epoch %d, val_bacc %.4f -> %s", metrics["best_epoch"], metrics["val_bacc"], job.out_dir)
    return metrics


def _load(sources: Sources, kind: str, loaded: dict | None, params: dict[str, Any], family: str) -> Data:
    """The job's inputs (for TF-IDF input, the columns its combination reads: an MLP's tfidf_view);
    with ``loaded``, reused when the previous call read the same files and columns (the training
    never changes them: the network copies the matrix) and kept for the next one."""
    columns = sources.columns(kind, params, family)
    if loaded is None:
        return sources.load(kind, columns)
    key = (kind, tuple(str(p) for p in sources.files(kind)), str(columns))
    if loaded.get("key") != key:
        loaded.clear()  # one set of inputs at a time: a pack groups its combinations by input
        loaded.update(key=key, data=sources.load(kind, columns))
    return loaded["data"]


def _log_start(job: Job, combo: str, data: Data, device: torch.device) -> None:
    vocab_size, dim = data.input_shape
    log.info(
        "%s %s on %s (%d threads): %s train rows, %s validation rows (%s / %s with categories unseen in "
        "train left out), vocab %s x %d, %d classes",
        job.family, combo, device, job.threads, f"{len(data.train.labels):,}", f"{len(data.validation.labels):,}",
        f"{data.train.unseen:,}", f"{data.validation.unseen:,}", f"{vocab_size:,}", dim, data.n_classes,
    )


def _write_model(job: Job, params: dict[str, Any], data: Data, state: dict[str, Any]) -> None:
    """model.pt: everything meli.inference needs to rebuild the best epoch's network (no config)."""
    vocab_size, dim = data.input_shape
    with atomic_path(job.out_dir / "model.pt") as tmp:
        torch.save({
            "format": "meli-model/1", "family": job.family, "params": params, "vocab_size": int(vocab_size),
            "dim": int(dim), "n_classes": data.n_classes, "max_len": data.max_len,
            # kept for model.pt readers before the family's input_kind existed
            "input": "tfidf" if models.get(job.family).inputs(params) == TFIDF else "embedding",
            "categories": data.categories, "state_dict": state["best_state"],
        }, tmp)


def _write_val_predictions(out_dir: Path, model, data: Data, device: torch.device) -> None:
    import pandas as pd

    rows = data.val_ids_all
    pred, prob = predict_labels(model, rows if isinstance(rows, CsrRows) else torch.from_numpy(rows), device)
    preds = pd.DataFrame({"label": data.val_labels_all.astype(np.int64), "pred": pred, "prob": prob.astype(np.float64)})
    with atomic_path(out_dir / runs.VAL_PREDICTIONS) as tmp:
        preds.to_parquet(tmp, index=False)


@dataclass
class Record:
    """A neural run's record (meli.runs.write_record): history.csv, then metrics.json."""

    job: Job
    combo: str
    params: dict[str, Any]
    data: Data
    device: torch.device
    resumed_from: int

    def write(self, state: dict[str, Any], search: dict[str, Any]) -> dict[str, Any]:
        best = state["history"][state["best_epoch"] - 1]
        cuda = self.device.type == "cuda"
        metrics = {
            "family": self.job.family,
            "combo": self.combo,
            "params": self.params,
            "epochs_run": state["epoch"],
            "best_epoch": state["best_epoch"],
            "val_bacc": best["val_bacc"],
            "val_loss": best["val_loss"],
            "final_train_loss": state["history"][-1]["train_loss"],
            "train_time_s": state["train_time_s"],
            "samples_per_s": state["train_samples"] / max(state["train_time_s"], 1e-9),
            "peak_mem_mb": peak_rss_mb(),
            "peak_gpu_mem_mb": torch.cuda.max_memory_allocated(self.device) / 2**20 if cuda else None,
            "device": torch.cuda.get_device_name(self.device) if cuda else "cpu",
            "threads": self.job.threads,
            "n_train": int(len(self.data.train.labels)),
            "n_val": int(len(self.data.validation.labels)),
            "n_train_unseen_category": self.data.train.unseen,
            "n_val_unseen_category": self.data.validation.unseen,
            "n_classes": self.data.n_classes,
            "stopped_early": bool(state["stopped_early"]),
            "resumed_from_epoch": self.resumed_from,
            **restart_figures(state),
            "elapsed_s": state["elapsed_s"],
            "torch": torch.__version__,
            **search,
            "finished_at": runs.finished_at(),
        }
        return runs.write_record(self.job.out_dir, state["history"], metrics)


def restart_figures(state: dict[str, Any]) -> dict[str, Any]:
    """What restarts cost this run (issue 23): ``attempts`` (training processes, this one included),
    ``restart_startup_s`` (the resumed attempts' time from their start until training went on) and
    ``resumed_elapsed_s`` (the elapsed time the earlier attempts had saved when the last one
    resumed: meli.jobstatus.restart_cost subtracts it from their wall time to count the work they lost)."""
    restarts = state.get("restarts") or []
    return {"attempts": 1 + len(restarts), "restart_startup_s": sum(r["startup_s"] for r in restarts),
            "resumed_elapsed_s": restarts[-1]["kept_elapsed_s"] if restarts else 0.0,
            "resumed_at": [[r["epoch"], r["batch"]] for r in restarts]}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m meli.train.neural", description=__doc__.split("\n")[0])
    ap.add_argument("--family", required=True, choices=sorted(DEFAULTS))
    ap.add_argument("--params", required=True, help="the combination as one JSON object")
    ap.add_argument("--combo", default=None, help="the combination id the grid gave it (recorded in metrics.json; "
                    "default: computed from --params)")
    ap.add_argument("--features", required=True, help="directory with {train,validation}_{ids,labels}.npy, labels.json")
    ap.add_argument("--matrix", default=None, help="embedding matrix.npy, float32 [vocab, dim] (token input)")
    ap.add_argument("--tfidf", default=None, help="shared sparse TF-IDF directory (input tfidf; default FEATURES/tfidf)")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--checkpoint-dir", default=None, help="default: out-dir with its 'runs' component -> 'checkpoints'")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-mb", type=int, default=None, help="the job's memory (resources.mem_mb): fail early if the "
                    "estimate does not fit")
    ap.add_argument("--checkpoint-minutes", type=float, default=None, help="also save the training state within "
                    f"an epoch every this many minutes (default: ${checkpoint.CHECKPOINT_MINUTES_ENV}, which the rules "
                    "set from train.checkpoint_minutes; else 0: only after each epoch and on SIGTERM/SIGUSR1)")
    search = ap.add_argument_group("successive halving (meli.search): one rung of a combination")
    search.add_argument("--until-epoch", type=int, default=None, help="stop after this epoch (the rung's budget)")
    search.add_argument("--start-from", default=None, help="the previous rung's training state (checkpoint.pt)")
    search.add_argument("--snapshot", default=None, help="write the training state here (a rung before the last)")
    search.add_argument("--rung", type=int, default=None, help="recorded in metrics.json")
    return ap


def _checkpoint_minutes(given: float | None) -> float | None:
    if given is not None:
        return given
    value = os.environ.get(checkpoint.CHECKPOINT_MINUTES_ENV)
    try:
        return float(value) if value else None
    except ValueError:
        raise ValueError(f"${checkpoint.CHECKPOINT_MINUTES_ENV}={value!r} is not a number of minutes") from None


@entry_point
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging("meli.train.neural")
    try:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ValueError("--params must be a JSON object")
        train(Job(args.family, params, args.features, args.matrix, args.out_dir, args.device, args.threads,
                  args.checkpoint_dir, args.mem_mb, args.tfidf, args.combo, until_epoch=args.until_epoch,
                  start_from=args.start_from, snapshot=args.snapshot, rung=args.rung,
                  checkpoint_minutes=_checkpoint_minutes(args.checkpoint_minutes)))
    except Terminated as stop:  # saved and logged: exit 75 (meli.jobstatus: interrupted; Snakemake retries)
        return int(stop.code)
    except NonFiniteLoss as err:
        log.error("%s", err)
        return err.exit_code
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
