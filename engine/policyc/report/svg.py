"""Two small charts as inline SVG: stacked bars and a heat map.

Hand-drawn rather than a charting library: the report must be one self-contained file that
needs no script to read and prints cleanly, and these two charts are a few dozen lines each
(a library would add JavaScript or a large dependency for the same picture). Every mark has a
``<title>`` with its exact figure, and every chart has a text table beside it in the report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

#: Colours by decision: readable on white and distinct in greyscale print (light to dark).
DECISION_COLOURS = {
    "allowed": "#9ecae1", "masked": "#3182bd", "approved": "#31a354", "held": "#fdae6b",
    "blocked": "#e6550d", "denied": "#a63603", "expired": "#756bb1", "error": "#636363",
    "accepted": "#3182bd", "refused": "#e6550d",
}
_FALLBACK = ("#bdbdbd", "#969696", "#737373", "#525252")


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _nice_max(value: float) -> int:
    """The smallest 1/2/5 x 10^k at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def stacked_bars(categories: Sequence[str], series: Mapping[str, Sequence[int]], *,
                 title: str, width: int = 760, height: int = 240) -> str:
    """Bars per category (a day), stacked by series (a decision), with a legend."""
    left, right, top, bottom = 56, 12, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for values in series.values()) for i in range(len(categories))]
    top_value = _nice_max(max(totals, default=0))
    n = max(len(categories), 1)
    slot = plot_w / n
    bar = max(min(slot * 0.8, 40), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f"<title>{escape(title)}</title>"]
    for k in range(5):  # grid and y labels
        value = top_value * k / 4
        y = top + plot_h - plot_h * k / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{_num(y)}" y2="{_num(y)}" '
                     'stroke="#e0e0e0"/>')
        parts.append(f'<text x="{left - 6}" y="{_num(y + 4)}" text-anchor="end" '
                     f'font-size="11">{int(value):,}</text>')
    colours = _colours(series)
    for i, category in enumerate(categories):
        x = left + slot * i + (slot - bar) / 2
        y = top + plot_h
        for name, values in series.items():
            value = values[i]
            if not value:
                continue
            h = plot_h * value / top_value
            y -= h
            parts.append(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(bar)}" '
                         f'height="{_num(h)}" fill="{colours[name]}">'
                         f"<title>{escape(category)}: {value:,} {escape(name)}</title></rect>")
    step = max(1, round(n / 12))  # at most about a dozen x labels
    for i in range(0, len(categories), step):
        x = left + slot * i + slot / 2
        parts.append(f'<text x="{_num(x)}" y="{height - bottom + 16}" text-anchor="middle" '
                     f'font-size="11">{escape(categories[i])}</text>')
    x = left
    for name in series:  # legend along the top
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{colours[name]}"/>'
                     f'<text x="{x + 14}" y="17" font-size="11">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    parts.append("</svg>")
    return "".join(parts)


def heat_map(rows: Sequence[str], columns: Sequence[str], values: Mapping[tuple[str, str], int],
             *, title: str, unit: str = "rows") -> str:
    """A grid of rows x columns shaded by value (white: none), each cell labelled."""
    cell_w, cell_h = 64, 26
    label_w = max([len(r) for r in rows] + [8]) * 7 + 12
    head_h = max([len(c) for c in columns] + [8]) * 6 + 16
    width = label_w + cell_w * max(len(columns), 1) + 10
    height = head_h + cell_h * max(len(rows), 1) + 10
    peak = max(values.values(), default=0) or 1
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">',
             f"<title>{escape(title)}</title>"]
    for j, column in enumerate(columns):
        x = label_w + cell_w * j + cell_w / 2
        parts.append(f'<text transform="translate({_num(x)},{head_h - 6}) rotate(-45)" '
                     f'font-size="11">{escape(column)}</text>')
    for i, row in enumerate(rows):
        y = head_h + cell_h * i
        parts.append(f'<text x="{label_w - 6}" y="{y + 17}" text-anchor="end" '
                     f'font-size="11">{escape(row)}</text>')
        for j, column in enumerate(columns):
            value = values.get((row, column), 0)
            share = value / peak
            shade = _shade(share) if value else "#ffffff"
            ink = "#ffffff" if share > 0.55 else "#222222"
            x = label_w + cell_w * j
            parts.append(f'<rect x="{x}" y="{y}" width="{cell_w - 2}" height="{cell_h - 2}" '
                         f'fill="{shade}" stroke="#d0d0d0">'
                         f"<title>{escape(row)} / {escape(column)}: {value:,} {escape(unit)}"
                         f"</title></rect>")
            if value:
                parts.append(f'<text x="{x + cell_w / 2 - 1}" y="{y + 17}" text-anchor="middle" '
                             f'font-size="10" fill="{ink}">{_short(value)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    return f"{value:,}"


def _shade(share: float) -> str:
    """White to dark blue: light enough to print, dark enough to tell apart."""
    low, high = (222, 235, 247), (8, 48, 107)
    share = 0.15 + 0.85 * max(0.0, min(1.0, share))
    return "#" + "".join(f"{round(a + (b - a) * share):02x}" for a, b in zip(low, high,
                                                                            strict=True))


def _colours(series: Mapping[str, Sequence[int]]) -> dict[str, str]:
    spare = iter(_FALLBACK * 4)
    return {name: DECISION_COLOURS.get(name) or next(spare) for name in series}
