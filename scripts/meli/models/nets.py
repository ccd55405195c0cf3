"""The networks of the neural families (torch): a mean-pooling MLP, a sparse TF-IDF-input MLP and a Kim (2014) CNN.

MeanMLP and KimCNN take token ids ``[batch, max_len]`` (left aligned, PAD = 0), TfidfMLP a batch of
sparse TF-IDF rows (:class:`meli.train.sparse.CsrRows`); all return raw logits: the loss
is ``F.cross_entropy`` on them directly (a softmax before it was a bug in two course notebooks).
Dropout is ``nn.Dropout``, so ``model.eval()`` switches it off (the course's ``F.dropout`` did not).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from meli import models

PAD = 0


def _hidden_stack(in_dim: int, hidden: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_dim, int(size)), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = int(size)
    return nn.Sequential(*layers), in_dim


class MeanMLP(nn.Module):
    """Embedding -> mean over real tokens (PAD excluded) -> [Linear+ReLU+Dropout]* -> logits.

    ``nn.EmbeddingBag(mode="mean", padding_idx=0)`` fuses the lookup and the masked mean: PAD
    entries are left out of both sum and count, whatever row 0 holds; an all-PAD title gives zeros.
    """

    def __init__(self, vocab_size: int, dim: int, n_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=PAD)
        self.hidden, out_dim = _hidden_stack(dim, hidden, dropout)
        self.out = nn.Linear(out_dim, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.embedding(ids)))


class TfidfMLP(nn.Module):
    """Sparse TF-IDF row -> tf-idf-weighted sum of learned column vectors (+ bias) -> ReLU -> Dropout
    -> [Linear+ReLU+Dropout]* -> logits.

    The bag is ``x @ W`` for a sparse row ``x``: a first dense layer of width ``hidden[0]`` whose
    gradient touches only the columns in the batch (``sparse=True``, SparseAdam), which is what
    makes 100k-500k input columns cheap. A row without any known n-gram gives the bias alone.
    """

    def __init__(self, n_features: int, n_classes: int, hidden: Sequence[int] = (512,), dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ValueError("input tfidf needs at least one hidden layer (hidden[0] is the bag's width)")
        width = int(hidden[0])
        self.embedding = nn.EmbeddingBag(int(n_features), width, mode="sum", sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.02)  # sums of ~150 weighted rows stay O(0.1)
        self.bias = nn.Parameter(torch.zeros(width))
        self.act = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.hidden, out_dim = _hidden_stack(width, hidden[1:], dropout)
        self.out = nn.Linear(out_dim, n_classes)

    def forward(self, rows) -> torch.Tensor:
        bag = self.embedding(rows.indices, rows.offsets, per_sample_weights=rows.values)
        return self.out(self.hidden(self.act(bag + self.bias)))


class KimCNN(nn.Module):
    """Embedding -> Conv1d per kernel size + ReLU -> max over time -> concat -> dropout -> [hidden] -> logits.

    Only windows that lie inside the real tokens count in the max; a title shorter than a kernel
    (or than ``max_len``) gets one window over its tokens plus zero padding, so any title length,
    including 1 and 0, works and the output does not depend on how much trailing PAD there is.
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        n_classes: int,
        filters: int = 100,
        kernel_sizes: Sequence[int] = (2, 3, 4),
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
    ):
        super().__init__()
        if not kernel_sizes:
            raise ValueError("kernel_sizes must not be empty")
        self.kernel_sizes = [int(k) for k in kernel_sizes]
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.convs = nn.ModuleList(nn.Conv1d(dim, int(filters), k) for k in self.kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.hidden, out_dim = _hidden_stack(int(filters) * len(self.kernel_sizes), hidden, dropout)
        self.out = nn.Linear(out_dim, n_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != PAD
        lengths = real.sum(1, keepdim=True)  # [B, 1]
        # PAD rows must embed as zeros even if row 0 was changed (e.g. fine-tuned by hand).
        x = (self.embedding(ids) * real.unsqueeze(-1).to(self.embedding.weight.dtype)).transpose(1, 2)
        short = max(self.kernel_sizes) - x.shape[-1]
        if short > 0:
            x = nn.functional.pad(x, (0, short))
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            h = torch.relu(conv(x))  # [B, F, T]
            starts = torch.arange(h.shape[-1], device=ids.device)
            # Windows fully inside the title, and always the first one (short or empty titles).
            valid = starts.unsqueeze(0) < (lengths - k + 1).clamp(min=1)  # [B, T]
            # After ReLU every value is >= 0, so zeroing invalid windows excludes them from the max.
            pooled.append((h * valid.unsqueeze(1).to(h.dtype)).amax(dim=-1))
        z = self.dropout(torch.cat(pooled, dim=1))
        return self.out(self.hidden(z))


def build_model(
    family: str,
    params: dict[str, Any],
    vocab_size: int,
    dim: int,
    n_classes: int,
    matrix: torch.Tensor | None = None,
) -> nn.Module:
    """The model for one combination (the family's ``build``); ``matrix`` (``[vocab, dim]``) initialises the embedding.

    Without ``matrix`` the embedding is left uninitialised for a following ``load_state_dict``.
    """
    spec = models.get(family)  # ValueError naming the known families
    if spec.build is None:
        raise ValueError(f"model family {family!r} has no network (it is not trained by meli.train.neural)")
    model: nn.Module = spec.build(params, vocab_size, dim, n_classes)
    if matrix is not None and not isinstance(model, TfidfMLP):
        if tuple(matrix.shape) != (vocab_size, dim):
            raise ValueError(f"embedding matrix has shape {tuple(matrix.shape)}, expected {(vocab_size, dim)}")
        with torch.no_grad():
            model.embedding.weight.copy_(matrix)
    model.embedding.weight.requires_grad_(not params.get("freeze_embeddings", False))
    return model
