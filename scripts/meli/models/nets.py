"""The networks of the neural families (torch): a mean-pooling MLP, a sparse TF-IDF-input MLP, a Kim
(2014) CNN and a (bi)directional LSTM/GRU.

**The network contract** (what meli.train, meli.inference and the runtime rely on; :func:`build_model`
checks it): a family's ``build`` returns a :class:`Network`, i.e. an ``nn.Module`` that

- takes a batch of its family's input kind: token ids ``[batch, max_len]`` (int, left aligned,
  PAD = 0) for ``tokens``, a :class:`meli.train.sparse.CsrRows` batch for ``tfidf``;
- returns raw logits ``[batch, n_classes]`` (the loss is ``F.cross_entropy`` on them directly: a
  softmax before it was a bug in two course notebooks);
- exposes ``input_table``: its ``nn.Embedding``/``nn.EmbeddingBag`` over the input's columns. For
  token input it is initialised from the embedding matrix and frozen by ``freeze_embeddings``; when
  it is ``sparse`` its gradient is sparse and meli.train.optim gives it SparseAdam;
- exposes ``n_classes``.

Dropout is ``nn.Dropout``, so ``model.eval()`` switches it off (the course's ``F.dropout`` did not).
State dict keys are what model.pt files hold: renaming a submodule orphans finished runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from meli import models
from meli.models.family import TOKENS

PAD = 0


class Network(nn.Module):
    """The base every family's network derives from (the contract above)."""

    n_classes: int

    @property
    def input_table(self) -> nn.Embedding | nn.EmbeddingBag:
        raise NotImplementedError(f"{type(self).__name__} must define input_table (its embedding table)")


