"""The MLflow store is never left unusable: built atomically, a broken one detected and rebuilt
from the run folders, and an import SIGKILLed at many points always recovers on the next run."""
from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from meli import mlflow_store, tracking
from test_tracking import EXPERIMENT, active_runs, make_runs


def _import(runs: list[str], store: Path, out: Path) -> dict:
    return tracking.import_runs(runs, EXPERIMENT, "", store, out)


def test_broken_stores_are_detected_and_rebuilt_from_the_run_folders(tmp_path, caplog):
    runs = make_runs(tmp_path / "runs", n=2, epochs=2)
    store, out = tmp_path / "mlflow", tmp_path / "imported.json"
    db = store / "mlflow.db"
    head = mlflow_store.head_revision()
    _import(runs, store, out)
    assert mlflow_store.problem(db, head) is None

    def half_migrated(path: Path) -> None:  # as MLflow leaves a store killed during its migrations
        con = sqlite3.connect(path)
        con.execute("UPDATE alembic_version SET version_num = '0a8213491aaa'")
        con.commit()
        con.close()

    def garbage(path: Path) -> None:  # a truncated or overwritten file
        path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 50)

    for damage, words in ((half_migrated, "half-migrated"), (garbage, "SQLite")):
        damage(db)
        assert words in mlflow_store.problem(db, head)
        caplog.clear()
        result = _import(runs, store, out)
        assert "rebuilding the store from the run folders" in caplog.text and words in caplog.text
        assert sorted(result["imported"]) == sorted(runs), "every run folder imported into the new store"
        assert mlflow_store.problem(db, head) is None and len(active_runs(store)) == 2
    kept = sorted(p.name for p in store.glob("mlflow.db.broken-*"))
    assert kept, "the broken store is kept aside for inspection, not deleted"


def test_import_killed_at_many_points_never_leaves_an_unusable_store(tmp_path):
    """Fork an importer (MLflow already imported, so each try is quick), SIGKILL it at evenly
    spread moments of a full import -- most of them inside the store's creation and migration --
    and check after every kill that the store is absent or complete; then one import finishes
    with every run exactly once."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # noqa: F401  (loaded before fork)

    runs = make_runs(tmp_path / "runs", n=3, epochs=2)
    head = mlflow_store.head_revision()

    def forked_import(store: Path, kill_after: float | None) -> int:
        pid = os.fork()
        if pid == 0:  # child: the importer
            code = 1
            try:
                code = tracking.main(["import", "--experiment", EXPERIMENT, "--tracking-uri=", "--store-dir",
                                      str(store), "--out", str(store / "imported.json"), *runs])
            finally:
                os._exit(code)
        if kill_after is not None:
            deadline = time.monotonic() + kill_after
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return 0  # finished before the kill
                time.sleep(0.005)
            os.kill(pid, signal.SIGKILL)
        # bounded: a child forked while another thread held a lock would wait forever, and so
        # would this test (and CI) -- fail instead
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked importer hung for 180 s (killed)")

    t0 = time.monotonic()
    assert forked_import(tmp_path / "reference", None) == 0
    full = time.monotonic() - t0

    store = tmp_path / "mlflow"
    db = store / "mlflow.db"
    points = [full * k / 8 for k in range(1, 8)]
    for when in points:
        forked_import(store, when)
        if db.exists():
            assert mlflow_store.problem(db, head) is None, f"unusable store after a kill at {when:.2f}s"
    assert forked_import(store, None) == 0
    assert mlflow_store.problem(db, head) is None
    found = active_runs(store)
    assert sorted(r.data.tags["combo"] for r in found) == sorted(Path(r).name for r in runs)
    assert all(r.data.tags.get("finished_at") for r in found)
    assert not list(store.glob(".mlflow.db.building-*")), "temporary stores of killed builds are cleaned up"


@pytest.mark.parametrize("uri_given", [False, True])
def test_only_the_workflows_own_store_is_managed(tmp_path, uri_given):
    """An explicit tracking URI (a server, or a database the user manages) is used as given."""
    runs = make_runs(tmp_path / "runs", n=1, epochs=2)
    store = tmp_path / "mlflow"
    uri = f"sqlite:///{tmp_path / 'theirs.db'}" if uri_given else ""
    tracking.import_runs(runs, EXPERIMENT, uri, store, tmp_path / "imported.json")
    assert (store / "mlflow.db").exists() is (not uri_given)


def test_a_half_created_store_is_named(tmp_path):
    db = tmp_path / "mlflow.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE experiments (experiment_id INTEGER)")  # killed before the other tables
    con.commit()
    con.close()
    assert "half-created" in mlflow_store.problem(db, "any")
