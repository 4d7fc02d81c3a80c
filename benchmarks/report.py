"""Markdown tables from a directory of `manage.py bench` JSON summaries (for docs/benchmarks.md).

    python -m benchmarks.report bench-results/
"""

import argparse
import json
from pathlib import Path
from typing import Any


def _ms(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def report_table(summaries: list[dict[str, Any]]) -> str:
    """One row per series: rates, latency percentiles (ms), server cost."""
    lines = [
        "| scenario | run | series | asked/s | achieved/s | received/s | p50 | p99 | p99.9 | p99.99 | p99.9999 "
        "| max | errors | server CPU | per server CPU-s | KiB/conn |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for summary in summaries:
        for row in summary["series"]:
            latency = row["latency_ms"]
            server = row.get("server") or {}
            errors = row["errors"] + (row.get("deliveries_missing") or 0)
            kib = row.get("kib_per_connection")
            lines.append(
                f"| {summary['scenario']} | {summary['label']} | {row['name']} | {row['rate_asked']:,.6g} "
                f"| {row['rate_achieved']:,.6g} | {row['received_per_second']:,.6g} | "
                + " | ".join(_ms(latency[key]) for key in ("p50", "p99", "p99.9", "p99.99", "p99.9999", "max"))
                + f" | {errors:,} | {server.get('cpu_utilisation', '–')} "
                f"| {row.get('received_per_server_cpu_second') or '–'} | {kib if kib is not None else '–'} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    summaries = [json.loads(path.read_text()) for path in sorted(args.directory.glob("*.json"))]
    summaries.sort(key=lambda s: (s["scenario"], s["finished_at"]))
    print(report_table(summaries))
    print()
    for summary in summaries:
        print(f"- {summary['scenario']} {summary['label']}: {summary['ratios']}")


if __name__ == "__main__":
    main()
