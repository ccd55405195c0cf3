"""The run record: what a finished run directory holds, and the one way to write, read and find it.

``results/runs/{family}/{combo}/`` (written by meli.train.neural / meli.train.baseline):

- ``metrics.json``: the record (REQUIRED_KEYS and more), written atomically and last, so its
  presence marks a complete run; ``finished_at`` (UTC, microseconds) is the run's identity
  for the MLflow importer: a re-trained run gets a new one;
- ``history.csv``: one row per epoch with HISTORY_COLUMNS;
- ``val_predictions.parquet``: label, pred, prob per validation row;
- the fitted model: the family's ``model_file`` (``model.pt`` or ``model.joblib``).

Written by :func:`write_record` (every trainer: neural runs, halving rungs, the baseline) and
read by meli.report.aggregate, meli.report.evaluate, meli.tracking, meli.predict, the report.
"""
from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from meli.cli import MeliError
from meli.io import atomic_path, write_json

METRICS = "metrics.json"
HISTORY = "history.csv"
VAL_PREDICTIONS = "val_predictions.parquet"
REQUIRED_KEYS = ("family", "combo", "params", "finished_at", "val_bacc")  # every trainer writes these
TABLE_KEYS = ("family", "params", "val_bacc")  # enough for tables and selection (combo: the directory name)
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_bacc", "samples_per_s", "elapsed_s")


class RunError(MeliError, ValueError):
    """A run directory without a usable record."""


class RunNotFinished(RunError, FileNotFoundError):
    """The run directory has no metrics.json: its training job did not finish."""


def finished_at() -> str:
    """The ``finished_at`` stamp every trainer writes (UTC, to the microsecond)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def write_metrics(run_dir: str | Path, metrics: dict[str, Any]) -> None:
    """metrics.json, atomically; call it last (after history, predictions and model)."""
    missing = [k for k in REQUIRED_KEYS if k not in metrics]
    if missing:
        raise ValueError(f"run record for {run_dir} lacks {missing}")  # a trainer bug, not user input
    write_json(Path(run_dir) / METRICS, metrics)


def write_record(run_dir: str | Path, history: Iterable[dict[str, Any]], metrics: dict[str, Any]) -> dict[str, Any]:
    """The run record: history.csv (HISTORY_COLUMNS, one row per epoch), then metrics.json (last: its
    presence marks a complete record). Write the model and predictions before calling it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(list(history), columns=list(HISTORY_COLUMNS))
    with atomic_path(run_dir / HISTORY) as tmp:
        frame.to_csv(tmp, index=False)
    write_metrics(run_dir, metrics)
    return metrics


def read_metrics(run_dir: str | Path, required: Iterable[str] = REQUIRED_KEYS) -> dict[str, Any]:
    """metrics.json of one finished run, checked (RunError naming the file and key otherwise)."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS
    if not path.exists():
        raise RunNotFinished(f"{run_dir}: no {METRICS} (the run did not finish; rerun its training job)")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(metrics, dict):
        raise RunError(f"{path}: expected a JSON object")
    missing = [k for k in required if k not in metrics]
    if missing:
        raise RunError(f"{path}: missing key(s) {missing}")
    if "params" in metrics and not isinstance(metrics["params"], dict):
        raise RunError(f"{path}: 'params' must be an object")
    val_bacc = metrics.get("val_bacc")
    if "val_bacc" in metrics and (
        not isinstance(val_bacc, (int, float)) or isinstance(val_bacc, bool) or not math.isfinite(val_bacc)
    ):
        raise RunError(f"{path}: 'val_bacc' must be a finite number, got {val_bacc!r}")
    return metrics


def read_history(run_dir: str | Path) -> pd.DataFrame:
    path = Path(run_dir) / HISTORY
    history = pd.read_csv(path)
    absent = [c for c in HISTORY_COLUMNS if c not in history.columns]
    if absent:
        raise RunError(f"{path}: missing column(s) {absent} (has {list(history.columns)})")
    return history


def workflow_root(tables_file: str | Path) -> Path:
    """The workflow root from a file in results/tables/ (where run dirs are recorded relative to)."""
    return Path(tables_file).resolve().parents[2]


def resolve_run_dir(run_dir: str | Path, selection_path: str | Path) -> Path:
    """A run dir as recorded in selection.json (relative to the workflow root), found from anywhere."""
    path = Path(run_dir)
    if path.is_absolute() or path.exists():
        return path
    candidate = workflow_root(selection_path) / path
    return candidate if candidate.exists() else path


def results_root(run_dir: str | Path) -> Path:
    """results/ from results/runs/{family}/{combo}."""
    return Path(run_dir).resolve().parents[2]


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where a run's resumable state lives, outside its declared outputs:
    results/runs/{family}/{combo} -> results/checkpoints/{family}/{combo}."""
    parts = list(Path(run_dir).parts)
    if "runs" in parts:
        i = len(parts) - 1 - parts[::-1].index("runs")
        return Path(*parts[:i], "checkpoints", *parts[i + 1 :])
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.checkpoint"


