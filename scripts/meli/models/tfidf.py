"""The TF-IDF baseline: word n-gram TF-IDF + a linear model, trained by meli.train.baseline."""
from __future__ import annotations

from dataclasses import dataclass

from meli.models.family import Family


@dataclass
class TfidfParams:
    C: float = 1.0  # inverse L2 regularisation as in LogisticRegression
    ngram_max: int = 2  # word n-grams 1..ngram_max
    max_features: int = 50_000
    class_weights: bool = False
    seed: int = 0


FAMILY = Family(
    name="tfidf",
    display_name="TF-IDF baseline",
    params=TfidfParams,
    aliases={"class_weights": "cw", "C": "C", "ngram_max": "ng", "max_features": "mf", "seed": "seed"},
    neural=False,
    model_file="model.joblib",
)
