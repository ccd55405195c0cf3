"""Sparse TF-IDF rows as torch tensors, batched by index like the token-id matrices.

:class:`CsrRows` holds a CSR matrix as three tensors (``indptr``, ``indices``, ``values``) and
answers ``rows[idx]`` (an index tensor or a slice) with another ``CsrRows`` of just those rows,
gathered with tensor ops only (``repeat_interleave`` + ``cumsum``): no scipy, no Python loop per
row, so the same code gathers a batch on the GPU when the whole matrix was moved there once
(the device-resident path of meli.train.neural.place), or on the CPU. ``TfidfMLP`` reads
``indices``, ``offsets`` and ``values`` straight into its ``EmbeddingBag``.
"""
from __future__ import annotations

import math

import numpy as np
import torch


class CsrRows:
    """Rows of a CSR matrix ``[rows, n_features]``; quacks like the int token matrix where training needs it."""

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, n_features: int):
        self.indptr, self.indices, self.values = indptr, indices, values
        self.n_features = int(n_features)

    @classmethod
    def from_scipy(cls, matrix) -> CsrRows:
        m = matrix.tocsr()
        # int32 column ids (half of int64's 8 B per non-zero); EmbeddingBag takes either.
        idx = np.int32 if m.shape[1] < 2**31 else np.int64
        return cls(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(idx, copy=False)),
                   torch.from_numpy(np.ascontiguousarray(m.data, dtype=np.float32)), m.shape[1])

    def to_scipy(self):
        import scipy.sparse as sp

        return sp.csr_matrix((self.values.cpu().numpy(), self.indices.cpu().numpy(), self.indptr.cpu().numpy()),
                             shape=self.shape)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.indptr.numel() - 1, self.n_features)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def device(self) -> torch.device:
        return self.indices.device

    @property
    def nbytes(self) -> int:
        return self.indptr.nbytes + self.indices.nbytes + self.values.nbytes

    @property
    def offsets(self) -> torch.Tensor:
        """Where each row starts in ``indices``: EmbeddingBag's ``offsets`` (of the indices' dtype, as it needs)."""
        return self.indptr[:-1].to(self.indices.dtype)

    def nnz_per_row(self) -> torch.Tensor:
        return self.indptr[1:] - self.indptr[:-1]

    def to(self, device, non_blocking: bool = False) -> CsrRows:
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return CsrRows(move(self.indptr), move(self.indices), move(self.values), self.n_features)

    def pin_memory(self) -> CsrRows:
        return CsrRows(self.indptr.pin_memory(), self.indices.pin_memory(), self.values.pin_memory(), self.n_features)

    def __getitem__(self, key) -> CsrRows:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step == 1:
                lo, hi = int(self.indptr[start]), int(self.indptr[max(stop, start)])
                return CsrRows(self.indptr[start : max(stop, start) + 1] - lo, self.indices[lo:hi],
                               self.values[lo:hi], self.n_features)
            key = torch.arange(start, stop, step, device=self.device)
        idx = torch.as_tensor(key, device=self.device)
        if idx.dtype == torch.bool:
            idx = idx.nonzero().squeeze(1)
        idx = idx.long()
        starts = self.indptr[idx]
        lengths = self.indptr[idx + 1] - starts
        indptr = torch.zeros(idx.numel() + 1, dtype=self.indptr.dtype, device=self.device)
        torch.cumsum(lengths, 0, out=indptr[1:])
        total = int(indptr[-1])
        # Position in the source of every kept entry: its row's source start + its rank within the row.
        shift = torch.repeat_interleave(starts - indptr[:-1], lengths, output_size=total)
        pos = torch.arange(total, device=self.device) + shift
        return CsrRows(indptr, self.indices[pos], self.values[pos], self.n_features)


