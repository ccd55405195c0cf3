"""A training job's state on disk: the per-epoch checkpoint, resuming from it, and SIGTERM.

A checkpoint (model, optimizer, best-so-far, history) is written atomically after every epoch
under ``results/checkpoints/{family}/{combo}/``; a killed job restarted with the same arguments
resumes from it only when its fingerprint (the family, the combination and the exact input files'
sizes and mtimes) matches. A rung of successive halving starts from the previous rung's state
(``start_from``), written by :func:`save` as well.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meli import runs
from meli.cli import MeliError
from meli.io import atomic_path

log = logging.getLogger("meli.train.checkpoint")

CHECKPOINT_VERSION = 1
CHECKPOINT = "checkpoint.pt"
# Fault injection for the resume tests: the process signals itself after checkpointing this epoch
# (SIGKILL, or the signal named in KILL_SIGNAL_ENV: TERM is what SLURM sends at the time limit).
KILL_ENV = "MELI_KILL_AFTER_EPOCH"
KILL_SIGNAL_ENV = "MELI_KILL_SIGNAL"


class StartStateError(MeliError, ValueError):
    """The previous rung's training state cannot be continued."""


default_checkpoint_dir = runs.checkpoint_dir  # the run paths live with the run record (meli.runs)


def fingerprint(family: str, params: dict[str, Any], inputs: list[Path]) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the combination and the exact input files."""
    files = {str(p): [p.stat().st_size, p.stat().st_mtime_ns] for p in inputs}
    return {"version": CHECKPOINT_VERSION, "family": family, "params": json.loads(json.dumps(params)), "inputs": files}


def cpu_state(module_or_opt) -> dict[str, Any]:
    """A detached CPU copy of a module's or optimizer's state_dict."""
    def to_cpu(v):
        if isinstance(v, torch.Tensor):
            return v.detach().to("cpu", copy=True)
        if isinstance(v, dict):
            return {k: to_cpu(x) for k, x in v.items()}
        if isinstance(v, list):
            return [to_cpu(x) for x in v]
        return v

    return to_cpu(module_or_opt.state_dict())


def save(path: Path, expected: dict[str, Any], model, optimizer, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"fingerprint": expected, "model": cpu_state(model), "optimizer": cpu_state(optimizer),
                    "state": state}, tmp)


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


def fresh_state() -> dict[str, Any]:
    """The training state before epoch 1 (what a checkpoint's ``state`` holds)."""
    return {"epoch": 0, "history": [], "best_epoch": 0, "best_bacc": -math.inf, "best_state": None,
            "bad_epochs": 0, "done": False, "train_time_s": 0.0, "train_samples": 0, "elapsed_s": 0.0}


@dataclass(frozen=True)
class Resume:
    """Where a job's state comes from: its own checkpoint, the previous rung's, or nothing."""

    path: Path  # this job's checkpoint.pt
    expected: dict[str, Any]  # the fingerprint
    start_from: Path | None = None  # the previous rung's state (successive halving)
    until_epoch: int | None = None  # the rung's epoch budget

    def find(self) -> dict[str, Any] | None:
        """The checkpoint to continue, or None to start fresh."""
        start_epoch, start = 0, None
        if self.start_from is not None:
            start = load_checkpoint(self.start_from, self.expected)
            if start is None:
                raise StartStateError(f"{self.start_from}: missing, unreadable or made for other parameters or "
                                      "input files; delete that rung's directory to retrain it")
            start_epoch = start["state"]["epoch"]
        ckpt = load_checkpoint(self.path, self.expected)
        if ckpt is not None and not start_epoch <= ckpt["state"]["epoch"] <= (self.until_epoch or math.inf):
            log.info("ignoring %s: epoch %d is outside this job's epochs %d..%s", self.path, ckpt["state"]["epoch"],
                     start_epoch, self.until_epoch or "end")
            ckpt = None
        if ckpt is None and start is not None:
            log.info("continuing from %s (epoch %d)", self.start_from, start_epoch)
            return start
        if ckpt is not None:
            log.info("resuming from %s after epoch %d", self.path, ckpt["state"]["epoch"])
        return ckpt

    def restore(self, model, optimizer) -> dict[str, Any]:
        """Load the state to continue into ``model`` and ``optimizer``; returns the training state."""
        ckpt = self.find()
        if ckpt is None:
            return fresh_state()
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        return ckpt["state"]


def remove(ckpt_dir: Path) -> None:
    """Delete a finished job's checkpoints, and checkpoints/{family}/ and checkpoints/ when empty."""
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    for parent in (ckpt_dir.parent, ckpt_dir.parent.parent):
        with contextlib.suppress(OSError):
            parent.rmdir()


def inject_fault(epoch: int) -> None:
    """The resume tests' kill (KILL_ENV), after the epoch's checkpoint is on disk."""
    if os.environ.get(KILL_ENV) == str(epoch):
        sig = signal.Signals["SIG" + os.environ.get(KILL_SIGNAL_ENV, "KILL").upper().removeprefix("SIG")]
        log.warning("%s=%d: sending %s to this process (fault injection)", KILL_ENV, epoch, sig.name)
        os.kill(os.getpid(), sig)


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
