"""The report as a user sees it: a synthetic 20-run sweep, rendered and opened in headless Chromium.

Used by tests/test_report.py (overflow and console checks at phone and desktop widths) and by
``make report-shots``, which writes screenshots a developer can look at::

    python -m tests.report_pages --out bench-out/report-shots [--report results/report.html]

Chromium is driven through its DevTools protocol with a small stdlib WebSocket client (no new
dependency): phone widths need device emulation, since a headless window is never narrower than
500 px. The probe measures the page's scroll width and lists what sticks out of the viewport.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from meli.report import aggregate, evaluate, render
from tests.test_aggregate import CNN, MLP, TFIDF, FakePredictor, make_results, make_run

WIDTHS = {"desktop": 1400, "phone": 390}
CONFIG = {"dataset": {"name": "sweep-20", "source": "demo"}, "report": {"bootstrap": 200}}


# ------------------------------------------------------------------------- a synthetic sweep
def sweep_runs() -> list[tuple[str, dict, float, float, float, int]]:
    """20 runs: 12 MLP, 6 CNN, 2 TF-IDF, with validation bacc depending on the hyperparameters.

    (family, params, val_bacc, val_loss, test accuracy for the fake predictor, epochs)
    """
    runs = []
    mlp_grid = itertools.product([False, True], [[128], [256, 128]], [0.2, 0.5], [0.001, 0.003, 0.01])
    for i, (frz, hidden, dropout, lr) in enumerate(itertools.islice(mlp_grid, 12)):
        vb = 0.74 + 0.05 * (lr == 0.003) - 0.06 * frz + 0.02 * (len(hidden) == 2) - 0.03 * (dropout == 0.5) + 0.004 * i
        runs.append(("mlp", {**MLP, "freeze_embeddings": frz, "hidden": hidden, "dropout": dropout, "lr": lr},
                     round(vb, 4), round(1.6 - vb, 4), min(0.95, vb + 0.02), 6 + i % 7))
    for j, (filters, kernels, lr) in enumerate(itertools.product([64, 128], [[2, 3], [3, 4, 5]], [0.001, 0.003])):
        if j >= 6:
            break
        vb = 0.76 + 0.03 * (filters == 128) + 0.02 * (len(kernels) == 3) - 0.02 * (lr == 0.001) + 0.003 * j
        runs.append(("cnn", {**CNN, "filters": filters, "kernel_sizes": kernels, "lr": lr}, round(vb, 4),
                     round(1.5 - vb, 4), min(0.95, vb + 0.01), 8 + j))
    for C, vb in ((1.0, 0.79), (10.0, 0.81)):
        runs.append(("tfidf", {**TFIDF, "C": C}, vb, None, vb + 0.02, 1))
    return runs


def big_sweep_runs() -> list[tuple[str, dict, float, float, float, int]]:
    """494 runs as in issue 24: a 96-combination MLP grid over 5 seeds, 12 CNN, 2 TF-IDF."""
    runs = []
    rng = np.random.default_rng(24)
    grid = itertools.product([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2], [0.1, 0.3, 0.5, 0.7], [[16], [64], [128], [256, 128]])
    for lr, dropout, hidden in grid:
        for seed in range(5):
            vb = 0.8 - 0.02 * abs(np.log10(lr / 3e-3)) - 0.03 * (dropout == 0.7) + 0.01 * len(hidden) + rng.normal(0, 0.004)
            runs.append(("mlp", {**MLP, "hidden": hidden, "dropout": dropout, "lr": lr, "seed": seed}, round(vb, 4),
                         round(1.6 - vb, 4), min(0.95, vb), 5 + seed))
    for filters, lr in itertools.product([32, 64, 128], [3e-4, 1e-3, 3e-3, 1e-2]):
        vb = 0.76 + 0.01 * (filters == 128) - 0.02 * (lr == 1e-2) + rng.normal(0, 0.004)
        runs.append(("cnn", {**CNN, "filters": filters, "lr": lr}, round(vb, 4), round(1.5 - vb, 4), vb, 8))
    for C, vb in ((0.5, 0.79), (2.0, 0.8)):
        runs.append(("tfidf", {**TFIDF, "C": C}, vb, None, vb + 0.01, 1))
    return runs


def make_sweep_results(root: Path, runs: list | None = None) -> Path:
    """results/ after aggregate + evaluate for :func:`sweep_runs`, with the workflow root as ``root``."""
    runs = runs or sweep_runs()
    results = make_results(root, make=False)
    rng = np.random.default_rng(0)
    for family, params, vb, vl, acc, epochs in runs:
        run_dir = make_run(results, family, params, vb, vl, epochs=epochs, test_accuracy=acc)
        # Curves that differ in shape and length, as real ones do.
        e = np.arange(1, epochs + 1)
        rate = 0.4 + rng.random()
        curve = vb * (1 - np.exp(-rate * e)) / (1 - np.exp(-rate * epochs)) - rng.random(epochs) * 0.006
        pd.DataFrame({"epoch": e, "train_loss": 2.0 * np.exp(-rate * e / 2) + 0.2, "val_loss": (vl or 1) + 0.6 *
                      np.exp(-rate * e) + 0.01 * np.maximum(0, e - epochs + 2), "val_bacc": curve,
                      "samples_per_s": 4000.0, "elapsed_s": 12.5 * e}).to_csv(run_dir / "history.csv", index=False)
    dirs = sorted(str(p.relative_to(root)) for p in (results / "runs").glob("*/*"))
    aggregate.aggregate([root / d for d in dirs], results / "tables")
    evaluate.evaluate(results / "tables" / "selection.json", results / "data", results / "features",
                      {"bootstrap": 200}, "cpu", results / "tables", load_predictor=FakePredictor)
    # run_dir as the workflow records it: relative to the workflow root
    sel = json.loads((results / "tables" / "selection.json").read_text())
    for chosen in sel["families"].values():
        chosen["run_dir"] = str(Path(chosen["run_dir"]).relative_to(root))
    (results / "tables" / "selection.json").write_text(json.dumps(sel))
    return results


def render_sweep(root: Path, runs: list | None = None) -> Path:
    results = make_sweep_results(root, runs)
    (root / "config.yaml").write_text("dataset:\n  name: sweep-20\n")
    out = results / "report.html"
    out.write_text(render.render(results, CONFIG, ["config.yaml"], workdir=root), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------- the browser
def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


class DevTools:
    """Just enough of the Chrome DevTools protocol over a stdlib WebSocket (RFC 6455) client.

    Headless Chromium will not make a window narrower than 500 px, so phone widths need
    ``Emulation.setDeviceMetricsOverride``, which only the protocol offers.
    """

    def __init__(self, ws_url: str, timeout: float = 60):
        url = urlparse(ws_url)
        self.sock = socket.create_connection((url.hostname, url.port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head[:200]!r}")
        self.buffer = head.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 else \
            bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)  # clients must mask every frame
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode]) + size + mask + masked)

    def _message(self) -> dict:
        data = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n >= 126:
                n = int.from_bytes(self._read(2 if n == 126 else 8), "big")
            payload = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            data += payload
            if b0 & 0x80:  # final fragment
                return json.loads(data)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self._send(0x1, json.dumps({"id": self.next_id, "method": method, "params": params}).encode())
        while True:
            msg = self._message()
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, msg in enumerate(self.events):
                if msg.get("method") == event:
                    return self.events.pop(i)
            self.events.append(self._message())
        raise TimeoutError(f"no {event} within {timeout:.0f}s")

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def browser(work: Path) -> Iterator[DevTools]:
    """Headless Chromium with a DevTools connection to its page."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium on PATH (tests/install_system_deps.sh installs it as root)")
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=work))
    proc = subprocess.Popen(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--hide-scrollbars", "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tools = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Chromium did not start its DevTools server")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as resp:
            page = next(t for t in json.load(resp) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log"):
            tools.call(f"{domain}.enable")
        yield tools
    finally:
        if tools:
            tools.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # Chromium's helper processes may still write into the profile for a moment after the
        # browser exits: remove it with retries, and never fail the checks over a leftover file.
        for _ in range(20):
            shutil.rmtree(profile, ignore_errors=True)
            if not profile.exists():
                break
            time.sleep(0.1)


# ``w``: the device width. In mobile emulation a page wider than the device zooms out, which
# widens innerWidth with it; so every width is compared with the device's.
PROBE = """((w) => {
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    const r = el.getBoundingClientRect();
    if (r.right > w + 0.5 && !el.closest('.table-wrap, .scroll-x, nav, pre')) {
      out.push(el.tagName.toLowerCase() + (typeof el.className === 'string' && el.className ? '.' + el.className : '')
               + ' right=' + Math.round(r.right));
    }
  }
  return {scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth, deviceWidth: w,
          scrollHeight: document.documentElement.scrollHeight, sticking_out: out.slice(0, 20),
          sortable: document.querySelectorAll('table.sortable').length,
          filters: document.querySelectorAll('input.filter').length};
})"""


def problems(events: list[dict]) -> list[str]:
    """Console messages, uncaught exceptions and browser log errors among DevTools events."""
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled":
            out.append(f"console.{params.get('type')}: " + " ".join(str(a.get("value", a.get("description")))
                                                                 for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            out.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
    return out


def inspect(tools: DevTools, html_path: Path, width: int, screenshot_to: Path | None = None,
            full_page: bool = True) -> tuple[dict, list[str]]:
    """Open the page at ``width`` CSS px (a phone below 500: mobile emulation): the probe's
    measurements and the console problems; optionally a PNG (the whole page, or the first screen)."""
    tools.events.clear()
    tools.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1,
               mobile=width < 500)
    if not Path(html_path).is_file():  # Chromium would show (and screenshot) its own error page
        raise FileNotFoundError(f"{html_path}: no such report")
    nav = tools.call("Page.navigate", url=Path(html_path).resolve().as_uri())
    if nav.get("errorText"):
        raise RuntimeError(f"{html_path}: Chromium could not open it ({nav['errorText']})")
    tools.wait_for("Page.loadEventFired")
    data = tools.call("Runtime.evaluate", expression=f"{PROBE}({width})", returnByValue=True)["result"]["value"]
    timing = tools.call("Runtime.evaluate", returnByValue=True, expression=(
        "(() => { const t = performance.getEntriesByType('navigation')[0]; return t ? t.loadEventEnd : null; })()"))
    data["load_ms"] = timing["result"].get("value")
    if screenshot_to is not None:
        height = min(int(data["scrollHeight"]), 16000) if full_page else 1000
        if full_page:  # a viewport as tall as the page: capturing beyond it misplaces sticky cells
            tools.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                       mobile=width < 500)
        shot = tools.call("Page.captureScreenshot", format="png",
                          clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        screenshot_to.parent.mkdir(parents=True, exist_ok=True)
        screenshot_to.write_bytes(base64.b64decode(shot["data"]))
    tools.call("Runtime.evaluate", expression="0")  # drains events logged after load
    return data, problems(tools.events)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Screenshots of the report at desktop and phone width")
    ap.add_argument("--out", default="bench-out/report-shots", type=Path)
    ap.add_argument("--report", type=Path, help="an existing report.html (default: a synthetic 20-run sweep)")
    args = ap.parse_args(argv)
    if args.report and not args.report.is_file():
        print(f"{args.report}: no such report (render it first, e.g. snakemake results/report.html)", file=sys.stderr)
        return 2
    ok = True
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        page = args.report or render_sweep(work / "wf")
        name = args.report.stem if args.report else "sweep-20"
        with browser(work) as tools:
            for label, width in WIDTHS.items():
                for part, full in (("top", False), ("full", True)):
                    out = args.out / f"{name}-{label}-{part}.png"
                    data, console = inspect(tools, page, width, out, full_page=full)
                fits = data["scrollWidth"] <= width and data["innerWidth"] == width and not console
                ok &= fits
                print(f"{label} {width}px: page {data['scrollWidth']} px wide in a {data['innerWidth']} px viewport, "
                      f"{len(console)} console problems{'' if fits else '  <-- PROBLEM'}")
                for line in data["sticking_out"] + console:
                    print("   ", line)
        if not args.report:
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copy(page, args.out / f"{name}.html")
    print(f"screenshots in {args.out}/")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
