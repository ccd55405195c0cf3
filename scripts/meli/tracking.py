"""Import finished run directories into MLflow: one local job, after training.

Why not log from the training jobs: hundreds of concurrent writers corrupt a fresh SQLite store
(measured: a brand-new DB hit by 4 processes was left half-migrated), SQLite on a shared
cluster filesystem is unsafe at any age, parallel ``set_experiment`` for a new name files runs
under "Default", and the plain file store is refused unless ``MLFLOW_ALLOW_FILE_STORE=true``.
So every job writes its own record (metrics.json, history.csv, ...; docs/design.md), and this
importer, run by one local rule, turns each run directory into one MLflow run:

* the store is opened and the experiment created under an exclusive ``fcntl`` lock on
  ``<store_dir>/.lock``, so two workflows launched side by side serialise instead of racing
  (with an http(s) server the lock is harmless and a lost creation race is caught);
* the workflow's own SQLite store is built atomically and checked first, and a broken one is
  moved aside and rebuilt from the run folders (:mod:`meli.mlflow_store`);
* the experiment is looked up by name and created once, with its artifact location under
  ``<store_dir>/artifacts`` (SQLite would otherwise pin it to the creating process's cwd), and
  tagged ``mlflow.experimentKind = custom_model_development`` so that MLflow 3's UI opens it on
  its runs table rather than the GenAI overview;
* a run is tagged ``family``, ``combo``, ``device``, ``dataset`` and, last of all,
  ``finished_at``: a run whose (family, combo) is present with the same ``finished_at`` is
  skipped; a re-trained run (other ``finished_at``) or one whose import was interrupted (no
  ``finished_at`` tag) is deleted and imported again;
* params (lists as JSON strings), per-epoch metrics from history.csv (``step`` = epoch) and the
  summary metrics go in with ``log_batch``; artifacts are metrics.json, history.csv and
  val_predictions.parquet. Model files are only copied with ``--log-models``: they can be
  gigabytes (TF-IDF: classes x features floats) and already live in the run directory, whose
  path is in the ``run_dir`` tag;
* every run also gets the workflow's git commit (``mlflow.source.git.commit``, as MLflow's own
  runs have it) and, with ``--summary``, the dataset as an MLflow input: its name, the source
  file's sha256 as digest, rows per split as profile (nothing is read but summary.json).

After the test scores, ``mark-selected`` updates the selected run of each family (one per
family, chosen on validation): its test metrics (``test_bacc``, CI bounds, ``test_accuracy``,
``test_macro_f1``), the tag ``selected = true`` (a run selected before and no longer is set to
``false``), the test split as an input, and its model file as an artifact. Both commands are
idempotent: rerunning them changes nothing.

CLI (rules/tracking.smk)::

    python -m meli.tracking import --experiment NAME --tracking-uri URI|'' --store-dir results/mlflow \
        --out results/mlflow/imported.json [--dataset NAME] [--summary results/data/summary.json] \
        [--log-models] RUN_DIR...
    python -m meli.tracking mark-selected --imported results/mlflow/imported.json \
        --test-details results/tables/test_details.json [--summary ...] --out results/mlflow/selected.json
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import pandas as pd

from meli import mlflow_store, runs, search
from meli.cli import entry_point
from meli.io import Progress, atomic_path, git_output, read_json, setup_logging, write_json
from meli.redact import redact_url

log = logging.getLogger("meli.tracking")

EPOCH_METRICS = ("train_loss", "val_loss", "val_bacc", "samples_per_s", "elapsed_s")
# Per-epoch series are logged as ``epoch/<name>``: MLflow shows a metric's last step in its runs
# table, so a series named ``val_bacc`` would rank runs by their last epoch, not by the best
# epoch that selection uses (issue 24: 0.8743 shown against 0.8876 selected).
EPOCH_PREFIX = "epoch/"
# metrics.json key -> MLflow metric name: ``val_bacc``/``val_loss`` are the best epoch's, as in
# runs.csv and selection.json (``best_val_bacc`` kept for stores and queries from before).
SUMMARY_METRICS = {
    "val_bacc": "val_bacc",
    "val_loss": "val_loss",
    "best_epoch": "best_epoch",
    "epochs_run": "epochs_run",
    "final_train_loss": "final_train_loss",
    "train_time_s": "train_time_s",
    "samples_per_s": "mean_samples_per_s",
    "peak_mem_mb": "peak_mem_mb",
}
ALIASES = {"val_bacc": "best_val_bacc", "val_loss": "best_val_loss"}
ARTIFACTS = ("metrics.json", "history.csv", "val_predictions.parquet")
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")  # MLflow 3 UI: show the runs
GIT_COMMIT_TAG = "mlflow.source.git.commit"
# The UI shows a run's source and its commit only with these beside the commit tag.
SOURCE_NAME, SOURCE_TYPE = "Snakefile", "PROJECT"
# test_details.json key -> MLflow metric of the selected run
TEST_METRICS = {"bacc": "test_bacc", "bacc_ci_low": "test_bacc_ci_low", "bacc_ci_high": "test_bacc_ci_high",
                "accuracy": "test_accuracy", "macro_f1": "test_macro_f1"}
MODEL_FILES = ("model.pt", "model.joblib")
METRIC_BATCH, PARAM_BATCH = 1000, 100  # MLflow's log_batch limits per call


def default_uri(store_dir: Path) -> str:
    return f"sqlite:///{(store_dir / 'mlflow.db').resolve()}"


def is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks")


def ui_hint(uri: str) -> str:
    """The exact command that shows the experiment."""
    uri = redact_url(uri)
    return f"open {uri}" if is_remote(uri) else f"mlflow ui --backend-store-uri {uri}"


@contextlib.contextmanager
def store_lock(store_dir: Path) -> Iterator[None]:
    """Exclusive lock on ``store_dir/.lock``: one importer at a time per local store."""
    store_dir.mkdir(parents=True, exist_ok=True)
    with open(store_dir / ".lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another import holds %s/.lock; waiting", store_dir)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_run(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """metrics.json and history.csv of a finished run, checked against the contract (with the
    bracket of a Hyperband final run, from its search's summary: meli.search.annotate)."""
    return search.annotate(run_dir, runs.read_metrics(run_dir)), runs.read_history(run_dir)


def flatten_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts as ``a.b`` keys; lists and other values as strings (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(list(value))
        else:
            out[name] = str(value)
    return out


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1000)


def get_or_create_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    """The experiment's id, created once (restored if it was deleted); never via set_experiment."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # lost a creation race against another importer on a server
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id


def set_experiment_kind(client: Any, experiment_id: str) -> None:
    """Open on the runs table: MLflow 3 shows an untagged experiment as a GenAI one."""
    exp = client.get_experiment(experiment_id)
    if exp.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)


def git_commit(cwd: str | Path = ".") -> str | None:
    """The workflow checkout's commit (``-dirty`` appended when tracked files changed); None outside git."""
    commit = git_output(cwd, "rev-parse", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git_output(cwd, "status", "--porcelain", "--untracked-files=no") else "")


def source_tags(cwd: str | Path = ".") -> dict[str, str]:
    """``mlflow.source.*`` tags as MLflow's own runs carry them: name, type, commit, branch, repo."""
    commit = git_commit(cwd)
    if not commit:
        return {}
    tags = {"mlflow.source.name": SOURCE_NAME, "mlflow.source.type": SOURCE_TYPE, GIT_COMMIT_TAG: commit}
    branch = git_output(cwd, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    remote = git_output(cwd, "remote", "get-url", "origin")
    if remote:
        tags["mlflow.source.git.repoURL"] = redact_url(remote)
    return tags


def relative_dir(run_dir: Path) -> str:
    """A run directory as recorded in tags: relative to the workflow root when under it, so a
    copied results/ still finds its runs."""
    resolved = run_dir.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


def run_name(family: str, combo: str) -> str:
    """``mlp · emb-w2v_...``: the family first, so MLP and CNN runs differ even when truncated."""
    return f"{family} · {combo}"


def dataset_input(summary: dict[str, Any] | None, name: str, data_dir: Path, context: str) -> Any | None:
    """The dataset as an MLflow input, from summary.json alone (nothing else is read)."""
    if not summary:
        return None
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = summary.get("source") if isinstance(summary.get("source"), dict) else {}
    digest = str(source.get("sha256") or "")[:32] or "unknown"
    profile = {"rows": summary.get("rows"), "categories": (summary.get("categories") or {}).get("count")
               if isinstance(summary.get("categories"), dict) else summary.get("categories"),
               "source": source.get("path")}
    # The test split is its own dataset: MLflow links a dataset to a run once, whatever the context.
    uri = (data_dir / "test.parquet" if context == "test" else data_dir).resolve().as_uri()
    dataset = Dataset(name=name if context != "test" else f"{name} (test split)", digest=digest,
                      source_type="local", source=json.dumps({"uri": uri}), profile=json.dumps(profile))
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


WORKFLOW_TAG, DATASET_SHA_TAG = "meli.workflow_id", "meli.dataset_sha256"


def workflow_id(results_dir: Path) -> str:
    """This results/ directory's id (created once): whose runs these are in a shared store."""
    path = results_dir / "workflow_id"
    if not path.exists():
        with atomic_path(path) as tmp:
            tmp.write_text(f"{uuid.uuid4().hex}\n")
    return path.read_text().strip()


def dataset_fingerprint(summary: dict | None) -> str:
    """The prepared dataset's source sha256 (summary.json), the other half of a run's origin."""
    source = (summary or {}).get("source")
    return str(source.get("sha256") or "unknown") if isinstance(source, dict) else "unknown"


def existing_runs(client: Any, experiment_id: str) -> dict[tuple[str | None, str | None, str, str], list[Any]]:
    """Active runs of the experiment by (workflow id, dataset sha256, family, combo): a run's
    identity includes where it came from, so two checkouts sharing a store never replace each
    other's runs (runs imported before these tags existed have None there and are left alone)."""
    by_key: dict[tuple[str | None, str | None, str, str], list[Any]] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        for run in page:
            tags = run.data.tags
            if "combo" in tags and "family" in tags:
                key = (tags.get(WORKFLOW_TAG), tags.get(DATASET_SHA_TAG), tags["family"], tags["combo"])
                by_key.setdefault(key, []).append(run)
        token = page.token
        if not token:
            return by_key


def search_tags(metrics: dict[str, Any]) -> dict[str, str]:
    """A search's run tags (meli.search.run_tags: ``search`` final/pruned, ``rung``, ``bracket``,
    ``pruned_at_rung``; filterable as ``tags.search = 'pruned'``); nothing for a grid run."""
    return search.run_tags(metrics)


def search_summaries(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """Per searched family, the experiment's ``search.<family>`` line (meli.search.experiment_lines)."""
    return search.experiment_lines(records)


def _metric_entries(metrics: dict[str, Any], history: pd.DataFrame, start_ms: int, end_ms: int) -> list[Any]:
    from mlflow.entities import Metric

    entries = [
        Metric(EPOCH_PREFIX + name, float(row[name]), start_ms + int(1000 * float(row["elapsed_s"])), int(row["epoch"]))
        for row in history.to_dict("records")
        for name in EPOCH_METRICS
        if pd.notna(row[name])
    ]
    for key, name in SUMMARY_METRICS.items():
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            entries += [Metric(n, float(value), end_ms, 0) for n in (name, ALIASES.get(key)) if n]
    return entries


def log_run(client: Any, experiment_id: str, run_dir: Path, metrics: dict[str, Any], history: pd.DataFrame,
            ctx: dict[str, Any]) -> str:
    """One run directory -> one finished MLflow run; returns its id. ``ctx``: ``dataset``,
    ``log_models``, ``source`` (:func:`source_tags`), ``inputs``, ``origin`` (the identity tags)."""
    dataset, log_models, inputs = ctx["dataset"], ctx.get("log_models", False), ctx.get("inputs") or ()
    source, origin = ctx.get("source"), ctx.get("origin")
    from mlflow.entities import Param, RunTag

    end_ms = _ms(metrics["finished_at"])
    start_ms = end_ms - int(1000 * float(metrics.get("train_time_s") or 0))
    tags = {
        "family": metrics["family"],
        "combo": metrics["combo"],
        "device": str(metrics.get("device", "")),
        "dataset": dataset,
        "run_dir": relative_dir(run_dir),
        **(origin or {}),
        **search_tags(metrics),
        **(source or {}),
    }
    run = client.create_run(experiment_id, start_time=start_ms, tags=tags,
                            run_name=run_name(metrics["family"], metrics["combo"]))
    run_id = run.info.run_id
    entries = _metric_entries(metrics, history, start_ms, end_ms)
    params = [Param(k, v) for k, v in flatten_params(metrics["params"]).items()]
    for i in range(0, len(params), PARAM_BATCH):
        client.log_batch(run_id, params=params[i : i + PARAM_BATCH])
    for i in range(0, len(entries), METRIC_BATCH):
        client.log_batch(run_id, metrics=entries[i : i + METRIC_BATCH])
    if inputs:
        client.log_inputs(run_id, datasets=list(inputs))
    for name in ARTIFACTS + (MODEL_FILES if log_models else ()):
        if (run_dir / name).exists():
            client.log_artifact(run_id, str(run_dir / name))
    client.set_terminated(run_id, status="FINISHED", end_time=end_ms)
    # Last: only a completely imported run carries it, so an interrupted import is redone.
    client.log_batch(run_id, tags=[RunTag("finished_at", metrics["finished_at"])])
    return run_id


def archive_leftovers(client: Any, present: dict, me: str, handled: set[str], data_sha: str) -> list[str]:
    """This checkout's runs that the current config no longer has (a removed grid value or
    embedding, or another dataset): tagged why and soft-deleted, so the experiment's active runs
    are exactly the current config's. Restorable with ``mlflow runs restore --run-id ID``."""
    archived = []
    for (workflow, sha, _, _), found in present.items():
        if workflow != me:
            continue
        for run in found:
            if run.info.run_id in handled:
                continue
            why = "another dataset" if sha != data_sha else "not in the current config"
            client.set_tag(run.info.run_id, "meli.archived", why)
            with contextlib.suppress(Exception):  # already deleted by a replace above
                client.delete_run(run.info.run_id)
            archived.append(run.info.run_id)
    return archived


def relocate_artifacts(store_dir: Path) -> int:
    """Point this SQLite store's artifact paths at ``<store_dir>/artifacts`` again after a copy or move.

    MLflow records an experiment's artifact location and every run's artifact URI as absolute
    paths (a relative one is resolved against the creating process's cwd), so a results/ copied
    elsewhere shows no artifacts. This rewrites the old prefix of the workflow's own experiments
    (those whose location ends in ``/artifacts`` but no longer exists) to the current one; returns
    the number of runs changed. Run by every import and by ``python -m meli.tracking relocate``.
    """
    import sqlite3

    db = store_dir / "mlflow.db"
    if not db.exists():
        return 0
    new_root = (store_dir / "artifacts").resolve().as_uri()
    changed = 0
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        for exp_id, old in con.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall():
            if not old or old == new_root or not old.startswith("file://") or not old.rstrip("/").endswith(
                    "/artifacts") or Path(old.removeprefix("file://")).exists():
                continue
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new_root, exp_id))
            changed += con.execute(
                "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? AND "
                "substr(artifact_uri, 1, ?) = ?", (new_root, len(old) + 1, exp_id, len(old), old)).rowcount
            log.info("the store moved: artifact paths of experiment %s now under %s (were under %s)", exp_id,
                     new_root, old)
    return changed


FAILURE_TAG = "meli.failure"


@dataclass
class FailedRun:
    """A combination whose job failed (meli.sweep's classification), imported as a FAILED run."""
    family: str
    combo: str
    state: str
    detail: str = ""
    attempts: int = 0
    log: str = ""
    params: dict[str, Any] = field(default_factory=dict)


def log_failed(client: Any, experiment_id: str, failed: FailedRun, dataset: str, tags: dict[str, str]) -> str:
    """A combination whose job failed as an MLflow run with status FAILED, its state and reason."""
    from mlflow.entities import Param

    failure = asdict(failed)
    run = client.create_run(experiment_id, tags={
        "family": failure["family"], "combo": failure["combo"], "dataset": dataset, **tags,
        "meli.state": failure["state"], "meli.attempts": str(failure.get("attempts") or 0),
        FAILURE_TAG: (failure.get("detail") or failure["state"])[:4000], "meli.log": str(failure.get("log") or ""),
        "mlflow.note.content": f"**{failure['state']}** after {failure.get('attempts') or 0} attempt(s): "
                               f"{failure.get('detail') or 'no reason recorded'}\n\nlog: {failure.get('log')}",
    }, run_name=run_name(failure["family"], failure["combo"]))
    params = [Param(k, v) for k, v in flatten_params(failure.get("params") or {}).items()]
    for i in range(0, len(params), PARAM_BATCH):
        client.log_batch(run.info.run_id, params=params[i : i + PARAM_BATCH])
    client.set_terminated(run.info.run_id, status="FAILED")
    return run.info.run_id


def _import_failed(client: Any, experiment_id: str, failed: Sequence[FailedRun], present: dict,
                   result: dict[str, Any], ctx: dict[str, Any]) -> None:
    """Failed combinations: one FAILED run each, replaced when a later attempt fails otherwise."""
    for f in failed:
        key = (ctx["origin"][WORKFLOW_TAG], ctx["origin"][DATASET_SHA_TAG], f.family, f.combo)
        found = present.get(key, [])
        same = [r for r in found if r.info.status == "FAILED" and "finished_at" not in r.data.tags
                and (r.data.tags.get("meli.state"), r.data.tags.get("meli.attempts")) == (f.state, str(f.attempts))]
        for old in found:
            if old.info.run_id not in {r.info.run_id for r in same[:1]}:
                client.delete_run(old.info.run_id)
                result["replaced"].append(old.info.run_id)
        run_id = same[0].info.run_id if same else log_failed(client, experiment_id, f, ctx["dataset"],
                                                             {**ctx["origin"], **ctx["source"]})
        result["failed"][f"{f.family}/{f.combo}"] = run_id


def import_runs(run_dirs: Sequence[str | Path | FailedRun], experiment: str, tracking_uri: str,
                store_dir: str | Path, out: str | Path, dataset: str | None = None, log_models: bool = False,
                summary: str | Path | None = None) -> dict[str, Any]:
    """Import every run directory (idempotently); writes and returns imported.json's content.

    A :class:`FailedRun` among ``run_dirs`` (meli.sweep's partial report) becomes a run with
    status FAILED carrying its state and reason, replaced once the combination finishes."""
    from mlflow.tracking import MlflowClient

    store_dir = Path(store_dir)
    failed = [d for d in run_dirs if isinstance(d, FailedRun)]
    # fail on a bad record before touching the store
    runs = {str(d): read_run(Path(d)) for d in run_dirs if not isinstance(d, FailedRun)}
    summary_data = read_json(summary) if summary else None
    inputs = [i for i in [dataset_input(summary_data, dataset or experiment,
                                        Path(summary).parent if summary else Path("."), "training")] if i]
    me, data_sha = workflow_id(store_dir.parent), dataset_fingerprint(summary_data)
    origin = {WORKFLOW_TAG: me, DATASET_SHA_TAG: data_sha}
    source = source_tags()
    uri = tracking_uri or default_uri(store_dir)
    artifact_location = None if is_remote(uri) else (store_dir / "artifacts").resolve().as_uri()
    with store_lock(store_dir):
        if not tracking_uri:  # our own SQLite store: built atomically, rebuilt from the run folders if broken
            mlflow_store.ensure(store_dir, artifact_location)
            relocate_artifacts(store_dir)
        client = MlflowClient(tracking_uri=uri)
        experiment_id = get_or_create_experiment(client, experiment, artifact_location)
        set_experiment_kind(client, experiment_id)
        present = existing_runs(client, experiment_id)
        result: dict[str, Any] = {
            "experiment": experiment,
            "experiment_id": experiment_id,
            "dataset": dataset or experiment,
            "tracking_uri": uri,  # read back by mlflow_selected to connect; shown only redacted
            "ui": ui_hint(uri),
            "runs": {},
            "imported": [],
            "skipped": [],
            "replaced": [],
            "archived": [],
            "failed": {},
            "workflow_id": me,
            "dataset_sha256": data_sha,
        }
        progress = Progress(log, len(runs), "runs imported or checked", every_s=10)
        for run_dir, (metrics, history) in runs.items():
            key = (me, data_sha, metrics["family"], metrics["combo"])
            same = [r for r in present.get(key, []) if r.data.tags.get("finished_at") == metrics["finished_at"]]
            keep = {r.info.run_id for r in same[:1]}
            stale = [r for r in present.get(key, []) if r.info.run_id not in keep]
            for old in stale:  # our own: re-trained, interrupted imports, failed attempts, or duplicates
                client.delete_run(old.info.run_id)
                result["replaced"].append(old.info.run_id)
            if same:
                result["runs"][run_dir] = same[0].info.run_id
                result["skipped"].append(run_dir)
            else:
                result["runs"][run_dir] = log_run(client, experiment_id, Path(run_dir), metrics, history, {
                    "dataset": dataset or experiment, "log_models": log_models, "source": source, "inputs": inputs,
                    "origin": origin})
                result["imported"].append(run_dir)
            progress.update()
        _import_failed(client, experiment_id, failed, present, result,
                       {"origin": origin, "source": source, "dataset": dataset or experiment})
        for family, line in search_summaries(m for m, _ in runs.values()).items():
            client.set_experiment_tag(experiment_id, f"search.{family}", line)
        handled = set(result["runs"].values()) | set(result["replaced"]) | set(result["failed"].values())
        result["archived"] = archive_leftovers(client, present, me, handled, data_sha)
        write_json(out, result)
    log.info("experiment %r (id %s) at %s: %d imported, %d already there, %d failed combinations recorded, %d of this "
             "checkout's re-trained runs replaced, %d of its runs no longer in the config archived (other checkouts' "
             "runs untouched)", experiment, experiment_id, redact_url(uri), len(result["imported"]),
             len(result["skipped"]), len(result["failed"]), len(result["replaced"]), len(result["archived"]))
    log.info("browse the runs with: %s", result["ui"])
    return result


def _log_model(client: Any, run: Any, run_dir: str) -> list[str]:
    """The selected run's model file as an artifact (once); returns the model files it has."""
    present = {a.path for a in client.list_artifacts(run.info.run_id)}
    logged = []
    for name in MODEL_FILES:
        model = Path(run.data.tags.get("run_dir", run_dir)) / name
        if model.exists() and name not in present:
            client.log_artifact(run.info.run_id, str(model))
        if model.exists():
            logged.append(name)
    return logged


def mark_selected(imported: str | Path, test_details: str | Path, out: str | Path,
                  summary: str | Path | None = None) -> dict[str, Any]:
    """Test metrics, ``selected`` tag, test input and model artifact onto each family's selected run.

    The runs are found through imported.json (written by :func:`import_runs` for the same run
    directories); metrics are logged at the run's end time, so a rerun writes nothing new.
    """
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    imported_path = Path(imported)
    record = read_json(imported_path)
    details = read_json(test_details)
    by_dir = {os.path.normpath(d): run_id for d, run_id in record["runs"].items()}
    summary_json = read_json(summary) if summary else None
    test_input = dataset_input(summary_json, record.get("dataset") or record["experiment"],
                               Path(summary).parent if summary else Path("."), "test")
    with store_lock(imported_path.parent):
        client = MlflowClient(tracking_uri=record["tracking_uri"])
        result: dict[str, Any] = {"experiment": record["experiment"], "tracking_uri": record["tracking_uri"],
                                  "ui": record.get("ui"), "selected": {}, "unselected": []}
        chosen_ids = set()
        for family, d in details["families"].items():
            if "members" in d:  # an ensemble (meli.ensemble) is not an MLflow run: its members are
                result["ensemble"] = {"name": d.get("combo"), "members": d["members"], "test_bacc": d.get("bacc")}
                continue
            run_dir = os.path.normpath(d["run_dir"])
            run_id = by_dir.get(run_dir)
            if run_id is None:
                raise KeyError(f"{imported_path}: no MLflow run for {d['run_dir']} (selected {family}); "
                               "rerun the mlflow_import rule")
            chosen_ids.add(run_id)
            run = client.get_run(run_id)
            when = run.info.end_time or run.info.start_time or 0
            metrics = [Metric(name, float(d[key]), when, 0) for key, name in TEST_METRICS.items()
                       if isinstance(d.get(key), (int, float)) and run.data.metrics.get(name) != float(d[key])]
            tags = [RunTag("selected", "true"), RunTag("selected_on", details.get("selection_split", "validation"))]
            client.log_batch(run_id, metrics=metrics, tags=tags)
            if test_input is not None and not any(
                    any(t.key == "mlflow.data.context" and t.value == "test" for t in i.tags)
                    for i in (run.inputs.dataset_inputs if run.inputs else [])):
                client.log_inputs(run_id, datasets=[test_input])
            logged = _log_model(client, run, d["run_dir"])
            result["selected"][family] = {"run_id": run_id, "run_dir": d["run_dir"], "model": logged,
                                          "metrics": {m.key: m.value for m in metrics} or "unchanged"}
        # A run selected by an earlier sweep (before a grid change) is selected no longer.
        for run in client.search_runs([record["experiment_id"]], filter_string="tags.selected = 'true'",
                                      max_results=1000):
            if run.info.run_id not in chosen_ids:
                client.set_tag(run.info.run_id, "selected", "false")
                result["unselected"].append(run.info.run_id)
        write_json(out, result)
    for family, sel in result["selected"].items():
        log.info("selected %s: run %s, test metrics %s, model %s", family, sel["run_id"],
                 "unchanged" if sel["metrics"] == "unchanged" else "logged", ", ".join(sel["model"]) or "none")
    log.info("browse the runs with: %s", result["ui"])
    return result


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m meli.tracking", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="import finished run directories into MLflow")
    imp.add_argument("--experiment", required=True)
    imp.add_argument("--tracking-uri", default="", help="'' = sqlite:///<store-dir>/mlflow.db")
    imp.add_argument("--store-dir", required=True, type=Path)
    imp.add_argument("--out", required=True, type=Path, help="imported.json")
    imp.add_argument("--dataset", default=None, help="the dataset tag (default: the experiment name)")
    imp.add_argument("--log-models", action="store_true", help="also copy model files into the artifact store")
    imp.add_argument("--summary", type=Path, help="results/data/summary.json: logs the dataset as an input")
    imp.add_argument("run_dirs", nargs="*", type=Path)
    sel = sub.add_parser("mark-selected", help="test metrics, selected tag and model artifact of the selected runs")
    sel.add_argument("--imported", required=True, type=Path, help="imported.json of the import command")
    sel.add_argument("--test-details", required=True, type=Path, help="test_details.json of meli.report.evaluate")
    sel.add_argument("--summary", type=Path, help="results/data/summary.json: logs the test split as an input")
    sel.add_argument("--out", required=True, type=Path, help="selected.json")
    rel = sub.add_parser("relocate", help="after copying results/ elsewhere: point the store's artifact paths here")
    rel.add_argument("--store-dir", required=True, type=Path)
    args = ap.parse_args(argv)
    setup_logging("meli.tracking")
    start = time.monotonic()
    if args.command == "relocate":
        with store_lock(args.store_dir):
            log.info("%d runs' artifact paths rewritten", relocate_artifacts(args.store_dir))
    elif args.command == "import":
        import_runs(args.run_dirs, args.experiment, args.tracking_uri, args.store_dir, args.out, args.dataset,
                    args.log_models, args.summary)
    else:
        mark_selected(args.imported, args.test_details, args.out, args.summary)
    log.info("done in %.1fs", time.monotonic() - start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
