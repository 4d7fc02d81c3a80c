"""The scenarios of `manage.py bench`, by name.

A scenario is a function `(Options) -> list[summary dict]` that runs Carillon beside its
raw baseline and writes its files with `benchmarks.runner.report_write`. To add one, add a
line here; `needs_rabbitmq` makes the command give the run its own RabbitMQ virtual host.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.runner import Options


@dataclass(frozen=True)
class Scenario:
    path: str  # "module:function", imported only when the scenario runs
    needs_rabbitmq: bool = False

    def load(self) -> Callable[[Options], list[dict[str, Any]]]:
        module, _, name = self.path.partition(":")
        function: Callable[[Options], list[dict[str, Any]]] = getattr(importlib.import_module(module), name)
        return function


SCENARIOS: dict[str, Scenario] = {
    "pipeline": Scenario("benchmarks.scenarios.pipeline:pipeline_scenario", needs_rabbitmq=True),
    "realtime": Scenario("benchmarks.scenarios.realtime:realtime_scenario"),
    "fanout": Scenario("benchmarks.scenarios.fanout:fanout_scenario"),
    "connections": Scenario("benchmarks.scenarios.connections:connections_scenario"),
    "ordered": Scenario("benchmarks.scenarios.ordered:ordered_scenario", needs_rabbitmq=True),
    "broadcast": Scenario("benchmarks.scenarios.broadcast:broadcast_scenario", needs_rabbitmq=True),
}
