"""HTML building blocks of the report: the stylesheet, number and value formatting, tables.

Pure functions of their arguments (no file reading): sections.py composes them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from html import escape
from typing import Any, Iterable

import pandas as pd

from meli import models
from meli.report import order

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
      padding:.45rem 1.25rem; z-index:3; font-size:.9rem; overflow-x:auto; white-space:nowrap; }
nav a { color:var(--ink); text-decoration:none; margin-right:1rem; white-space:nowrap; }
nav a:hover { color:var(--accent); }
section { margin-top:2.2rem; }
h2 { font-size:1.3rem; border-bottom:2px solid var(--line); padding-bottom:.25rem; }
h3 { font-size:1.05rem; margin:1.4rem 0 .4rem; }
p.note, .note { color:var(--muted); font-size:.88rem; }
p.verdict { font-size:1.05rem; }
p.warn { border-left:4px solid var(--accent); padding:.3rem .6rem; background:#fff4e6; font-size:.9rem; }
.table-wrap { overflow:auto; margin:.5rem 0 1rem; border:1px solid var(--line); border-radius:6px;
              width:fit-content; max-width:100%; }
.table-wrap.tall { max-height:32rem; }
table { border-collapse:separate; border-spacing:0; font-size:.86rem; font-variant-numeric:tabular-nums; }
/* Side by side when both fit at their natural width, else one under the other. */
.pair { display:flex; flex-wrap:wrap; gap:0 1.6rem; align-items:flex-start; }
.pair > div { flex:0 1 auto; max-width:100%; }
.blocks { display:grid; grid-template-columns:repeat(auto-fit,minmax(min(260px,100%),1fr)); gap:0 1.2rem; align-items:start; }
.blocks > div, .pair > div { min-width:0; }
th, td { padding:.35rem .6rem; border-bottom:1px solid var(--line); text-align:left; white-space:nowrap; background:#fff; }
th { background:var(--soft); font-weight:600; position:sticky; top:0; z-index:1; }
/* The first column (rank, family, name) stays in view while the rest scrolls sideways. */
td:first-child, th:first-child { position:sticky; left:0; z-index:1; box-shadow:1px 0 0 var(--line); }
th:first-child { z-index:2; }
td.num, th.num { text-align:right; }
td.wrap { white-space:normal; overflow-wrap:anywhere; min-width:12rem; max-width:26rem; font-size:.8rem; color:var(--muted); }
td.id { font-size:.78rem; color:var(--muted); font-family:ui-monospace,"DejaVu Sans Mono",monospace; }
tr.selected td { background:#fff4e6; font-weight:600; }
tr:last-child td { border-bottom:none; }
table.sortable th { cursor:pointer; user-select:none; }
table.sortable th[aria-sort=ascending]::after { content:" ▲"; font-size:.7em; }
table.sortable th[aria-sort=descending]::after { content:" ▼"; font-size:.7em; }
input.filter { font:inherit; font-size:.9rem; padding:.3rem .5rem; border:1px solid var(--line); border-radius:6px;
               width:min(26rem,100%); margin:.3rem 0 0; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(min(300px,100%),1fr)); gap:.8rem; }
.card { border:1px solid var(--line); border-radius:8px; padding:.8rem 1rem; background:var(--soft); min-width:0; }
.card .big { font-size:1.5rem; font-weight:700; }
.card .label { color:var(--muted); font-size:.85rem; }
dl.kv { display:grid; grid-template-columns:max-content minmax(0,1fr); gap:.05rem .8rem; margin:.5rem 0; font-size:.85rem; }
dl.kv dt { color:var(--muted); }
dl.kv dd { margin:0; overflow-wrap:anywhere; font-variant-numeric:tabular-nums; }
.charts { display:grid; grid-template-columns:repeat(auto-fill,minmax(min(320px,100%),1fr)); gap:1rem; align-items:start; }
.scroll-x { overflow-x:auto; max-width:100%; }
.scroll-x svg.chart.wide { min-width:480px; }
svg.chart { width:100%; height:auto; background:#fff; }
ol.legend { margin:.2rem 0 .8rem; padding-left:0; list-style:none; font-size:.85rem; }
ol.legend li { margin:.1rem 0; overflow-wrap:anywhere; }
ol.legend .swatch { display:inline-block; min-width:1.4rem; text-align:center; font-weight:700; color:#fff;
                    border-radius:3px; margin-right:.4rem; font-size:.8rem; }
details { margin:.4rem 0 1rem; }
summary { cursor:pointer; color:var(--accent); }
pre { background:var(--soft); padding:.8rem; border-radius:6px; overflow-x:auto; font-size:.8rem; }
pre.cmd { white-space:pre-wrap; overflow-wrap:anywhere; margin:.4rem 0; padding:.5rem .7rem; background:#fff;
          border:1px solid var(--line); }
code { font-size:.85em; overflow-wrap:anywhere; }
.legend-accent { color:var(--accent); font-weight:600; }
ul.failures { list-style:none; padding:0; margin:.5rem 0; }
li.failure { border:1px solid var(--line); border-left:4px solid var(--accent); border-radius:6px; padding:.5rem .8rem;
             margin:.5rem 0; overflow-wrap:anywhere; }
li.failure .reason { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:.8rem; margin:.3rem 0;
                     white-space:pre-wrap; }
li.failure .todo { margin:.3rem 0; }
.slot { border:1px dashed var(--line); border-radius:6px; padding:.6rem .9rem; }
@media (max-width:640px) { main { padding:1rem .6rem 3rem; } body { font-size:14px; } nav { padding:.45rem .6rem; } }
@media print { nav { display:none; } input.filter { display:none; } }
"""

