"""The /live/ page: a person's notifications and a room feed, live."""

import logging
from typing import cast

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from core.errors import application_error_response, error_response
from realtime.exceptions import InvalidTopic
from realtime.services import realtime_publish
from realtime.topics import topic_parse, user_topic

logger = logging.getLogger(__name__)

LOGIN_URL = "/live/login/"


@require_GET
@login_required(login_url=LOGIN_URL)
@ensure_csrf_cookie  # the like button posts with the CSRF cookie
def live(request: HttpRequest) -> HttpResponse:
    room = request.GET.get("room", "lobby")
    try:
        topic_parse(f"room:{room}")
    except InvalidTopic:
        room = "lobby"
    return render(
        request,
        "realtime/live.html",
        {"user_topic": user_topic(cast(int, request.user.pk)), "room_topic": f"room:{room}"},
    )


@require_POST
@login_required(login_url=LOGIN_URL)
def like(request: HttpRequest) -> JsonResponse:
    """Publish a like to a room on behalf of the logged-in user (the page's button)."""
    try:
        topic = topic_parse(request.POST.get("topic", ""))
    except InvalidTopic as exc:
        return application_error_response(exc)
    if topic.kind != "room":
        return error_response("invalid_topic", "likes go to room: topics")
    message_id = realtime_publish(
        topic=str(topic), event="video.liked", data={"user": request.user.get_username()}
    )
    return JsonResponse({"topic": str(topic), "id": message_id}, status=202)
