"""The MLP family: a bag of a title's inputs -> hidden layers -> logits.

``input: embedding`` (default): the mean of the title's word vectors (network: nets.MeanMLP).
``input: tfidf``: the title's row of the shared sparse TF-IDF matrix (word + char n-grams,
rule tfidf_features) through a sparse ``EmbeddingBag(n_features, hidden[0], mode="sum")`` weighted
by the tf-idf values, i.e. a first dense layer that only touches the n-grams a title has
(network: nets.TfidfMLP). Titles are short and full of brands, model numbers and misspellings:
on the real MeLi sample this input is what lifts the MLP above the linear SVM (issue 12).
``tfidf_view: word | char`` reads only that block of the matrix (``all`` by default): another
view of the same titles, for ensembles (issue 24).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from meli.models.family import (NEURAL_ID_HEAD, NEURAL_ID_TAIL, TFIDF, TOKENS, Family, NetworkMemory, NeuralParams,
                                Shapes, layer_weights)

SPARSE_OPTIMIZERS = ("lazy_adam", "rowwise_adagrad", "rowwise_rmsprop", "sparse_adam")  # meli.train.sparse (no torch import here)
INPUTS = {"embedding": TOKENS, "tfidf": TFIDF}  # the `input` value -> what the trainer loads
# Keys that only mean something for word-vector input, and for tfidf input.
EMBEDDING_ONLY = ("embedding", "freeze_embeddings")
# tfidf_view -> the blocks of the shared TF-IDF matrix (meli.embeddings.tfidf) the bag reads.
VIEWS = {"all": None, "word": "word", "char": "char_wb"}
TFIDF_ONLY = ("sparse_optimizer", "sparse_lr_scale")


@dataclass
class MlpParams(NeuralParams):
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    input: str = "embedding"  # embedding | tfidf
    # input tfidf: all columns, or only the word or the char_wb n-gram block (a different view of
    # the same titles: a more diverse ensemble member than another seed)
    tfidf_view: str = "all"
    # input tfidf: the sparse bag's optimizer (meli.train.sparse.SPARSE_OPTIMIZERS) and its lr as a
    # multiple of `lr` (the row-wise ones: rowwise_rmsprop wants ~0.3, rowwise_adagrad ~10).
    sparse_optimizer: str = "lazy_adam"
    sparse_lr_scale: float = 1.0


def prune(params: dict[str, Any]) -> dict[str, Any]:
    """A tfidf-input combination has no embedding: its id and inputs do not name one. tfidf_view
    names a run only when it is not ``all`` (ids from before the key existed stay as they were). A
    word-vector one has no sparse bag (no sparse optimizer)."""
    if params.get("input") == "tfidf":
        out = {k: v for k, v in params.items() if k not in EMBEDDING_ONLY}
        if out.get("tfidf_view", "all") == "all":
            out.pop("tfidf_view", None)
        return out
    return {k: v for k, v in params.items() if k != "tfidf_view" and k not in TFIDF_ONLY}


def view_columns(params: dict[str, Any], block_sizes: dict[str, int]) -> slice | None:
    """The columns of the shared TF-IDF matrix an ``input: tfidf`` MLP reads: ``None`` for all, else
    its view's block (blocks are stacked side by side in ``block_sizes``' order, word first)."""
    view = params.get("tfidf_view", "all")
    if params.get("input") != "tfidf" or view == "all":
        return None
    start = 0
    for name, size in block_sizes.items():
        if name == VIEWS[view]:
            return slice(start, start + int(size))
        start += int(size)
    raise ValueError(f"tfidf_view {view}: the shared TF-IDF matrix has no {VIEWS[view]} block (its blocks: "
                     f"{list(block_sizes)}; enable it in tfidf_features)")


def input_kind(params: dict[str, Any]) -> str:
    return INPUTS[params["input"]]


def validate(params: dict[str, Any]) -> None:
    if params["input"] not in INPUTS:
        raise ValueError(f"input {params['input']!r} not one of {tuple(INPUTS)}")
    if params.get("tfidf_view", "all") not in VIEWS:
        raise ValueError(f"tfidf_view {params['tfidf_view']!r} not one of {tuple(VIEWS)}")
    if params.get("tfidf_view", "all") != "all" and params["input"] != "tfidf":
        raise ValueError(f"tfidf_view {params['tfidf_view']!r} needs input tfidf")
    if params["input"] == "tfidf" and not params["hidden"]:
        raise ValueError("input tfidf needs a hidden layer: hidden[0] is the width of its sparse bag (e.g. [512])")
    if params.get("sparse_optimizer", "lazy_adam") not in SPARSE_OPTIMIZERS:
        raise ValueError(f"sparse_optimizer {params['sparse_optimizer']!r} not one of {SPARSE_OPTIMIZERS}")
    if not float(params.get("sparse_lr_scale", 1.0)) > 0:
        raise ValueError(f"sparse_lr_scale must be > 0, got {params['sparse_lr_scale']!r}")


def build(params: dict[str, Any], vocab_size: int, dim: int, n_classes: int):
    """``vocab_size`` is the number of TF-IDF columns for ``input: tfidf`` (``dim`` is then unused)."""
    from meli.models.nets import MeanMLP, TfidfMLP  # torch only when a model is really built

    hidden, dropout = list(params["hidden"]), float(params["dropout"])
    if input_kind(params) == TFIDF:
        return TfidfMLP(vocab_size, n_classes, hidden=hidden, dropout=dropout)
    return MeanMLP(vocab_size, dim, n_classes, hidden=hidden, dropout=dropout)


def memory(params: dict[str, Any], shapes: Shapes) -> NetworkMemory:
    """Token input: the head over the mean vector; per row the embedded title. TF-IDF input
    (``vocab_size`` = its columns, ``dim`` 0): the sparse bag is a weight of ``columns x hidden[0]``."""
    hidden = list(params["hidden"])
    if input_kind(params) == TFIDF:
        bag = shapes.vocab_size * hidden[0] + hidden[0]
        return NetworkMemory(bag + layer_weights([*hidden, shapes.n_classes]), sum(hidden) + shapes.n_classes)
    return NetworkMemory(layer_weights([shapes.dim, *hidden, shapes.n_classes]),
                         shapes.max_len * shapes.dim + sum(hidden) + shapes.n_classes)


FAMILY = Family(
    name="mlp",
    display_name="MLP",
    params=MlpParams,
    aliases={"input": "in", **NEURAL_ID_HEAD, "tfidf_view": "view", **NEURAL_ID_TAIL, "sparse_optimizer": "sopt",
             "sparse_lr_scale": "slr"},
    neural=True,
    model_file="model.pt",
    build=build,
    memory=memory,
    input_kind=input_kind,
    validate=validate,
    prune=prune,
    input_columns=view_columns,
)
