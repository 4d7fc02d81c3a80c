"""What every scenario shares: options, results (series beside their baseline), the files
written per run (.hgrm, JSON summary, PNG plot), and the isolated services a run uses."""

import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

from benchmarks.hdr import histogram_merge, histogram_percentiles_ms, histogram_write_hgrm
from benchmarks.plot import percentile_plot
from config.env import BASE_DIR

LOG_DIR = BASE_DIR / ".run" / "bench-logs"


@dataclass(frozen=True)
class Options:
    """The command line of `manage.py bench`; None means "the scenario's presets"."""

    rate: float | None = None
    size: int | None = None
    connections: int | None = None
    duration: float = 30.0
    warmup: float = 5.0
    out: Path = BASE_DIR / "bench-results"
    quick: bool = False
    loadgens: int | None = None
    servers: int | None = None
    uvicorn: bool = False  # fanout, connections: also serve Carillon with uvicorn, beside daphne
    recipients: int | None = None  # broadcast: users in the audience
    channels: tuple[str, ...] | None = None  # broadcast: the channels sent and measured
    chunk_size: int | None = None  # broadcast: CARILLON_BROADCAST_CHUNK_SIZE of its worker
    email_via: str = "smtp"  # broadcast: "smtp" or "postmark" (the sandbox's batch API)
    baseline_tasks: int | None = None  # broadcast: no-op tasks in the raw baseline (the recipients)
    reset_rate: float | None = None  # broadcast: password resets a second while it runs (none)
    kill_every: float | None = None  # ordered: seconds between SIGKILLs of the active shard owner (never)
    enqueue_batch: int = 1  # ordered: messages an enqueuing thread hands over together, at most


@dataclass
class Series:
    """One measured system in a run: Carillon, or the raw baseline beside it."""

    name: str
    latency: HdrHistogram
    service: HdrHistogram | None
    asked_rate: float  # requests per second asked of the load generators
    sent: int  # requests sent in the measured window
    received: int  # replies (deliveries) received in the measured window
    seconds: float  # length of the measured window
    errors: int = 0
    server: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def merged(cls, name: str, results: list[dict[str, Any]], *, asked_rate: float, seconds: float,
               server: dict[str, Any], **extra: Any) -> "Series":
        """A series from the results of several load generator processes."""
        item = cls(
            name=name,
            latency=histogram_merge([r["latency"] for r in results]),
            service=histogram_merge([r["service"] for r in results]) if any(r.get("service") for r in results) else None,
            asked_rate=asked_rate,
            sent=sum(r.get("sent", 0) for r in results),
            received=sum(r.get("received", 0) for r in results),
            errors=sum(r.get("errors", 0) for r in results),
            seconds=seconds,
            server=server,
            extra=extra,
        )
        if any("received_in_window" in r for r in results):
            item.extra["received_in_window"] = sum(r.get("received_in_window", 0) for r in results)
        return item

    def summary(self) -> dict[str, Any]:
        cpu = self.server.get("cpu_seconds") or 0.0
        return {
            "name": self.name,
            "rate_asked": self.asked_rate,
            "rate_achieved": round(self.sent / self.seconds, 1) if self.seconds else 0.0,
            "sent": self.sent,
            "received": self.received,
            "received_per_second": round(self.received / self.seconds, 1) if self.seconds else 0.0,
            "errors": self.errors,
            "latency_ms": histogram_percentiles_ms(self.latency),
            "service_time_ms": histogram_percentiles_ms(self.service) if self.service else None,
            "server": self.server,
            # What the server delivered while its CPU was measured (receipt inside the window).
            "received_per_server_cpu_second": round(self.extra.get("received_in_window", self.received) / cpu)
            if cpu else None,
            **self.extra,
        }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "system": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def report_write(*, out: Path, scenario: str, label: str, series: list[Series], config: dict[str, Any],
                 ratios: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write one run's files: an .hgrm per series (latency, and service time when recorded),
    the JSON summary (with `extra`'s keys: a scenario's own results) and the PNG overlaying
    Carillon and its baseline. Return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{scenario}-{_slug(label)}-{time.strftime('%Y%m%d-%H%M%S')}"
    files = []
    for item in series:
        path = out / f"{stem}-{_slug(item.name)}.hgrm"
        histogram_write_hgrm(item.latency, path)
        files.append(path.name)
        if item.service is not None:
            path = out / f"{stem}-{_slug(item.name)}-service.hgrm"
            histogram_write_hgrm(item.service, path)
            files.append(path.name)
    plot = out / f"{stem}.png"
    percentile_plot({item.name: item.latency for item in series}, title=f"{scenario}: {label}", path=plot)
    files.append(plot.name)
    summary = {
        "scenario": scenario,
        "label": label,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": config,
        "series": [item.summary() for item in series],
        "ratios": ratios or {},
        "files": files,
        **(extra or {}),
    }
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)
