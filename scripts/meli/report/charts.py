"""Small inline-SVG charts for the self-contained report (no JavaScript, no external files).

Every chart is a string of ``<svg>`` markup with a ``viewBox``, so it scales with the page; each
line or point carries a ``<title>``, which browsers show on hover. Nothing depends on hovering:
the few runs that matter (the top ones of a family) are drawn in their own colours and labelled
with their rank on the chart, everything else is thin and grey.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Callable, Sequence

from meli.report import order

WIDTH, HEIGHT = 420, 260
MARGIN = {"left": 58, "right": 14, "top": 30, "bottom": 42}
MUTED = "#9aa5b1"
ACCENT = "#d9480f"
INK = "#1f2933"
GRID = "#e4e7eb"
# Rank 1 (the selected run) in the report's accent colour, then colours distinct from it and
# from each other for colour-blind readers (Okabe-Ito blue, bluish green, reddish purple).
TOP_COLOURS = (ACCENT, "#0072b2", "#009e73", "#cc79a7", "#56b4e9")
TOP_K = 3


def rank_colour(rank: int) -> str:
    return TOP_COLOURS[(rank - 1) % len(TOP_COLOURS)]


@dataclass
class Series:
    name: str
    x: Sequence[float]
    y: Sequence[float]
    rank: int | None = None  # 1 = the selected run; ranked series are coloured and labelled
    points: list[tuple[float, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.points = [(float(a), float(b)) for a, b in zip(self.x, self.y) if _finite(a) and _finite(b)]


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 12))
    return ticks


def _fmt_tick(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


class _Frame:
    """Maps data coordinates to the plot area and draws axes, grid and labels."""

    def __init__(self, xs: list[float], ys: list[float], title: str, xlabel: str, ylabel: str,
                 x_integer: bool = False, y_from_zero: bool = False):
        self.w, self.h = width, height = WIDTH, HEIGHT
        self.x0, self.x1 = MARGIN["left"], width - MARGIN["right"]
        self.y0, self.y1 = height - MARGIN["bottom"], MARGIN["top"]
        lo_y, hi_y = (min(ys), max(ys)) if ys else (0.0, 1.0)
        if y_from_zero:
            lo_y = min(0.0, lo_y)
        pad = (hi_y - lo_y) * 0.05 or abs(hi_y) * 0.05 or 0.05
        self.yticks = nice_ticks(lo_y - pad if not y_from_zero else lo_y, hi_y + pad)
        lo_x, hi_x = (min(xs), max(xs)) if xs else (0.0, 1.0)
        if hi_x == lo_x:
            lo_x, hi_x = lo_x - 1, hi_x + 1
        self.xticks = nice_ticks(lo_x, hi_x, 6)
        if x_integer:
            self.xticks = [t for t in self.xticks if float(t).is_integer()] or self.xticks
        self.lo_x, self.hi_x = min(self.xticks[0], lo_x), max(self.xticks[-1], hi_x)
        self.lo_y, self.hi_y = self.yticks[0], self.yticks[-1]
        self.title, self.xlabel, self.ylabel = title, xlabel, ylabel

    def sx(self, x: float) -> float:
        return self.x0 + (x - self.lo_x) / (self.hi_x - self.lo_x) * (self.x1 - self.x0)

    def sy(self, y: float) -> float:
        span = (self.hi_y - self.lo_y) or 1.0
        return self.y0 - (y - self.lo_y) / span * (self.y0 - self.y1)

    def open(self) -> list[str]:
        out = [
            f'<svg class="chart" viewBox="0 0 {self.w} {self.h}" role="img" aria-label="{escape(self.title)}" '
            f'font-family="system-ui, sans-serif" font-size="11">',
            f"<title>{escape(self.title)}</title>",
            f'<text x="{self.x0}" y="16" font-size="13" font-weight="600" fill="{INK}">{escape(self.title)}</text>',
        ]
        for t in self.yticks:
            y = self.sy(t)
            out.append(f'<line x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>')
            out.append(f'<text x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end" fill="{INK}">{_fmt_tick(t)}</text>')
        return out

    def x_axis(self, ticks: list[tuple[float, str]] | None = None) -> list[str]:
        ticks = ticks if ticks is not None else [(t, _fmt_tick(t)) for t in self.xticks]
        out = [f'<line x1="{self.x0}" x2="{self.x1}" y1="{self.y0}" y2="{self.y0}" stroke="{INK}"/>']
        for t, label in ticks:
            x = self.sx(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{self.y0}" y2="{self.y0 + 4}" stroke="{INK}"/>')
            out.append(f'<text x="{x:.1f}" y="{self.y0 + 16}" text-anchor="middle" fill="{INK}">{escape(label)}</text>')
        out.append(f'<text x="{(self.x0 + self.x1) / 2:.1f}" y="{self.h - 6}" text-anchor="middle" '
                   f'fill="{INK}">{escape(self.xlabel)}</text>')
        out.append(f'<text transform="translate(14 {(self.y0 + self.y1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
                   f'fill="{INK}">{escape(self.ylabel)}</text>')
        return out


def _spread(ys: list[float], gap: float, lo: float, hi: float) -> list[float]:
    """Label positions near ``ys`` (in order) at least ``gap`` apart, within [lo, hi]."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = [0.0] * len(ys)
    prev = lo - gap
    for i in order:
        out[i] = prev = max(ys[i], prev + gap)
    overflow = prev - hi
    if overflow > 0:  # pushed past the bottom: shift the stack up
        for i in order:
            out[i] -= overflow
    return out


