"""What defines a model family: the type every ``meli/models/<family>.py`` fills in once.

Torch-free on purpose: the Snakefile, the grid, aggregation and the report read family
definitions at parse time or in light jobs; the networks themselves are in ``nets.py``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class Family:
    name: str  # config key train.<name>, run directory results/runs/<name>/, --family value
    display_name: str  # how the report and tables name it
    params: type  # dataclass of the family's hyperparameters; a field's default is the family default
    aliases: dict[str, str]  # hyperparameter -> its spelling in combination ids, in id order
    neural: bool  # trained by meli.train.neural on an embedding (else by its own trainer)
    model_file: str  # the fitted model in the run directory
    # (params, vocab_size, dim, n_classes) -> torch.nn.Module; None for a family that is not neural.
    build: Callable[..., Any] | None = None
    # params -> params without the keys that do not apply to them (the MLP with input tfidf has no
    # embedding): applied to every combination before its id is made, so an unused key neither
    # names a run nor multiplies the grid. None: every key always applies.
    prune: Callable[[dict[str, Any]], dict[str, Any]] | None = None

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

    def __post_init__(self):
        if set(self.aliases) != set(self.parameters):
            raise ValueError(f"family {self.name}: aliases {sorted(self.aliases)} != parameters {sorted(self.parameters)}")
        if self.neural != (self.build is not None):
            raise ValueError(f"family {self.name}: a neural family needs `build`, and only a neural one has it")


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
