"""The TF-IDF baseline: the shared word + char n-gram TF-IDF matrix + a linear classifier (meli.train.baseline).

The features (n-gram ranges, min_df, max_features) are the ``tfidf_features`` config section,
shared with the MLP's ``input: tfidf``; only the classifier's hyperparameters are swept here.
``solver: linearsvc`` (default): one-vs-rest LinearSVC (liblinear, CPU). The torch solvers train
over the same sparse rows (LazyAdam on the touched columns, or row-wise Adagrad/RMSprop:
``sparse_optimizer``; GPU when there is one) for ``epochs`` at ``lr`` in batches of ``batch_size``,
with an L2 ``weight_decay`` on the touched rows: ``solver: squared_hinge`` is LinearSVC's loss
(one-vs-rest squared hinge; the baseline that scales to the course's size), ``solver: softmax``
a multinomial logistic regression.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meli.models.family import Family

TORCH_KEYS = ("batch_size", "lr", "epochs", "weight_decay", "sparse_optimizer")
SOLVER_ONLY = {"linearsvc": ("C",), "softmax": TORCH_KEYS, "squared_hinge": TORCH_KEYS}


@dataclass
class TfidfParams:
    batch_size: int = 256  # torch solvers only (softmax, squared_hinge)
    lr: float = 0.01  # torch solvers only
    epochs: int = 4  # torch solvers only
    weight_decay: float = 0.0  # torch solvers only: L2 on the rows a batch touches (lazy, as the updates)
    sparse_optimizer: str = "lazy_adam"  # torch solvers only: lazy_adam | rowwise_adagrad | rowwise_rmsprop
    C: float = 0.5  # LinearSVC's inverse L2 regularisation (squared hinge); 0.5 as in the issue-12 reference
    class_weights: bool = False
    seed: int = 0
    solver: str = "linearsvc"  # linearsvc | squared_hinge | softmax


def prune(params: dict[str, Any]) -> dict[str, Any]:
    """A combination keeps only its solver's keys: LinearSVC has no lr, the torch solvers no C."""
    solver = params.get("solver", "linearsvc")
    other = {k for s, keys in SOLVER_ONLY.items() if s != solver for k in keys} - set(SOLVER_ONLY.get(solver, ()))
    return {k: v for k, v in params.items() if k not in other}


FAMILY = Family(
    name="tfidf",
    display_name="TF-IDF baseline",
    params=TfidfParams,
    aliases={"batch_size": "bs", "lr": "lr", "weight_decay": "wd", "epochs": "ep", "class_weights": "cw", "C": "C",
             "seed": "seed", "solver": "solver", "sparse_optimizer": "sopt"},
    neural=False,
    model_file="model.joblib",
    predictor="meli.inference:load_tfidf_predictor",
    prune=prune,
)
