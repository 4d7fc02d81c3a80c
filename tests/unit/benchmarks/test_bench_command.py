"""`manage.py bench` refuses what it cannot run, naming the argument, before it starts
anything (the scenarios themselves run in tests/integration/test_bench.py)."""

import pytest
from django.core.management import CommandError, call_command


def refusal(*args: str) -> str:
    with pytest.raises(CommandError) as refused:
        call_command("bench", *args)
    return str(refused.value)


def test_bench_refuses_an_unknown_scenario_naming_it() -> None:
    message = refusal("fireworks")

    assert "fireworks" in message and "pipeline" in message


@pytest.mark.parametrize(("argument", "value"), [("--rate", "-5"), ("--duration", "0"), ("--connections", "many")])
def test_bench_refuses_a_bad_argument_naming_it(argument: str, value: str) -> None:
    assert f"argument {argument}" in refusal("realtime", argument, value)


def test_bench_without_a_scenario_asks_for_one() -> None:
    assert "scenario" in refusal()
