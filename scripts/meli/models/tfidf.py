"""The TF-IDF baseline: the shared word + char n-gram TF-IDF matrix + a linear classifier (meli.train.baseline).

The features (n-gram ranges, min_df, max_features) are the ``tfidf_features`` config section,
shared with the MLP's ``input: tfidf``; only the classifier's hyperparameters are swept here.
``solver: linearsvc`` (default): one-vs-rest LinearSVC (liblinear, CPU). ``solver: softmax``: a
multinomial logistic regression over the same sparse rows, trained with torch (LazyAdam on the
touched columns, or row-wise Adagrad: ``sparse_optimizer``; GPU when there is one) for ``epochs`` at
``lr`` in batches of ``batch_size``, with an L2 ``weight_decay`` on the touched rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meli.models.family import Family

SOLVER_ONLY = {"linearsvc": ("C",), "softmax": ("batch_size", "lr", "epochs", "weight_decay", "sparse_optimizer")}


@dataclass
class TfidfParams:
    batch_size: int = 256  # softmax only
    lr: float = 0.01  # softmax only
    epochs: int = 4  # softmax only
    weight_decay: float = 0.0  # softmax only: L2 on the rows a batch touches (lazy, as the updates)
    sparse_optimizer: str = "lazy_adam"  # softmax only: lazy_adam | rowwise_adagrad (meli.train.sparse)
    C: float = 0.5  # LinearSVC's inverse L2 regularisation (squared hinge); 0.5 as in the issue-12 reference
    class_weights: bool = False
    seed: int = 0
    solver: str = "linearsvc"  # linearsvc | softmax


def prune(params: dict[str, Any]) -> dict[str, Any]:
    """A combination keeps only its solver's keys: LinearSVC has no lr, softmax no C."""
    solver = params.get("solver", "linearsvc")
    other = {k for s, keys in SOLVER_ONLY.items() if s != solver for k in keys}
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
