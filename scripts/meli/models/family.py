"""What defines a model family: the type every ``meli/models/<family>.py`` fills in once.

A family declares what it needs and what it provides:

- its hyperparameters (``params``: a dataclass whose field defaults are the family defaults,
  equal to the schema's, which tests/test_families.py checks) and their id spelling (``aliases``);
- for a neural family (trained by meli.train.neural): its **input kind** (``input_kind(params)``:
  ``"tokens"`` = the token-id matrices + an embedding matrix, or ``"tfidf"`` = the shared sparse
  TF-IDF rows), its **network** (``build(params, vocab_size, dim, n_classes)``, a
  :class:`meli.models.nets.Network`) and its **memory** (``memory(params, shapes)``: the weights
  and per-row activations meli.train.memory adds up; a neural family without it is refused here,
  never estimated as another family);
- its **predictor** (``predictor``: ``"module:callable"`` that meli.inference calls with
  ``(run_dir, data_dir, features_dir, device)`` and that returns a ``meli.inference.Predictor``).

Torch-free on purpose: the Snakefile, the grid, aggregation and the report read family
definitions at parse time or in light jobs; the networks themselves are in ``nets.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

# Input kinds (what meli.train.inputs loads and meli.inference encodes titles into).
TOKENS = "tokens"  # {split}_ids.npy int32 [rows, max_len] + results/embeddings/{name}/matrix.npy
TFIDF = "tfidf"  # results/features/tfidf/{split}.npz, the shared sparse TF-IDF rows
INPUT_KINDS = (TOKENS, TFIDF)

NEURAL_PREDICTOR = "meli.inference:NeuralPredictor"


@dataclass(frozen=True)
class Shapes:
    """The sizes a training job's memory depends on (read from its inputs before loading them)."""

    rows: int  # train + validation
    max_len: int
    vocab_size: int
    dim: int
    n_classes: int


@dataclass(frozen=True)
class NetworkMemory:
    """A network's share of a job's memory, in float32 values (meli.train.memory adds the rest)."""

    weights: int  # parameters besides the embedding table
    per_row: int  # activations of one row in a forward pass (backward and dropout copies are added)


def layer_weights(sizes: list[int]) -> int:
    """Weights + biases of a stack of Linear layers ``sizes[0] -> sizes[1] -> ...``."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


@dataclass(frozen=True)
class Family:
    name: str  # config key train.<name>, run directory results/runs/<name>/, --family value
    display_name: str  # how the report and tables name it
    params: type  # dataclass of the family's hyperparameters; a field's default is the family default
    aliases: dict[str, str]  # hyperparameter -> its spelling in combination ids, in id order
    neural: bool  # trained by meli.train.neural (else by its own trainer and rule)
    model_file: str  # the fitted model in the run directory
    # (params, vocab_size, dim, n_classes) -> meli.models.nets.Network; neural families only.
    build: Callable[..., Any] | None = None
    # (params, Shapes) -> NetworkMemory; neural families only (required: see meli.train.memory).
    memory: Callable[[dict[str, Any], Shapes], NetworkMemory] | None = None
    # params -> TOKENS | TFIDF; None: always TOKENS.
    input_kind: Callable[[dict[str, Any]], str] | None = None
    # params -> None, raising ValueError for a value only this family refuses (after the shared checks).
    validate: Callable[[dict[str, Any]], None] | None = None
    # params -> params without the keys that do not apply to them (the MLP with input tfidf has no
    # embedding): applied to every combination before its id is made, so an unused key neither
    # names a run nor multiplies the grid. None: every key always applies.
    prune: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # (params, {block: columns}) -> the slice of the shared TF-IDF matrix's columns a TFIDF-input
    # combination reads (None: all); None: always all (meli.train.inputs, meli.inference).
    input_columns: Callable[[dict[str, Any], dict[str, int]], Any] | None = None
    # "module:callable" returning the run's meli.inference.Predictor (imported only when serving).
    predictor: str = NEURAL_PREDICTOR

    @property
    def parameters(self) -> tuple[str, ...]:
        """Every hyperparameter name, in the params dataclass's order."""
        return tuple(f.name for f in dataclasses.fields(self.params))

    def defaults(self) -> dict[str, Any]:
        """A fresh ``{name: default}`` of the parameters that have one (``embedding`` has none)."""
        out = {}
        for f in dataclasses.fields(self.params):
            if f.default_factory is not dataclasses.MISSING:
                out[f.name] = f.default_factory()
            elif f.default is not dataclasses.MISSING:
                out[f.name] = f.default
        return out

    def inputs(self, params: dict[str, Any]) -> str:
        """What this combination reads: TOKENS or TFIDF."""
        kind = self.input_kind(params) if self.input_kind is not None else TOKENS
        if kind not in INPUT_KINDS:
            raise ValueError(f"family {self.name}: input kind {kind!r} not one of {INPUT_KINDS}")
        return kind

    def columns(self, params: dict[str, Any], block_sizes: dict[str, int]):
        """The TF-IDF columns this combination reads (a slice), or None for all of them."""
        return self.input_columns({**self.defaults(), **params}, block_sizes) if self.input_columns else None

    def __post_init__(self):
        if set(self.aliases) != set(self.parameters):
            raise ValueError(f"family {self.name}: aliases {sorted(self.aliases)} != parameters {sorted(self.parameters)}")
        if self.neural != (self.build is not None):
            raise ValueError(f"family {self.name}: a neural family needs `build`, and only a neural one has it")
        if self.neural and self.memory is None:
            raise ValueError(f"family {self.name}: a neural family needs `memory` (its share of a job's memory "
                             "estimate, meli.train.memory): no estimate is borrowed from another family")
        if ":" not in self.predictor:
            raise ValueError(f"family {self.name}: predictor {self.predictor!r} must be 'module:callable'")


@dataclass
class NeuralParams:
    """Hyperparameters every family trained by meli.train.neural shares."""

    embedding: str  # a name under `embeddings` in the config; no default (the grid supplies it)
    freeze_embeddings: bool = False
    hidden: list[int] = field(default_factory=list)  # hidden layer sizes after pooling
    dropout: float = 0.3
    batch_size: int = 128
    lr: float = 0.001
    weight_decay: float = 0.0
    optimizer: str = "adam"  # adam | adamw | sgd
    epochs: int = 10
    patience: int = 3  # epochs without a better validation bacc before stopping
    seed: int = 0
    class_weights: bool = False
    lr_schedule: str = "constant"  # constant | cosine (per step, to 0 at the last epoch)
    label_smoothing: float = 0.0  # of the training loss only; val_loss is plain cross-entropy


# Id spelling of the shared neural hyperparameters; a family's own keys go between the two
# (cnn: ..._h-100_nf-100_k-2x3x4_do-0.3_...), so existing ids never change.
NEURAL_ID_HEAD = {"embedding": "emb", "freeze_embeddings": "frz", "hidden": "h"}
NEURAL_ID_TAIL = {
    "dropout": "do",
    "batch_size": "bs",
    "lr": "lr",
    "weight_decay": "wd",
    "optimizer": "opt",
    "epochs": "ep",
    "patience": "pat",
    "class_weights": "cw",
    "lr_schedule": "sch",
    "label_smoothing": "ls",
    "seed": "seed",
}
