"""The recurrent family: a (bi)directional LSTM or GRU over the title's word vectors, pooled -> logits
(network: nets.RecurrentNet).

Reads the same token ids and embedding matrices as the MLP and CNN; padding never enters the
recurrence (packed sequences). Pooling over the time steps: ``max`` (default), ``mean``, or the
``last`` state of each direction.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meli.models.family import NEURAL_ID_HEAD, NEURAL_ID_TAIL, Family, NetworkMemory, NeuralParams, Shapes, layer_weights

GATES = {"lstm": 4, "gru": 3}  # weight blocks per cell
POOLINGS = ("max", "mean", "last")


@dataclass
class RnnParams(NeuralParams):
    cell: str = "lstm"  # lstm | gru
    hidden_size: int = 128  # units per direction
    layers: int = 1  # stacked recurrent layers (dropout between them)
    bidirectional: bool = True
    pooling: str = "max"  # max | mean | last


def validate(params: dict[str, Any]) -> None:
    if params["cell"] not in GATES:
        raise ValueError(f"cell {params['cell']!r} not one of {tuple(GATES)}")
    if params["pooling"] not in POOLINGS:
        raise ValueError(f"pooling {params['pooling']!r} not one of {POOLINGS}")
    for key in ("hidden_size", "layers"):
        if int(params[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {params[key]!r}")


def build(params: dict[str, Any], vocab_size: int, dim: int, n_classes: int):
    from meli.models.nets import RecurrentNet, Recurrence  # torch only when a model is really built

    recurrence = Recurrence(cell=params["cell"], hidden_size=int(params["hidden_size"]), layers=int(params["layers"]),
                            bidirectional=bool(params["bidirectional"]), pooling=params["pooling"])
    return RecurrentNet(vocab_size, dim, n_classes, recurrence, hidden=list(params["hidden"]),
                        dropout=float(params["dropout"]))


def memory(params: dict[str, Any], shapes: Shapes) -> NetworkMemory:
    """Every layer's and direction's gate weights + the head; per row, the embedded title and, per
    layer and direction, each step's gates, cell state and output (kept for the backward pass)."""
    gates, size, layers = GATES[params["cell"]], int(params["hidden_size"]), int(params["layers"])
    directions = 2 if params["bidirectional"] else 1
    inputs = [shapes.dim] + [size * directions] * (layers - 1)
    recurrent = directions * sum(gates * size * (n_in + size + 2) for n_in in inputs)
    hidden = list(params["hidden"])
    steps = shapes.max_len * layers * directions * size * (gates + 2)
    return NetworkMemory(
        weights=recurrent + layer_weights([size * directions, *hidden, shapes.n_classes]),
        per_row=shapes.max_len * shapes.dim + steps + size * directions + sum(hidden) + shapes.n_classes,
    )


FAMILY = Family(
    name="rnn",
    display_name="BiLSTM/GRU",
    params=RnnParams,
    aliases={**NEURAL_ID_HEAD, "cell": "cell", "hidden_size": "hs", "layers": "nl", "bidirectional": "bi",
             "pooling": "pool", **NEURAL_ID_TAIL},
    neural=True,
    model_file="model.pt",
    build=build,
    memory=memory,
    validate=validate,
)
