"""`bench ordered` finds the rate the ordered path sustains: what counts as holding a rate,
and the search over rates (the phases themselves run in tests/integration/test_bench.py)."""

from typing import Any

import pytest

from benchmarks.scenarios.ordered import RATE_STEP, _against_unordered, _not_held, _rate_search


def phase(*, messages: int = 4000, enqueue_seconds: float = 10.0, timeouts: int = 200, acks_lost: int = 200,
          violations: int = 0, overhead_p99: float = 120.0) -> dict[str, Any]:
    return {"messages": messages, "enqueue_seconds": enqueue_seconds, "timeouts": timeouts,
            "overhead_beyond_previous_ack_ms": {"p50": 30.0, "p99": overhead_p99},
            "sent_before_predecessor_ended": 0,
            "platform": {"acks_lost": acks_lost, "order_violations": violations, "delivery_order_violations": 0}}


def test_a_rate_holds_when_the_producer_kept_pace_only_lost_acks_timed_out_and_latency_held() -> None:
    assert _not_held(phase(), 400) is None
    # 1 % of the messages late is within what a rate may show.
    assert _not_held(phase(timeouts=240), 400) is None


@pytest.mark.parametrize(("changes", "reason"), [
    ({"timeouts": 241}, "41 of 4000 messages ended by their timeout while their ack was on its way"),
    ({"enqueue_seconds": 11.1}, "the producer fell behind (enqueued in 11.1 s, due in 10.0 s)"),
    ({"overhead_p99": 151.0}, "overhead beyond the previous ack p99 151 ms, over 150 ms"),
    ({"violations": 1}, "order broken (1 violations at the platform)"),
])
def test_a_rate_is_not_held_when_acks_came_late_the_producer_fell_behind_latency_grew_or_order_broke(
    changes: dict[str, Any], reason: str,
) -> None:
    assert _not_held(phase(**changes), 400) == reason


def search(holds_up_to: float, start: float, steps: int = 8) -> list[float]:
    """The rates a search from `start` tries when every rate up to `holds_up_to` holds."""
    tried: list[float] = []

    def run_at(rate: float) -> dict[str, Any]:
        tried.append(rate)
        return {"not_held": None if rate <= holds_up_to else "late acks"}

    phases = _rate_search(run_at, start, steps=steps)
    assert len(phases) == len(tried)
    return tried


def test_the_search_steps_up_while_rates_hold_and_stops_at_the_first_that_does_not() -> None:
    assert search(holds_up_to=400, start=300) == pytest.approx([300, 300 * RATE_STEP, 300 * RATE_STEP ** 2, 300 * RATE_STEP ** 3])


def test_the_search_steps_down_while_rates_fail_and_stops_at_the_first_that_holds() -> None:
    assert search(holds_up_to=320, start=400) == pytest.approx([400, 400 / RATE_STEP, 400 / RATE_STEP ** 2])


def test_the_search_stops_after_its_steps_whatever_it_found() -> None:
    assert len(search(holds_up_to=10_000, start=100, steps=3)) == 3
    assert len(search(holds_up_to=1, start=100, steps=2)) == 2


def test_the_sustained_rate_is_compared_with_the_unordered_baseline_in_throughput_and_in_cpu() -> None:
    unordered = {"messages_per_second": 450.0, "cpu_ms_per_message": {"worker": 2.0, "RabbitMQ": 1.0, "sandbox": 0.6}}
    sustained = {"rate": 225.04, "cpu_ms_per_message": {"shard owners": 3.0, "daphne": 2.0, "RabbitMQ": 2.2}}
    assert _against_unordered(sustained, unordered) == {
        "ordered_sustained_messages_per_second": 225.0,
        "ordered_sustained_vs_unordered_throughput": 0.5,
        "unordered_vs_ordered_sustained_cpu": 0.5,  # 3.6 ms against 7.2
    }
    # No rate held: nothing to compare.
    assert set(_against_unordered(None, unordered).values()) == {None}
