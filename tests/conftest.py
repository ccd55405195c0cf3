"""Shared fixtures: real MeLi rows from ../shared (skipped when absent) and workflow copies.

Tests that run snakemake do it in a temporary copy of the workflow, so they never touch the
checkout's results/ and can run side by side.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "config", "report", "envs")
BIN = Path(sys.executable).parent


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/ is only beside the developers' checkout)")
    return path


# The slowest files first. `make test` runs the suite on 2 workers (pytest-xdist, --dist loadfile:
# each file on one worker, its module fixtures built once); a long file collected last would leave
# the other worker idle at the end. The sort is stable: the order within a file is kept.
SLOW_FILES_FIRST = ("test_slurm.py", "test_halving_workflow.py", "test_hyperband_workflow.py", "test_records.py",
                    "test_pack.py", "test_workflow.py", "test_benchmarks.py", "test_search_diverged.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES_FIRST)))


@pytest.fixture
def course_sample() -> Path:
    """38,205 real titles in the course's JSON-lines format (632 categories)."""
    return shared_file("meli2019-es-sample.jsonl.gz")


@pytest.fixture
def raw_head() -> Path:
    """First 1,260 rows of the official train.csv, header-less `title,category`."""
    return shared_file("meli2019-raw-head.csv")


def copy_workflow(dest: Path) -> Path:
    """A runnable copy of the workflow (code + config, no results) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run the venv's snakemake in ``workdir`` with the venv first on PATH (as `make run` does)."""
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path / "wf")


# A complete small config (a --configfile replaces config/config.yaml): 8 categories, 1,200
# rows, one epoch budget of a few seconds per job. End-to-end tests run with it.
TINY_CONFIG = ROOT / "tests" / "data" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The whole DAG, for real, on the tiny config (shared by the end-to-end assertions; the
    halving tests start from a copy of it). Never modify it: copy it."""
    wf = copy_workflow(tmp_path_factory.mktemp("e2e") / "wf")
    proc = snakemake(wf, "--cores", "2", "--configfile", str(TINY_CONFIG))
    return wf, proc
