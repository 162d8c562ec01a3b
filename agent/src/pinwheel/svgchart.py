"""Small SVG charts drawn on the server: no JavaScript, no external assets.

Each chart is one ``<svg role="img">`` with a ``<title>`` and a ``<desc>``
(read by screen readers, shown as a tooltip), axes with ticks and labels, and a
legend when it has several series. The SVG scales to the width of its
container (``viewBox``), so it fits a phone; the numbers it draws are also
printed in a table beside it by the page that uses it.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 12, 28, 44
FONT = 'font-family="system-ui,sans-serif" font-size="12"'
_ids = itertools.count(1)


@dataclass(frozen=True)
class Series:
    """One series of values, one per label; ``css_class`` colours it (see :data:`CSS`)."""

    name: str
    values: Sequence[float]
    css_class: str = "s1"


# Colours of the series classes (the page includes this in its <style>).
CSS = """
svg.chart{width:100%;height:auto;max-width:40rem;display:block}
svg.chart .axis{stroke:#555;stroke-width:1}svg.chart .grid{stroke:#ddd;stroke-width:1}
svg.chart text{fill:#333}
svg.chart .s1{fill:#2f6fb0;stroke:#2f6fb0}svg.chart .s2{fill:#c0392b;stroke:#c0392b}
svg.chart .s3{fill:#2e8b57;stroke:#2e8b57}svg.chart .line{fill:none;stroke-width:2}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def nice_step(top: float, ticks: int = 5) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks up to ``top``."""
    if top <= 0:
        return 1.0
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 5, 10):
        if raw <= mult * power:
            return float(mult * power)
    return float(10 * power)  # pragma: no cover


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _frame(title: str, desc: str, body: list[str], width: int = WIDTH,
           height: int = HEIGHT) -> str:
    n = next(_ids)
    return (f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" '
            f'aria-labelledby="chart{n}-t chart{n}-d" xmlns="http://www.w3.org/2000/svg" {FONT}>'
            f'<title id="chart{n}-t">{_e(title)}</title><desc id="chart{n}-d">{_e(desc)}</desc>'
            + "".join(body) + "</svg>")


def _y_axis(top: float, unit: str, plot_h: float) -> tuple[float, list[str]]:
    """The y scale's maximum and the SVG of the axis, its grid lines and tick labels."""
    step = nice_step(top)
    y_max = step * max(1, math.ceil(top / step))
    out = []
    ticks = round(y_max / step)
    for i in range(ticks + 1):
        value = step * i
        y = MARGIN_TOP + plot_h - plot_h * value / y_max
        out.append(f'<line class="grid" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" '
                   f'y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{_e(_number(value))}</text>')
    out.append(f'<line class="axis" x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT}" y1="{MARGIN_TOP}" '
               f'y2="{MARGIN_TOP + plot_h}"/>')
    out.append(f'<line class="axis" x1="{MARGIN_LEFT}" x2="{WIDTH - MARGIN_RIGHT}" '
               f'y1="{MARGIN_TOP + plot_h}" y2="{MARGIN_TOP + plot_h}"/>')
    if unit:
        out.append(f'<text x="4" y="{MARGIN_TOP - 10}">{_e(unit)}</text>')
    return y_max, out


def _x_labels(labels: Sequence[str], centre: list[float], plot_h: float) -> list[str]:
    """Tick labels under the x axis, thinned so they never overlap (about 8 shown)."""
    every = max(1, math.ceil(len(labels) / 8))
    last = len(labels) - 1
    out = []
    for i, (label, x) in enumerate(zip(labels, centre)):
        if (last - i) % every:  # counted from the last label, which is always shown
            continue
        anchor = "end" if x > WIDTH - MARGIN_RIGHT - 20 else "middle"
        out.append(f'<text x="{x:.1f}" y="{MARGIN_TOP + plot_h + 16}" '
                   f'text-anchor="{anchor}">{_e(label)}</text>')
    return out


def _legend(series: Sequence[Series]) -> list[str]:
    if len(series) < 2:
        return []
    out, x = [], MARGIN_LEFT
    for s in series:
        out.append(f'<rect class="{_e(s.css_class)}" x="{x}" y="{HEIGHT - 14}" width="10" '
                   f'height="10"/><text x="{x + 14}" y="{HEIGHT - 5}">{_e(s.name)}</text>')
        x += 24 + 8 * len(s.name)
    return out


def bar_chart(title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "",
              desc: str = "") -> str:
    """Vertical bars, one group per label; several series are stacked."""
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    n = max(len(labels), 1)
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    y_max, body = _y_axis(max(totals, default=0), unit, plot_h)
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.7)
    centre = [MARGIN_LEFT + slot * (i + 0.5) for i in range(len(labels))]
    for i, label in enumerate(labels):
        base = 0.0
        for s in series:
            value = s.values[i]
            if value <= 0:
                continue
            h = plot_h * value / y_max
            y = MARGIN_TOP + plot_h - plot_h * base / y_max - h
            body.append(f'<rect class="bar {_e(s.css_class)}" x="{centre[i] - bar_w / 2:.1f}" '
                        f'y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}">'
                        f'<title>{_e(label)}: {_e(_number(value))} {_e(s.name)}</title></rect>')
            base += value
    body += _x_labels(labels, centre, plot_h)
    body += _legend(series)
    return _frame(title, desc or title, body)


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series], unit: str = "",
               desc: str = "") -> str:
    """Lines through one point per label (e.g. a running total)."""
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    n = len(labels)
    top = max((v for s in series for v in s.values), default=0)
    y_max, body = _y_axis(top, unit, plot_h)
    step = plot_w / max(n - 1, 1)
    xs = [MARGIN_LEFT + step * i if n > 1 else MARGIN_LEFT + plot_w / 2 for i in range(n)]
    for s in series:
        points = " ".join(f"{x:.1f},{MARGIN_TOP + plot_h - plot_h * v / y_max:.1f}"
                          for x, v in zip(xs, s.values))
        body.append(f'<polyline class="line {_e(s.css_class)}" points="{points}"/>')
    body += _x_labels(labels, xs, plot_h)
    body += _legend(series)
    return _frame(title, desc or title, body)


