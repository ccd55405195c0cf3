"""The local SQLite MLflow store: created atomically, checked before use, rebuilt when broken.

MLflow creates and migrates a new SQLite store in place, in dozens of steps; a SIGKILL or a full
disk in between leaves ``mlflow.db`` half-migrated and every later import fails on it. The run
folders (``results/runs/...``) are the source of truth and the store only a view of them, so:

* a new store is built beside the final path (``.mlflow.db.building-<pid>``), fully migrated,
  and renamed onto ``mlflow.db`` -- after any kill there is either no store or a complete one;
* an existing store is checked (SQLite integrity, MLflow's tables, schema revision = the
  installed MLflow's head) before use; a broken one is moved aside to
  ``mlflow.db.broken-<time>`` (kept for inspection) with a warning, and a new one is built --
  the importer then imports every run folder into it again.

Callers hold the importer's lock (:func:`meli.tracking.store_lock`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

log = logging.getLogger("meli.mlflow_store")

DB_NAME = "mlflow.db"
BUILDING_PREFIX = f".{DB_NAME}.building-"
REQUIRED_TABLES = ("alembic_version", "experiments", "runs", "metrics", "latest_metrics", "params", "tags")


def head_revision() -> str:
    """The schema revision the installed MLflow expects (from its migration scripts, no DB)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def problem(db: Path, expected_revision: str | None = None) -> str | None:
    """Why ``db`` is not a usable MLflow store, or None when it is."""
    try:
        # read-write: a hot journal left by an import killed mid-transaction is rolled back here,
        # as SQLite does on any open (a read-only connection would call the store broken)
        con = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)
    except sqlite3.Error as err:
        return f"cannot open it ({err})"
    try:
        check = con.execute("PRAGMA quick_check").fetchone()
        if not check or check[0] != "ok":
            return f"SQLite integrity check failed ({check[0] if check else 'no answer'})"
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        missing = [t for t in REQUIRED_TABLES if t not in tables]
        if missing:
            return f"half-created: table(s) {missing} missing"
        versions = [row[0] for row in con.execute("SELECT version_num FROM alembic_version")]
        expected = expected_revision or head_revision()
        if versions != [expected]:
            return f"half-migrated or from another MLflow: schema revision {versions}, expected [{expected!r}]"
    except sqlite3.Error as err:
        return f"not a readable SQLite database ({err})"
    finally:
        con.close()
    return None


def build(db: Path, artifact_root: str) -> None:
    """A fully migrated empty store at ``db``, built under a temporary name and renamed."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.with_name(f"{BUILDING_PREFIX}{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root)
        forget(tmp)  # close every connection before the rename
        reason = problem(tmp)
        if reason:
            raise RuntimeError(f"MLflow built an unusable store at {tmp}: {reason}")
        os.replace(tmp, db)
    except BaseException:
        for leftover in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise


def forget(db: Path) -> None:
    """Drop MLflow's cached stores and engines for ``db``: this process must not keep talking to
    a file that was renamed away (MLflow caches both per URI for the life of the process)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    with SqlAlchemyStore._engine_map_lock:
        for uri in [u for u in SqlAlchemyStore._engine_map if str(db.resolve()) in u or str(db) in u]:
            SqlAlchemyStore._engine_map.pop(uri).dispose()
    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()


def ensure(store_dir: str | os.PathLike, artifact_root: str) -> Path:
    """``store_dir/mlflow.db``, usable: built if missing, rebuilt (old one kept aside) if broken."""
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    db = store_dir / DB_NAME
    for stale in store_dir.glob(f"{BUILDING_PREFIX}*"):  # left by a killed build
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    if db.exists():
        reason = problem(db)
        if reason is None:
            return db
        aside = db.with_name(f"{DB_NAME}.broken-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(db, aside)
        log.warning("%s is unusable (%s): moved it to %s and rebuilding the store from the run folders",
                    db, reason, aside.name)
    else:
        log.info("creating the MLflow store %s", db)
    forget(db)
    build(db, artifact_root)
    return db