# ------------------------------------------------------------------------ checking a whole record
ARCHIVE = "archive"  # results/archive/damaged/{family}/{combo}-{time}/: damaged records moved aside


def _close(a: Any, b: Any) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    except (TypeError, ValueError):
        return False


def check_record(run_dir: str | Path, required: Iterable[str] = TABLE_KEYS) -> dict[str, Any]:
    """metrics.json checked (:func:`read_metrics`) and checked against history.csv: one complete
    row per epoch 1..epochs_run, ``best_epoch`` among them and its ``val_bacc`` the record's.
    A file cut short by a full disk or a crash (a history cut mid-row) fails here with RunError."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir, required)
    if "epochs_run" not in metrics:  # a record of its own kind (e.g. hand-made): nothing to check against
        return metrics
    path = run_dir / HISTORY
    try:
        history = read_history(run_dir)
    except FileNotFoundError:
        raise RunError(f"{path}: missing (the record names {metrics['epochs_run']} epochs)") from None
    except (ValueError, pd.errors.ParserError) as err:
        raise RunError(f"{path}: unreadable ({str(err).splitlines()[0]})") from err
    epochs_run, best = metrics.get("epochs_run"), metrics.get("best_epoch")
    if history[list(HISTORY_COLUMNS)].isna().any().any():
        raise RunError(f"{path}: a row with empty values (cut short?)")
    if list(history["epoch"]) != list(range(1, len(history) + 1)) or len(history) != epochs_run:
        raise RunError(f"{path}: {len(history)} epoch row(s), but {METRICS} says epochs_run={epochs_run}")
    if metrics.get("diverged"):  # a search's diverged combination (meli.search diverged): no epoch counts
        return metrics
    if not isinstance(best, int) or not 1 <= best <= len(history):
        raise RunError(f"{run_dir / METRICS}: best_epoch={best!r} is not one of the {len(history)} epochs run")
    if not _close(history["val_bacc"].iloc[best - 1], metrics["val_bacc"]):
        raise RunError(f"{run_dir / METRICS}: val_bacc {metrics['val_bacc']} differs from {HISTORY}'s "
                       f"{history['val_bacc'].iloc[best - 1]} at best_epoch {best}")
    return metrics


def archive_damaged(run_dir: str | Path, why: str) -> Path:
    """Move a damaged run directory aside (nothing is deleted) so that its training job's outputs are
    missing and the next snakemake retrains it; ``why.txt`` says what was wrong. Returns where it went."""
    run_dir = Path(run_dir)
    results = run_dir.parents[2]  # results/runs/{family}/{combo}
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    dest = results / ARCHIVE / "damaged" / run_dir.parent.name / f"{run_dir.name}-{stamp}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    run_dir.rename(dest)  # atomic on one filesystem: a concurrent reader sees the run or nothing
    (dest / "why.txt").write_text(why + "\n")
    return dest


def archived_damaged(results: str | Path, family: str, combo: str) -> Path | None:
    """The newest damaged copy of a run moved aside by :func:`archive_damaged`, if any."""
    found = sorted(p for p in Path(results, ARCHIVE, "damaged", family).glob(f"{combo}-*")
                   if re.fullmatch(r"\d{8}T\d{12}", p.name[len(combo) + 1:]))
    return found[-1] if found else None


# ------------------------------------------------------------- a search's final run reused by the grid
EQUIVALENT = "equivalent"  # results/checkpoints/{family}/{combo}/equivalent/: a run the grid job may reuse
SEARCH_KEYS = ("rung", "pruned_at_rung")


def _stat(path: str | Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def search_final_equivalent(run_dir: str | Path, inputs: Iterable[str | Path], files: Iterable[str]) -> dict | None:
    """The record of ``run_dir`` when it is a successive-halving final run that the plain grid job
    writing the same directory would reproduce: the same combination (directory = id), trained to
    its configured epochs with early stopping (continued rung by rung, training is seeded per epoch,
    so it ends exactly like one job), complete, and newer than every input of the grid job."""
    run_dir = Path(run_dir)
    try:
        record = check_record(run_dir, REQUIRED_KEYS)
    except (RunError, OSError):
        return None
    if "rung" not in record or record.get("pruned_at_rung") is not None or record.get("combo") != run_dir.name:
        return None
    if not all((run_dir / f).exists() for f in files):
        return None
    newest = max((s[1] for s in map(_stat, inputs) if s is not None), default=0)
    if any(_stat(f) is None for f in inputs) or newest > os.stat(run_dir / METRICS).st_mtime_ns:
        return None
    return record


def stash_equivalent(run_dir: str | Path, stash: str | Path, inputs: Iterable[str | Path], files: Iterable[str]) -> bool:
    """Hard-link (or copy) an equivalent final run's files into ``stash`` with the inputs' sizes and
    times, before Snakemake deletes the run's outputs to rerun its job (see :func:`reuse_equivalent`)."""
    import shutil

    run_dir, stash, files, inputs = Path(run_dir), Path(stash), list(files), [str(f) for f in inputs]
    shutil.rmtree(stash, ignore_errors=True)
    if search_final_equivalent(run_dir, inputs, files) is None:
        return False
    stash.mkdir(parents=True)
    for name in files:
        try:
            os.link(run_dir / name, stash / name)
        except OSError:
            shutil.copy2(run_dir / name, stash / name)
    write_json(stash / "inputs.json", {f: _stat(f) for f in inputs})
    return True


