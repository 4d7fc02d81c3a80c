"""A subscriber with a bug that kills its worker process: a poison message.

Loaded by workers through CARILLON_SUBSCRIBER_MODULES in tests/integration/test_pipeline_faults.py.
"""

import os
from typing import Any

from rest_framework import serializers

from notifications.channels import Channel
from notifications.events import EventType, event_type_register
from notifications.subscribers import Subscriber, subscriber_register


class PoisonData(serializers.Serializer[Any]):
    user_id = serializers.IntegerField()


def crash_the_worker(event: object) -> list[Any]:
    os._exit(13)  # as a segfault or an OOM kill would: no exception, no cleanup


POISON = event_type_register(EventType("test.poison", 1, PoisonData, category="test"))
subscriber_register(Subscriber("crashing_feed", Channel.INAPP, ("test.poison",), recipients=crash_the_worker))
