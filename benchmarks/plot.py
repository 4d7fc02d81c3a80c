"""Percentile plots: latency by percentile, the x-axis in "nines" (90, 99, 99.9, ...), so
that the tail is as wide as the median."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from hdrh.histogram import HdrHistogram  # noqa: E402

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


def percentile_plot(series: dict[str, HdrHistogram], *, title: str, path: Path) -> None:
    """Overlay each named histogram's percentile curve in one PNG."""
    figure, axes = plt.subplots(figsize=(9, 5.5))
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
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency from intended send time (ms, log)")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.4)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