# Progressive enhancement: without it the tables are complete, in validation order. With it, a
# click on a header sorts (numbers and lists of numbers by their data-v value) and a box above
# each sortable table filters its rows ("lr=0.01 cnn": a key=value word must equal one of the
# row's pairs, any other word appear in the row). No network, no globals.
SCRIPT = """
(function () {
  function key(td) {
    var v = td.getAttribute('data-v');
    if (v === null) { return td.textContent.trim().toLowerCase(); }
    return v.charAt(0) === '[' ? JSON.parse(v) : parseFloat(v);
  }
  function nan(x) { return typeof x === 'number' && isNaN(x); }
  // Numbers by value, lists of numbers element-wise ([16] < [64] < [128] < [128,64]), text as text.
  function cmp(x, y) {
    if (typeof x === 'string' || typeof y === 'string') { x = String(x); y = String(y); return x < y ? -1 : x > y ? 1 : 0; }
    x = Array.isArray(x) ? x : [x]; y = Array.isArray(y) ? y : [y];
    for (var i = 0; i < Math.min(x.length, y.length); i++) { if (x[i] !== y[i]) { return x[i] < y[i] ? -1 : 1; } }
    return x.length - y.length;
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var tbody = table.tBodies[0];
    table.querySelectorAll('thead th').forEach(function (th, col) {
      th.setAttribute('tabindex', '0');
      th.title = 'sort';
      function sort() {
        var down = th.getAttribute('aria-sort') !== 'descending';
        table.querySelectorAll('thead th').forEach(function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', down ? 'descending' : 'ascending');
        var rows = Array.prototype.slice.call(tbody.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          var bad = nan(x) - nan(y);
          if (bad) { return bad; }
          return cmp(x, y) * (down ? -1 : 1);
        });
        rows.forEach(function (r) { tbody.appendChild(r); });
      }
      th.addEventListener('click', sort);
      th.addEventListener('keydown', function (e) { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); sort(); } });
    });
    var wrap = table.parentNode, box = document.createElement('input');
    box.type = 'search'; box.className = 'filter';
    var example = table.getAttribute('data-example');
    box.placeholder = 'Filter ' + tbody.rows.length + ' runs' + (example ? ', e.g. ' + example : '');
    box.setAttribute('aria-label', 'filter the runs of this table');
    var count = document.createElement('span');
    count.className = 'note';
    wrap.parentNode.insertBefore(box, wrap);
    wrap.parentNode.insertBefore(count, wrap);
    box.addEventListener('input', function () {
      var words = box.value.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
      Array.prototype.forEach.call(tbody.rows, function (r) {
        var pairs = (r.getAttribute('data-filter') || '').split(' ');
        var text = pairs.join(' ') + ' ' + r.textContent.toLowerCase();
        // key=value matches that value exactly (C=1 is not C=10); other words anywhere in the row.
        var ok = words.every(function (w) { return w.indexOf('=') > 0 ? pairs.indexOf(w) >= 0 : text.indexOf(w) >= 0; });
        r.hidden = !ok; shown += ok;
      });
      count.textContent = words.length ? ' ' + shown + ' shown' : '';
    });
  });
})();
"""


