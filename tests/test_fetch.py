"""Downloads against a local HTTP server on 127.0.0.1 (no network), file:// URLs and paths."""
from __future__ import annotations

import bz2
import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from meli.data.fetch import FetchError, fetch, main
from meli.io import UnsupportedSource, local_path

PAYLOAD = gzip.compress(b"title,category\n" + b"Funda Samsung A10,CELLPHONE_COVERS\n" * 5000, mtime=0)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
ARCHIVE = bz2.compress(b"not really a tar, but bzip2 as the name says")


class Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def log_message(self, *args):  # keep pytest output quiet
        pass

    def do_GET(self):
        self.path = self.path.split("?", 1)[0]  # a query string (a token) does not change what is served
        hits = Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path == "/missing.csv.gz":
            self.send_error(404, "Not Found")
        elif self.path == "/flaky.csv.gz" and hits <= 2:
            self.send_error(503, "Service Unavailable")
        elif self.path == "/truncated.csv.gz":  # announces the full length, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.close_connection = True
        elif self.path == "/login.csv.gz" or (self.path == "/mirror.tar.bz2" and hits == 1):
            body = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>login</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/mirror.tar.bz2":  # fixed after the first request
            body = ARCHIVE
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path in ("/plain.csv.gz", "/empty.txt"):  # not gzip although named .gz; nothing at all
            body = b"" if self.path == "/empty.txt" else b"title,category\nx,y\n"
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/cut.csv.gz":  # a complete response whose gzip body is cut short
            body = PAYLOAD[: len(PAYLOAD) - 100]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_download_streams_and_verifies_checksum(server, tmp_path):
    out = fetch(f"{server}/train.csv.gz", tmp_path / "train.csv.gz", sha256=SHA, retries=0)
    assert out.read_bytes() == PAYLOAD and leftovers(tmp_path) == ["train.csv.gz"]


def test_download_without_checksum_checks_the_archive(server, tmp_path):
    fetch(f"{server}/ok.csv.gz", tmp_path / "ok.csv.gz", retries=0)
    assert (tmp_path / "ok.csv.gz").read_bytes() == PAYLOAD
    with pytest.raises(FetchError, match="truncated or corrupt gzip archive"):
        fetch(f"{server}/cut.csv.gz", tmp_path / "cut.csv.gz", retries=0)
    assert leftovers(tmp_path) == ["ok.csv.gz"]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(f"{server}/other.csv.gz", tmp_path / "other.csv.gz", sha256="0" * 64, retries=2, backoff_s=0.01)
    assert leftovers(tmp_path) == []
    assert Handler.hits["/other.csv.gz"] == 1  # a wrong checksum is not retried


def test_404_fails_at_once(server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(f"{server}/missing.csv.gz", tmp_path / "m.csv.gz", retries=3, backoff_s=0.01)
    assert Handler.hits["/missing.csv.gz"] == 1 and leftovers(tmp_path) == []


def test_truncated_body_is_retried_then_fails_cleanly(server, tmp_path):
    before = Handler.hits.get("/truncated.csv.gz", 0)
    with pytest.raises(FetchError, match="giving up after 3 attempts"):
        fetch(f"{server}/truncated.csv.gz", tmp_path / "t.csv.gz", retries=2, backoff_s=0.01)
    assert Handler.hits["/truncated.csv.gz"] - before == 3 and leftovers(tmp_path) == []


def test_transient_503_is_retried(server, tmp_path, caplog):
    out = fetch(f"{server}/flaky.csv.gz", tmp_path / "flaky.csv.gz", sha256=SHA, retries=3, backoff_s=0.01)
    assert out.read_bytes() == PAYLOAD and Handler.hits["/flaky.csv.gz"] == 3
    assert "HTTP 503" in caplog.text and "retry 2/3" in caplog.text


def test_unreachable_server_is_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match="giving up after 2 attempts: cannot connect"):
        fetch("http://127.0.0.1:9/x.gz", tmp_path / "x.gz", retries=1, timeout=2, backoff_s=0.01)


def test_file_url_and_path_are_resolved_in_place_and_checked(tmp_path):
    src = tmp_path / "src dir" / "data.csv.gz"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    url = "file://" + str(src).replace(" ", "%20")
    assert local_path(url) == src and local_path(str(src)) == src
    assert local_path("https://example.org/a.gz") is None
    out = fetch(url, tmp_path / "out" / "data.csv.gz", sha256=SHA)
    assert out.read_bytes() == PAYLOAD
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(str(src), tmp_path / "out2" / "data.csv.gz", sha256="f" * 64)
    assert leftovers(tmp_path / "out2") == []
    with pytest.raises(FetchError, match="no such file"):
        fetch(str(tmp_path / "absent.gz"), tmp_path / "x.gz")
    with pytest.raises(UnsupportedSource, match="unsupported URL scheme 'ftp'"):
        local_path("ftp://host/file")


def test_cli_exit_codes(server, tmp_path, capsys):
    assert main([f"{server}/cli.csv.gz", "--out", str(tmp_path / "a.gz"), "--sha256", SHA, "--retries", "0"]) == 0
    assert main([f"{server}/missing.csv.gz", "--out", str(tmp_path / "b.gz"), "--sha256", ""]) == 1
    assert "HTTP 404" in capsys.readouterr().err and leftovers(tmp_path) == ["a.gz"]


def test_an_html_page_is_refused_at_download_time_and_a_fixed_mirror_downloads(server, tmp_path):
    """Issue 17: a mirror answering 200 with a login page; nothing is cached, the next run downloads."""
    out = tmp_path / "src" / "meli.tar.bz2"
    with pytest.raises(FetchError) as err:
        fetch(f"{server}/mirror.tar.bz2", out, retries=0)
    msg = str(err.value)
    assert f"{server}/mirror.tar.bz2" in msg and "HTML page" in msg and "text/html" in msg and "Sign in" in msg
    assert not out.exists() and leftovers(out.parent) == []
    fetch(f"{server}/mirror.tar.bz2", out, retries=0)  # the mirror is fixed: this run downloads
    assert out.read_bytes() == ARCHIVE


@pytest.mark.parametrize("path, why", [("/login.csv.gz", "HTML page"), ("/plain.csv.gz", "should be a gzip file"),
                                       ("/empty.txt", "empty body")])
def test_what_arrived_is_checked_against_the_name(server, tmp_path, path, why):
    out = tmp_path / Path(path).name
    with pytest.raises(FetchError, match=why):
        fetch(f"{server}{path}", out, retries=0)
    assert leftovers(tmp_path) == []


def test_credentials_in_a_url_never_reach_messages(server, tmp_path):
    host = server.split("//", 1)[1]
    with pytest.raises(FetchError) as err:
        fetch(f"http://ana:hunter2@{host}/missing.csv.gz?token=abc123", tmp_path / "x.csv.gz", retries=0)
    assert "hunter2" not in str(err.value) and "abc123" not in str(err.value) and "404" in str(err.value)
