"""The start-up heap of a long-running process, left out of garbage collection.

A full collection walks every object the collector tracks. A daphne or a shard owner
holds about 140,000 of them from start-up alone (Django, DRF, Twisted, kombu, the
project's modules), which stay alive as long as the process: a full collection took
about 100 ms on the 2-core benchmark machine under load, during which the process
answers nothing. Python starts one whenever the objects that survived two younger
collections grew by a quarter since the last, which under load (requests waiting on
RabbitMQ's confirms live long enough to survive) is every second or two. Frozen, the
start-up objects are skipped, and a full collection walks only what the process made
since. The price: a frozen object that later becomes part of an unreachable cycle is
never freed, which start-up objects, alive as long as the process, do not.
"""

import gc


def heap_freeze() -> int:
    """Collect what start-up left as garbage, then leave every object alive now out of
    later collections; return how many that is."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
