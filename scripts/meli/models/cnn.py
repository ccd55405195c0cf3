"""The CNN family: Kim (2014) convolutions over word vectors, max over time -> logits (network: nets.KimCNN)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meli.models.family import NEURAL_ID_HEAD, NEURAL_ID_TAIL, Family, NeuralParams


@dataclass
class CnnParams(NeuralParams):
    filters: int = 100  # feature maps per kernel size
    kernel_sizes: list[int] = field(default_factory=lambda: [2, 3, 4])


def build(params: dict[str, Any], vocab_size: int, dim: int, n_classes: int):
    from meli.models.nets import KimCNN  # torch only when a model is really built

    return KimCNN(
        vocab_size,
        dim,
        n_classes,
        filters=int(params.get("filters", 100)),
        kernel_sizes=params.get("kernel_sizes") or (2, 3, 4),
        hidden=list(params.get("hidden") or []),
        dropout=float(params.get("dropout", 0.0)),
    )


FAMILY = Family(
    name="cnn",
    display_name="CNN",
    params=CnnParams,
    aliases={**NEURAL_ID_HEAD, "filters": "nf", "kernel_sizes": "k", **NEURAL_ID_TAIL},
    neural=True,
    model_file="model.pt",
    build=build,
)
