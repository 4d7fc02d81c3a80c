"""A notification's text per recipient: rendered once for a whole chunk when the template
cannot depend on its user, per user when it can."""

import uuid
from typing import Any

import pytest
from django.template.backends import django as django_backend
from django.utils import timezone

from notifications.models import Delivery, Event
from notifications.providers.base import SendItem, renders, renders_each, template_reads_no_user

pytestmark = pytest.mark.django_db


def test_a_template_that_cannot_read_its_user_is_rendered_once_for_all(
    django_user_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ada, bo = django_user_model.objects.create_user("ada"), django_user_model.objects.create_user("bo")
    event = Event(type="product.announcement", version=1, occurred_at=timezone.now(),
                  data={"title": "Carillon 2", "body": "Audiences are here."})
    rendered: list[str] = []
    render = django_backend.Template.render

    def counted(self: Any, context: Any = None, request: Any = None) -> Any:
        rendered.append(self.template.name)
        return render(self, context, request)

    monkeypatch.setattr(django_backend.Template, "render", counted)

    assert renders("inapp", event, "title.txt", [ada, bo]) == ["Carillon 2", "Carillon 2"]
    greetings = renders("email", event, "txt", [ada, bo])

    assert [text.splitlines()[0] for text in greetings] == ["Hello ada,", "Hello bo,"]
    assert rendered == ["notifications/inapp/product.announcement.title.txt"] + [
        "notifications/email/product.announcement.txt"] * 2


@pytest.mark.parametrize(
    ("source", "same_for_all"),
    [
        ("{{ data.title }}", True),
        ("Hello {{ user.get_username }}", False),
        ('{%include "notifications/email/greeting.txt"%}', False),  # Django takes it without spaces
        ("{% load humanize %}{{ data.count|intcomma }}", False),  # a tag library sees the whole context
        ("{% debug %}", False),
    ],
)
def test_only_a_template_that_names_no_user_and_reaches_no_other_code_is_rendered_once(
    source: str, same_for_all: bool
) -> None:
    assert template_reads_no_user(source) is same_for_all


def test_items_of_several_events_each_get_their_own_events_text(django_user_model: Any) -> None:
    # A batch of transactional deliveries interleaves events: each text is its own
    # event's, in the items' order.
    ada, bo = django_user_model.objects.create_user("ada"), django_user_model.objects.create_user("bo")
    first, second = (Event(pk=uuid.uuid4(), type="product.announcement", version=1, occurred_at=timezone.now(),
                           data={"title": title, "body": "…"}) for title in ("Carillon 2", "Carillon 3"))
    items = [SendItem(event=event, delivery=Delivery(), user=user, in_doubt_since=None)
             for event, user in ((first, ada), (second, ada), (first, bo), (second, bo))]

    assert renders_each("inapp", "title.txt", items) == ["Carillon 2", "Carillon 3", "Carillon 2", "Carillon 3"]
    greetings = [text.splitlines()[0] for text in renders_each("email", "txt", items)]
    assert greetings == ["Hello ada,", "Hello ada,", "Hello bo,", "Hello bo,"]
