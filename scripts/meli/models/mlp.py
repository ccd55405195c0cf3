"""The MLP family: mean of a title's word vectors -> hidden layers -> logits (network: nets.MeanMLP)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meli.models.family import NEURAL_ID_HEAD, NEURAL_ID_TAIL, Family, NeuralParams


@dataclass
class MlpParams(NeuralParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128])


def build(params: dict[str, Any], vocab_size: int, dim: int, n_classes: int):
    from meli.models.nets import MeanMLP  # torch only when a model is really built

    hidden = list(params.get("hidden") or [])
    return MeanMLP(vocab_size, dim, n_classes, hidden=hidden, dropout=float(params.get("dropout", 0.0)))


FAMILY = Family(
    name="mlp",
    display_name="MLP",
    params=MlpParams,
    aliases={**NEURAL_ID_HEAD, **NEURAL_ID_TAIL},
    neural=True,
    model_file="model.pt",
    build=build,
)
