"""Training jobs through the real CLI: outputs, kill-and-resume, NaN failures, inference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from meli.models import runtime
from meli.train import neural as train_mod
from meli.inference import load_predictor
from meli.metrics import balanced_accuracy
from meli.train.neural import KILL_ENV, NonFiniteLoss, default_checkpoint_dir, run

ROOT = Path(__file__).resolve().parents[1]
METRIC_KEYS = {
    "family", "combo", "params", "epochs_run", "best_epoch", "val_bacc", "val_loss", "final_train_loss",
    "train_time_s", "samples_per_s", "peak_mem_mb", "device", "n_train", "n_val", "n_classes",
    "stopped_early", "finished_at",
}
MLP = {"embedding": "toy", "hidden": [16], "dropout": 0.2, "batch_size": 32, "lr": 0.01, "epochs": 4, "patience": 3, "seed": 1}
CNN = {"embedding": "toy", "filters": 8, "kernel_sizes": [2, 7], "hidden": [], "dropout": 0.2, "batch_size": 32,
       "lr": 0.01, "epochs": 4, "patience": 3, "seed": 1}


def token(c: int, j: int) -> str:
    """The word of class ``c``'s band, position ``j`` (survives the data stage's cleaning)."""
    return f"tok{c}x{j}"


def make_features(
    root: Path,
    *,
    n_train: int = 600,
    n_val: int = 200,
    n_classes: int = 4,
    dim: int = 8,
    max_len: int = 6,
    seed: int = 0,
) -> tuple[Path, Path]:
    """``root/features`` (ids, labels, labels.json, vocab.tsv) and ``root/matrix.npy``.

    Each class owns a band of 10 token ids; a title mixes its band's tokens with noise tokens,
    has 1..max_len real tokens and PAD after them. A few rows carry label -1 (category unseen
    in train), as the features stage writes them.
    """
    rng = np.random.default_rng(seed)
    vocab_size = 2 + 10 * n_classes + 10  # PAD, UNK, class bands, shared noise band
    features = root / "features"
    features.mkdir(parents=True, exist_ok=True)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, n_classes, n)
        ids = np.zeros((n, max_len), dtype=np.int32)
        lengths = rng.integers(1, max_len + 1, n)
        for i in range(n):
            band = 2 + 10 * y[i] + rng.integers(0, 10, lengths[i])
            noise = 2 + 10 * n_classes + rng.integers(0, 10, lengths[i])
            ids[i, : lengths[i]] = np.where(rng.random(lengths[i]) < 0.7, band, noise)
        y = y.astype(np.int64)
        y[rng.random(n) < 0.03] = -1
        return ids, y

    for name, n in (("train", n_train), ("validation", n_val), ("test", n_val)):
        ids, y = split(n)
        np.save(features / f"{name}_ids.npy", ids)
        np.save(features / f"{name}_labels.npy", y)
    categories = [f"CAT_{c}" for c in range(n_classes)]
    (features / "labels.json").write_text(json.dumps({"categories": categories}))
    tokens = ["[PAD]", "[UNK]"] + [token(c, j) for c in range(n_classes) for j in range(10)] + [f"noise{j}" for j in range(10)]
    (features / "vocab.tsv").write_text("".join(f"{t}\t{5}\n" for t in tokens))
    matrix = rng.normal(0, 1, (vocab_size, dim)).astype(np.float32)
    matrix[0] = 0
    np.save(root / "matrix.npy", matrix)
    return features, root / "matrix.npy"


def train_cli(family: str, params: dict, features: Path, matrix: Path, out_dir: Path, env: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    """``python -m meli.train.neural`` exactly as rules/train.smk calls it (one CPU thread)."""
    proc = subprocess.run(
        [sys.executable, "-m", "meli.train.neural", "--family", family, "--params", json.dumps(params),
         "--features", str(features), "--matrix", str(matrix), "--out-dir", str(out_dir),
         "--device", "cpu", "--threads", "1"],
        env={**os.environ, "PYTHONPATH": str(ROOT / "scripts"), **(env or {})},
        capture_output=True, text=True, timeout=120,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"meli.train.neural failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    return make_features(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def sweep(toy, tmp_path_factory) -> dict[str, Path]:
    """A real tiny sweep: an MLP and a CNN through the CLI, a frozen-embedding MLP in-process."""
    features, matrix = toy
    runs = tmp_path_factory.mktemp("results") / "runs"
    dirs = {name: runs / family / name for name, family in (("mlp", "mlp"), ("cnn", "cnn"), ("mlp_frozen", "mlp"))}
    train_cli("mlp", MLP, features, matrix, dirs["mlp"])
    train_cli("cnn", CNN, features, matrix, dirs["cnn"])
    run("mlp", {**MLP, "freeze_embeddings": True}, features, matrix, dirs["mlp_frozen"], "cpu", 1)
    return dirs


def test_sweep_writes_every_output(sweep, toy):
    features, _ = toy
    val_labels = np.load(features / "validation_labels.npy")
    for name, run_dir in sweep.items():
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert METRIC_KEYS <= set(metrics), METRIC_KEYS - set(metrics)
        assert metrics["family"] == ("cnn" if name == "cnn" else "mlp")
        assert metrics["n_val"] == int((val_labels >= 0).sum()) and metrics["n_val_unseen_category"] == int((val_labels < 0).sum())
        assert metrics["n_classes"] == 4 and metrics["device"] == "cpu"
        assert metrics["val_bacc"] > 0.6, (name, metrics["val_bacc"])  # learnable: chance is 0.25
        history = pd.read_csv(run_dir / "history.csv")
        assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_bacc", "samples_per_s", "elapsed_s"]
        assert len(history) == metrics["epochs_run"]
        assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
        best = history.loc[history["val_bacc"].idxmax()]
        assert metrics["best_epoch"] == best["epoch"] and metrics["val_bacc"] == pytest.approx(best["val_bacc"])
        preds = pd.read_parquet(run_dir / "val_predictions.parquet")
        assert list(preds.columns) == ["label", "pred", "prob"] and len(preds) == len(val_labels)
        assert (preds["label"].to_numpy() == val_labels).all()
        assert not default_checkpoint_dir(run_dir).parent.exists()  # removed after a successful finish
        assert not list(run_dir.glob(".*"))  # no temporary files left behind


def test_predictor_rebuilds_the_best_model_without_config(sweep, toy, tmp_path):
    features, _ = toy
    run_dir = sweep["cnn"]
    pred = load_predictor(run_dir, tmp_path, features, device="cpu")
    assert pred.categories == [f"CAT_{c}" for c in range(4)]
    proba = pred.predict_proba_split("validation")
    assert proba.dtype == np.float32 and proba.shape == (len(np.load(features / "validation_labels.npy")), 4)
    np.testing.assert_allclose(proba.sum(1), 1, atol=1e-5)
    saved = pd.read_parquet(run_dir / "val_predictions.parquet")
    assert (proba.argmax(1) == saved["pred"].to_numpy()).all()  # the best epoch's weights, not the last
    np.testing.assert_allclose(proba.max(1), saved["prob"], atol=1e-5)
    assert pred.predict_proba_split("test").shape[1] == 4
    labels, probs = pred.predict_split("validation", batch_size=7)  # streamed: same answers, any batch size
    assert labels.dtype == np.int64 and probs.dtype == np.float32
    assert (labels == saved["pred"].to_numpy()).all()
    np.testing.assert_allclose(probs, saved["prob"], atol=1e-6)


def test_predictor_cleans_and_encodes_raw_titles(sweep, toy, tmp_path):
    pytest.importorskip("meli.embeddings.features")
    features, _ = toy
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "summary.json").write_text(json.dumps({"preprocess": {"lowercase": True, "strip_punctuation": True}}))
    pred = load_predictor(sweep["mlp"], data_dir, features, device="cpu")
    titles = [" ".join(token(c, j).upper() + "," for j in range(5)) for c in range(4)]
    proba = pred.predict_proba(titles)
    assert proba.shape == (4, 4) and proba.dtype == np.float32
    assert proba.argmax(1).tolist() == [0, 1, 2, 3]


def test_predictor_dispatch_by_the_runs_family_and_missing_model(tmp_path, monkeypatch):
    """meli.inference asks the run record which family it is and calls that family's predictor (not the file name)."""
    import meli.inference
    from meli.runs import RunNotFinished

    run_dir = tmp_path / "runs" / "tfidf" / "x"
    run_dir.mkdir(parents=True)
    (run_dir / "model.pt").write_bytes(b"")  # a file name that used to pick the neural loader
    (run_dir / "metrics.json").write_text(json.dumps({"family": "tfidf"}))
    monkeypatch.setattr(meli.inference, "load_tfidf_predictor", lambda *args: ("tfidf", args[0]))
    assert load_predictor(run_dir, "d", "f") == ("tfidf", run_dir)
    with pytest.raises(RunNotFinished, match="no metrics.json"):
        load_predictor(tmp_path, "d", "f")
    (run_dir / "metrics.json").write_text(json.dumps({"family": "mlp"}))
    with pytest.raises(ValueError, match="model.pt: cannot read the model"):
        load_predictor(run_dir, "d", "f")