# ---------------------------------------------------------------------------------- formatting
def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return isinstance(v, float) and math.isnan(v) or v is pd.NA
    except TypeError:
        return False


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) or hasattr(v, "dtype")) and not isinstance(v, bool) and not _missing(v)


def decimals(values: Iterable[Any]) -> int:
    """Decimals that show every number of a column alike: the fewest that lose nothing against a
    cap (4 below 10, 1 below 1,000, else 0), so 8.2 beside 8 reads ``8.2``/``8.0``, counts read
    ``64`` (not ``64.0``) and balanced accuracies ``0.8123``."""
    nums = [float(v) for v in values if _is_number(v) and math.isfinite(float(v))]
    if not nums:
        return 0
    top = max(abs(v) for v in nums)
    cap = 4 if top < 10 else 1 if top < 1000 else 0
    return next(d for d in range(cap + 1) if all(round(v, d) == round(v, cap) for v in nums))


def fmt(v: Any, digits: int | None = None) -> str:
    """A value on its own: integers with separators, other numbers to ``digits`` decimals (by
    default as :func:`decimals` would for this value alone), missing values as a dash."""
    if _missing(v):
        return DASH
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"):
        return f"{int(v):,}"
    if isinstance(v, float) or hasattr(v, "dtype"):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return f"{v:,.{decimals([v]) if digits is None else digits}f}"
    return str(v)


def signed(v: Any, digits: int = 4) -> str:
    """A difference: always signed (+0.0123, −0.0040)."""
    return DASH if _missing(v) else f"{float(v):+.{digits}f}".replace("-", "−")


def pct(v: Any) -> str:
    return DASH if _missing(v) else f"{100 * float(v):.1f}%"


def _is_num(v: Any) -> bool:
    if isinstance(v, str):
        return v.endswith("%")  # shares shown as percentages still align as numbers
    return not isinstance(v, (bool, str)) and isinstance(v, (int, float)) or hasattr(v, "dtype")


RUN_COLUMNS = ("run", "selected run")  # combination ids: kept on one line, last, in small print


@dataclass(frozen=True)
class Keyed:
    """A cell shown as ``text`` and sorted by ``key`` (a hyperparameter: ``[256, 128]`` sorts
    element-wise by its numbers, ``3e-05`` below ``0.001``); ``key`` None sorts as text."""
    text: str
    key: tuple[float, ...] | None = None

    def __str__(self) -> str:
        return self.text


def keyed(value: Any) -> Keyed:
    """A hyperparameter value as a sortable cell (see :mod:`meli.report.order`)."""
    return Keyed(fmt_param(order.parse(value)), order.numbers(value) if not _missing(value) else None)


