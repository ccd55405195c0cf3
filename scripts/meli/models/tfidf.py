"""The TF-IDF baseline: the shared word + char n-gram TF-IDF matrix + one-vs-rest LinearSVC (meli.train.baseline).

The features (n-gram ranges, min_df, max_features) are the ``tfidf_features`` config section,
shared with the MLP's ``input: tfidf``; only the classifier's hyperparameters are swept here.
"""
from __future__ import annotations

from dataclasses import dataclass

from meli.models.family import Family


@dataclass
class TfidfParams:
    C: float = 0.5  # LinearSVC's inverse L2 regularisation (squared hinge); 0.5 as in the issue-12 reference
    class_weights: bool = False
    seed: int = 0


FAMILY = Family(
    name="tfidf",
    display_name="TF-IDF baseline",
    params=TfidfParams,
    aliases={"class_weights": "cw", "C": "C", "seed": "seed"},
    neural=False,
    model_file="model.joblib",
    predictor="meli.inference:load_tfidf_predictor",
)