def test_kill_and_resume_ends_like_an_uninterrupted_run(toy, tmp_path):
    features, matrix = toy
    params = {**MLP, "epochs": 5, "patience": 5}
    straight = tmp_path / "runs" / "mlp" / "straight"
    run("mlp", params, features, matrix, straight, "cpu", 1)

    resumed = tmp_path / "runs" / "mlp" / "resumed"
    killed = train_cli("mlp", params, features, matrix, resumed, env={KILL_ENV: "2"}, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt_dir = tmp_path / "checkpoints" / "mlp" / "resumed"
    assert (ckpt_dir / "checkpoint.pt").exists() and not (resumed / "metrics.json").exists()

    # A checkpoint left by other parameters is ignored, not resumed.
    other = {**params, "lr": 0.02}
    other_ckpt = tmp_path / "other_ckpt"
    other_ckpt.mkdir()
    (other_ckpt / "checkpoint.pt").write_bytes((ckpt_dir / "checkpoint.pt").read_bytes())
    m_other = run("mlp", other, features, matrix, tmp_path / "runs" / "mlp" / "other", "cpu", 1, other_ckpt)
    assert m_other["resumed_from_epoch"] == 0 and m_other["epochs_run"] == 5

    train_cli("mlp", params, features, matrix, resumed)
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    assert b["resumed_from_epoch"] == 2 and a["resumed_from_epoch"] == 0
    for key in ("val_bacc", "val_loss", "final_train_loss", "best_epoch", "epochs_run", "stopped_early", "params"):
        assert a[key] == b[key], key
    cols = ["epoch", "train_loss", "val_loss", "val_bacc"]
    pd.testing.assert_frame_equal(pd.read_csv(straight / "history.csv")[cols], pd.read_csv(resumed / "history.csv")[cols])
    wa, wb = (torch.load(d / "model.pt", weights_only=True)["state_dict"] for d in (straight, resumed))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not ckpt_dir.exists()


def test_early_stopping_keeps_the_best_epoch(toy, tmp_path):
    features, matrix = toy
    # An SGD step this small cannot change a prediction: no epoch beats the first.
    m = run("mlp", {**MLP, "optimizer": "sgd", "lr": 1e-12, "epochs": 10, "patience": 2}, features, matrix,
            tmp_path / "runs" / "mlp" / "es", "cpu", 1)
    assert m["stopped_early"] and m["epochs_run"] == 3 and m["best_epoch"] == 1


def test_diverging_loss_fails_clearly_and_writes_nothing(toy, tmp_path):
    features, matrix = toy
    out = tmp_path / "runs" / "mlp" / "nan"
    with pytest.raises(NonFiniteLoss, match="training loss is (nan|inf)"):
        run("mlp", {**MLP, "optimizer": "sgd", "lr": 1e30}, features, matrix, out, "cpu", 1)
    assert not (out / "metrics.json").exists() and not (out / "model.pt").exists()


def test_nan_matrix_fails_clearly_via_cli(toy, tmp_path, capsys):
    features, matrix = toy
    bad = np.load(matrix)
    bad[7, 3] = np.nan
    bad_path = tmp_path / "bad_matrix.npy"
    np.save(bad_path, bad)
    out = tmp_path / "runs" / "mlp" / "bad"
    argv = ["--family", "mlp", "--params", json.dumps(MLP), "--features", str(features), "--matrix", str(bad_path),
            "--out-dir", str(out), "--device", "cpu"]
    assert train_mod.main(argv) == 1
    err = capsys.readouterr().err
    assert "bad_matrix.npy" in err and "NaN" in err and "token id 7" in err
    assert not out.exists()


def test_bad_inputs_name_the_file(toy, tmp_path):
    features, matrix = toy
    small = tmp_path / "small.npy"
    np.save(small, np.load(matrix)[:10])
    with pytest.raises(ValueError, match="train_ids.npy: token ids"):
        run("mlp", MLP, features, small, tmp_path / "runs" / "mlp" / "x", "cpu", 1)
    with pytest.raises(ValueError, match="unknown mlp hyperparameter"):
        run("mlp", {**MLP, "kernel_sizes": [2]}, features, matrix, tmp_path / "runs" / "mlp" / "y", "cpu", 1)


def test_checkpoint_dir_mirrors_the_run_dir():
    assert default_checkpoint_dir(Path("results/runs/cnn/abc")) == Path("results/checkpoints/cnn/abc")
    assert train_mod.epoch_seed(3, 2) != train_mod.epoch_seed(3, 3)


def _toy_model(n_classes: int, vocab: int = 50, dim: int = 8):
    torch.manual_seed(0)
    from meli.models.nets import build_model

    return build_model("mlp", train_mod.resolve_params("mlp", {"hidden": [16], "dropout": 0.5}), vocab, dim, n_classes)


def test_batched_evaluation_equals_the_whole_split_computation():
    n, k = 1000, 7
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (n, 6), dtype=torch.int32, generator=gen)
    labels = torch.randint(0, k - 1, (n,), generator=gen)  # class k-1 absent: bacc over present classes
    model = _toy_model(k)
    model.train()  # evaluation must switch dropout off itself
    cpu = torch.device("cpu")
    logits = runtime.predict_logits(model, ids, cpu, batch_size=n)
    whole_loss = float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum")) / n
    whole_bacc = balanced_accuracy(labels.numpy(), logits.argmax(1).numpy())
    for batch in (64, 333, 4096):
        loss, bacc = train_mod.evaluate(model, train_mod.Split(ids, labels, 0), k, cpu, batch_size=batch)
        assert loss == pytest.approx(whole_loss, rel=1e-6) and bacc == whole_bacc
        pred, prob = runtime.predict_labels(model, ids, cpu, batch_size=batch)
        assert (pred == logits.argmax(1).numpy()).all()
        np.testing.assert_allclose(prob, torch.softmax(logits, 1).max(1).values.numpy(), rtol=1e-6)
    empty = train_mod.Split(ids[:0], labels[:0], 0)
    assert all(np.isnan(v) for v in train_mod.evaluate(model, empty, k, cpu))


