"""Inline SVG charts drawn in Python: a line chart of one logged series, and a stacked histogram."""

from __future__ import annotations

import math

from replearn.report.page import esc

W, H = 360, 210  # the chart's box
RIGHT, TOP, BOTTOM = 12, 26, 34  # plot margins inside it; the left one fits the y labels
MAX_POINTS = 1000  # a longer series is thinned to this many points


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round values (1, 2 or 5 times a power of ten apart) within [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10)), key=lambda s: abs(math.log(s / raw)))
    first = math.ceil(lo / step - 1e-9)
    digits = max(0, 1 - math.floor(math.log10(step)))  # enough decimals for the step, no float noise
    return [round((first + i) * step, digits) for i in range(math.floor(hi / step + 1e-9) - first + 1)]


def fmt(v: float) -> str:
    """A tick or value label: a whole number with thousands separators, else 3 significant digits."""
    if v == 0:
        return "0"
    if float(v).is_integer() and abs(v) < 1e7:
        return f"{int(v):,}"
    return f"{v:.3g}"


def shown_range(ys: list[float]) -> tuple[float, float]:
    """The y range to draw: all values, except that a few far outliers (a first steps' spike) at
    either end are left out when they would squash the rest to a flat line."""
    s = sorted(ys)
    lo, hi = s[0], s[-1]
    if len(s) >= 20:
        q_lo, q_hi = s[int(0.02 * (len(s) - 1))], s[int(0.98 * (len(s) - 1))]
        if hi - q_hi > 2 * (q_hi - lo):
            hi = q_hi + 0.1 * (q_hi - lo)
        if q_lo - lo > 2 * (hi - q_lo):
            lo = q_lo - 0.1 * (hi - q_lo)
    return lo, hi


def _frame(title: str, xlabel: str, xs: tuple[float, float], ys: tuple[float, float]):
    """(SVG opening with title, axes, grid and ticks; x -> px; y -> px) for the ranges given."""
    (x0, x1), (y0, y1) = xs, ys
    y_ticks = nice_ticks(y0, y1)
    left = 14 + 6.5 * max((len(fmt(t)) for t in y_ticks), default=1)
    pw, ph = W - left - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw if x1 > x0 else left + pw / 2

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph if y1 > y0 else TOP + ph / 2

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">',
        f'<text x="8" y="16" style="font-weight:600">{esc(title)}</text>',
    ]
    for t in y_ticks:
        y = py(t)
        parts.append(f'<line class="grid" x1="{left}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    for t in nice_ticks(x0, x1):
        x = px(t)
        parts.append(f'<text x="{x:.1f}" y="{TOP + ph + 14}" text-anchor="middle">{fmt(t)}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{TOP}" y2="{TOP + ph}"/>')
    parts.append(f'<line class="axis" x1="{left}" x2="{W - RIGHT}" y1="{TOP + ph}" y2="{TOP + ph}"/>')
    parts.append(f'<text x="{left + pw / 2}" y="{H - 4}" text-anchor="middle" fill="#5f6b76">{esc(xlabel)}</text>')
    return parts, px, py


def line_chart(xs: list[float], ys: list[float], title: str, xlabel: str, color: str = "#1f77b4") -> str:
    """One series as a polyline (a single point as a dot); the y axis leaves out far outliers
    (``shown_range``), drawn at its edge, and says so."""
    if len(xs) > MAX_POINTS:  # keep every k-th point and the last one
        k = math.ceil(len(xs) / MAX_POINTS)
        keep = [*range(0, len(xs), k)] + ([len(xs) - 1] if (len(xs) - 1) % k else [])
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
    lo, hi = shown_range(ys)
    clipped = lo > min(ys) or hi < max(ys)
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 1.0
    ticks = nice_ticks(lo - pad, hi + pad)
    y_range = (min(ticks[0], lo), max(ticks[-1], hi)) if ticks else (lo - pad, hi + pad)
    parts, px, py = _frame(title, xlabel, (min(xs), max(xs)), y_range)
    pts = " ".join(f"{px(x):.1f},{py(min(max(y, y_range[0]), y_range[1])):.1f}" for x, y in zip(xs, ys, strict=True))
    if len(xs) == 1:
        parts.append(f'<circle cx="{px(xs[0]):.1f}" cy="{py(ys[0]):.1f}" r="3" fill="{color}"/>')
    else:
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{pts}"/>')
    parts.append(f'<text x="{W - RIGHT}" y="16" text-anchor="end" fill="#5f6b76">last {fmt(ys[-1])}</text>')
    if clipped:
        parts.append(f'<text x="{W - RIGHT}" y="{TOP + 10}" text-anchor="end" fill="#5f6b76">'
                     f"outliers cut (range {fmt(min(ys))} to {fmt(max(ys))})</text>")
    return "".join(parts) + "</svg>"


def stacked_histogram(edges: list[float], stacks: list[tuple[str, str, list[int]]], title: str, xlabel: str) -> str:
    """Bars over the bins of ``edges``, one stacked part per (name, colour, counts), with a legend."""
    totals = [sum(c[i] for _, _, c in stacks) for i in range(len(edges) - 1)]
    ticks = nice_ticks(0, max(totals) or 1)
    top = max(ticks[-1], max(totals) or 1)
    parts, px, py = _frame(title, xlabel, (edges[0], edges[-1]), (0, top))
    for i in range(len(edges) - 1):
        base = 0
        x, w = px(edges[i]) + 0.5, max(0.5, px(edges[i + 1]) - px(edges[i]) - 1)
        for _, color, counts in stacks:
            if counts[i]:
                y0, y1 = py(base), py(base + counts[i])
                parts.append(f'<rect x="{x:.1f}" y="{y1:.1f}" width="{w:.1f}" height="{y0 - y1:.1f}" fill="{color}">'
                             f"<title>{fmt(edges[i])}-{fmt(edges[i + 1])}: {counts[i]}</title></rect>")
                base += counts[i]
    lx = px(edges[0]) + 8
    for name, color, counts in stacks:
        parts.append(f'<rect x="{lx}" y="{TOP + 2}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14}" y="{TOP + 11}">{esc(name)} ({sum(counts)})</text>')
        lx += 24 + 7 * len(name) + 7 * len(str(sum(counts)))
    return "".join(parts) + "</svg>"
