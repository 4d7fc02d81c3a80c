"""`manage.py bench SCENARIO`: Carillon beside its raw baseline, open loop, in one run.

The machinery is in `benchmarks/` (scenarios in `benchmarks/scenarios/`); this command
parses the options and isolates the run: it starts a Redis of its own, makes a SQLite
database and (for scenarios on the broker) a RabbitMQ virtual host of its own, runs the
scenarios in a child process wired to them, and removes them at the end. A running
Carillon's data, queues and topics are never touched.
"""

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from benchmarks.runner import LOG_DIR, Options
from benchmarks.scenarios import SCENARIOS
from benchmarks.servers import redis_start
from config.env import BASE_DIR, broker_urls

INNER = "CARILLON_BENCH_INNER"


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        return value

    parse.__name__ = kind.__name__
    return parse


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def _channels(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names no channel (e.g. inapp,email)")
    return names


class Command(BaseCommand):
    help = "Benchmark a scenario beside its raw baseline, open loop (see docs/benchmarks.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("scenario", nargs="?", choices=list(SCENARIOS),
                            help="what to measure; with --quick and no scenario, all of them")
        parser.add_argument("--rate", type=_positive(float), help="requests (publishes, events) per second")
        parser.add_argument("--size", type=_positive(int), help="message size in bytes (realtime)")
        parser.add_argument("--connections", type=_positive(int), help="client connections")
        parser.add_argument("--duration", type=_positive(float), default=30.0, help="measured seconds (30)")
        parser.add_argument("--warmup", type=_not_negative, default=5.0, help="seconds run, not recorded (5)")
        parser.add_argument("--out", type=Path, default=BASE_DIR / "bench-results", help="where results go")
        parser.add_argument("--quick", action="store_true", help="every scenario (or the one named) for ~2 s")
        parser.add_argument("--loadgens", type=_positive(int), help="load generator processes")
        parser.add_argument("--servers", type=_positive(int), help="server processes (fanout, connections)")
        parser.add_argument("--uvicorn", action="store_true",
                            help="fanout, connections: also serve Carillon with uvicorn beside daphne (is daphne the limit?)")
        parser.add_argument("--recipients", type=_positive(int), help="broadcast: users in the audience (10,000)")
        parser.add_argument("--channels", type=_channels, help="broadcast: channels, comma-separated (inapp,email)")
        parser.add_argument("--chunk-size", type=_positive(int),
                            help="broadcast: recipients per chunk (CARILLON_BROADCAST_CHUNK_SIZE, 500)")
        parser.add_argument("--email-via", choices=["smtp", "postmark"], default="smtp",
                            help="broadcast: email by SMTP (one session per chunk) or Postmark's batch API "
                                 "(a request per 500), both to the sandbox (smtp)")
        parser.add_argument("--baseline-tasks", type=_positive(int),
                            help="broadcast: raw Celery no-ops beside it (as many as recipients); the figure "
                                 "compared is their CPU per task, which fewer measure as well in less time")
        parser.add_argument("--reset-rate", type=_positive(float),
                            help="broadcast: password resets published a second while it runs, to a critical "
                                 "worker of their own; their publish -> provider latency is reported (none)")
        parser.add_argument("--kill-every", type=_positive(float), metavar="SECONDS",
                            help="ordered: SIGKILL the oldest shard owner this often; the other takes over (never)")
        parser.add_argument("--enqueue-batch", type=_positive(int), default=1, metavar="N",
                            help="ordered: each enqueuing thread hands the messages due (at most N) to "
                                 "room_messages_enqueue together; 1: room_message_enqueue per message (1)")
        parser.add_argument("--database", metavar="URL",
                            help="a PostgreSQL server (postgres://user@host:port/db) to run on instead of SQLite: "
                                 "the run creates a database of its own there and drops it at the end")

    def handle(self, *args: Any, **options: Any) -> None:
        scenario: str | None = options["scenario"]
        if scenario is None and not options["quick"]:
            raise CommandError(f"argument scenario: name one of {', '.join(SCENARIOS)} (or pass --quick for all)")
        names = [scenario] if scenario else list(SCENARIOS)
        if os.environ.get(INNER):
            self._run(names, options)
        else:
            self._run_isolated(names, database=options["database"])

    def _run(self, names: list[str], options: dict[str, Any]) -> None:
        quick = options["quick"]
        run = Options(
            rate=options["rate"], size=options["size"], connections=options["connections"],
            duration=2.0 if quick else options["duration"], warmup=0.5 if quick else options["warmup"],
            out=options["out"], quick=quick, loadgens=options["loadgens"], servers=options["servers"],
            uvicorn=options["uvicorn"], recipients=options["recipients"], channels=options["channels"],
            chunk_size=options["chunk_size"], email_via=options["email_via"], baseline_tasks=options["baseline_tasks"],
            reset_rate=options["reset_rate"],
            kill_every=options["kill_every"], enqueue_batch=options["enqueue_batch"],
        )
        call_command("migrate", verbosity=0)
        for name in names:
            self.stdout.write(f"== {name}")
            for summary in SCENARIOS[name].load()(run):
                self._print(summary)
            self.stdout.flush()

    def _print(self, summary: dict[str, Any]) -> None:
        self.stdout.write(f"-- {summary['scenario']}: {summary['label']}")
        for row in summary["series"]:
            latency = row["latency_ms"]
            per_cpu = row.get("received_per_server_cpu_second")
            self.stdout.write(
                f"   {row['name']:<30} asked {row['rate_asked']:>8g}/s got {row['rate_achieved']:>8g}/s "
                f"recv {row['received_per_second']:>9g}/s err {row['errors']:>4}  ms p50 {latency['p50']} "
                f"p99 {latency['p99']} p99.99 {latency['p99.99']} max {latency['max']}"
                + (f"  {per_cpu:,}/cpu-s" if per_cpu else "")
            )
        if summary["ratios"]:
            self.stdout.write(f"   ratios {summary['ratios']}")
        for goal, outcome in summary.get("goals", {}).items():
            figures = ", ".join(f"{key} {value}" for key, value in outcome.items() if key != "met")
            self.stdout.write(f"   goal {goal}: {figures} -> {'met' if outcome['met'] else 'NOT met'}")
        if "checks" in summary:
            checks = {key: value for key, value in summary["checks"].items() if key != "progress"}
            self.stdout.write(f"   checks {checks}")

    def _run_isolated(self, names: list[str], *, database: str | None) -> None:
        work = BASE_DIR / ".run" / f"bench-{os.getpid()}"
        work.mkdir(parents=True, exist_ok=True)
        database_url = f"sqlite:///{work / 'bench.sqlite3'}"
        postgres = None
        if database:
            postgres = f"carillon_bench_{os.getpid()}"
            database_url = self._postgres_create(database, postgres)
        redis, redis_url = redis_start(work=work, log_dir=LOG_DIR)
        env = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "REALTIME_REDIS_URL": redis_url,
            "CARILLON_BENCH_REDIS_PID": str(redis.process.pid),
            "DJANGO_LOG_LEVEL": "WARNING",
            "DJANGO_DEBUG": "false",  # DEBUG keeps every SQL query in memory
            # Clients of a long connection ramp connect minutes after the token was made.
            "REALTIME_TOKEN_MAX_AGE_SECONDS": "86400",
            # 1 MB messages: a 1000-message history per topic would hold a gigabyte in Redis.
            "REALTIME_HISTORY_MAX_LENGTH": "100",
            INNER: "1",
        }
        vhost = None
        try:
            if any(SCENARIOS[name].needs_rabbitmq for name in names):
                vhost = f"carillon-bench-{os.getpid()}"
                env["RABBITMQ_URL"] = self._vhost_create(vhost)
            self.stdout.write(f"bench {' '.join(names)}: own Redis {redis_url}, database and logs in {work}, "
                              f"{LOG_DIR}" + (f", RabbitMQ vhost {vhost}" if vhost else ""))
            self.stdout.flush()
            inner = [sys.executable, "manage.py", "bench", *sys.argv[2:]]
            result = subprocess.run(inner, cwd=BASE_DIR, env={**os.environ, **env}, check=False)  # noqa: S603
            if result.returncode:
                raise CommandError(f"the benchmark failed (exit {result.returncode}); server logs in {LOG_DIR}")
        finally:
            redis.stop()
            if vhost:
                self._vhost_delete(vhost)
            if database and postgres:
                self._postgres_drop(database, postgres)
            shutil.rmtree(work, ignore_errors=True)

    def _postgres_admin(self, server: str) -> Any:
        import psycopg

        parts = urlsplit(server)
        try:
            return psycopg.connect(urlunsplit(("postgresql", parts.netloc, "/postgres", "", "")), autocommit=True)
        except psycopg.Error as exc:
            raise CommandError(f"--database: cannot reach PostgreSQL at {parts.hostname}:{parts.port} ({exc}); "
                               "start one (platform/test starts the suite's) or fix the URL") from exc

    def _postgres_create(self, server: str, name: str) -> str:
        """A database of the run's own on that server; answer its URL."""
        with self._postgres_admin(server) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(server)
        return urlunsplit(("postgres", parts.netloc, f"/{name}", "", ""))

    def _postgres_drop(self, server: str, name: str) -> None:
        with self._postgres_admin(server) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _vhost_create(self, vhost: str) -> str:
        base = settings.RABBITMQ_MANAGEMENT_URL.rstrip("/")  # requests takes its user:password
        # A cluster's nodes share virtual hosts: the bench's runs on the first node.
        parts = urlsplit(broker_urls(settings.RABBITMQ_URL)[0])
        try:
            requests.put(f"{base}/vhosts/{quote(vhost, safe='')}", timeout=10).raise_for_status()
        except requests.RequestException as exc:
            raise CommandError(f"cannot reach RabbitMQ's management API at {base} ({exc}); start Carillon's "
                               "services first (./platform/run) or set RABBITMQ_MANAGEMENT_URL") from exc
        requests.put(f"{base}/permissions/{quote(vhost, safe='')}/{quote(parts.username or 'guest', safe='')}",
                     json={"configure": ".*", "write": ".*", "read": ".*"}, timeout=10).raise_for_status()
        return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))

    def _vhost_delete(self, vhost: str) -> None:
        base = settings.RABBITMQ_MANAGEMENT_URL.rstrip("/")
        requests.delete(f"{base}/vhosts/{quote(vhost, safe='')}", timeout=30)
