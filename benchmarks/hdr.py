"""Latency histograms (HdrHistogram, microseconds) and their `.hgrm` percentile files."""

from pathlib import Path

from hdrh.histogram import HdrHistogram

# 1 µs to 10 minutes at 3 significant digits: a stall of minutes is still recorded, not clipped.
LOWEST_US = 1
HIGHEST_US = 600_000_000
SIGNIFICANT_DIGITS = 3
# The percentiles every summary reports, up to six nines: the tail is where users wait.
PERCENTILES = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999, 99.9999, 100.0)


def histogram_new() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


def histogram_record(histogram: HdrHistogram, seconds: float) -> None:
    """Record a latency given in seconds; clamp it into the histogram's range."""
    histogram.record_value(min(HIGHEST_US, max(LOWEST_US, int(seconds * 1_000_000))))


def histogram_encode(histogram: HdrHistogram) -> str:
    """A compact text form that crosses a process boundary (a load generator's result)."""
    return histogram.encode().decode()


def histogram_merge(encoded: list[str]) -> HdrHistogram:
    total = histogram_new()
    for text in encoded:
        if text:
            total.add(HdrHistogram.decode(text.encode()))
    return total


def histogram_percentiles_ms(histogram: HdrHistogram) -> dict[str, float | None]:
    """{"p50": ms, ..., "p99.9999": ms, "max": ms}; None everywhere when nothing was recorded."""
    empty = histogram.get_total_count() == 0
    result: dict[str, float | None] = {}
    for percentile in PERCENTILES:
        key = "max" if percentile == 100.0 else f"p{percentile:g}"
        value = histogram.get_max_value() if percentile == 100.0 else histogram.get_value_at_percentile(percentile)
        result[key] = None if empty else round(value / 1000, 3)
    return result


def histogram_write_hgrm(histogram: HdrHistogram, path: Path) -> None:
    """The percentile distribution in HdrHistogram's text format, values in milliseconds."""
    with path.open("wb") as out:
        if histogram.get_total_count():
            histogram.output_percentile_distribution(out, 1000.0)
