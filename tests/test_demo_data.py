"""The embedded demo dataset: deterministic, official format, realistic noise, not trivially separable."""
from __future__ import annotations

import csv
import gzip
import io
from collections import Counter

import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC
from sklearn.metrics import balanced_accuracy_score

from meli.data.demo import MAX_CATEGORIES, category_order, generate, main
from meli.data.prepare import prepare
from test_prepare import sections


def read(path) -> list[dict]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def test_same_arguments_same_bytes(tmp_path):
    args = ["--rows", "1500", "--categories", "10", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a.csv.gz")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.csv.gz")]) == 0
    assert main(["--rows", "1500", "--categories", "10", "--seed", "4", "--out", str(tmp_path / "c.csv.gz")]) == 0
    a = (tmp_path / "a.csv.gz").read_bytes()
    assert a == (tmp_path / "b.csv.gz").read_bytes() and a != (tmp_path / "c.csv.gz").read_bytes()
    with gzip.open(io.BytesIO(a), "rt") as f:
        assert f.readline().strip() == "title,label_quality,language,category"


def test_realistic_noise(tmp_path):
    records = generate(6000, 30, 42)
    titles = [r[0] for r in records]
    categories = Counter(r[3] for r in records if r[3])
    assert len(categories) == 30 and min(categories.values()) >= 50
    assert max(categories.values()) > 2.5 * min(categories.values())  # a long tail, not uniform
    unreliable = sum(r[1] == "unreliable" for r in records) / len(records)
    assert 0.15 <= unreliable <= 0.25
    assert 10 <= sum(not r[0].strip() or not r[3] or r[2] != "spanish" for r in records) <= 0.01 * len(records)
    words = lambda cat: Counter(w for r in records if r[3] == cat for w in r[0].lower().split())  # noqa: E731
    assert words("CELLPHONE_COVERS")["funda"] > 20 and words("TABLET_COVERS")["funda"] > 20  # shared head noun
    assert sum(any(ch.isdigit() for ch in t) for t in titles) > 0.3 * len(titles)  # model numbers, sizes
    assert any("Sarten" in t for t in titles) and any("Sartén" in t for t in titles)  # accents sometimes missing
    assert category_order()[:2] == ["CELLPHONE_COVERS", "TABLET_COVERS"]  # small K keeps confusable pairs
    with pytest.raises(ValueError, match=f"between 2 and {MAX_CATEGORIES}"):
        generate(100, MAX_CATEGORIES + 1, 0)


def test_a_linear_baseline_is_good_but_far_from_perfect(tmp_path):
    assert main(["--rows", "6000", "--categories", "30", "--seed", "42", "--out", str(tmp_path / "demo.csv.gz")]) == 0
    summary = prepare(tmp_path / "demo.csv.gz", tmp_path / "data", sections())
    assert summary["bad_rows"] > 0 and summary["categories"]["count"] == 30
    train, test = (pd.read_parquet(tmp_path / "data" / f"{s}.parquet") for s in ("train", "test"))
    vectorizer = TfidfVectorizer(ngram_range=(1, 2))
    model = LinearSVC(C=0.5).fit(vectorizer.fit_transform(train.text), train.category)
    bacc = balanced_accuracy_score(test.category, model.predict(vectorizer.transform(test.text)))
    print(f"demo balanced accuracy, TF-IDF + linear SVM: {bacc:.3f}")
    assert 0.7 <= bacc <= 0.93
