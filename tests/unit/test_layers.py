"""The code's dependencies point one way: no import cycles; config/ and core/ are leaves.

Imports inside functions count: a lazy import that only hides a cycle is still a cycle.
"""

import grimp
import pytest

PACKAGES = ("config", "core", "notifications", "realtime", "rooms", "benchmarks", "sandbox")
APPS = ("notifications", "realtime", "rooms", "benchmarks")
# What config/ holds besides its composition roots (urls, asgi), which must import the
# apps to wire them: these create the Celery apps and read settings. core/ is what every
# app builds on (errors, health, metrics registry, process harness): it imports none.
LEAVES = (
    "config.celery", "config.background", "config.task_routing", "config.beat", "config.env", "config.settings",
    "core",
)


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every group of modules that import each other, directly or through others."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = lowest[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in on_stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_back_through_others(graph: grimp.ImportGraph) -> None:
    assert import_cycles(graph) == []


@pytest.mark.parametrize("leaf", LEAVES)
def test_config_and_core_import_no_app_code(
    graph: grimp.ImportGraph, leaf: str
) -> None:
    reached = {
        app: graph.find_shortest_chains(importer=leaf, imported=app, as_packages=True) for app in APPS
    }
    assert {app: sorted(chains) for app, chains in reached.items() if chains} == {}
