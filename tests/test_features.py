"""Vocabulary (train only), token-id matrices, labels and stats of the features stage."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from conftest import ROOT
from meli.embeddings.features import PAD_ID, UNK_ID, FeatureError, Vocab, encode, load_vocab, run
from meli.io import setup_logging

LOG = setup_logging("test")
OUTPUTS = ["vocab.tsv", "labels.json", "stats.json"] + [
    f"{s}_{kind}.npy" for s in ("train", "validation", "test") for kind in ("ids", "labels")
]


def write_split(path: Path, texts: list[str], categories: list[str]) -> None:
    pd.DataFrame(
        {
            "title": [t.upper() for t in texts],
            "text": texts,
            "category": categories,
            "label_quality": "reliable",
            "language": "spanish",
        }
    ).to_parquet(path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A few dozen rows: validation/test have words and a category train never sees."""
    d = tmp_path / "data"
    d.mkdir()
    train = ["celular samsung galaxy", "celular motorola", "zapatilla nike running", "zapatilla adidas"] * 6
    train += ["celular samsung galaxy s21 128gb negro liberado nuevo"]  # 8 tokens: truncated at 6
    write_split(d / "train.parquet", train, ["CELL", "CELL", "SHOE", "SHOE"] * 6 + ["CELL"])
    write_split(
        d / "validation.parquet",
        ["celular xiaomi", "zapatilla puma running", "heladera whirlpool"],  # xiaomi, puma, whirlpool, heladera: UNK
        ["CELL", "SHOE", "FRIDGE"],
    )
    write_split(d / "test.parquet", ["heladera samsung", "celular nokia"], ["FRIDGE", "CELL"])
    return d


def test_vocab_from_train_only_with_pad_unk_and_counts(data_dir: Path, tmp_path: Path):
    out = tmp_path / "features"
    run(data_dir, out, {"min_count": 1, "max_size": 100, "max_len": 6}, LOG)
    vocab = load_vocab(out / "vocab.tsv")
    assert vocab.words[:2] == ["[PAD]", "[UNK]"] and vocab["[PAD]"] == PAD_ID and vocab["[UNK]"] == UNK_ID
    # most frequent first, ties alphabetical; no word of validation/test leaks in
    assert vocab.words[2:4] == ["celular", "zapatilla"]
    assert {"xiaomi", "puma", "whirlpool", "heladera", "nokia"}.isdisjoint(vocab)
    assert vocab.counts[vocab["celular"]] == 13 and vocab.counts[vocab["s21"]] == 1
    assert vocab.counts.sum() == 6 * 10 + 8  # every train token; none is [UNK] at min_count 1
    assert json.loads((out / "labels.json").read_text()) == {"categories": ["CELL", "SHOE"]}


def test_min_count_and_max_size_move_the_rest_to_unk(data_dir: Path, tmp_path: Path):
    out = tmp_path / "features"
    stats = run(data_dir, out, {"min_count": 2, "max_size": 3, "max_len": 6}, LOG)
    vocab = load_vocab(out / "vocab.tsv")
    assert vocab.words == ["[PAD]", "[UNK]", "celular", "zapatilla", "galaxy"]  # galaxy ties samsung: a-z
    assert vocab.counts[UNK_ID] == 68 - 13 - 12 - 7  # train tokens outside the vocabulary
    train_ids = np.load(out / "train_ids.npy")
    assert stats["splits"]["train"]["unk_token_share"] == pytest.approx(36 / 68)
    assert (train_ids[1] == [2, UNK_ID, 0, 0, 0, 0]).all()  # "celular motorola"


def test_ids_labels_and_stats(data_dir: Path, tmp_path: Path):
    out = tmp_path / "features"
    stats = run(data_dir, out, {"min_count": 1, "max_len": 6}, LOG)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # no temporary files left
    vocab = load_vocab(out / "vocab.tsv")
    ids = {s: np.load(out / f"{s}_ids.npy", mmap_mode="r") for s in ("train", "validation", "test")}
    labels = {s: np.load(out / f"{s}_labels.npy") for s in ("train", "validation", "test")}
    assert ids["train"].dtype == np.int32 and ids["train"].shape == (25, 6) and labels["train"].dtype == np.int64
    v = vocab.__getitem__
    assert ids["train"][0].tolist() == [v("celular"), v("samsung"), v("galaxy"), 0, 0, 0]
    assert ids["train"][24].tolist() == [v(w) for w in "celular samsung galaxy s21 128gb negro".split()]
    assert ids["validation"].tolist() == [
        [v("celular"), UNK_ID, 0, 0, 0, 0],
        [v("zapatilla"), UNK_ID, v("running"), 0, 0, 0],
        [UNK_ID, UNK_ID, 0, 0, 0, 0],
    ]
    assert labels["validation"].tolist() == [0, 1, -1] and labels["test"].tolist() == [-1, 0]
    train, val, test = (stats["splits"][s] for s in ("train", "validation", "test"))
    assert train["rows"] == 25 and train["truncated_share"] == pytest.approx(1 / 25) and train["unk_token_share"] == 0
    assert val["unk_token_share"] == pytest.approx(4 / 7) and val["truncated_share"] == 0
    assert val["unseen_category_rows"] == 1 and val["unseen_categories"] == {"FRIDGE": 1}
    assert test["unseen_category_rows"] == 1 and stats["vocab_size"] == len(vocab) and stats["max_len"] == 6
    assert json.loads((out / "stats.json").read_text())["splits"]["test"]["unk_token_share"] == pytest.approx(2 / 4)