def reuse_equivalent(stash: str | Path, out_dir: str | Path, family: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The grid job's outputs from a stashed equivalent run, when its record is this family's and
    these (resolved) params and no input changed since it was stashed; the record loses the search
    keys (``equivalent_of`` says where it came from). None otherwise. The stash is used up either way."""
    import shutil

    stash, out_dir = Path(stash), Path(out_dir)
    if not stash.is_dir():
        return None
    try:
        record = read_metrics(stash)
        inputs = json.loads((stash / "inputs.json").read_text())
        same = (record["family"] == family and json.loads(json.dumps(record["params"])) == json.loads(json.dumps(params))
                and all(_stat(f) == s for f, s in inputs.items()))
        if not same:
            return None
        out_dir.mkdir(parents=True, exist_ok=True)
        for f in stash.iterdir():
            if f.name not in (METRICS, "inputs.json"):
                os.replace(f, out_dir / f.name)
        record = {k: v for k, v in record.items() if k not in SEARCH_KEYS}
        record["equivalent_of"] = {"search": "halving", "rung": read_metrics(stash).get("rung")}
        write_metrics(out_dir, record)  # last, as always
        return record
    except (RunError, OSError, ValueError, KeyError):
        return None
    finally:
        shutil.rmtree(stash, ignore_errors=True)
