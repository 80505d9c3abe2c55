"""Chart data as the JSON routes give it; ``static/console.js`` draws it as SVG."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Series:
    """One line of a chart.

    Parameters
    ----------
    name : str
        The legend's label.
    points : list of (float, float)
        (x, y) pairs in x order; a missing value is left out, not zero.
    """

    name: str
    points: list[tuple[float, float]]


@dataclass(frozen=True)
class Threshold:
    """A horizontal line across a chart, e.g. an ε budget.

    Parameters
    ----------
    name : str
        Its label.
    y : float
        Its height.
    """

    name: str
    y: float


@dataclass(frozen=True)
class Chart:
    """A line chart.

    Parameters
    ----------
    id : str
        The id of the page element it is drawn into.
    title : str
        Its title (also the SVG's accessible name).
    x_label, y_label : str
        The axes' labels.
    series : list of Series
        The lines.
    thresholds : list of Threshold
        Horizontal lines (budgets).
    x_ticks : list of str
        Labels of x = 0, 1, … when x is an index (times), else empty (x is a number).
    """

    id: str
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    thresholds: list[Threshold] = field(default_factory=list)
    x_ticks: list[str] = field(default_factory=list)