# ------------------------------------------------------------------ the sparse bag's fast path
class _BagFunction(torch.autograd.Function):
    """``x @ W`` for a batch of sparse rows, whose backward gives W's gradient as (rows touched, their
    gradient) to the bag instead of a ``[nnz, width]`` sparse tensor or a dense ``[columns, width]`` one.

    The transposed product is itself an embedding bag: the batch's entries sorted by column, each
    touched column a bag over the rows' output gradients weighted by the TF-IDF values. Both
    directions are one fused gather-and-sum kernel each; nothing of size nnz x width is made.
    """

    @staticmethod
    def forward(ctx, weight, indices, offsets, values, bag):
        ctx.save_for_backward(indices, offsets, values)
        ctx.bag = bag
        return torch.nn.functional.embedding_bag(indices, weight, offsets, mode="sum", per_sample_weights=values)

    @staticmethod
    def backward(ctx, grad_out):
        indices, offsets, values = ctx.saved_tensors
        n = indices.numel()
        lengths = torch.diff(offsets, append=torch.tensor([n], dtype=offsets.dtype, device=offsets.device))
        row = torch.repeat_interleave(torch.arange(offsets.numel(), device=indices.device), lengths, output_size=n)
        cols, order = torch.sort(indices, stable=True)  # stable: the same sums in the same order on a rerun
        touched, counts = torch.unique_consecutive(cols, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        grad_rows = torch.nn.functional.embedding_bag(row[order], grad_out.to(values.dtype).contiguous(), starts,
                                                      mode="sum", per_sample_weights=values[order])
        ctx.bag.row_grad = (touched.long(), grad_rows)
        return None, None, None, None, None


class FastSparseBag(torch.nn.EmbeddingBag):
    """An ``EmbeddingBag(mode="sum", sparse=True)`` trained by :class:`LazyAdam`: same parameters and
    state_dict; in training its weight gradient goes to ``row_grad`` (see :class:`_BagFunction`).

    :func:`make_sparse_optimizer` turns a network's bag into one in place (``__class__``), so the
    networks (meli.models.nets) and saved models stay plain ``nn.EmbeddingBag``.
    """

    row_grad: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, input, offsets=None, per_sample_weights=None):  # noqa: A002 (nn.EmbeddingBag's names)
        if not (self.training and torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(input, offsets, per_sample_weights=per_sample_weights)
        if offsets.dtype != input.dtype:
            offsets = offsets.to(input.dtype)
        if per_sample_weights is None:
            per_sample_weights = torch.ones(input.shape, dtype=self.weight.dtype, device=input.device)
        return _BagFunction.apply(self.weight, input, offsets, per_sample_weights, self)  # grad: None, see row_grad


class _RowOptimizer(torch.optim.Optimizer):
    """An optimizer of a :class:`FastSparseBag`'s weight that reads the bag's fused row gradient
    (``row_grad``: the touched rows and their gradient) instead of ``weight.grad``."""

    def __init__(self, bag: FastSparseBag, defaults: dict):
        super().__init__([bag.weight], defaults)
        self._bag = bag

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._bag.row_grad = None

    def _init_state(self, state: dict, weight: torch.Tensor) -> None:
        raise NotImplementedError

    def _update(self, group: dict, weight: torch.Tensor, state: dict, touched: torch.Tensor, grad: torch.Tensor) -> None:
        """Apply one step to the ``touched`` rows of ``weight`` (``grad``: their gradient, L2 included)."""
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        """The touched rows and their gradient (the group's L2 on those rows only, lazily as the
        update), the state counted one step on, then the optimizer's own ``_update``; nothing
        before any backward."""
        row_grad, self._bag.row_grad = self._bag.row_grad, None  # consumed once
        if row_grad is None:
            return None
        touched, grad = row_grad
        group = self.param_groups[0]
        weight = group["params"][0]
        state = self.state[weight]
        if not state:
            state["step"] = 0
            self._init_state(state, weight)
        state["step"] += 1
        if group.get("weight_decay", 0.0) > 0:
            grad = grad.add(weight.index_select(0, touched), alpha=group["weight_decay"])
        self._update(group, weight, state, touched, grad)
        return None


class LazyAdam(_RowOptimizer):
    """SparseAdam's update (Adam on the rows a batch touches, moments of other rows untouched, bias
    correction by the global step) with dense row ops: gather the touched rows' moments, update,
    scatter back, ``index_add_`` the step into the weight. Its state (``step``, ``exp_avg``,
    ``exp_avg_sq``) and param group are SparseAdam's, so checkpoints load either way.
    """

    def __init__(self, bag: FastSparseBag, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(bag, dict(lr=lr, betas=betas, eps=eps, maximize=False))

    def _init_state(self, state: dict, weight: torch.Tensor) -> None:
        state["exp_avg"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(weight, memory_format=torch.preserve_format)

    def _update(self, group, weight, state, touched, grad) -> None:
        beta1, beta2 = group["betas"]
        step = int(state["step"])
        m = state["exp_avg"].index_select(0, touched).lerp_(grad, 1 - beta1)
        v = state["exp_avg_sq"].index_select(0, touched).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        state["exp_avg"].index_copy_(0, touched, m)
        state["exp_avg_sq"].index_copy_(0, touched, v)
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        weight.index_add_(0, touched, m.div_(v.sqrt_().add_(group["eps"])), alpha=-step_size)


class RowwiseAdagrad(_RowOptimizer):
    """Adagrad with one accumulator per row (the "row-wise Adagrad" of large-embedding recommenders,
    e.g. FBGEMM/DLRM): ``s[r] += mean(g[r]**2)``, ``w[r] -= lr * g[r] / (sqrt(s[r]) + eps)`` on the
    rows a batch touches. Per step it reads the touched rows' gradient twice and adds it into the
    weight once: no ``[touched, width]`` moments to gather and scatter back (LazyAdam's cost), and
    its state is 4 B per row instead of Adam's 2 x width x 4 B (a column's update size adapts to
    how often and how strongly the column is hit, as Adam's does, but one scale for the whole row).

    With ``beta2`` (``sparse_optimizer: rowwise_rmsprop``) the accumulator is an exponential average
    of the row's mean squared gradient instead, bias-corrected by the global step as Adam's: the
    steps do not shrink with the hits (Adagrad's do, as 1/sqrt(hits)), which is what kept the
    real-title accuracy of LazyAdam (benchmarks/README.md, issue 25).

    State: ``step`` and ``sum`` (``[rows]``, float32). ``lr`` is the bag's own (``sparse_lr_scale``
    x the combination's lr, see :func:`make_sparse_optimizer`).
    """

    def __init__(self, bag: FastSparseBag, lr: float = 0.01, eps: float = 1e-8, lr_scale: float = 1.0,
                 beta2: float | None = None):
        # lr_scale: meli.train.optim.set_lr (the schedule) sets lr = the combination's lr x lr_scale.
        # beta2: None = Adagrad's sum; a float = an exponential average instead (rowwise_rmsprop).
        super().__init__(bag, dict(lr=lr, eps=eps, lr_scale=lr_scale, beta2=beta2))

    def _init_state(self, state: dict, weight: torch.Tensor) -> None:
        state["sum"] = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device)

    def _update(self, group, weight, state, touched, grad) -> None:
        acc = state["sum"]
        # One reduction pass (vector_norm), not square() + mean(): a [touched, width] temporary fewer.
        norm = torch.linalg.vector_norm(grad, dim=1, dtype=torch.float32)
        mean_sq = norm.square_().div_(grad.shape[1])
        beta2, lr = group.get("beta2"), group["lr"]
        if beta2 is None:  # Adagrad: the sum of the row's mean squared gradients
            acc.index_add_(0, touched, mean_sq)
            denom = acc.index_select(0, touched)
        else:  # RMSprop with Adam's bias correction by the global step (lazy: untouched rows keep theirs)
            denom = acc.index_select(0, touched).mul_(beta2).add_(mean_sq, alpha=1 - beta2)
            acc.index_copy_(0, touched, denom)
            lr = lr * math.sqrt(1 - beta2 ** state["step"])
        scale = denom.sqrt_().add_(group["eps"]).reciprocal_().mul_(-lr)
        weight.index_add_(0, touched, grad.mul_(scale.unsqueeze(1).to(grad.dtype)))


SPARSE_OPTIMIZERS = ("lazy_adam", "rowwise_adagrad", "rowwise_rmsprop", "sparse_adam")  # meli.models.mlp has the same list


# The code before issue 25 (SparseAdam), for benchmarks/bench_sparse.py's side-by-side runs.
SPARSE_OPTIMIZER_ENV = "MELI_SPARSE_OPTIMIZER"


def make_sparse_optimizer(bag: torch.nn.EmbeddingBag, params: dict, kind: str | None = None) -> torch.optim.Optimizer:
    """The optimizer of a network's sparse TF-IDF bag, by ``kind``, else ``MELI_SPARSE_OPTIMIZER``
    (benchmarks' side-by-side runs), else ``params["sparse_optimizer"]``, else ``lazy_adam``:

    * ``lazy_adam``: :class:`LazyAdam` (SparseAdam's update with dense row ops; issue 25);
    * ``rowwise_adagrad`` / ``rowwise_rmsprop``: :class:`RowwiseAdagrad` (sum / average of the squares)
      at ``lr x params["sparse_lr_scale"]``: the fast ones, 4 B of state per column;
    * ``sparse_adam``: torch's ``SparseAdam`` over autograd's sparse gradient (the code before issue 25).

    The first two turn the bag into a :class:`FastSparseBag` in place.
    """
    import os

    kind = kind or os.environ.get(SPARSE_OPTIMIZER_ENV) or params.get("sparse_optimizer") or "lazy_adam"
    kind = "lazy_adam" if kind == "lazy" else kind  # the name before rowwise_adagrad existed
    lr = float(params["lr"])
    if kind not in SPARSE_OPTIMIZERS:
        raise ValueError(f"sparse optimizer {kind!r} not one of {SPARSE_OPTIMIZERS}")
    if kind == "sparse_adam":
        return torch.optim.SparseAdam([bag.weight], lr=lr)
    bag.__class__ = FastSparseBag  # same parameters and forward; only training's backward changes
    if kind.startswith("rowwise_"):
        scale = float(params.get("sparse_lr_scale", 1.0))
        return RowwiseAdagrad(bag, lr=lr * scale, lr_scale=scale, beta2=0.999 if kind == "rowwise_rmsprop" else None)
    return LazyAdam(bag, lr=lr)
