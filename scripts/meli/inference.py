"""Class probabilities from a finished run directory, for every family (no config needed).

    predictor = load_predictor("results/runs/mlp/<combo>", "results/data", "results/features")
    predictor.categories                                        # label id -> category
    predictor.predict_proba(["Celular Samsung Galaxy S21 128gb"])  # float32 [n, n_classes], rows sum to 1
    predictor.predict(["Celular Samsung Galaxy S21 128gb"])        # int64 [n] label ids
    pred, prob = predictor.predict_split("test")   # int64 argmax, float32 its probability; row order kept
    predictor.predict_proba_split("test")          # float32 [rows, n_classes]: rows x classes in memory

:func:`load_predictor` reads the run's family from its record (metrics.json) and calls that
family's ``predictor`` (``meli.models.<family>.FAMILY.predictor``, a ``"module:callable"``); every
implementation follows :class:`Predictor`. Neural runs (:class:`NeuralPredictor`) are rebuilt from
``model.pt`` alone (family, params, sizes, weights); raw titles are cleaned with the data stage's
recorded ``preprocess`` config and encoded into the family's input kind: token ids with the
run's vocabulary, or TF-IDF rows with the shared vectorizer (``features/tfidf/vectorizer.joblib``;
splits: ``features/tfidf/{split}.npz``). TF-IDF runs (:class:`TfidfPredictor`) read
``model.joblib`` (vectorizer + linear SVM; softmaxed margins as probabilities).
"""
from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from meli import models, runs
from meli.io import read_json
from meli.models.family import TFIDF
from meli.models.nets import build_model
from meli.models.runtime import EVAL_BATCH, predict_labels, predict_logits, select_device
from meli.train.sparse import CsrRows


@runtime_checkable
class Predictor(Protocol):
    """What every family's predictor provides (meli-predict, meli.report.evaluate, ensembles).

    ``predict_proba`` is the public building block: raw titles in (cleaned here exactly like the
    training data), float32 ``[n, len(categories)]`` out, each row a probability distribution
    over ``categories`` (label id = column). Combine predictors by their probabilities only when
    their ``categories`` are equal.
    """

    categories: list[str]

    def predict_proba(self, titles: Sequence[str]) -> np.ndarray:
        """float32 ``[n, n_classes]``: each raw title's class probabilities (rows sum to 1)."""
        ...

    def predict(self, titles: Sequence[str]) -> np.ndarray:
        """int64 ``[n]``: each raw title's most probable label id (an index into ``categories``)."""
        ...

    def predict_split(self, split: str, batch_size: int = ...) -> tuple[np.ndarray, np.ndarray]:
        """(int64 label, float32 its probability) per row of a prepared split, streamed (one batch in memory)."""
        ...

    def predict_proba_split(self, split: str) -> np.ndarray:
        """float32 ``[rows, n_classes]`` of a prepared split (rows x classes in memory)."""
        ...

    def known_words(self, titles: Sequence[str]) -> np.ndarray:
        """Per title, how many of its inputs the model knows (0: its probabilities are only the prior)."""
        ...


def load_predictor(
    run_dir: str | os.PathLike, data_dir: str | os.PathLike, features_dir: str | os.PathLike, device: str = "auto"
) -> Predictor:
    """The predictor of any finished run directory: its family's, from its run record."""
    run_dir = Path(run_dir)
    family = runs.read_metrics(run_dir, required=("family",))["family"]
    module, _, name = models.get(family).predictor.partition(":")
    load = getattr(importlib.import_module(module), name)
    return load(run_dir, Path(data_dir), Path(features_dir), device)


class _Titles:
    """Cleaning raw titles exactly like the data stage did (its recorded preprocess config)."""

    data_dir: Path
    _cleaning: tuple[Any, Any] | None = None

    def clean(self, titles: Sequence[str]) -> list[str]:
        from meli.data.text import clean_titles, cleaning_for

        if self._cleaning is None:
            summary = self.data_dir / "summary.json"  # the data stage's exact cleaning config
            self._cleaning = cleaning_for(read_json(summary) if summary.exists() else None)
        preprocess, language = self._cleaning
        return list(clean_titles(list(titles), preprocess, language))

    def predict(self, titles: Sequence[str]) -> np.ndarray:
        return self.predict_proba(titles).argmax(axis=1).astype(np.int64)


