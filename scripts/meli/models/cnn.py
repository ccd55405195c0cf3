"""The CNN family: Kim (2014) convolutions over word vectors, max over time -> logits (network: nets.KimCNN)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meli.models.family import NEURAL_ID_HEAD, NEURAL_ID_TAIL, Family, NetworkMemory, NeuralParams, Shapes, layer_weights


@dataclass
class CnnParams(NeuralParams):
    filters: int = 100  # feature maps per kernel size
    kernel_sizes: list[int] = field(default_factory=lambda: [2, 3, 4])


def build(params: dict[str, Any], vocab_size: int, dim: int, n_classes: int):
    from meli.models.nets import KimCNN  # torch only when a model is really built

    return KimCNN(vocab_size, dim, n_classes, filters=int(params["filters"]), kernel_sizes=params["kernel_sizes"],
                  hidden=list(params["hidden"]), dropout=float(params["dropout"]))


def memory(params: dict[str, Any], shapes: Shapes) -> NetworkMemory:
    """Convolutions + head; per row: the embedded title and every kernel's feature maps."""
    kernels, filters, hidden = list(params["kernel_sizes"]), int(params["filters"]), list(params["hidden"])
    conv = sum(filters * k * shapes.dim + filters for k in kernels)
    return NetworkMemory(
        weights=conv + layer_weights([filters * len(kernels), *hidden, shapes.n_classes]),
        per_row=shapes.max_len * shapes.dim + filters * len(kernels) * shapes.max_len + sum(hidden) + shapes.n_classes,
    )


FAMILY = Family(
    name="cnn",
    display_name="CNN",
    params=CnnParams,
    aliases={**NEURAL_ID_HEAD, "filters": "nf", "kernel_sizes": "k", **NEURAL_ID_TAIL},
    neural=True,
    model_file="model.pt",
    build=build,
    memory=memory,
)
