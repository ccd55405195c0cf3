"""Get a dataset or vectors file: http(s) URL, file:// URL or local path.

Downloads stream to a temporary file beside the target (progress + ETA in the log), are checked
(announced length, sha256 when given, gzip/bz2 integrity when no checksum is given) and only then
renamed into place, so a failure never leaves a partial file. Transient failures (connection
errors, timeouts, HTTP 5xx/429, bodies cut short) are retried with exponential backoff; a 404 or
a checksum mismatch fails at once.

    python -m meli.data.fetch URL --out PATH [--sha256 HEX] [--retries N] [--timeout S]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from meli.cli import MeliError, entry_point
from meli.io import Progress, atomic_path, compression, local_path, open_decompressed, setup_logging, sha256_file
from meli.redact import redact_url

log = logging.getLogger("meli.data.fetch")

CHUNK = 1 << 20
USER_AGENT = "meli-workflow/0.1 (+snakemake)"


class FetchError(MeliError, RuntimeError):
    """A download or verification failed for good (after any retries)."""


class _Transient(Exception):
    """Worth another attempt."""


def verify_archive(path: str | os.PathLike, name: str | None = None) -> None:
    """Decompress a .gz/.bz2 file to the end (by magic bytes); a truncated or corrupt one raises FetchError."""
    path = Path(path)
    kind = compression(path)
    if kind is None:
        return
    try:
        with open_decompressed(path) as f:
            while f.read(CHUNK * 8):
                pass
    except (EOFError, OSError, ValueError) as err:
        raise FetchError(f"{name or path}: truncated or corrupt {kind} archive ({err})") from err


# What a file must start with, by its name: a download whose bytes disagree is not the file.
MAGIC = (
    ((".gz", ".tgz"), b"\x1f\x8b", "gzip"),
    ((".bz2", ".tbz2"), b"BZh", "bzip2"),
    ((".xz",), b"\xfd7zXZ\x00", "xz"),
    ((".zip",), b"PK\x03\x04", "zip"),
    ((".parquet", ".pq"), b"PAR1", "Parquet"),
)
HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--", b"<?xml")


def check_delivery(url: str, name: str, first_bytes: bytes, size: int, content_type: str | None = None) -> None:
    """Raise FetchError when what arrived is not the file asked for: an empty body, an HTML page
    (a login, error or confirmation page answered with 200), or bytes that do not start like the
    file's name says (a .gz that is not gzip). The message names the URL and what came instead."""
    shown = redact_url(url)
    kind = (content_type or "").split(";")[0].strip().lower()
    if size == 0:
        raise FetchError(f"{shown}: the server sent an empty body (0 bytes), not the file; nothing was kept")
    head = first_bytes.lstrip().lower()
    lower = name.lower()
    looks_html = head.startswith(HTML_STARTS) and (b"<html" in head or b"<!doctype html" in head
                                                   or head.startswith((b"<html", b"<head", b"<body")))
    if (looks_html or kind in ("text/html", "application/xhtml+xml")) and not lower.endswith((".html", ".htm")):
        raise FetchError(
            f"{shown}: the server sent an HTML page ({kind or 'no Content-Type'}, {size:,} bytes, starting "
            f"{first_bytes[:60]!r}), not {name}: a login, error or confirmation page? Check the URL in a browser; "
            "nothing was kept, so the next run downloads again")
    for suffixes, magic, what in MAGIC:
        if lower.endswith(suffixes) and not first_bytes.startswith(magic):
            raise FetchError(
                f"{shown}: {name} should be a {what} file, but the {size:,} bytes received start with "
                f"{first_bytes[:16]!r} ({kind or 'no Content-Type'}); nothing was kept, so the next run downloads "
                "again")


def fetch(
    source: str,
    out: str | os.PathLike,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 60.0,
    backoff_s: float = 2.0,
) -> Path:
    """Make ``out`` a verified copy of ``source``; returns ``out``.

    A local source is hard-linked when possible (copied otherwise); use `local_path` to read a
    local source in place without any copy.
    """
    out = Path(out)
    sha256 = (sha256 or "").lower() or None
    local = local_path(source)
    if local is not None:
        return _fetch_local(local, out, sha256)
    for attempt in range(retries + 1):
        try:
            _download(source, out, sha256, timeout)
            return out
        except _Transient as err:
            if attempt == retries:
                raise FetchError(f"{redact_url(source)}: giving up after {retries + 1} attempts: {err}") from err
            wait = backoff_s * 2**attempt
            log.warning("%s: %s; retry %d/%d in %.1fs", redact_url(source), err, attempt + 1, retries, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _fetch_local(src: Path, out: Path, sha256: str | None) -> Path:
    if not src.is_file():
        raise FetchError(f"{src}: no such file")
    if sha256:
        _check_sha(src, sha256_file(src), sha256)
    if src.resolve() == out.resolve():
        return out
    with atomic_path(out) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:  # another filesystem, or links not allowed
            shutil.copyfile(src, tmp)
    log.info("%s -> %s (%d bytes)", src, out, out.stat().st_size)
    return out


def _check_sha(name: object, actual: str, expected: str) -> None:
    if actual != expected:
        raise FetchError(f"{name}: sha256 mismatch: expected {expected}, got {actual}")


def _download(url: str, out: Path, sha256: str | None, timeout: float) -> None:
    headers = {"User-Agent": USER_AGENT}
    parts = urlsplit(url)
    if parts.username is not None:  # user:password@host: urllib wants it as a header, not in the host
        token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
        url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code >= 500 or err.code in (408, 429):
            raise _Transient(f"HTTP {err.code} {err.reason}") from err
        raise FetchError(f"{redact_url(url)}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError) as err:
        raise _Transient(f"cannot connect: {getattr(err, 'reason', err)}") from err
    with response, atomic_path(out) as tmp:
        content_type = response.headers.get("Content-Type")
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        progress = Progress(log, total, f"download {out.name} (bytes)", every_s=5.0)
        digest = hashlib.sha256()
        received = 0
        try:
            with open(tmp, "wb") as f:
                while block := response.read(CHUNK):
                    f.write(block)
                    digest.update(block)
                    received += len(block)
                    progress.update(len(block))
        except (http.client.IncompleteRead, TimeoutError, socket.timeout, ConnectionError, OSError) as err:
            raise _Transient(f"connection lost after {received:,} bytes: {err}") from err
        if total is not None and received < total:
            raise _Transient(f"body truncated: {received:,} of {total:,} announced bytes")
        log.info(progress.line())
        with open(tmp, "rb") as f:
            check_delivery(url, out.name, f.read(512), received, content_type)
        if sha256:
            _check_sha(redact_url(url), digest.hexdigest(), sha256)
        else:
            verify_archive(tmp, redact_url(url))
    log.info("%s -> %s (%d bytes, sha256 %s)", redact_url(url), out, received, digest.hexdigest())


@entry_point
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="http(s):// URL, file:// URL or local path")
    parser.add_argument("--out", required=True, help="where the verified file goes")
    parser.add_argument("--sha256", default="", help="expected sha256 ('' to skip)")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds without data before a retry")
    parser.add_argument("--backoff", type=float, default=2.0, help="first retry delay, doubled each time")
    args = parser.parse_args(argv)
    setup_logging("meli.data.fetch")
    try:
        fetch(args.source, args.out, args.sha256 or None, args.retries, args.timeout, args.backoff)
    except FetchError as err:
        log.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
