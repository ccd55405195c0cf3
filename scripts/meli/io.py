"""Small shared helpers: atomic writes, JSON, logging with progress/ETA, where a source is and how it is compressed."""
from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator
from urllib.parse import unquote, urlparse

from meli.cli import MeliError


def setup_logging(name: str = "meli", level: int = logging.INFO) -> logging.Logger:
    """Timestamped lines on stderr (rules redirect stderr to their `log:` file)."""
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        force=True,
    )
    return logging.getLogger(name)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or exception leaves no partial file at ``path`` (and removes the temporary one).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=suffix if suffix is not None else ".tmp" + path.suffix
    )
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600; results are shared with the group on a cluster, so honour the umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        full = disk_full_error(err, path)
        if full is not None:
            raise full from err
        raise


# Full disk and exceeded quota (common on clusters) look alike to the user: both stop writes.
_NO_SPACE = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}
LOW_SPACE_BYTES = 1 << 20


def disk_full_error(err: BaseException, path: Path) -> OSError | None:
    """An OSError naming ``path`` if ``err`` came from a full disk or quota, else None.

    Writers such as torch.save report a full disk as an opaque RuntimeError ("file write
    failed"); when the target's filesystem has (almost) no space left, that is the cause.
    """
    code = getattr(err, "errno", None)
    if code not in _NO_SPACE:
        if not isinstance(err, (OSError, RuntimeError)):
            return None
        try:
            st = os.statvfs(path.parent)
        except OSError:
            return None
        if st.f_bavail * st.f_frsize >= LOW_SPACE_BYTES:
            return None
        code = errno.ENOSPC
    try:
        free = os.statvfs(path.parent)
        free_text = f"{free.f_bavail * free.f_frsize:,} bytes free there"
    except OSError:
        free_text = "free space unknown"
    return OSError(code, f"{_NO_SPACE[code]}: could not write {path} ({free_text}; the write failed with: {err})")


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Exclusive ``fcntl`` lock for writers of ``directory``, on the hidden sibling file
    ``.<name>.lock`` (the directory itself holds only its outputs)."""
    import fcntl

    directory = Path(directory)
    path = directory.parent / f".{directory.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class Progress:
    """Logs ``done/total``, rate and ETA at most every ``every_s`` seconds."""

    def __init__(self, log: logging.Logger, total: int | None, what: str, every_s: float = 10.0):
        self.log, self.total, self.what, self.every_s = log, total, what, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int = 1, force: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if force or now - self.last >= self.every_s:
            self.last = now
            self.log.info(self.line())

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.done / elapsed
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            return (
                f"{self.what}: {self.done:,}/{self.total:,} ({100 * self.done / self.total:.1f}%), "
                f"{rate:,.0f}/s, elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}"
            )
        return f"{self.what}: {self.done:,}, {rate:,.0f}/s, elapsed {format_seconds(elapsed)}"


def format_seconds(s: float) -> str:
    if s != s or s == float("inf"):
        return "?"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (Linux ru_maxrss is in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def git_output(cwd: str | os.PathLike, *args: str) -> str | None:
    """``git ARGS`` in ``cwd``, stripped stdout; None outside a checkout or without git (a copied workflow)."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


class UnsupportedSource(MeliError, ValueError):
    """A source URL whose scheme the workflow cannot read."""


def local_path(source: str | os.PathLike) -> Path | None:
    """The file a file:// URL or plain path names (not copied), or None for http(s) URLs."""
    source = str(source)
    parsed = urlparse(source)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # one letter: a Windows drive, not a scheme
        raise UnsupportedSource(f"unsupported URL scheme {parsed.scheme!r} in {source!r} "
                                "(use http(s)://, file:// or a path)")
    return Path(source)


def sha256_file(path: str | os.PathLike, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


# Compression by content, never by name: a .gz that is not gzip, or gzip without the suffix, happen.
GZIP_MAGIC, BZIP2_MAGIC = b"\x1f\x8b", b"BZh"


def compression(path: str | os.PathLike) -> str | None:
    """``"gzip"``, ``"bz2"`` or None (not compressed), from the file's first bytes."""
    with open(path, "rb") as f:
        magic = f.read(3)
    return "gzip" if magic[:2] == GZIP_MAGIC else "bz2" if magic == BZIP2_MAGIC else None


def open_decompressed(path: str | os.PathLike) -> BinaryIO:
    """The file's bytes, decompressed when it is gzip or bzip2 (by :func:`compression`)."""
    kind = compression(path)
    opener = {"gzip": gzip.open, "bz2": bz2.open}.get(kind, open)
    return opener(path, "rb")