def _end_labels(ends: list[tuple[int, float, float]], x_max: float, top: float, bottom: float) -> list[str]:
    """Rank numbers in the right margin beside the last point of each ranked line, nudged apart so
    none overlap. No leader lines: a dotted line from a curve's end reads as more data."""
    if not ends:
        return []
    ys = _spread([y for _, _, y in ends], 12.0, top + 6, bottom)
    return [f'<text x="{x_max + 5:.1f}" y="{ly + 4:.1f}" font-weight="700" fill="{rank_colour(rank)}">{rank}</text>'
            for (rank, _, _), ly in zip(ends, ys)]


def line_chart(series: list[Series], title: str, xlabel: str, ylabel: str) -> str:
    """Every series as a thin grey line; ranked ones drawn last, thick, in their colours and
    labelled with their rank at their last point (readable with 50 runs, without hovering)."""
    xs = [p[0] for s in series for p in s.points]
    ys = [p[1] for s in series for p in s.points]
    if not ys:
        return empty_chart(title, "no data")
    frame = _Frame(xs, ys, title, xlabel, ylabel, x_integer=True)
    frame.x1 -= 16  # room for the rank labels
    out = frame.open()
    muted_opacity = 0.7 if len(series) <= 10 else 0.45 if len(series) <= 30 else 0.3
    ends = []
    for s in sorted(series, key=lambda s: -(s.rank or 99)):  # best drawn last, on top
        colour, width, opacity = ((rank_colour(s.rank), 2.4, 1) if s.rank else (MUTED, 1.0, muted_opacity))
        pts = " ".join(f"{frame.sx(x):.1f},{frame.sy(y):.1f}" for x, y in s.points)
        tip = f"<title>{f'#{s.rank} ' if s.rank else ''}{escape(s.name)}</title>"
        if len(s.points) > 1:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width}" stroke-opacity="{opacity}" '
                       f'points="{pts}">{tip}</polyline>')
        for x, y in s.points if len(s.points) == 1 or s.rank else ():
            out.append(f'<circle cx="{frame.sx(x):.1f}" cy="{frame.sy(y):.1f}" r="{2.6 if s.rank else 2.5}" '
                       f'fill="{colour}" fill-opacity="{opacity}">{tip}</circle>')
        if s.rank and s.points:
            ends.append((s.rank, frame.sx(s.points[-1][0]), frame.sy(s.points[-1][1])))
    out += _end_labels(sorted(ends), frame.x1, frame.y1, frame.y0)
    out += frame.x_axis()
    out.append("</svg>")
    return "\n".join(out)


