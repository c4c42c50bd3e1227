"""Plots of series over rounds (reports and comparisons): points with their 95% interval bars, rejected rounds
marked, and axes that do not magnify noise. Written with matplotlib's object API (no pyplot: no global state, no
screen)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from iterdpo.core.atomic import atomic_write
from iterdpo.rundir.runs import Report, Series

# A panel's y-axis spans at least this share of its largest value's size, so a change smaller than that (a time that
# jitters by a percent) does not fill the panel; and a panel of values within [0, 1] (rates, shares, probabilities)
# spans at least MIN_UNIT_SPAN of that range, so that one pair of 48 (0.02) is not drawn as a trend.
MIN_SPAN_SHARE = 0.1
MIN_UNIT_SPAN = 0.1


def error_bars(values: list[float], low: list[float], high: list[float]) -> list[list[float]]:
    """matplotlib's [below, above] lengths of each interval. An interval may miss its point by a rounding error
    (a Wilson bound of 7e-18 at a rate of 0, in rows written before that bound was exact): a bar is never negative."""
    return [[max(0.0, v - lo) for v, lo in zip(values, low)], [max(0.0, hi - v) for v, hi in zip(values, high)]]


def draw(ax: Any, xs: list, ys: list, low: list | None, high: list | None, label: str,
         xerr: tuple[list, list] | None = None) -> Any:
    """A line with markers, and the points' interval bars where known."""
    line, = ax.plot(xs, ys, marker="o", markersize=4, label=label)
    yerr = None if low is None else error_bars(ys, low, high)
    xbars = None if xerr is None or xerr[0] is None else error_bars(xs, *xerr)
    if yerr is not None or xbars is not None:
        ax.errorbar(xs, ys, yerr=yerr, xerr=xbars, fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.6)
    return line


def honest_limits(ax: Any, series: list[Series]) -> None:
    """Widens the y-axis around the data (intervals included) to at least `MIN_SPAN_SHARE` of the largest value's
    size, or `MIN_UNIT_SPAN` for values within [0, 1] (kept within [0, 1] where it can be): what the data span
    otherwise, matplotlib shows as is."""
    values = [v for s in series for v in s.y + (s.low or []) + (s.high or []) if math.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    unit = 0.0 <= low and high <= 1.0
    floor = max(MIN_SPAN_SHARE * max(abs(low), abs(high)), MIN_UNIT_SPAN if unit else 0.0)
    if high - low < floor:
        bottom = (low + high) / 2 - 0.55 * floor
        if unit:
            bottom = min(max(bottom, -0.01 * floor), 1.0 - 1.1 * floor)
        ax.set_ylim(bottom, bottom + 1.1 * floor)


def plot_rounds(report: Report, panels: list[list[Series]], path: Path, title: str) -> dict[str, Any]:
    """One figure, one panel per series group; rejected rounds shaded and crossed. Returns what was drawn."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.2 * nrows), layout="constrained")
    fig.suptitle(title)
    for ax, group in zip(fig.subplots(nrows, ncols, squeeze=False).flat, panels):
        for series in group:
            by_round = dict(zip(series.x, series.y))
            ys = [by_round.get(r, math.nan) for r in report.rounds]  # NaN: a visible gap, not a silent join
            line, = ax.plot(report.rounds, ys, marker="o", markersize=4, label=series.key)
            if series.low is not None:  # the 95% interval of each point
                ax.errorbar(series.x, series.y, yerr=error_bars(series.y, series.low, series.high),
                            fmt="none", ecolor=line.get_color(), capsize=3, alpha=0.7)
            bad = [(x, y) for x, y in zip(series.x, series.y) if x in report.rejected]
            ax.plot([x for x, _ in bad], [y for _, y in bad], "x", color="red", markersize=10, mew=2)
        for r in report.rejected:
            ax.axvspan(r - 0.4, r + 0.4, color="red", alpha=0.12, lw=0)
        honest_limits(ax, group)
        ax.set_title(", ".join(s.key for s in group), fontsize=9)
        ax.set_xlabel("round (red: rejected by the gate)" if report.rejected else "round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(report.rounds) - 0.5, max(report.rounds) + 0.5)  # same rounds on every panel
        ax.grid(alpha=0.3)
        if len(group) > 1:
            ax.legend(fontsize=7)
    for ax in list(fig.axes)[len(panels):]:
        ax.set_visible(False)
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    series = {s.key: {"x": s.x, "y": s.y, **({"low": s.low, "high": s.high} if s.low is not None else {})}
              for group in panels for s in group}
    return {"title": title, "rejected_rounds": report.rejected, "series": series}
