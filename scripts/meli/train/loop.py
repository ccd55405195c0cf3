"""The epoch loop: train, check for divergence, evaluate, keep the best epoch, stop early, checkpoint.

:class:`Loop` holds what every epoch needs (the network, its optimizer, the placed splits, the
device, the combination); :meth:`Loop.run` trains epochs until early stopping, the configured
epochs or a rung's budget, calling ``save(epoch)`` after each so the job can be resumed. Every
epoch's randomness (the permutation and dropout) is seeded from ``(seed, epoch)``. Within an
epoch, a :class:`meli.train.checkpoint.Preemption` decides at each batch boundary whether to save
(``state["partial"]``: batches done, running loss, RNG states) and whether to stop; an epoch
resumed from such a state continues with the same batches and RNG, so it ends bit for bit like an
uninterrupted one (on CPU).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from meli.cli import MeliError
from meli.io import Progress, format_seconds
from meli.jobstatus import DIVERGED_EXIT
from meli.metrics import balanced_accuracy
from meli.models.runtime import EVAL_BATCH, autocast, iter_logits
from meli.train.checkpoint import Preemption, Terminated, cpu_state
from meli.train.inputs import Split
from meli.train.optim import epoch_seed, lr_factor, set_lr

log = logging.getLogger("meli.train.loop")

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


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ids: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    perm: torch.Tensor,
    device: torch.device,
    class_weights: torch.Tensor | None = None,
    **options: Any,
) -> float | None:
    """One pass over ``ids[perm]`` in batches; returns the mean training loss (None: stopped early).

    ``perm`` lives where ``ids`` does; batches are gathered by indexing (on the GPU when the
    matrices are device-resident) and moved only when they are not. Options: ``progress`` (a
    :class:`meli.io.Progress`), ``label_smoothing`` (0), ``lr_at_batch(b)`` (sets the learning rate
    before batch ``b``: the schedule), ``position`` (an :class:`EpochPosition`: where to start,
    updated after every batch) and ``after_batch(batches_done) -> bool`` (True: stop here, return None).
    """
    progress, lr_at_batch = options.pop("progress", None), options.pop("lr_at_batch", None)
    label_smoothing = float(options.pop("label_smoothing", 0.0))
    position, after_batch = options.pop("position", None) or EpochPosition(), options.pop("after_batch", None)
    if options:
        raise TypeError(f"train_epoch: unknown option(s) {sorted(options)}")
    model.train()
    on_device = ids.device == device
    total = position.loss_sum.to(device)
    n = perm.numel()
    for b, start in enumerate(range(0, n, batch_size)):
        if b < position.batch:  # done by an earlier attempt (a resumed epoch)
            continue
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
        position.batch, position.loss_sum = b + 1, total
        if after_batch is not None and after_batch(b + 1):
            return None
    _check_finite(total, "at the end of the epoch")
    return float(total) / max(n, 1)


@dataclass
class EpochPosition:
    """Where a training pass is: batches done and the running sum of their losses (float64)."""

    batch: int = 0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))


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


@dataclass
class Loop:
    """One combination's training, epoch by epoch (the job's settings are in meli.train.neural.Job)."""

    family: str
    params: dict[str, Any]  # the resolved combination
    model: nn.Module
    optimizer: Any
    train: Split  # placed (meli.train.inputs.place)
    val: Split
    device: torch.device
    weights: torch.Tensor | None = None  # class weights of the loss
    started: float = 0.0  # time.monotonic() when the job started (elapsed_s counts from there)

    @property
    def n_classes(self) -> int:
        return self.model.n_classes

    @property
    def max_epochs(self) -> int:
        return int(self.params["epochs"])

    def run(self, state: dict[str, Any], save: Callable[..., None], until_epoch: int | None = None,
            preemption: Preemption | None = None) -> None:
        """Epochs until early stopping, the configured epochs or ``until_epoch`` (a rung's budget);
        ``state`` is updated in place and ``save(epoch)`` called after each epoch, and
        ``save(epoch, partial=True)`` within an epoch whenever ``preemption`` asks (``state["partial"]``
        set). Raises
        :class:`meli.train.checkpoint.Terminated` once the state is saved after a stop signal."""
        preemption = preemption or Preemption()
        if state["epoch"] == 0 and not state.get("partial"):
            state["initial_loss"] = initial_loss(self.model, self.train, self.device, self.weights)
        elapsed_before = state["elapsed_s"]
        self._note_restart(state)
        while not state["done"] and (until_epoch is None or state["epoch"] < int(until_epoch)):
            epoch = state["epoch"] + 1
            trained = self._train(epoch, state, save, preemption, elapsed_before)
            if trained is None:  # stopped within the epoch, its state saved
                raise Terminated(preemption.signum)
            train_loss, train_s = trained
            check_divergence(state, train_loss, epoch, self.n_classes, self.params, self.family,
                             last_epoch=epoch >= self.max_epochs)
            preemption.validating(epoch)
            val_loss, val_bacc = evaluate(self.model, self.val, self.n_classes, self.device)
            elapsed = elapsed_before + time.monotonic() - self.started
            n_train = len(self.train.labels)
            state["train_time_s"] += train_s
            state["train_samples"] += n_train
            state["history"].append({
                "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_bacc": val_bacc,
                "samples_per_s": n_train / max(train_s, 1e-9), "elapsed_s": elapsed,
            })
            self._keep_best(state, epoch, elapsed)
            state["partial"] = None
            save(epoch)
            preemption.saved()
            finished = state["done"] or (until_epoch is not None and epoch >= int(until_epoch))
            if preemption.stop and not finished:  # (a finished job writes its outputs instead)
                log.warning("stopping after epoch %d (its checkpoint is saved); the next attempt starts epoch %d",
                            epoch, epoch + 1)
                raise Terminated(preemption.signum)

    def _note_restart(self, state: dict[str, Any]) -> None:
        """A job resuming its own checkpoint: record where, and what restarting cost before training
        went on (the startup: imports, inputs, restoring), for the run record's restart figures."""
        if state.pop("resumed", False):
            part = state.get("partial") or {}
            state.setdefault("restarts", []).append({
                "epoch": state["epoch"] + (1 if part else 0), "batch": part.get("batch", 0),
                "startup_s": time.monotonic() - self.started, "kept_elapsed_s": state["elapsed_s"]})

    def _train(self, epoch: int, state: dict[str, Any], save: Callable[..., None], preemption: Preemption,
               elapsed_before: float) -> tuple[float, float] | None:
        """One epoch's training pass: (mean loss, seconds), or None when it stopped on a signal
        (``state["partial"]`` then holds where, and is saved)."""
        n_train, batch_size = len(self.train.labels), int(self.params["batch_size"])
        seed = epoch_seed(self.params["seed"], epoch)
        torch.manual_seed(seed)  # dropout (CPU and CUDA generators)
        part = state.get("partial")
        position, train_s_before = EpochPosition(), 0.0
        if part and part["epoch"] == epoch:  # continue where an earlier attempt stopped
            position = EpochPosition(int(part["batch"]), part["loss_sum"].to(torch.float64))
            train_s_before = float(part["train_s"])
            _set_rng(part)
        perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed)).to(self.train.ids.device)
        progress = Progress(log, n_train, f"epoch {epoch}/{self.max_epochs}", every_s=30.0)
        progress.done = min(position.batch * batch_size, n_train)
        t0 = time.monotonic()

        def after_batch(batches: int) -> bool:
            action = preemption.after_batch(epoch, batches)
            if action is None:
                return False
            state["partial"] = {"epoch": epoch, "batch": batches, "loss_sum": position.loss_sum.detach().cpu().clone(),
                                "train_s": train_s_before + time.monotonic() - t0, **_rng_state(self.device)}
            state["elapsed_s"] = elapsed_before + time.monotonic() - self.started
            save(epoch, partial=True)
            preemption.saved()
            log.info("epoch %d: state saved after batch %d of %d%s", epoch, batches,
                     math.ceil(n_train / batch_size), " (stopping)" if action == "stop" else "")
            return action == "stop"

        loss = train_epoch(self.model, self.optimizer, self.train.ids, self.train.labels, batch_size, perm,
                           self.device, self.weights, progress=progress,
                           label_smoothing=float(self.params["label_smoothing"]), lr_at_batch=self._schedule(epoch),
                           position=position, after_batch=after_batch)
        if loss is None:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return loss, train_s_before + time.monotonic() - t0

    def _schedule(self, epoch: int) -> Callable[[int], float] | None:
        """The learning rate at each batch of ``epoch`` (None: constant, the optimizer's own)."""
        schedule = self.params["lr_schedule"]
        if schedule == "constant":
            return None
        steps = math.ceil(len(self.train.labels) / int(self.params["batch_size"]))
        base_lr, first_step = float(self.params["lr"]), (epoch - 1) * steps
        return lambda b: base_lr * lr_factor(schedule, first_step + b, self.max_epochs * steps)

    def _keep_best(self, state: dict[str, Any], epoch: int, elapsed: float) -> None:
        """Best epoch so far, early stopping, and the epoch's log line."""
        last = state["history"][-1]
        improved = last["val_bacc"] > state["best_bacc"]
        if improved:
            state.update(best_bacc=last["val_bacc"], best_epoch=epoch, best_state=cpu_state(self.model), bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        patience = int(self.params["patience"])
        stop_early = state["bad_epochs"] >= patience
        state.update(epoch=epoch, done=stop_early or epoch >= self.max_epochs,
                     stopped_early=stop_early and epoch < self.max_epochs, elapsed_s=elapsed)
        eta = 0 if state["done"] else elapsed / epoch * (self.max_epochs - epoch)
        log.info(
            "epoch %d/%d: train_loss %.4f  val_loss %.4f  val_bacc %.4f%s  %s samples/s  elapsed %s  ETA %s%s",
            epoch, self.max_epochs, last["train_loss"], last["val_loss"], last["val_bacc"],
            " (best)" if improved else "", f"{last['samples_per_s']:,.0f}", format_seconds(elapsed),
            format_seconds(eta), f"  -> early stop (no improvement for {patience} epochs)" if stop_early else "",
        )


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG states a resumed epoch needs (dropout): CPU, and CUDA's on a GPU."""
    return {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}


def _set_rng(part: dict[str, Any]) -> None:
    torch.set_rng_state(part["rng"])
    if part.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(part["cuda_rng"])
