"""`manage.py bench pipeline`: Carillon's throughput beside raw kombu and raw Celery.

The benchmark never touches the data or queues of a running Carillon: it makes a
RabbitMQ virtual host and a SQLite database of its own, starts its own sandbox and
workers there, runs the measurements in a child process wired to them, and removes the
virtual host at the end.
"""

import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from config.env import BASE_DIR
from config.processes import ManagedProcess, free_port, python

INNER = "CARILLON_BENCH_INNER"
LOG_DIR = BASE_DIR / ".run" / "bench-logs"
CHANNEL_QUEUES = "carillon.default,carillon.email,carillon.sms,carillon.analytics,carillon.inapp"


class Command(BaseCommand):
    help = "Benchmark a scenario against its raw baselines in the same run (see docs/benchmarks.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("scenario", choices=["pipeline", "ordered"])
        parser.add_argument("--events", type=int, default=2000, help="events to publish (default 2000)")
        parser.add_argument("--concurrency", type=int, default=2, help="worker processes (default 2)")
        parser.add_argument("--quick", action="store_true", help="a small run that checks the tool works")
        parser.add_argument("--out", type=Path, default=BASE_DIR / "bench-results", help="where results go")
        parser.add_argument("--rooms", type=int, default=25_000, help="ordered: live rooms (default 25000)")
        parser.add_argument("--messages-per-room", type=int, default=2, help="ordered: messages per room (default 2)")

    def handle(self, *args: Any, scenario: str, events: int, concurrency: int, quick: bool, out: Path,
               **options: Any) -> None:
        if scenario == "ordered":
            self._ordered(concurrency=concurrency, quick=quick, out=out, **options)
            return
        if events < 1 or concurrency < 1:
            raise CommandError("--events and --concurrency take a whole number of at least 1")
        events = 20 if quick else events
        if os.environ.get(INNER):
            from notifications.bench import bench_pipeline_scenario

            call_command("migrate", verbosity=0)
            summary = bench_pipeline_scenario(events=events, concurrency=concurrency, out=out)
            for row in summary["results"]:
                self.stdout.write(f"{row['name']:<36} {row['items']:>7} in {row['seconds']:.2f}s = {row['per_second']:>9.1f}/s")
            self.stdout.write(f"pipeline: {summary['pipeline_events_per_second']} events/s; cost per delivery "
                              f"{summary['pipeline_cost_per_delivery_vs_celery_noop']}x a Celery no-op; "
                              f"latency ms {summary['pipeline_latency_ms']}")
            return
        self._run_isolated(events=events, concurrency=concurrency, out=out)

    def _ordered(self, *, rooms: int, messages_per_room: int, concurrency: int, quick: bool, out: Path,
                 **options: Any) -> None:
        """Ordered per-room delivery beside its baselines (rooms/bench.py)."""
        from rooms.bench import bench_ordered_isolated, bench_ordered_scenario, summary_lines

        if rooms < 1 or messages_per_room < 1 or concurrency < 1:
            raise CommandError("--rooms, --messages-per-room and --concurrency take a whole number of at least 1")
        if quick:
            rooms, messages_per_room = 20, 3
        if os.environ.get(INNER):
            summary = bench_ordered_scenario(rooms=rooms, messages_per_room=messages_per_room, out=out, quick=quick)
            for line in summary_lines(summary):
                self.stdout.write(line)
            return
        try:
            bench_ordered_isolated(rooms=rooms, messages_per_room=messages_per_room, concurrency=concurrency,
                                   out=out, quick=quick, say=self.stdout.write)
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc

    def _run_isolated(self, *, events: int, concurrency: int, out: Path) -> None:
        vhost = f"carillon-bench-{os.getpid()}"
        base = settings.RABBITMQ_MANAGEMENT_URL.rstrip("/")  # requests takes its user:password
        parts = urlsplit(settings.RABBITMQ_URL)
        user = parts.username or "guest"
        http = requests.Session()
        try:
            http.put(f"{base}/vhosts/{quote(vhost, safe='')}", timeout=10).raise_for_status()
        except requests.RequestException as exc:
            raise CommandError(f"cannot reach RabbitMQ's management API at {base} ({exc}); start Carillon's "
                               "services first (./platform/run) or set RABBITMQ_MANAGEMENT_URL") from exc
        http.put(f"{base}/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                 json={"configure": ".*", "write": ".*", "read": ".*"}, timeout=10).raise_for_status()
        database = BASE_DIR / ".run" / "bench.sqlite3"
        for stale in database.parent.glob("bench.sqlite3*"):
            stale.unlink()
        http_port, smtp_port = free_port(), free_port()
        env = {
            "RABBITMQ_URL": urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", "")),
            "DATABASE_URL": f"sqlite:///{database}",
            "EMAIL_URL": f"smtp://127.0.0.1:{smtp_port}",
            "TWILIO_API_BASE_URL": f"http://127.0.0.1:{http_port}",
            "MIXPANEL_API_BASE_URL": f"http://127.0.0.1:{http_port}",
            "DJANGO_LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "false",  # DEBUG keeps every SQL query in memory
        }
        processes: list[ManagedProcess] = []
        try:
            processes.append(ManagedProcess("sandbox", python("-m", "sandbox", "--http-port", str(http_port),
                             "--smtp-port", str(smtp_port), "--log-level", "WARNING"), env=env, log_dir=LOG_DIR))
            worker = ManagedProcess("worker", python("-m", "celery", "-A", "config.celery", "worker", "--loglevel",
                                    "WARNING", "--queues", CHANNEL_QUEUES, "--concurrency", str(concurrency),
                                    "--without-mingle", "--without-gossip"), env=env, log_dir=LOG_DIR)
            processes.append(worker)
            self.stdout.write(f"bench pipeline: {events} events, {concurrency} worker processes, vhost {vhost}")
            inner = python("manage.py", "bench", "pipeline", "--events", str(events),
                           "--concurrency", str(concurrency), "--out", str(out))
            subprocess.run(inner, cwd=BASE_DIR, env={**os.environ, **env, INNER: "1"}, check=True)  # noqa: S603
        finally:
            for process in processes:
                process.stop()
            http.delete(f"{base}/vhosts/{quote(vhost, safe='')}", timeout=30)

