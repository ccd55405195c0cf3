"""The MLP family: a bag of a title's inputs -> hidden layers -> logits.

``input: embedding`` (default): the mean of the title's word vectors (network: nets.MeanMLP).
``input: tfidf``: the title's row of the shared sparse TF-IDF matrix (word + char n-grams,
rule tfidf_features) through a sparse ``EmbeddingBag(n_features, hidden[0], mode="sum")`` weighted
by the tf-idf values, i.e. a first dense layer that only touches the n-grams a title has
(network: nets.TfidfMLP). Titles are short and full of brands, model numbers and misspellings:
on the real MeLi sample this input is what lifts the MLP above the linear SVM (issue 12).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meli.models.family import NEURAL_ID_HEAD, NEURAL_ID_TAIL, Family, NeuralParams

INPUTS = ("embedding", "tfidf")
# Keys that only mean something for word-vector input.
EMBEDDING_ONLY = ("embedding", "freeze_embeddings")


@dataclass
class MlpParams(NeuralParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    input: str = "embedding"  # embedding | tfidf


def prune(params: dict[str, Any]) -> dict[str, Any]:
    """A tfidf-input combination has no embedding: its id and inputs do not name one."""
    if params.get("input") == "tfidf":
        return {k: v for k, v in params.items() if k not in EMBEDDING_ONLY}
    return params


def build(params: dict[str, Any], vocab_size: int, dim: int, n_classes: int):
    """``vocab_size`` is the number of TF-IDF columns for ``input: tfidf`` (``dim`` is then unused)."""
    from meli.models.nets import MeanMLP, TfidfMLP  # torch only when a model is really built

    hidden = list(params.get("hidden") or [])
    dropout = float(params.get("dropout", 0.0))
    if params.get("input", "embedding") == "tfidf":
        return TfidfMLP(vocab_size, n_classes, hidden=hidden, dropout=dropout)
    return MeanMLP(vocab_size, dim, n_classes, hidden=hidden, dropout=dropout)


FAMILY = Family(
    name="mlp",
    display_name="MLP",
    params=MlpParams,
    aliases={"input": "in", **NEURAL_ID_HEAD, **NEURAL_ID_TAIL},
    neural=True,
    model_file="model.pt",
    build=build,
    prune=prune,
)
