"""Sparse TF-IDF rows as torch tensors, batched by index like the token-id matrices.

:class:`CsrRows` holds a CSR matrix as three tensors (``indptr``, ``indices``, ``values``) and
answers ``rows[idx]`` (an index tensor or a slice) with another ``CsrRows`` of just those rows,
gathered with tensor ops only (``repeat_interleave`` + ``cumsum``): no scipy, no Python loop per
row, so the same code gathers a batch on the GPU when the whole matrix was moved there once
(the device-resident path of meli.train.neural.place), or on the CPU. ``TfidfMLP`` reads
``indices``, ``offsets`` and ``values`` straight into its ``EmbeddingBag``.
"""
from __future__ import annotations

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
        return cls(torch.from_numpy(m.indptr.astype(np.int64)), torch.from_numpy(m.indices.astype(np.int64)),
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
        """Where each row starts in ``indices``: EmbeddingBag's ``offsets``."""
        return self.indptr[:-1]

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
