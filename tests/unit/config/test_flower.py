"""Flower's capture of the workers' task events keeps trying a broker that is away, every
few seconds however long the outage lasts (config/flower_events.py)."""

import threading
from types import SimpleNamespace

import pytest
from celery import Celery

from config import flower_events as flower_conf
from core.processes import free_port


class _Enough(BaseException):
    """Ends the capture loop once the test has seen what it needs."""


def test_the_event_capture_tries_an_unreachable_broker_again_at_a_bounded_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flower_conf, "EVENTS_RETRY_MAX_SECONDS", 0.2)
    waits: list[float] = []

    def retrying(exc: Exception, interval: float) -> None:
        waits.append(interval)
        if len(waits) == 10:
            raise _Enough

    monkeypatch.setattr(flower_conf, "_events_retry", retrying)
    nobody = Celery(broker=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    flower_events = SimpleNamespace(capp=nobody, on_event=lambda event: None)

    def capture() -> None:
        try:
            flower_conf.events_capture(flower_events)
        except _Enough:
            pass

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    thread.join(timeout=20)

    assert not thread.is_alive()
    # Growing at first, then every 0.2 s (Flower's own loop doubles its wait after each
    # failure, without limit).
    assert waits == sorted(waits) and waits[0] < 0.2
    assert waits[-4:] == [pytest.approx(0.2)] * 4


def test_flowers_configuration_puts_this_capture_in_place_of_its_own() -> None:
    from flower import events

    import config.flower  # noqa: F401 - Flower executes it; importing it does the same

    assert events.Events.run is flower_conf.events_capture