@dataclass
class Axis:
    """One vertical axis of a parallel-coordinates chart: a name and one value per run."""
    name: str
    values: Sequence[object]

    def scale(self) -> tuple[str, list[tuple[float, str]], Callable[[object], float | None]]:
        """(kind, ticks as (position 0..1, label), value -> position 0..1 or None)."""
        given = [v for v in self.values if v is not None]
        if given and all(_num(v) is not None for v in given):
            return self._numeric_scale(sorted({_num(v) for v in given}))
        # Lists (layer sizes, kernels), booleans, names: evenly spaced in their natural order.
        cats = [order.value_key(v) for v in order.sorted_values(given)]
        labels = {k: _label(v) for k, v in ((order.value_key(v), v) for v in given)}
        step = 1 / max(len(cats) - 1, 1)

        def cat_pos(v: object) -> float | None:
            return None if v is None else (0.5 if len(cats) == 1 else cats.index(order.value_key(v)) * step)

        return "categorical", [(0.5 if len(cats) == 1 else i * step, labels[k]) for i, k in enumerate(cats)], cat_pos

    @staticmethod
    def _numeric_scale(present: list[float]) -> tuple[str, list[tuple[float, str]], Callable[[object], float | None]]:
        lo, hi = present[0], present[-1]
        log = lo > 0 and hi / lo >= 10
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        span = (f(hi) - f(lo)) or 1.0

        def pos(v: object) -> float | None:
            n = _num(v)
            return None if n is None else (0.5 if hi == lo else (f(n) - f(lo)) / span)

        exact = [pos(v) for v in present]
        crowded = len(present) > 6 or any(b - a < 0.08 for a, b in zip(exact, exact[1:]))
        shown = ([t for t in nice_ticks(lo, hi, 4) if lo <= t <= hi] or [lo, hi]) if crowded else present
        if all(float(v).is_integer() for v in present):  # seeds, sizes: never a "2.5" tick
            shown = [t for t in shown if float(t).is_integer()] or [lo, hi]
        return ("log" if log else "linear"), [(pos(v), _fmt_tick(v)) for v in shown], pos


def _label(v: object) -> str:
    v = order.parse(v)
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_tick(x) if _num(x) is not None else str(x) for x in v) + "]"
    return str(v)


def _num(v: object) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def parallel_coordinates(axes: list[Axis], names: Sequence[str], ranks: Sequence[int | None], title: str) -> str:
    """One polyline per run across the axes (hyperparameters, then the metric last).

    Numeric axes are linear, or logarithmic when they span a factor of 10 or more (learning
    rates, C); other values (booleans, lists, embedding names) are evenly spaced categories.
    Ranked runs are coloured and labelled at the metric axis; the others are grey.
    """
    if not axes or not names:
        return empty_chart(title, "no runs")
    gap = 118
    width = max(WIDTH, 70 + gap * (len(axes) - 1) + 40)
    height = 300
    top, bottom = 58, height - 30
    x0 = 60
    xs = [x0 + gap * i for i in range(len(axes))]
    scales = [a.scale() for a in axes]
    # Drawn near its natural size (a wide page would blow the text up); scrolls on a phone.
    out = [f'<svg class="chart wide" viewBox="0 0 {width} {height}" style="max-width:{round(width * 1.25)}px" '
           f'role="img" aria-label="{escape(title)}" font-family="system-ui, sans-serif" font-size="11">',
           f"<title>{escape(title)}</title>",
           f'<text x="8" y="16" font-size="13" font-weight="600" fill="{INK}">{escape(title)}</text>']

    def y_of(p: float) -> float:
        return bottom - p * (bottom - top)

    for i, (axis, (kind, ticks, _)) in enumerate(zip(axes, scales)):
        x = xs[i]
        out.append(f'<line x1="{x}" x2="{x}" y1="{top}" y2="{bottom}" stroke="{INK}" stroke-width="1"/>')
        label = axis.name + (" (log)" if kind == "log" else "")
        out.append(f'<text x="{x}" y="{top - 22 if i % 2 else top - 10}" text-anchor="middle" font-weight="600" '
                   f'fill="{INK}">{escape(label)}</text>')
        for p, text in ticks:
            y = y_of(p)
            out.append(f'<line x1="{x - 3}" x2="{x}" y1="{y:.1f}" y2="{y:.1f}" stroke="{INK}"/>')
            out.append(f'<text x="{x - 5}" y="{y + 3.5:.1f}" text-anchor="end" fill="{INK}" font-size="10" '
                       f'paint-order="stroke" stroke="#fff" stroke-width="3">{escape(text[:14])}</text>')
    order = sorted(range(len(names)), key=lambda j: -(ranks[j] or 99))
    muted_opacity = 0.6 if len(names) <= 10 else 0.4 if len(names) <= 30 else 0.28
    ends = []
    for j in order:
        pts = []
        for i, (_, _, pos) in enumerate(scales):
            p = pos(axes[i].values[j])
            if p is not None:
                pts.append((xs[i], y_of(p)))
        rank = ranks[j]
        colour, width_, opacity = (rank_colour(rank), 2.4, 1) if rank else (MUTED, 1.0, muted_opacity)
        metric = axes[-1].values[j]
        tip = f"<title>{f'#{rank} ' if rank else ''}{escape(names[j])}: {escape(_fmt_value(metric))}</title>"
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{width_}" stroke-opacity="{opacity}" '
                   f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in pts)}">{tip}</polyline>')
        if rank and pts:
            ends.append((rank, pts[-1][0], pts[-1][1]))
    out += _end_labels(sorted(ends), xs[-1] + 6, top, bottom)
    out.append("</svg>")
    return "\n".join(out)


