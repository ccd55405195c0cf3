"""How much memory a training job will need, from its inputs' shapes and its combination.

A training job checks this before loading anything (``meli.train.neural.run`` with ``mem_mb``,
the rule's ``resources.mem_mb``): a config that cannot fit (a huge ``vocab.max_len``, batch or
filter count) fails in a second naming the figure and the ``mem_mb`` it would need, instead of
being killed by the scheduler after queueing for a GPU, or swapping a shared node to a halt.

The estimate counts what scales: the token-id matrices (train + validation), the embedding
matrix with its gradient and Adam state, the other weights likewise, and one training batch's
activations (forward + backward) and one evaluation batch; plus a fixed allowance for the Python,
torch and Arrow runtime. The network's share (its weights, its activations per row) is the
family's own ``memory`` (meli/models/<family>.py); a family without one cannot be registered as
neural. It is meant to be within a factor of ~1.5 of the measured peak RSS (benchmarks/), never
a guarantee.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from meli import models
from meli.cli import MeliError
from meli.models.family import Shapes

RUNTIME_MB = 400  # the interpreter, torch, numpy, pandas, pyarrow once imported (measured ~350 MB)
FLOAT, TOKEN, LABEL = 4, 4, 8
ACTIVATION_COPIES = 3  # forward output, its gradient, a dropout mask / saved input


class MemoryEstimateError(MeliError, ValueError):
    """The job would need more memory than it is given."""


@dataclass
class Estimate:
    tokens_mb: float
    embedding_mb: float
    weights_mb: float
    batch_mb: float
    runtime_mb: float = RUNTIME_MB

    @property
    def total_mb(self) -> float:
        return self.tokens_mb + self.embedding_mb + self.weights_mb + self.batch_mb + self.runtime_mb

    def describe(self) -> str:
        return (f"about {self.total_mb:,.0f} MB (token matrices {self.tokens_mb:,.0f} MB, embedding matrix with "
                f"gradient and optimizer state {self.embedding_mb:,.0f} MB, other weights {self.weights_mb:,.0f} MB, "
                f"one batch's activations {self.batch_mb:,.0f} MB, runtime {self.runtime_mb:,.0f} MB)")


def estimate(family: str, params: Mapping[str, Any], rows: int, max_len: int, vocab_size: int, dim: int,
             n_classes: int, eval_batch: int = 4096) -> Estimate:
    """Peak memory of training ``family`` with ``params`` on ``rows`` (train + validation) titles."""
    spec = models.get(family)
    if spec.memory is None:
        raise ValueError(f"family {family!r} has no memory estimate (it is not trained by meli.train.neural)")
    params = {**spec.defaults(), **params}
    shapes = Shapes(rows=rows, max_len=max_len, vocab_size=vocab_size, dim=dim, n_classes=n_classes)
    net = spec.memory(params, shapes)
    mb = 1 / 2**20
    tokens = rows * (max_len * TOKEN + LABEL) * 1.1  # ids + labels (+ the known-label subset's index)
    frozen = bool(params.get("freeze_embeddings"))
    embedding = vocab_size * dim * FLOAT * (2 if frozen else 5)  # loaded copy + weight (+ grad + 2 Adam moments)
    batch = min(int(params["batch_size"]), max(rows, 1))
    eval_batch = min(eval_batch, max(rows, 1))
    activations = max(batch * net.per_row * FLOAT * ACTIVATION_COPIES, eval_batch * net.per_row * FLOAT)
    return Estimate(tokens * mb, embedding * mb, net.weights * FLOAT * 4 * mb, activations * mb)


def check(est: Estimate, mem_mb: int | None, family: str) -> None:
    """Fail when the estimate does not fit in ``mem_mb`` (None: not checked)."""
    if mem_mb is None or est.total_mb <= mem_mb:
        return
    need = int(math.ceil(est.total_mb * 1.25 / 1000) * 1000)
    raise MemoryEstimateError(
        f"this {family} job needs {est.describe()}, more than its mem_mb={mem_mb:,}: it would be killed or swap. "
        f"Set train.{family}.resources.mem_mb (or train.resources.mem_mb) to at least {need:,}, or make it "
        "smaller (vocab.max_len, vocab.max_size, batch_size, filters, hidden, hidden_size, split.subsample)")