def hbar_chart(title: str, items: Sequence[tuple[str, float]], unit: str = "",
               desc: str = "") -> str:
    """Horizontal bars, one per (label, value), largest first as given (top-N lists)."""
    row_h, label_w = 22, 150
    height = MARGIN_TOP + row_h * max(len(items), 1) + 24
    plot_w = WIDTH - label_w - MARGIN_RIGHT - 50
    top = max((v for _, v in items), default=0)
    step = nice_step(top)
    x_max = step * max(1, math.ceil(top / step))
    body = [f'<line class="axis" x1="{label_w}" x2="{label_w}" y1="{MARGIN_TOP - 4}" '
            f'y2="{MARGIN_TOP + row_h * max(len(items), 1)}"/>']
    if unit:
        body.append(f'<text x="{label_w}" y="{MARGIN_TOP - 10}">{_e(unit)}</text>')
    for i, (label, value) in enumerate(items):
        y = MARGIN_TOP + row_h * i
        w = plot_w * value / x_max
        shown = label if len(label) <= 22 else label[:21] + "…"
        body.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(shown)}</text>')
        body.append(f'<rect class="bar s1" x="{label_w}" y="{y + 3}" width="{w:.1f}" '
                    f'height="{row_h - 6}"><title>{_e(label)}: {_e(_number(value))}</title></rect>')
        body.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 15}">{_e(_number(value))}</text>')
    if not items:
        body.append(f'<text x="{label_w + 8}" y="{MARGIN_TOP + 15}">no data yet</text>')
    return _frame(title, desc or title, body, height=height)
