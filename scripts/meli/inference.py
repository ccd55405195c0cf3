"""Class probabilities from a finished run directory, for every family (no config needed).

    predictor = load_predictor("results/runs/mlp/<combo>", "results/data", "results/features")
    pred, prob = predictor.predict_split("test")   # int64 argmax, float32 its probability; row order kept
    predictor.predict_proba_split("test")          # float32 [rows, n_classes]: rows x classes in memory
    predictor.predict_proba_texts(["Celular Samsung Galaxy S21 128gb"])
    predictor.categories                           # label id -> category

MLP/CNN runs are rebuilt from ``model.pt`` alone (family, params, sizes, weights); raw titles are
cleaned with the data stage's recorded ``preprocess`` config and encoded with the run's vocabulary,
or, for an MLP with ``input: tfidf``, with the shared vectorizer (``features/tfidf/vectorizer.joblib``)
into TF-IDF rows (splits: ``features/tfidf/{split}.npz``).
TF-IDF runs are delegated to :func:`meli.train.baseline.load_predictor`.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meli.io import read_json
from meli.models.nets import build_model
from meli.models.runtime import EVAL_BATCH, predict_labels, predict_logits, select_device
from meli.train.sparse import CsrRows


class NeuralPredictor:
    """A trained MLP/CNN in eval mode plus what it needs to read splits and raw titles."""

    def __init__(self, run_dir: Path, data_dir: Path, features_dir: Path, device: str = "auto"):
        self.run_dir, self.data_dir, self.features_dir = Path(run_dir), Path(data_dir), Path(features_dir)
        self.device = select_device(device)
        model_file = self.run_dir / "model.pt"
        try:  # weights_only: tensors and plain values, never code
            bundle: dict[str, Any] = torch.load(model_file, map_location="cpu", weights_only=True)
            if not isinstance(bundle, dict) or "state_dict" not in bundle:
                raise ValueError("not a meli model bundle")
        except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise ValueError(f"{model_file}: cannot read the model ({str(err).splitlines()[0][:200]}); is the file "
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
        self._vocab = None
        self._cleaning = (None, "spanish")
        self.tfidf = bundle.get("input") == "tfidf"
        self._vectorizer = None
        if self.tfidf:
            self.tfidf_dir = self.features_dir / "tfidf"
            self.n_features = int(bundle["vocab_size"])

    def _rows(self, x) -> torch.Tensor | CsrRows:
        if isinstance(x, CsrRows):
            return x
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int32))

    def _split_rows(self, split: str) -> torch.Tensor | CsrRows:
        if self.tfidf:
            from meli.embeddings.tfidf import load_csr

            x = load_csr(self.tfidf_dir / f"{split}.npz")
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

    def _clean(self, titles: list[str]) -> list[str]:
        from meli.data.text import clean_titles, cleaning_for

        if self._cleaning[0] is None:
            summary = self.data_dir / "summary.json"  # the data stage's exact cleaning config
            self._cleaning = cleaning_for(read_json(summary) if summary.exists() else None)
        preprocess, language = self._cleaning
        return list(clean_titles(list(titles), preprocess, language))

    def _encode_titles(self, titles: list[str]):
        if self.tfidf:
            from meli.embeddings.tfidf import load_vectorizer

            if self._vectorizer is None:
                path = self.tfidf_dir / "vectorizer.joblib"
                self._vectorizer = load_vectorizer(path)
                self._check_columns(self._vectorizer.n_features, path)
            return CsrRows.from_scipy(self._vectorizer.transform(self._clean(titles)))
        from meli.embeddings.features import encode, load_vocab  # written by the embedding stage; lazy on purpose

        if self._vocab is None:
            self._vocab = load_vocab(self.features_dir / "vocab.tsv")
        return encode(self._clean(titles), self._vocab, self.max_len)

    def predict_proba_texts(self, titles: list[str]) -> np.ndarray:
        return self.predict_proba_ids(self._encode_titles(titles))

    def known_words(self, titles: list[str]) -> np.ndarray:
        """Per title, how many of its (cleaned, truncated) tokens the model has a word for: 0 means
        it sees only [UNK]/padding, and its probabilities are a prior, not a reading of the title."""
        from meli.embeddings.features import UNK_ID

        rows = self._encode_titles(titles)
        if isinstance(rows, CsrRows):  # TF-IDF input: how many of the vectorizer's n-grams it has
            return rows.nnz_per_row().numpy()
        return (rows > UNK_ID).sum(axis=1)


def load_predictor(
    run_dir: str | os.PathLike, data_dir: str | os.PathLike, features_dir: str | os.PathLike, device: str = "auto"
):
    """The predictor for any run directory (``mlp``, ``cnn`` or ``tfidf``)."""
    run_dir = Path(run_dir)
    if (run_dir / "model.pt").exists():
        return NeuralPredictor(run_dir, Path(data_dir), Path(features_dir), device)
    if (run_dir / "model.joblib").exists():
        from meli.train.baseline import load_predictor as load_tfidf  # the baseline teammate's module

        return load_tfidf(run_dir, data_dir, features_dir)
    raise FileNotFoundError(f"{run_dir}: neither model.pt (MLP/CNN) nor model.joblib (TF-IDF) found")