def _fmt_value(v: object) -> str:
    n = _num(v)
    return f"{n:.4f}" if n is not None else str(v)


def strip_chart(groups: list[tuple[str, list[tuple[str, float]]]], title: str, xlabel: str, ylabel: str,
                best: str | None = None) -> str:
    """One column of points per value (each point a run, hover for its id), a bar at the mean."""
    ys = [v for _, pts in groups for _, v in pts if _finite(v)]
    if not ys:
        return empty_chart(title, "no data")
    frame = _Frame([0, len(groups) + 1], ys, title, xlabel, ylabel)
    frame.lo_x, frame.hi_x = 0.4, len(groups) + 0.6
    out = frame.open()
    for i, (label, pts) in enumerate(groups, start=1):
        vals = [v for _, v in pts if _finite(v)]
        n = len(vals)
        for j, (name, v) in enumerate(pts):
            if not _finite(v):
                continue
            offset = 0 if n == 1 else (j / (n - 1) - 0.5) * 0.4  # deterministic jitter
            colour = ACCENT if name == best else MUTED
            out.append(f'<circle cx="{frame.sx(i + offset):.1f}" cy="{frame.sy(v):.1f}" r="3.2" fill="{colour}" '
                       f'fill-opacity="0.85"><title>{escape(name)}: {v:.4f}</title></circle>')
        if vals:
            mean = sum(vals) / n
            y = frame.sy(mean)
            out.append(f'<line x1="{frame.sx(i - 0.3):.1f}" x2="{frame.sx(i + 0.3):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="{INK}" stroke-width="2"><title>mean {mean:.4f} (n={n})</title></line>')
    out += frame.x_axis([(i, label) for i, (label, _) in enumerate(groups, start=1)])
    out.append("</svg>")
    return "\n".join(out)


