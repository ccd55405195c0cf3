"""Atomic writes name a full disk: "No space left on device" with the path, never an opaque error."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meli import io

ROOT = Path(__file__).resolve().parents[1]


def _statvfs_with(free_blocks: int):
    real = os.statvfs

    class Fake:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, free_blocks

    return lambda path: Fake(real(path))


def test_enospc_names_the_target_and_leaves_nothing(tmp_path):
    target = tmp_path / "runs" / "model.pt"
    target.parent.mkdir()
    target.write_text("previous")
    with pytest.raises(OSError) as info:
        with io.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert info.value.errno == errno.ENOSPC
    assert "No space left on device" in str(info.value) and str(target) in str(info.value)
    assert target.read_text() == "previous" and [p.name for p in target.parent.iterdir()] == ["model.pt"]


def test_an_opaque_writer_error_on_a_full_filesystem_becomes_enospc(tmp_path, monkeypatch):
    """torch.save says "PytorchStreamWriter failed writing file data/0: file write failed"."""
    monkeypatch.setattr(io.os, "statvfs", _statvfs_with(0))
    with pytest.raises(OSError, match=r"No space left on device: could not write .*model\.pt") as info:
        with io.atomic_path(tmp_path / "model.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
    assert "unexpected pos" in str(info.value), "the original message is kept"


def test_other_errors_pass_through(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="^boom$"):
        with io.atomic_path(tmp_path / "x"):
            raise RuntimeError("boom")  # plenty of space: not a disk problem
    with pytest.raises(OSError, match=r"Disk quota exceeded: could not write .*/x"):
        with io.atomic_path(tmp_path / "x"):
            raise OSError(errno.EDQUOT, "quota")


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 512 KiB tmpfs with ~8 KiB left (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "tiny-disk"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        st = os.statvfs(mnt)
        (mnt / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 8192))
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_training_job_on_a_full_disk_says_so_in_its_log(full_tmpfs, tmp_path):
    """The real training command, wrapped as the rule runs it, writing onto a full filesystem."""
    from test_train import MLP, make_features

    features, matrix = make_features(tmp_path / "toy")
    run_dir, log = full_tmpfs / "runs" / "mlp" / "c", tmp_path / "train.log"
    status = tmp_path / "sweep" / "jobs" / "mlp" / "c.json"
    with open(log, "w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", "meli.jobstatus", "--status", str(status), "--log", str(log), "--",
             sys.executable, "-m", "meli.train.neural", "--family", "mlp", "--params", json.dumps(MLP),
             "--features", str(features), "--matrix", str(matrix), "--out-dir", str(run_dir),
             "--checkpoint-dir", str(full_tmpfs / "checkpoints" / "c"), "--device", "cpu"],
            env={**os.environ, "PYTHONPATH": str(ROOT / "scripts")}, stdout=fh, stderr=subprocess.STDOUT, timeout=120)
    text = log.read_text()
    assert proc.returncode != 0
    assert "No space left on device" in text and str(full_tmpfs) in text, text[-3000:]
    assert json.loads(status.read_text())["state"] == "failed"
