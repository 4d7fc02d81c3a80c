"""Presence across processes, debounced, readable over the API and as events."""

import asyncio

import pytest
import redis
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from realtime.auth import realtime_token_create
from realtime.presence import ProcessPresence
from realtime.topics import presence_key, presence_state_key
from tests.integration.conftest import start_daphne
from tests.integration.realtime.clients import WsClient
from tests.processes import await_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def presence(client: APIClient, *user_ids: int) -> dict[str, bool]:
    response = client.get(f"/api/presence/?users={','.join(map(str, user_ids))}")
    assert response.status_code == 200, response.json()
    return response.json()["users"]


@pytest.mark.database_agnostic
def test_presence_follows_connections_on_two_processes_and_a_flap_does_not_flicker(
    daphne_url: str,
) -> None:
    users = get_user_model().objects
    watcher, erin = users.create_user("watcher"), users.create_user("erin")
    # User ids repeat between the SQLite and PostgreSQL passes: start from no presence.
    redis.Redis.from_url(settings.REALTIME_REDIS_URL).delete(
        *(key(u.pk) for u in (watcher, erin) for key in (presence_key, presence_state_key))
    )
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=watcher).key}")
    # Offline announced after 1 s without a connection: a reconnect inside it is no change.
    daphne, other_url = start_daphne("daphne-presence", {"REALTIME_PRESENCE_GRACE_SECONDS": "1"})

    async def scenario() -> tuple[dict, dict, dict, list]:
        watching = await WsClient.connect(daphne_url, realtime_token_create(user_id=watcher.pk))
        await watching.subscribe("live:presence")

        async def erin_event() -> dict:
            # The watcher's own online event may arrive after its subscription: not erin's.
            while (frame := await watching.frame())["data"]["user_id"] != erin.pk:
                pass
            return frame

        before = await asyncio.to_thread(presence, api, erin.pk)
        first = await WsClient.connect(other_url, realtime_token_create(user_id=erin.pk))
        events = [await erin_event()]
        during = await asyncio.to_thread(presence, api, erin.pk, watcher.pk)
        await first.close()  # a flap: gone and back within the grace period
        second = await WsClient.connect(daphne_url, realtime_token_create(user_id=erin.pk))
        await second.close()
        events.append(await erin_event())
        after = await asyncio.to_thread(presence, api, erin.pk)
        await watching.close()
        return before, during, after, events

    try:
        before, during, after, events = asyncio.run(scenario())
    finally:
        daphne.stop()

    assert before == {str(erin.pk): False}
    assert during == {str(erin.pk): True, str(watcher.pk): True}
    assert after == {str(erin.pk): False}
    # One online and one offline event: the flap in between announced nothing.
    erin_events = [(e["event"], e["data"]) for e in events]
    assert erin_events == [
        ("presence.online", {"user_id": erin.pk, "online": True}),
        ("presence.offline", {"user_id": erin.pk, "online": False}),
    ]


@pytest.mark.parametrize("users", ["1,abc", "\u00b2", "1,\u0663", "-1", "99999999999999999999"])
def test_a_bad_presence_query_is_a_400(users: str) -> None:
    api = APIClient()
    user = get_user_model().objects.create_user("frank")
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")

    response = api.get("/api/presence/", {"users": users})

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.database_agnostic
@override_settings(REALTIME_PRESENCE_GRACE_SECONDS=0.3, REALTIME_HEARTBEAT_SECONDS=0.5)
def test_one_process_is_one_member_per_user_and_rewrites_what_redis_lost() -> None:
    user_id = 990_001
    keys = [presence_key(user_id), presence_state_key(user_id)]
    sync = redis.Redis.from_url(settings.REALTIME_REDIS_URL)
    sync.delete(*keys)

    async def scenario() -> None:
        presence = ProcessPresence()
        for _ in range(300):  # one user's connections on one process: one member
            presence.join(user_id)
        await await_for(lambda: sync.zcard(keys[0]) == 1 and sync.get(keys[1]) == b"online", "one member, online", 5)
        sync.delete(*keys)  # Redis restarted without its data
        await await_for(lambda: sync.zcard(keys[0]) == 1 and sync.get(keys[1]) == b"online", "one member, online", 5)
        for _ in range(299):
            presence.leave(user_id)
        await asyncio.sleep(0.6)  # past the grace period: one connection is left
        assert sync.zcard(keys[0]) == 1
        presence.leave(user_id)
        await await_for(lambda: sync.zcard(keys[0]) == 0 and sync.get(keys[1]) is None, "no member, offline", 5)

    asyncio.run(scenario())


@pytest.mark.database_agnostic
@override_settings(REALTIME_HEARTBEAT_SECONDS=0.2)
def test_the_write_loop_ends_on_cancel_even_when_the_request_is_lost_on_the_way() -> None:
    # A cancellation can be lost before it reaches the loop: a client library may answer
    # one delivered inside its call with its own connection error (the loop retries those),
    # and Python 3.11's asyncio.timeout then takes the request, still pending, for its own
    # at the next wait. The loop must end all the same, or asyncio.run (or the server's
    # shutdown) waits for it forever.
    async def scenario() -> None:
        presence = ProcessPresence()
        writes = presence._write_leaves
        inside = asyncio.Event()

        async def write_leaves(grace: float) -> None:
            inside.set()
            try:
                await asyncio.sleep(0.05)  # the Redis round trip
            except asyncio.CancelledError as exc:
                raise redis.exceptions.ConnectionError("connection closed") from exc
            await writes(grace)

        presence._write_leaves = write_leaves  # type: ignore[method-assign]
        presence.join(990_002)
        await inside.wait()
        presence._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(presence._task, timeout=3)

    asyncio.run(scenario())
