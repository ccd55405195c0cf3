"""A training job's state on disk: checkpoints, resuming from them, and stopping on a signal.

A checkpoint (model, optimizer, best-so-far, history) is written atomically after every epoch
under ``results/checkpoints/{family}/{combo}/``; a killed job restarted with the same arguments
resumes from it only when its fingerprint (the family, the combination and the exact input files'
sizes and mtimes) matches. A rung of successive halving starts from the previous rung's state
(``start_from``), written by :func:`save` as well.

Within an epoch (issue 23) a checkpoint is also written at a batch boundary: when SIGTERM or
SIGUSR1 arrives (SLURM's time limit or its ``--signal`` warning, scancel, preemption;
:class:`Preemption`), then the job exits with ``INTERRUPTED_EXIT`` so that Snakemake retries it,
and every ``every_s`` seconds (``train.checkpoint_minutes``), so that even a SIGKILL loses at
most that much. Its ``state["partial"]`` holds where the epoch stopped: the batches done, the
running loss sum, the train seconds so far and the RNG states; the perm is re-made from the
epoch's seed. A checkpoint without ``partial`` (every one written before issue 23) is an epoch's.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from meli import runs
from meli.cli import MeliError
from meli.io import atomic_path
from meli.jobstatus import INTERRUPTED_EXIT

log = logging.getLogger("meli.train.checkpoint")

CHECKPOINT_VERSION = 1
CHECKPOINT = "checkpoint.pt"
# Fault injection for the resume tests: the process signals itself after checkpointing this epoch
# (SIGKILL, or the signal named in KILL_SIGNAL_ENV: TERM is what SLURM sends at the time limit).
KILL_ENV = "MELI_KILL_AFTER_EPOCH"
KILL_SIGNAL_ENV = "MELI_KILL_SIGNAL"
# Fault injection within an epoch: "E:B[,E:B...]" sends the signal (KILL_SIGNAL_ENV, default TERM
# here) to this process right after batch B (1-based) of epoch E; "E:val" while epoch E is being
# validated. Each point fires once per process: a resumed attempt starts after it.
SIGNAL_AT_ENV = "MELI_SIGNAL_AT"
# The SLURM test's hook: after batch B of epoch E ("E:B"), log PAUSE_LINE and wait (at most
# PAUSE_MAX_S) for a signal, so the test can `scancel --signal` a job at a known batch.
PAUSE_AT_ENV = "MELI_PAUSE_AT"
PAUSE_LINE = "paused for a signal"
PAUSE_MAX_S = 120.0
# The rules' default for --checkpoint-minutes (train.checkpoint_minutes, set by the shell prefix
# in rules/common.smk: an operational setting that must not rerun finished jobs).
CHECKPOINT_MINUTES_ENV = "MELI_CHECKPOINT_MINUTES"
# What asks a job to save and stop: SLURM's time limit, scancel and preemption send SIGTERM;
# SIGUSR1 is the usual early warning (sbatch --signal=USR1@<seconds>, scancel --signal=USR1).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


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
            "bad_epochs": 0, "done": False, "train_time_s": 0.0, "train_samples": 0, "elapsed_s": 0.0,
            "partial": None, "restarts": []}


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
            start["state"]["restarts"] = []  # the previous rung's restarts are in its own record
            return start
        if ckpt is not None:
            part = ckpt["state"].get("partial")
            where = (f"within epoch {part['epoch']}, after batch {part['batch']}" if part
                     else f"after epoch {ckpt['state']['epoch']}")
            log.info("resuming from %s %s", self.path, where)
            ckpt["state"]["resumed"] = True  # this job's own state: a restart (counted in the record)
        return ckpt

    def restore(self, model, optimizer) -> dict[str, Any]:
        """Load the state to continue into ``model`` and ``optimizer``; returns the training state."""
        ckpt = self.find()
        if ckpt is None:
            return fresh_state()
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        state.setdefault("partial", None)  # a checkpoint from before issue 23: always an epoch's
        state.setdefault("restarts", [])
        return state


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
    """Training stopped on a signal after saving its state; exits with INTERRUPTED_EXIT (75,
    EX_TEMPFAIL), which meli.jobstatus records as ``interrupted`` and Snakemake retries."""

    def __init__(self, signum: int):
        super().__init__(INTERRUPTED_EXIT)
        self.signum = signum


def _points(value: str | None) -> set[tuple[int, str]]:
    """``"2:3,2:val"`` -> {(2, "3"), (2, "val")} (the fault-injection env vars)."""
    out = set()
    for item in (value or "").split(","):
        if item.strip():
            epoch, _, batch = item.strip().partition(":")
            out.add((int(epoch), batch))
    return out


class Preemption:
    """Asks the training loop to save at the next batch boundary: on a stop signal (then stop), or
    every ``every_s`` seconds (then go on). The loop calls :meth:`after_batch` after every batch,
    :meth:`validating` before each validation and :meth:`saved` after every checkpoint."""

    def __init__(self, every_s: float | None = None):
        self.signum: int | None = None
        self.every_s = every_s if every_s and every_s > 0 else None
        self.last_save = time.monotonic()
        self._signal_at = _points(os.environ.get(SIGNAL_AT_ENV))
        self._pause_at = _points(os.environ.get(PAUSE_AT_ENV))

    def handler(self, signum, _frame) -> None:
        if self.signum is None:
            log.warning("received %s (the scheduler's time limit or its warning, scancel or preemption?): saving the "
                        "training state at the next batch boundary, then stopping", signal.Signals(signum).name)
        self.signum = signum

    @property
    def stop(self) -> bool:
        return self.signum is not None

    def after_batch(self, epoch: int, batch: int) -> str | None:
        """``"stop"``, ``"save"`` or None after ``batch`` (1-based) of ``epoch``."""
        self._inject(epoch, str(batch))
        if self.stop:
            return "stop"
        if self.every_s is not None and time.monotonic() - self.last_save >= self.every_s:
            return "save"
        return None

    def validating(self, epoch: int) -> None:
        self._inject(epoch, "val")

    def saved(self) -> None:
        self.last_save = time.monotonic()

    def _inject(self, epoch: int, where: str) -> None:
        if (epoch, where) in self._signal_at:
            self._signal_at.discard((epoch, where))
            sig = signal.Signals["SIG" + os.environ.get(KILL_SIGNAL_ENV, "TERM").upper().removeprefix("SIG")]
            log.warning("%s: sending %s to this process at epoch %d, %s (fault injection)", SIGNAL_AT_ENV, sig.name,
                        epoch, where)
            signal.raise_signal(sig)
        if (epoch, where) in self._pause_at:
            self._pause_at.discard((epoch, where))
            log.warning("%s: epoch %d, batch %s: %s (at most %.0f s)", PAUSE_AT_ENV, epoch, where, PAUSE_LINE,
                        PAUSE_MAX_S)
            deadline = time.monotonic() + PAUSE_MAX_S
            while not self.stop and time.monotonic() < deadline:
                time.sleep(0.05)

    @contextlib.contextmanager
    def installed(self):
        """The stop signals' handler for the duration of training (left alone off the main thread)."""
        try:
            previous = {sig: signal.signal(sig, self.handler) for sig in STOP_SIGNALS}
        except ValueError:  # not the main thread (a test running this in a worker): leave signals alone
            yield self
            return
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
