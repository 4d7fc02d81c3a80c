"""Latency plots: by percentile, the x-axis in "nines" (90, 99, 99.9, ...), so that the
tail is as wide as the median; and over time, with the moments of a run's failures marked."""

from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

MAX_NINES = 6  # up to 99.9999%


def _curve(histogram: HdrHistogram) -> tuple[list[float], list[float]]:
    """x = 1 / (1 - percentile), so each "nine" is one decade; y in milliseconds."""
    xs, ys = [], []
    steps = 40 * MAX_NINES
    for step in range(steps + 1):
        nines = MAX_NINES * step / steps
        percentile = 100.0 * (1.0 - 10.0 ** (-nines))
        xs.append(10.0**nines)
        ys.append(histogram.get_value_at_percentile(percentile) / 1000.0)
    return xs, ys


def percentile_plot(series: dict[str, HdrHistogram], *, title: str, path: Path,
                    y: str = "latency from intended send time (ms, log)") -> None:
    """Overlay each named histogram's percentile curve in one PNG; `y` says what was measured."""
    figure, axes = _figure(9, 5.5)
    for name, histogram in series.items():
        if histogram.get_total_count():
            xs, ys = _curve(histogram)
            axes.plot(xs, ys, label=f"{name} (n={histogram.get_total_count():,})", linewidth=1.6)
    axes.set_xscale("log")
    axes.set_yscale("log")
    ticks = [10.0**n for n in range(MAX_NINES + 1)]
    axes.set_xticks(ticks)
    axes.set_xticklabels(["0%"] + [f"{100 - 10 ** (2 - n):.{max(0, n - 2)}f}%" for n in range(1, MAX_NINES + 1)])
    axes.set_xlim(1, 10.0**MAX_NINES)
    _save(figure, axes, x="percentile", y=y, title=title, path=path)


def timeline_plot(
    points: dict[str, list[tuple[float, float]]], *, marks: list[tuple[float, str]], title: str, path: Path
) -> None:
    """Each named series as (seconds from the start, latency in ms) dots, with the moments
    in `marks` drawn as labelled vertical lines: latency through a run and its failures."""
    figure, axes = _figure(10, 5.5)
    for name, series in points.items():
        if series:
            axes.scatter([x for x, _ in series], [y for _, y in series], s=6, label=f"{name} (n={len(series):,})")
    for at, label in marks:
        axes.axvline(at, color="black", linestyle="--", linewidth=0.9)
        axes.annotate(label, (at, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                      fontsize=8)
    axes.set_yscale("log")
    _save(figure, axes, x="seconds from the first publish", y="publish → provider accepted (ms, log)", title=title,
          path=path)


def _figure(width: float, height: float) -> tuple[Any, Any]:
    """A figure of its own (no pyplot state, no display: written to a file only)."""
    # Imported here: matplotlib takes most of a second to import, and the load generator
    # processes import the benchmark modules beside this one but never plot.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots()


def _save(figure: Any, axes: Any, *, x: str, y: str, title: str, path: Path) -> None:
    """Label, grid and legend as every plot of the benchmarks has them; write the PNG."""
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.4)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