class NeuralPredictor(_Titles):
    """A trained network (any family trained by meli.train.neural) in eval mode, plus what it needs
    to read splits and raw titles."""

    def __init__(self, run_dir: Path, data_dir: Path, features_dir: Path, device: str = "auto"):
        self.run_dir, self.data_dir, self.features_dir = Path(run_dir), Path(data_dir), Path(features_dir)
        self.device = select_device(device)
        model_file = self.run_dir / "model.pt"
        try:  # weights_only: tensors and plain values, never code
            bundle: dict[str, Any] = torch.load(model_file, map_location="cpu", weights_only=True)
            if not isinstance(bundle, dict) or "state_dict" not in bundle:
                raise ValueError("not a meli model bundle")
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, FileNotFoundError) as err:
            why = (str(err).splitlines() or [type(err).__name__])[0][:200]  # an empty file: EOFError("")
            raise ValueError(f"{model_file}: cannot read the model ({why}); is the file "
                             "complete and written by meli.train.neural? Rerun its training job") from None
        self.family, self.params = bundle["family"], bundle["params"]
        self.max_len = int(bundle["max_len"])
        self.categories: list[str] = list(bundle["categories"])
        self.model = build_model(self.family, self.params, bundle["vocab_size"], bundle["dim"], bundle["n_classes"])
        self.model.load_state_dict(bundle["state_dict"])
        self.model.to(self.device).eval()
        labels = self.features_dir / "labels.json"
        if labels.exists() and read_json(labels)["categories"] != self.categories:
            raise ValueError(f"{self.run_dir}/model.pt was trained on other categories than {labels}")
        self._vocab = self._vectorizer = None
        self.tfidf = models.get(self.family).inputs({**models.get(self.family).defaults(), **self.params}) == TFIDF
        self.tfidf_dir = self.features_dir / "tfidf"
        self.n_features = int(bundle["vocab_size"])
        self._columns: Any = False  # the TF-IDF columns it reads (its tfidf_view), looked up on first use

    def _view(self, x):
        """The columns of the shared TF-IDF rows this run was trained on (an MLP's tfidf_view)."""
        if self._columns is False:
            from meli.train.inputs import tfidf_block_sizes

            spec = models.get(self.family)
            self._columns = spec.columns(self.params, tfidf_block_sizes(self.tfidf_dir)) if spec.input_columns else None
        from meli.train.inputs import select_columns

        return select_columns(x, self._columns)

    def _rows(self, x) -> torch.Tensor | CsrRows:
        if isinstance(x, CsrRows):
            return x
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int32))

    def _split_rows(self, split: str) -> torch.Tensor | CsrRows:
        if self.tfidf:
            from meli.embeddings.tfidf import load_csr

            x = self._view(load_csr(self.tfidf_dir / f"{split}.npz"))
            self._check_columns(x.shape[1], self.tfidf_dir / f"{split}.npz")
            return CsrRows.from_scipy(x)
        return self._rows(np.load(self.features_dir / f"{split}_ids.npy"))

    def _check_columns(self, n: int, where) -> None:
        if n != self.n_features:
            raise ValueError(f"{where} has {n:,} TF-IDF columns, {self.run_dir}/model.pt was trained on "
                             f"{self.n_features:,}: the features were rebuilt with other tfidf_features settings")

    def predict_proba_ids(self, ids, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """Token ids ``[n, max_len]`` (or TF-IDF rows, input tfidf) -> float32 ``[n, n_classes]``."""
        logits = predict_logits(self.model, self._rows(ids), self.device, batch_size)
        return torch.softmax(logits, dim=1).cpu().numpy().astype(np.float32, copy=False)

    def predict_proba_split(self, split: str) -> np.ndarray:
        return self.predict_proba_ids(self._split_rows(split))

    def predict_split(self, split: str, batch_size: int = EVAL_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """(int64 predicted label, float32 its probability) per row, one batch x classes in memory."""
        return predict_labels(self.model, self._split_rows(split), self.device, batch_size)

    def _encode_titles(self, titles: Sequence[str]):
        if self.tfidf:
            from meli.embeddings.tfidf import load_vectorizer

            path = self.tfidf_dir / "vectorizer.joblib"
            if self._vectorizer is None:
                self._vectorizer = load_vectorizer(path)
            rows = self._view(self._vectorizer.transform(self.clean(titles)))
            self._check_columns(rows.shape[1], path)
            return CsrRows.from_scipy(rows)
        from meli.embeddings.features import encode, load_vocab  # written by the embedding stage; lazy on purpose

        if self._vocab is None:
            self._vocab = load_vocab(self.features_dir / "vocab.tsv")
        return encode(self.clean(titles), self._vocab, self.max_len)

    def predict_proba(self, titles: Sequence[str]) -> np.ndarray:
        return self.predict_proba_ids(self._encode_titles(titles))

    predict_proba_texts = predict_proba  # the name before the Predictor protocol

    def known_words(self, titles: Sequence[str]) -> np.ndarray:
        """Per title, how many of its (cleaned, truncated) tokens the model has a word for: 0 means
        it sees only [UNK]/padding, and its probabilities are a prior, not a reading of the title."""
        from meli.embeddings.features import UNK_ID

        rows = self._encode_titles(titles)
        if isinstance(rows, CsrRows):  # TF-IDF input: how many of the vectorizer's n-grams it has
            return rows.nnz_per_row().numpy()
        return (rows > UNK_ID).sum(axis=1)


@dataclass
class TfidfPredictor(_Titles):
    """A fitted :class:`~meli.embeddings.tfidf.TitleVectorizer` + linear classifier
    (:class:`meli.train.baseline.LinearOvr`) whose probability columns are the labels.json categories."""

    vectorizer: Any
    classifier: Any
    categories: list[str]
    data_dir: Path | None = None
    preprocess: dict[str, Any] | None = None
    language: str | None = "spanish"  # of the training data's stopwords; None: guessed per title

    def __post_init__(self) -> None:
        classes = np.asarray(self.classifier.classes_)
        if not np.array_equal(classes, np.arange(len(self.categories))):
            raise ValueError(
                f"classifier classes {classes[:5]}... do not align with the {len(self.categories)} categories"
            )

    def predict_proba_cleaned(self, texts: Sequence[str], what: str = "rows") -> np.ndarray:
        """float32 ``[n, n_classes]`` for already-cleaned texts, scored in chunks."""
        from meli.train.baseline import CHUNK_ROWS

        texts = list(texts)
        out = np.empty((len(texts), len(self.categories)), dtype=np.float32)
        for start in range(0, len(texts), CHUNK_ROWS):
            chunk = texts[start : start + CHUNK_ROWS]
            out[start : start + len(chunk)] = self.classifier.predict_proba(self.vectorizer.transform(chunk))
        return out

    def score_cleaned(self, texts: Sequence[str], labels: np.ndarray | None = None, what: str = "rows",
                      batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Per row: int64 argmax, float32 its probability and (given ``labels``) the true label's probability."""
        from meli.train.baseline import CHUNK_ROWS, score_rows

        texts = list(texts)
        return score_rows(self.classifier, lambda s: self.vectorizer.transform(texts[s]), len(texts), labels, what,
                          batch_size or CHUNK_ROWS)

    def _split_texts(self, split: str) -> list[str]:
        from meli.train.baseline import read_split

        if self.data_dir is None:
            raise ValueError("predictor was loaded without a data_dir")
        return list(read_split(self.data_dir, split, ("text",))["text"])

    def predict_proba_split(self, split: str) -> np.ndarray:
        return self.predict_proba_cleaned(self._split_texts(split), split)

    def predict_split(self, split: str, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(int64 predicted label, float32 its probability) per row of a split, streamed."""
        pred, prob, _ = self.score_cleaned(self._split_texts(split), what=split, batch_size=batch_size)
        return pred, prob

    def _cleaned(self, titles: Sequence[str]) -> list[str]:
        from meli.data.text import clean_titles  # the data stage's cleaner (imported only when needed)

        if self.preprocess is None:
            raise ValueError("predictor was loaded without the data stage's summary.json (preprocess)")
        return list(clean_titles(list(titles), self.preprocess, self.language))

    def predict_proba(self, titles: Sequence[str]) -> np.ndarray:
        """Raw titles, cleaned exactly as the data stage cleaned the training set."""
        return self.predict_proba_cleaned(self._cleaned(titles), "titles")

    predict_proba_texts = predict_proba  # the name before the Predictor protocol

    def known_words(self, titles: Sequence[str]) -> np.ndarray:
        """Per title, how many of the vectorizer's n-grams it contains (0: the output is the prior)."""
        return np.asarray(self.vectorizer.transform(self._cleaned(titles)).getnnz(axis=1))


def load_tfidf_predictor(run_dir: Path, data_dir: Path, features_dir: Path, device: str = "auto") -> TfidfPredictor:
    """The run's model.joblib (a pickle: meli-predict checks where it comes from), checked against
    ``features_dir/labels.json`` (``device`` is unused: scored on the CPU)."""
    import joblib

    from meli.data.text import cleaning_for
    from meli.train.baseline import load_categories

    run_dir, data_dir = Path(run_dir), Path(data_dir)
    try:
        bundle = joblib.load(run_dir / "model.joblib")
        bundle["categories"], bundle["vectorizer"], bundle["classifier"]
    except (EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError, AttributeError, ImportError,
            FileNotFoundError) as err:
        raise ValueError(f"{run_dir}/model.joblib: cannot read the model ({type(err).__name__}: {str(err)[:200]}); "
                         "is the file complete and written by meli.train.baseline? Rerun its training job") from None
    categories = load_categories(features_dir)
    if list(bundle["categories"]) != categories:
        raise ValueError(f"{run_dir}/model.joblib was trained on other categories than {features_dir}/labels.json")
    summary_path = data_dir / "summary.json"
    preprocess, language = cleaning_for(read_json(summary_path) if summary_path.exists() else None)
    return TfidfPredictor(bundle["vectorizer"], bundle["classifier"], categories, data_dir, preprocess, language)