def test_encode_new_titles_like_the_stage(data_dir: Path, tmp_path: Path):
    out = tmp_path / "features"
    run(data_dir, out, {"min_count": 1, "max_len": 4}, LOG)
    vocab = load_vocab(out / "vocab.tsv")
    texts = ["celular samsung", "", "  zapatilla   nike  ", "a b c d e f", None]
    got = encode(texts, vocab, 4)
    assert got.dtype == np.int32 and got.shape == (5, 4)
    assert got.tolist() == [
        [vocab["celular"], vocab["samsung"], 0, 0],
        [0, 0, 0, 0],
        [vocab["zapatilla"], vocab["nike"], 0, 0],
        [UNK_ID] * 4,
        [0, 0, 0, 0],
    ]
    # a plain dict, a pandas Series and an Arrow array give the same ids
    as_dict = {w: i for i, w in enumerate(vocab.words)}
    assert (encode(pd.Series(texts), as_dict, 4) == got).all()
    assert (encode(pa.array(texts), vocab, 4) == got).all()
    # a literal "[PAD]" token in a title is unknown, not padding
    assert encode(["[PAD] celular"], vocab, 2).tolist() == [[UNK_ID, vocab["celular"]]]


def test_batches_give_the_same_result(data_dir: Path, tmp_path: Path, monkeypatch):
    import meli.embeddings.features

    run(data_dir, tmp_path / "one", {"min_count": 1, "max_len": 6}, LOG)
    monkeypatch.setattr(meli.embeddings.features, "BATCH_ROWS", 4)
    run(data_dir, tmp_path / "many", {"min_count": 1, "max_len": 6}, LOG)
    for name in OUTPUTS:
        if name.endswith(".npy"):
            assert (np.load(tmp_path / "one" / name) == np.load(tmp_path / "many" / name)).all(), name
        elif name != "stats.json":
            assert (tmp_path / "one" / name).read_text() == (tmp_path / "many" / name).read_text()


def test_bad_inputs_name_the_file_and_write_nothing(data_dir: Path, tmp_path: Path):
    out = tmp_path / "features"
    with pytest.raises(FeatureError, match=r"train\.parquet: empty vocabulary.*min_count=99"):
        run(data_dir, out, {"min_count": 99}, LOG)
    assert not out.exists() or not any(out.iterdir())
    pd.DataFrame({"title": ["x"], "category": ["A"]}).to_parquet(data_dir / "test.parquet")
    with pytest.raises(FeatureError, match=r"test\.parquet: missing column\(s\) \['text'\]"):
        run(data_dir, out, {}, LOG)
    (data_dir / "test.parquet").unlink()
    with pytest.raises(FeatureError, match=r"test\.parquet: missing"):
        run(data_dir, out, {}, LOG)
    with pytest.raises(FeatureError, match="unknown key"):
        run(data_dir, out, {"max_lenght": 3}, LOG)
    assert not out.exists() or not any(out.iterdir())


def test_load_vocab_rejects_malformed_files(tmp_path: Path):
    bad = tmp_path / "vocab.tsv"
    bad.write_text("[PAD]\t0\n[UNK]\t0\ncasa 3\n")
    with pytest.raises(FeatureError, match=r"vocab\.tsv, line 3"):
        load_vocab(bad)
    bad.write_text("")
    with pytest.raises(FeatureError, match="empty vocabulary"):
        load_vocab(bad)
    bad.write_text("casa\t3\n[PAD]\t0\n")
    with pytest.raises(FeatureError, match=r"starts with \[PAD\], \[UNK\]"):
        load_vocab(bad)
    assert len(Vocab(["[PAD]", "[UNK]", "a"], [0, 0, 1])) == 3


def test_cli_exits_nonzero_with_the_message(data_dir: Path, tmp_path: Path):
    (data_dir / "validation.parquet").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "meli.embeddings.features", "--data-dir", str(data_dir), "--out-dir", str(tmp_path / "f"),
         "--config", json.dumps({"min_count": 1})],
        capture_output=True, text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT / "scripts")},
    )
    assert proc.returncode == 1 and "validation.parquet: missing" in proc.stderr
    assert not (tmp_path / "f").exists() or not any((tmp_path / "f").iterdir())