def _embed_real(embedding: nn.Embedding, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors [B, T, dim], real-token mask [B, T]): PAD positions embed as zeros whatever row 0
    holds (it may have been changed, e.g. fine-tuned by hand)."""
    real = ids != PAD
    return embedding(ids) * real.unsqueeze(-1).to(embedding.weight.dtype), real


def _hidden_stack(in_dim: int, hidden: Sequence[int], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_dim, int(size)), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = int(size)
    return nn.Sequential(*layers), in_dim


class MeanMLP(Network):
    """Embedding -> mean over real tokens (PAD excluded) -> [Linear+ReLU+Dropout]* -> logits.

    ``nn.EmbeddingBag(mode="mean", padding_idx=0)`` fuses the lookup and the masked mean: PAD
    entries are left out of both sum and count, whatever row 0 holds; an all-PAD title gives zeros.
    """

    def __init__(self, vocab_size: int, dim: int, n_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        self.n_classes = int(n_classes)
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=PAD)
        self.hidden, out_dim = _hidden_stack(dim, hidden, dropout)
        self.out = nn.Linear(out_dim, n_classes)

    @property
    def input_table(self) -> nn.EmbeddingBag:
        return self.embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.embedding(ids)))


class TfidfMLP(Network):
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
        self.n_classes = int(n_classes)
        self.embedding = nn.EmbeddingBag(int(n_features), width, mode="sum", sparse=True)
        nn.init.normal_(self.embedding.weight, std=0.02)  # sums of ~150 weighted rows stay O(0.1)
        self.bias = nn.Parameter(torch.zeros(width))
        self.act = nn.Sequential(nn.ReLU(), nn.Dropout(dropout))
        self.hidden, out_dim = _hidden_stack(width, hidden[1:], dropout)
        self.out = nn.Linear(out_dim, n_classes)

    @property
    def input_table(self) -> nn.EmbeddingBag:
        return self.embedding

    def forward(self, rows) -> torch.Tensor:
        bag = self.embedding(rows.indices, rows.offsets, per_sample_weights=rows.values)
        return self.out(self.hidden(self.act(bag + self.bias)))


class KimCNN(Network):
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
        self.n_classes = int(n_classes)
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.convs = nn.ModuleList(nn.Conv1d(dim, int(filters), k) for k in self.kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.hidden, out_dim = _hidden_stack(int(filters) * len(self.kernel_sizes), hidden, dropout)
        self.out = nn.Linear(out_dim, n_classes)

    @property
    def input_table(self) -> nn.Embedding:
        return self.embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x, real = _embed_real(self.embedding, ids)
        x = x.transpose(1, 2)
        lengths = real.sum(1, keepdim=True)  # [B, 1]
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


@dataclass(frozen=True)
class Recurrence:
    """The recurrent part of a RecurrentNet (meli/models/rnn.py's hyperparameters)."""

    cell: str = "lstm"  # lstm | gru
    hidden_size: int = 128  # units per direction
    layers: int = 1
    bidirectional: bool = True
    pooling: str = "max"  # max | mean | last


class RecurrentNet(Network):
    """Embedding -> LSTM/GRU (bidirectional by default, stacked ``layers``) over the real tokens ->
    pooling -> dropout -> [Linear+ReLU+Dropout]* -> logits.

    The batch is packed by each title's length (``pack_padded_sequence``), so PAD steps are never
    fed to the recurrence: the backward direction starts at the last real token, and ``max``/``mean``
    pool the real steps only, ``last`` takes each direction's final state. A title without any token
    is read as one step over a zero vector (a packed sequence cannot be empty), like the CNN's one window.
    """

    def __init__(self, vocab_size: int, dim: int, n_classes: int, recurrence: Recurrence = Recurrence(),
                 hidden: Sequence[int] = (), dropout: float = 0.0):
        super().__init__()
        r = recurrence
        if r.cell not in RNN_CELLS:
            raise ValueError(f"cell {r.cell!r} not one of {tuple(RNN_CELLS)}")
        if r.pooling not in POOLINGS:
            raise ValueError(f"pooling {r.pooling!r} not one of {POOLINGS}")
        self.n_classes, self.pooling = int(n_classes), r.pooling
        self.directions = 2 if r.bidirectional else 1
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.rnn = RNN_CELLS[r.cell](dim, int(r.hidden_size), num_layers=int(r.layers), batch_first=True,
                                     bidirectional=bool(r.bidirectional),
                                     dropout=float(dropout) if r.layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.hidden, out_dim = _hidden_stack(int(r.hidden_size) * self.directions, hidden, dropout)
        self.out = nn.Linear(out_dim, n_classes)

    @property
    def input_table(self) -> nn.Embedding:
        return self.embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x, real = _embed_real(self.embedding, ids)  # (only the empty title's one step reads a PAD row)
        lengths = real.sum(1)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        out, state = self.rnn(packed)
        if self.pooling == "last":
            h = state[0] if isinstance(state, tuple) else state  # LSTM: (h, c)
            z = torch.cat(list(h[-self.directions:]), dim=1)  # the last layer's directions
        else:
            steps, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
            valid = (torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
                     < lengths.clamp(min=1).unsqueeze(1)).unsqueeze(-1)  # [B, T, 1]
            if self.pooling == "max":
                z = steps.masked_fill(~valid, float("-inf")).amax(dim=1)
            else:
                z = (steps * valid.to(steps.dtype)).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(steps.dtype)
        return self.out(self.hidden(self.dropout(z)))


RNN_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
POOLINGS = ("max", "mean", "last")


def build_model(
    family: str,
    params: dict[str, Any],
    vocab_size: int,
    dim: int,
    n_classes: int,
    matrix: torch.Tensor | None = None,
) -> Network:
    """The network for one combination (the family's ``build``, given ``params`` completed with the
    family's defaults); ``matrix`` (``[vocab, dim]``) initialises a token-input ``input_table``.

    Without ``matrix`` the table is left uninitialised for a following ``load_state_dict``.
    """
    spec = models.get(family)  # ValueError naming the known families
    if spec.build is None:
        raise ValueError(f"model family {family!r} has no network (it is not trained by meli.train.neural)")
    params = {**spec.defaults(), **params}
    model = spec.build(params, vocab_size, dim, n_classes)
    if not isinstance(model, Network) or not isinstance(model.input_table, (nn.Embedding, nn.EmbeddingBag)):
        raise TypeError(f"family {family}: build returned {type(model).__name__}, not a meli.models.nets.Network "
                        "with an nn.Embedding/nn.EmbeddingBag input_table")
    table = model.input_table
    if matrix is not None and spec.inputs(params) == TOKENS:
        if tuple(matrix.shape) != (vocab_size, dim):
            raise ValueError(f"embedding matrix has shape {tuple(matrix.shape)}, expected {(vocab_size, dim)}")
        with torch.no_grad():
            table.weight.copy_(matrix)
    table.weight.requires_grad_(not params.get("freeze_embeddings", False))
    return model