# Peak memory of train's evaluation paths in a fresh process (torch's CPU allocations are invisible
# to tracemalloc): a whole split's logits would be rows x classes x 4 B = 320 MB here, twice with a
# torch.cat; one batch is 4 MB.
EVAL_MEMORY_SCRIPT = """
import torch
from meli.train import neural as train
from tests.test_train import _toy_model

rows, classes, batch = 40_000, 2_000, 512
torch.set_num_threads(1)
ids = torch.randint(0, 50, (rows, 6), dtype=torch.int32)
labels = torch.randint(0, classes, (rows,))
model, cpu = _toy_model(classes), torch.device("cpu")
split = train.Split(ids, labels, 0)

def kb(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key))

train.evaluate(model, train.Split(ids[:batch], labels[:batch], 0), classes, cpu, batch)  # warm up the allocator
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
except OSError:
    pass
before = kb("VmHWM:")
train.evaluate(model, split, classes, cpu, batch)
train.predict_labels(model, ids, cpu, batch)
print((kb("VmHWM:") - before) * 1024, rows * classes * 4)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_evaluation_memory_is_one_batch_not_rows_times_classes():
    proc = subprocess.run([sys.executable, "-c", EVAL_MEMORY_SCRIPT], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{ROOT / 'scripts'}{os.pathsep}{ROOT}"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    grew, whole_split = map(int, proc.stdout.split())
    assert grew < whole_split / 4, f"evaluation grew peak RSS by {grew / 2**20:.0f} MB (whole-split logits: " \
                                   f"{whole_split / 2**20:.0f} MB)"
