"""Geometry of the score-distribution plot the review page draws as inline SVG.

The page template turns these numbers into ``<rect>``/``<line>``/``<text>`` elements (Jinja2
autoescapes everything); nothing here produces markup, so no data can inject any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

WIDTH, HEIGHT = 360, 180
LEFT, RIGHT, TOP, BOTTOM = 34, 16, 14, 26


@dataclass(frozen=True)
class Bar:
    """One histogram bar in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    count: int
    low: float
    high: float


@dataclass(frozen=True)
class Plot:
    """Everything the template draws: bars per series, axis ticks, an optional marker."""

    width: int = WIDTH
    height: int = HEIGHT
    series: dict[str, list[Bar]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    marker_x: float | None = None
    marker_label: str = ""
    empty: bool = True
    plot_left: int = LEFT
    plot_right: int = WIDTH - RIGHT
    plot_top: int = TOP
    plot_bottom: int = HEIGHT - BOTTOM


def score_plot(histogram: dict[str, Any], *, marker: float | None = None) -> Plot:
    """Lay out the positive/negative score histograms (from the loader) and a marker.

    Args:
        histogram: ``{"edges": (b+1,), "positive": (b,), "negative": (b,)}``.
        marker: a score to mark (the reviewed pair's), drawn when inside the edges.

    Returns:
        A :class:`Plot`; ``empty`` when there is nothing to draw.
    """
    edges = [float(e) for e in histogram.get("edges", [])]
    if len(edges) < 2:
        return Plot()
    counts = {name: [int(c) for c in histogram.get(name, [])] for name in ("positive", "negative")}
    tallest = max([1, *counts["positive"], *counts["negative"]])
    low, high = edges[0], edges[-1]
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(score: float) -> float:
        return round(LEFT + (score - low) / (high - low) * inner_w, 2)

    series = {
        name: [
            Bar(
                x=x_of(edges[i]),
                y=round(TOP + inner_h * (1 - c / tallest), 2),
                width=round(max(x_of(edges[i + 1]) - x_of(edges[i]) - 1, 0.5), 2),
                height=round(inner_h * c / tallest, 2),
                count=c,
                low=edges[i],
                high=edges[i + 1],
            )
            for i, c in enumerate(values)
            if c
        ]
        for name, values in counts.items()
    }
    steps = 4
    x_ticks = [
        (x_of(low + (high - low) * k / steps), f"{low + (high - low) * k / steps:.2f}") for k in range(steps + 1)
    ]
    y_ticks = [(round(TOP + inner_h * (1 - k / 2), 2), str(round(tallest * k / 2))) for k in range(3)]
    inside = marker is not None and low <= marker <= high
    return Plot(
        series=series,
        totals={name: sum(values) for name, values in counts.items()},
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        marker_x=x_of(marker) if inside else None,
        marker_label=f"{marker:.3f}" if inside else "",
        empty=False,
    )