def interval_chart(rows: list[tuple[str, float, float | None, float | None, float | None]], title: str,
                   xlabel: str) -> str:
    """Horizontal estimate + interval per row (label, estimate, low, high, reference marker)."""
    vals = [v for _, e, lo, hi, ref in rows for v in (e, lo, hi, ref) if _finite(v)]
    if not vals:
        return empty_chart(title, "no data")
    height = MARGIN["top"] + MARGIN["bottom"] + 34 * len(rows)
    lo_v, hi_v = min(vals), max(vals)
    pad = (hi_v - lo_v) * 0.1 or 0.02
    ticks = nice_ticks(lo_v - pad, hi_v + pad)
    x0, x1 = 110, WIDTH - MARGIN["right"]

    def sx(v: float) -> float:
        return x0 + (v - ticks[0]) / ((ticks[-1] - ticks[0]) or 1) * (x1 - x0)

    y_axis = height - MARGIN["bottom"]
    out = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}" '
           f'font-family="system-ui, sans-serif" font-size="11">',
           f"<title>{escape(title)}</title>",
           f'<text x="8" y="16" font-size="13" font-weight="600" fill="{INK}">{escape(title)}</text>']
    for t in ticks:
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{MARGIN["top"]}" y2="{y_axis}" stroke="{GRID}"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{y_axis + 16}" text-anchor="middle" fill="{INK}">{_fmt_tick(t)}</text>')
    for i, (label, est, lo, hi, ref) in enumerate(rows):
        y = MARGIN["top"] + 17 + 34 * i
        out.append(f'<text x="{x0 - 8}" y="{y + 4}" text-anchor="end" fill="{INK}">{escape(label)}</text>')
        if _finite(lo) and _finite(hi):
            out.append(f'<line x1="{sx(lo):.1f}" x2="{sx(hi):.1f}" y1="{y}" y2="{y}" stroke="{ACCENT}" '
                       f'stroke-width="3"><title>95% CI [{lo:.4f}, {hi:.4f}]</title></line>')
        if _finite(est):
            out.append(f'<circle cx="{sx(est):.1f}" cy="{y}" r="5" fill="{ACCENT}"><title>{escape(label)} test '
                       f'{est:.4f}</title></circle>')
        if _finite(ref):
            out.append(f'<path d="M{sx(ref):.1f},{y - 7} l5,7 l-5,7 l-5,-7 z" fill="none" stroke="{INK}">'
                       f'<title>{escape(label)} validation {ref:.4f}</title></path>')
    out.append(f'<text x="{(x0 + x1) / 2:.1f}" y="{height - 6}" text-anchor="middle" fill="{INK}">'
               f'{escape(xlabel)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def empty_chart(title: str, message: str) -> str:
    return (f'<svg class="chart" viewBox="0 0 {WIDTH} 60" role="img" '
            f'font-family="system-ui, sans-serif" font-size="12"><title>{escape(title)}</title>'
            f'<text x="8" y="20" font-weight="600" fill="{INK}">{escape(title)}</text>'
            f'<text x="8" y="44" fill="{MUTED}">{escape(message)}</text></svg>')


FAMILY_COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9")


def band_chart(series: list[tuple[str, Sequence[float], Sequence[float], Sequence[float]]], title: str, xlabel: str,
               ylabel: str) -> str:
    """One line per series (name, x, mean, sd) with a ±1 sd band, in distinct colours, named in a
    legend row under the title (expected best score against the number of combinations tried)."""
    pts = [(x, m, s) for _, xs, ms, ss in series for x, m, s in zip(xs, ms, ss) if _finite(m)]
    if not pts:
        return empty_chart(title, "no data")
    frame = _Frame([p[0] for p in pts], [m + sgn * s for _, m, s in pts for sgn in (-1, 1)], title, xlabel, ylabel,
                   x_integer=True)
    frame.y1 += 14  # the legend row
    out = frame.open()
    x = frame.x0
    for i, (name, xs, ms, ss) in enumerate(series):
        colour = FAMILY_COLOURS[i % len(FAMILY_COLOURS)]
        upper = [(frame.sx(a), frame.sy(m + s)) for a, m, s in zip(xs, ms, ss)]
        lower = [(frame.sx(a), frame.sy(m - s)) for a, m, s in zip(xs, ms, ss)][::-1]
        out.append(f'<polygon fill="{colour}" fill-opacity="0.15" stroke="none" '
                   f'points="{" ".join(f"{a:.1f},{b:.1f}" for a, b in upper + lower)}"/>')
        line = " ".join(f"{frame.sx(a):.1f},{frame.sy(m):.1f}" for a, m in zip(xs, ms))
        last = f"{name}: {ms[-1]:.4f} after {xs[-1]}" if len(ms) else name
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}">'
                   f"<title>{escape(last)}</title></polyline>")
        out.append(f'<rect x="{x}" y="{MARGIN["top"] - 4}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{x + 14}" y="{MARGIN["top"] + 5}" fill="{INK}">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    out += frame.x_axis([(t, _fmt_tick(t)) for t in frame.xticks if t >= 1])
    out.append("</svg>")
    return "\n".join(out)
