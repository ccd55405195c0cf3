"""Where and how a model runs: device choice, mixed precision, batched forward passes.

Shared by training (validation after each epoch), evaluation on test and inference
(meli.inference.Predictor): one place decides the device, the autocast policy and the batch-wise
prediction that never holds a split's rows x classes logits.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np
import torch
from torch import nn

from meli.cli import MeliError

EVAL_BATCH = 4096


class DeviceError(MeliError, RuntimeError):
    """The requested device is not there."""


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        why = ("this torch build has no CUDA support (a CPU wheel)" if torch.version.cuda is None
               else "no CUDA GPU is visible (CUDA_VISIBLE_DEVICES? a login node instead of a GPU job?)")
        raise DeviceError(f"--device cuda requested, but {why}; use --device cpu or auto (train.device in the config)")
    return torch.device(name)


# bfloat16 autocast on CPU too (tests set it: the GPU's mixed-precision path runs without a GPU).
CPU_AUTOCAST_ENV = "MELI_CPU_AUTOCAST"


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA (and on CPU when MELI_CPU_AUTOCAST=1); losses are computed in float32."""
    if device.type == "cuda" or (device.type == "cpu" and os.environ.get(CPU_AUTOCAST_ENV) == "1"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def iter_logits(model: nn.Module, ids: torch.Tensor, device: torch.device, batch_size: int = EVAL_BATCH):
    """``(start, float32 logits of rows start..start+len)`` batch by batch, in eval mode (dropout off).

    Callers reduce each batch before asking for the next one, so memory stays at one batch x
    classes whatever the split's size (a whole split's logits are rows x classes x 4 bytes:
    1.2 GB per 100k rows at 1,588 classes).
    """
    model.eval()
    for start in range(0, ids.shape[0], batch_size):
        x = ids[start : start + batch_size].to(device, non_blocking=True)
        with torch.no_grad(), autocast(device):  # per batch: no grad mode leaks to the caller at yield
            logits = model(x)
        yield start, logits.float()


def predict_logits(model: nn.Module, ids: torch.Tensor, device: torch.device, batch_size: int = EVAL_BATCH):
    """Float32 logits ``[rows, classes]`` for every row: only for a handful of rows (e.g. raw titles)."""
    out = [logits for _, logits in iter_logits(model, ids, device, batch_size)]
    if not out:
        return torch.empty((0, model.n_classes), device=device)  # the network contract (meli.models.nets)
    return torch.cat(out)


def predict_labels(
    model: nn.Module, ids: torch.Tensor, device: torch.device, batch_size: int = EVAL_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(int64 argmax, float32 max softmax probability) per row, without holding rows x classes."""
    n = ids.shape[0]
    pred, prob = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.float32)
    for start, logits in iter_logits(model, ids, device, batch_size):
        p, k = torch.softmax(logits, dim=1).max(dim=1)
        pred[start : start + len(k)] = k.cpu().numpy()
        prob[start : start + len(p)] = p.cpu().numpy()
    return pred, prob