def _cell_class(value: Any, numeric: bool, column: str = "") -> str:
    if numeric:
        return " class=num"
    if column in RUN_COLUMNS:
        return " class=id"
    # Long ids (combination names, hashes) wrap instead of pushing the numbers off screen.
    return " class=wrap" if isinstance(value, str) and len(value) > 32 else ""


def _sort_attr(c: Any, numeric: bool, sortable: bool) -> str:
    if not sortable:
        return ""
    if isinstance(c, Keyed):
        if c.key is None:
            return ""
        return f' data-v="{json.dumps(list(c.key)) if len(c.key) != 1 else repr(c.key[0])}"'
    if numeric and _is_number(c):
        return f' data-v="{float(c)!r}"'
    return ' data-v="NaN"' if numeric and _missing(c) else ""


def _cell(c: Any, column: str, numeric: bool, digits: int | None, raw: bool, sortable: bool) -> str:
    text = c if raw and isinstance(c, str) else escape(c.text if isinstance(c, Keyed) else fmt(c, digits))
    # A run id cut at the table's edge still reads in full on hover.
    tip = f' title="{escape(str(c))}"' if column in RUN_COLUMNS and not _missing(c) else ""
    return f"<td{_cell_class(c, numeric, column)}{_sort_attr(c, numeric, sortable)}{tip}>{text}</td>"


def table(header: list[str], rows: Iterable[list[Any]], selected: Iterable[bool] | None = None,
          raw: bool = False, sortable: bool = False, row_filters: Iterable[str] | None = None,
          tall: bool = False, example: str = "") -> str:
    """An HTML table in a scrolling wrapper (first column sticky); ``raw`` cells are trusted HTML.

    Numbers in a column share one number of decimals (:func:`decimals`). ``sortable`` tables
    carry each number's value in ``data-v`` for the inline script, and ``row_filters`` (one
    string per row, e.g. ``"lr=0.01 dropout=0.3"``) lets its filter box match ``key=value``.
    """
    rows = list(rows)
    flags = list(selected) if selected is not None else [False] * len(rows)
    filters = list(row_filters) if row_filters is not None else [None] * len(rows)
    numeric = [bool(rows) and all(_is_num(r[i]) or _missing(r[i]) for r in rows) and
               any(_is_num(r[i]) for r in rows) for i in range(len(header))]
    digits = [decimals(r[i] for r in rows) if numeric[i] else None for i in range(len(header))]
    head = "".join(f'<th{" class=num" if numeric[i] else ""}>{escape(h)}</th>' for i, h in enumerate(header))
    body = []
    for row, flag, filt in zip(rows, flags, filters):
        cells = [_cell(c, header[i], numeric[i], digits[i], raw, sortable) for i, c in enumerate(row)]
        attrs = (" class=selected" if flag else "") + (f' data-filter="{escape(filt)}"' if filt else "")
        body.append(f"<tr{attrs}>{''.join(cells)}</tr>")
    cls = ' class="sortable"' if sortable else ""
    if sortable and example:
        cls += f' data-example="{escape(example)}"'
    wrap = "table-wrap tall" if tall else "table-wrap"
    return (f'<div class="{wrap}"><table{cls}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            "</table></div>")


def kv_table(items: dict[str, Any]) -> str:
    """Keys and values of different kinds: each value formatted on its own."""
    return table(["", "value"], [[k, fmt(scalar(v, k))] for k, v in items.items()])


def kv_list(items: dict[str, Any]) -> str:
    """A compact key/value block (hyperparameters of a run)."""
    return '<dl class="kv">' + "".join(
        f"<dt>{escape(str(k))}</dt><dd>{escape(fmt_param(v))}</dd>" for k, v in items.items()) + "</dl>"


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
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(fmt_param(x) for x in v) + "]"
    if isinstance(v, float) or hasattr(v, "dtype"):
        return format(float(v), "g")
    return str(v)


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def family_name(family: str) -> str:
    return "Ensemble" if family == "ensemble" else models.display_name(family)
