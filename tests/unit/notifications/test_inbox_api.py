"""In-app notifications and channel preferences, through the API."""

import json
from typing import Any

import pytest
from rest_framework import serializers
from rest_framework.test import APIClient

from notifications.models import Delivery, Notification, Preference
from notifications.providers import inapp
from notifications.services.deliveries import delivery_send
from notifications.services.events import event_publish

pytestmark = pytest.mark.django_db


@pytest.fixture
def ada(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("ada", "ada@example.com")


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_notifications_list_only_ones_own_with_unread_count_and_mark_read(ada: Any, django_user_model: Any) -> None:
    bo = django_user_model.objects.create_user("bo")
    mine = [Notification.objects.create(user=ada, kind="video.liked", title=f"like {n}") for n in range(3)]
    Notification.objects.create(user=bo, kind="video.liked", title="not yours")
    api = client_for(ada)

    listed = api.get("/api/notifications/").json()
    read_one = api.post(f"/api/notifications/{mine[0].pk}/read/")
    someone_elses = api.post(f"/api/notifications/{Notification.objects.get(user=bo).pk}/read/")

    assert [n["title"] for n in listed["results"]] == ["like 2", "like 1", "like 0"]
    assert listed["unread_count"] == 3 and listed["count"] == 3
    assert read_one.json() == {"unread_count": 2}
    assert someone_elses.status_code == 404
    assert api.post("/api/notifications/read-all/").json() == {"marked_read": 2, "unread_count": 0}
    assert Notification.objects.get(user=bo).read_at is None


def test_switched_off_channel_records_a_skipped_delivery(ada: Any) -> None:
    api = client_for(ada)
    response = api.put(
        "/api/preferences/", [{"category": "social", "channel": "inapp", "enabled": False}], format="json"
    )
    event = event_publish(type="video.liked", data={"user_id": ada.pk, "video_id": "v1", "liked_by": "Bo"})

    delivery_send(event_id=str(event.pk), subscriber_name="activity_feed")

    assert response.status_code == 200
    assert {"category": "social", "channel": "inapp", "enabled": False, "mandatory": False} in response.json()
    delivery = Delivery.objects.get(event=event)
    assert delivery.status == "skipped" and "inapp is off for social" in delivery.last_error
    assert not Notification.objects.exists()


def test_mandatory_category_cannot_be_switched_off(ada: Any) -> None:
    response = client_for(ada).put(
        "/api/preferences/", [{"category": "security", "channel": "sms", "enabled": False}], format="json"
    )

    assert response.status_code == 400
    assert response.json()["error"] == "mandatory_category"
    assert not Preference.objects.exists()


def test_unknown_preference_is_refused(ada: Any) -> None:
    response = client_for(ada).put(
        "/api/preferences/", [{"category": "gossip", "channel": "pigeon", "enabled": True}], format="json"
    )

    assert response.status_code == 400
    assert response.json()["error"] == "unknown_preference"


def test_inapp_delivery_run_twice_creates_one_notification(ada: Any) -> None:
    event = event_publish(type="video.liked", data={"user_id": ada.pk, "video_id": "v1", "liked_by": "Bo"})

    delivery_send(event_id=str(event.pk), subscriber_name="activity_feed")
    delivery_send(event_id=str(event.pk), subscriber_name="activity_feed")  # a redelivered message

    [notification] = Notification.objects.filter(user=ada)
    assert notification.title == "Bo liked your video"
    assert Delivery.objects.get(event=event).attempts == 1


def test_live_push_shows_the_notification_as_the_inbox_lists_it(ada: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pushed: list[dict[str, Any]] = []

    def publish(messages: list[tuple[str, str, Any]]) -> list[int]:  # Redis is another process: caught here
        pushed.extend({"topic": topic, "event": event, "data": data} for topic, event, data in messages)
        return list(range(1, len(pushed) + 1))

    monkeypatch.setattr(inapp, "realtime_publish_many", publish)
    event = event_publish(type="video.liked", data={"user_id": ada.pk, "video_id": "v1", "liked_by": "Bo"})
    delivery_send(event_id=str(event.pk), subscriber_name="activity_feed")
    api = client_for(ada)

    listed = api.get("/api/notifications/").json()
    api.post("/api/notifications/read-all/")
    [read] = api.get("/api/notifications/").json()["results"]

    [push] = pushed
    assert json.loads(json.dumps(push["data"])) == {"notification": listed["results"][0], "unread_count": 1}
    notification = Notification.objects.get(user=ada)
    as_drf_writes = serializers.DateTimeField().to_representation  # as every other API datetime
    assert read["read"] is True and read["read_at"] == as_drf_writes(notification.read_at)
    assert read["created_at"] == as_drf_writes(notification.created_at)
