"""The Procfile's Celery workers: every queue of the critical app has a consumer, the
lanes that must not wait for each other never share a worker, and on SQLite the bulk
lane's workers wait for the write lock behind the others."""

from benchmarks.servers import procfile_workers
from notifications.channels import Channel, Lane
from notifications.queues import bulk_lane_worker, channel_queue_name, task_queues


def _critical_workers() -> dict[str, set[str]]:
    """Each critical-app worker of the Procfile: its process name and the queues it consumes."""
    return {worker.name: set(worker.queues) for worker in procfile_workers()}


def test_every_queue_of_the_critical_app_has_a_worker() -> None:
    consumed = set().union(*_critical_workers().values())

    assert {queue.name for queue in task_queues()} - consumed == set()


def test_no_worker_takes_both_lanes() -> None:
    bulk = {channel_queue_name(channel, Lane.BULK) for channel in Channel.values}

    mixed = {name: queues for name, queues in _critical_workers().items() if queues & bulk and queues - bulk}

    assert mixed == {}


def test_in_app_broadcasts_have_a_worker_of_their_own() -> None:
    # In-app is what a user sees while on the site; a broadcast's emails take seconds per
    # chunk and would otherwise share the same processes, chunk for chunk.
    inapp = channel_queue_name(Channel.INAPP, Lane.BULK)

    owners = [queues for queues in _critical_workers().values() if inapp in queues]

    assert owners == [{inapp}]


def test_the_bulk_lanes_workers_and_only_they_yield_sqlites_write_lock() -> None:
    yielding = {name for name, queues in _critical_workers().items() if bulk_lane_worker(queues)}

    assert yielding == {"bulk-inapp-worker", "bulk-worker"}
    assert not bulk_lane_worker({"carillon.default"})  # nor one that takes no bulk work
