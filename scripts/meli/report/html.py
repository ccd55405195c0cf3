"""HTML building blocks of the report: the stylesheet, number and value formatting, tables.

Pure functions of their arguments (no file reading): sections.py composes them.
"""
from __future__ import annotations

import json
import math
from html import escape
from typing import Any, Iterable

import pandas as pd

from meli import models

DASH = "—"

CSS = """
:root { --ink:#1f2933; --muted:#616e7c; --line:#e4e7eb; --accent:#d9480f; --bg:#fff; --soft:#f5f7fa; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--ink); background:var(--bg); }
main { max-width:1180px; margin:0 auto; padding:1.5rem 1.25rem 4rem; }
header h1 { font-size:1.6rem; margin:.2rem 0; }
header p { color:var(--muted); margin:.2rem 0; }
nav { position:sticky; top:0; background:rgba(255,255,255,.96); border-bottom:1px solid var(--line);
      padding:.45rem 1.25rem; z-index:1; font-size:.9rem; overflow-x:auto; white-space:nowrap; }
nav a { color:var(--ink); text-decoration:none; margin-right:1rem; white-space:nowrap; }
nav a:hover { color:var(--accent); }
section { margin-top:2.2rem; }
h2 { font-size:1.3rem; border-bottom:2px solid var(--line); padding-bottom:.25rem; }
h3 { font-size:1.05rem; margin:1.4rem 0 .4rem; }
p.note, .note { color:var(--muted); font-size:.88rem; }
.table-wrap { overflow-x:auto; margin:.5rem 0 1rem; border:1px solid var(--line); border-radius:6px;
              width:fit-content; max-width:100%; }
table { border-collapse:collapse; font-size:.86rem; font-variant-numeric:tabular-nums; }
.pair { display:grid; grid-template-columns:repeat(auto-fit,minmax(440px,1fr)); gap:0 1.2rem; align-items:start; }
.blocks { display:grid; grid-template-columns:repeat(auto-fit,minmax(260px,1fr)); gap:0 1.2rem; align-items:start; }
th, td { padding:.35rem .6rem; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; }
th { background:var(--soft); font-weight:600; position:sticky; top:0; }
td.num, th.num { text-align:right; }
td.wrap { white-space:normal; overflow-wrap:anywhere; min-width:20rem; max-width:30rem; }
tr.selected td { background:#fff4e6; font-weight:600; }
tr:last-child td { border-bottom:none; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(250px,1fr)); gap:.8rem; }
.card { border:1px solid var(--line); border-radius:8px; padding:.8rem 1rem; background:var(--soft); }
.card .big { font-size:1.5rem; font-weight:700; }
.card .label { color:var(--muted); font-size:.85rem; }
.charts { display:grid; grid-template-columns:repeat(auto-fill,minmax(320px,1fr)); gap:1rem; align-items:start; }
svg.chart { width:100%; height:auto; background:#fff; }
details { margin:.4rem 0 1rem; }
summary { cursor:pointer; color:var(--accent); }
pre { background:var(--soft); padding:.8rem; border-radius:6px; overflow-x:auto; font-size:.8rem; }
code { font-size:.85em; }
.legend-accent { color:var(--accent); font-weight:600; }
@media (max-width:640px) { main { padding:1rem .6rem 3rem; } body { font-size:14px; } }
@media print { nav { display:none; } }
"""


# ---------------------------------------------------------------------------------- formatting
def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return isinstance(v, float) and math.isnan(v) or v is pd.NA
    except TypeError:
        return False


def fmt(v: Any, digits: int = 4) -> str:
    """A cell: numbers rounded for reading, missing values as a dash."""
    if _missing(v):
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"):
        return f"{int(v):,}"
    if isinstance(v, float) or hasattr(v, "dtype"):
        v = float(v)
        if abs(v) >= 1000 or v.is_integer():
            return f"{v:,.0f}"
        return f"{v:,.{digits}f}" if abs(v) < 10 else f"{v:,.1f}"
    return str(v)


def pct(v: Any) -> str:
    return DASH if _missing(v) else f"{100 * float(v):.1f}%"


def _is_num(v: Any) -> bool:
    if isinstance(v, str):
        return v.endswith("%")  # shares shown as percentages still align as numbers
    return not isinstance(v, (bool, str)) and isinstance(v, (int, float)) or hasattr(v, "dtype")


def _cell_class(value: Any, numeric: bool) -> str:
    if numeric:
        return " class=num"
    # Long ids (combination names, hashes) wrap instead of pushing the numbers off screen.
    return " class=wrap" if isinstance(value, str) and len(value) > 40 else ""


def table(header: list[str], rows: Iterable[list[Any]], selected: Iterable[bool] | None = None,
          raw: bool = False) -> str:
    """An HTML table in a horizontally scrolling wrapper; ``raw`` cells are trusted HTML."""
    rows = list(rows)
    flags = list(selected) if selected is not None else [False] * len(rows)
    numeric = [bool(rows) and all(_is_num(r[i]) or _missing(r[i]) for r in rows) and
               any(_is_num(r[i]) for r in rows) for i in range(len(header))]
    head = "".join(f'<th{" class=num" if numeric[i] else ""}>{escape(h)}</th>' for i, h in enumerate(header))
    body = []
    for row, flag in zip(rows, flags):
        cells = "".join(
            f"<td{_cell_class(c, numeric[i])}>{c if raw and isinstance(c, str) else escape(fmt(c))}</td>"
            for i, c in enumerate(row)
        )
        body.append(f'<tr{" class=selected" if flag else ""}>{cells}</tr>')
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def kv_table(items: dict[str, Any]) -> str:
    return table(["", "value"], [[k, scalar(v, k)] for k, v in items.items()])


SHARE_SUFFIXES = ("_share", "coverage", "_fraction")


def scalar(v: Any, key: str = "") -> Any:
    """A JSON value as a cell: shares as percentages, nested values as compact JSON."""
    if isinstance(v, (dict, list)):
        return json.dumps(v, ensure_ascii=False)
    if str(key).endswith(SHARE_SUFFIXES) and isinstance(v, (int, float)) and not isinstance(v, bool):
        return pct(v)
    return v


COLUMN_LABELS = {
    "epochs_run": "epochs", "best_epoch": "best epoch", "val_bacc": "val bacc", "val_loss": "val loss",
    "final_train_loss": "final train loss", "train_time_s": "train time (s)", "samples_per_s": "samples/s",
    "peak_mem_mb": "peak memory (MB)", "stopped_early": "stopped early",
}


def fmt_param(v: Any) -> str:
    """A hyperparameter value as written in a config (0.3, 64, 10, true): no padding digits."""
    if _missing(v):
        return DASH
    if isinstance(v, float) or hasattr(v, "dtype"):
        return format(float(v), "g")
    return str(v)


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def family_name(family: str) -> str:
    return models.display_name(family)
