import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import (
    PeriodicTaskAdmin,
    PeriodicTaskForm,
    TaskChoiceField,
    TaskSelectWidget,
)
from django_celery_beat.models import PeriodicTask

from config.background import app as background_app
from config.task_routing import BACKGROUND_TASK_PREFIX
from notifications.exceptions import FailedJobStateError
from notifications.models import (
    Delivery,
    Digest,
    Event,
    FailedJob,
    FailedJobAction,
    Notification,
    OutboxMessage,
    Preference,
    ProviderCallback,
    Recipient,
    Topic,
    TopicSubscription,
)
from notifications.selectors import event_progress
from notifications.services.broadcasts import event_cancel
from notifications.services.failed_jobs import failed_job_discard, failed_job_replay


class DeliveryInline(admin.TabularInline):
    model = Delivery
    extra = 0
    fields = readonly_fields = ("subscriber", "channel", "recipient", "status", "attempts", "provider_message_id", "last_error", "updated_at")
    can_delete = False


class OutboxInline(admin.TabularInline):
    model = OutboxMessage
    extra = 0
    fields = readonly_fields = ("kind", "published_at", "attempts", "last_error")
    can_delete = False


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "type", "version", "publisher", "actor", "occurred_at", "cancelled_at", "created_at"]
    list_filter = ["type"]
    search_fields = ["id", "idempotency_key", "actor"]
    readonly_fields = ["id", "type", "version", "occurred_at", "publisher", "actor", "data", "audience", "progress",
                       "idempotency_key", "cancelled_at", "created_at"]
    actions = ["cancel_selected"]

    def get_inlines(self, request: HttpRequest, obj: Event | None = None) -> list[Any]:
        # A broadcast's deliveries and chunk tasks run to a hundred thousand rows: the
        # progress counts them, the deliveries page lists them (link in `progress`).
        if obj is not None and obj.audience:
            return []
        return [OutboxInline, DeliveryInline]

    @admin.display(description="progress")
    def progress(self, event: Event) -> Any:
        rows = [
            format_html(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                channel, entry["recipients"] if entry["resolved"] else f"{entry['recipients']} so far",
                ", ".join(f"{status} {n}" for status, n in entry.items() if status in Delivery.Status.values and n),
            )
            for channel, entry in sorted(event_progress(event=event).items())
        ]
        url = reverse("admin:notifications_delivery_changelist") + f"?event__id__exact={event.pk}"
        return format_html(
            '<table><tr><th>channel</th><th>recipients</th><th>deliveries</th></tr>{}</table><a href="{}">all deliveries</a>',
            format_html_join("", "{}", ((row,) for row in rows)), url,
        )

    @admin.action(description="Cancel what the selected events have not sent", permissions=["cancel"])
    def cancel_selected(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        total = sum(event_cancel(event_id=str(event.pk))[1] for event in queryset)
        self.message_user(request, f"Cancelled {queryset.count()} events: {total} pending deliveries will not be sent.")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.cancel_event")


class CallbackInline(admin.TabularInline):
    model = ProviderCallback
    extra = 0
    fields = readonly_fields = ("provider", "status", "payload", "received_at")
    can_delete = False


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    list_display = ["id", "event", "subscriber", "channel", "recipient", "status", "attempts", "updated_at"]
    list_filter = ["channel", "status", "subscriber"]
    search_fields = ["event__id", "recipient", "provider_message_id"]
    raw_id_fields = ["event", "user"]
    inlines = [CallbackInline]


class FailedJobActionInline(admin.TabularInline):
    model = FailedJobAction
    extra = 0
    fields = readonly_fields = ("kind", "user", "reason", "outcome", "created_at")
    can_delete = False


@admin.register(FailedJob)
class FailedJobAdmin(admin.ModelAdmin):
    list_display = [
        "id", "task_name", "queue", "event_type", "error_class", "state", "critical", "attempts", "created_at",
    ]
    list_filter = ["state", "critical", "queue", "task_name", "event__type", "error_class", "source", "created_at"]
    search_fields = ["event__id", "delivery__recipient", "error_message", "task_id"]
    readonly_fields = [
        "task_name", "task_id", "queue", "args", "event_link", "delivery_link", "error_class", "error_message",
        "traceback", "attempts", "source", "critical", "state", "created_at", "envelope", "other_deliveries",
    ]
    exclude = ["event", "delivery", "dedup_key"]
    inlines = [FailedJobActionInline]
    actions = ["replay_selected", "discard_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.replay_failedjob")

    @admin.display(description="event type", ordering="event__type")
    def event_type(self, job: FailedJob) -> str:
        return job.event.type if job.event else "—"

    @admin.display(description="event")
    def event_link(self, job: FailedJob) -> str:
        if job.event is None:
            return "—"
        url = reverse("admin:notifications_event_change", args=[job.event_id])
        return format_html('<a href="{}">{}</a>', url, job.event)

    @admin.display(description="delivery")
    def delivery_link(self, job: FailedJob) -> str:
        if job.delivery is None:
            return "—"
        url = reverse("admin:notifications_delivery_change", args=[job.delivery_id])
        return format_html(
            '<a href="{}">{}</a> — provider response: {}', url, job.delivery, job.delivery.provider_response
        )

    @admin.display(description="envelope")
    def envelope(self, job: FailedJob) -> str:
        return format_html("<pre>{}</pre>", json.dumps(job.event.data, indent=2) if job.event else "—")

    @admin.display(description="the event's other deliveries")
    def other_deliveries(self, job: FailedJob) -> str:
        if job.event is None:
            return "—"
        rows = [
            format_html(
                '<li><a href="{}">{}</a></li>', reverse("admin:notifications_delivery_change", args=[d.pk]), d
            )
            for d in job.event.deliveries.all()
            if d.pk != job.delivery_id
        ]
        return format_html("<ul>{}</ul>", format_html("".join(rows))) if rows else "—"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        if hasattr(response, "context_data") and "cl" in response.context_data:
            counts = (
                response.context_data["cl"].queryset.values("error_class").annotate(n=Count("pk")).order_by("-n")
            )
            response.context_data["title"] = "Failed jobs — " + ", ".join(
                f"{row['error_class']}: {row['n']}" for row in counts
            ) if counts else "Failed jobs"
        return response

    def _confirmation(self, request: HttpRequest, queryset: QuerySet[FailedJob], verb: str, action: str) -> HttpResponse:
        return render(
            request,
            "admin/notifications/failedjob/confirm_action.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Confirm: {verb} failed jobs",
                "verb": verb,
                "action": action,
                "count": queryset.count(),
                "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across") == "1",
                "opts": self.model._meta,
            },
        )

    @admin.action(description="Replay selected failed jobs", permissions=["replay"])
    def replay_selected(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        if request.POST.get("confirm") != "yes":
            return self._confirmation(request, queryset, "replay", "replay_selected")
        done, refused = 0, []
        for job in queryset:
            try:
                failed_job_replay(failed_job_id=job.pk, user_id=request.user.pk)
                done += 1
            except FailedJobStateError as exc:
                refused.append(str(exc))
        self.message_user(request, f"Replayed {done} failed jobs.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)
        return None

    @admin.action(description="Discard selected failed jobs (with a reason)", permissions=["replay"])
    def discard_selected(self, request: HttpRequest, queryset: QuerySet[FailedJob]) -> HttpResponse | None:
        reason = request.POST.get("reason", "").strip()
        if request.POST.get("confirm") != "yes" or not reason:
            return self._confirmation(request, queryset, "discard", "discard_selected")
        done = 0
        for job in queryset:
            try:
                failed_job_discard(failed_job_id=job.pk, user_id=request.user.pk, reason=reason)
                done += 1
            except FailedJobStateError as exc:
                self.message_user(request, str(exc), messages.WARNING)
        self.message_user(request, f"Discarded {done} failed jobs.", messages.SUCCESS)
        return None


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "kind", "title", "read_at", "created_at"]
    list_filter = ["kind"]
    raw_id_fields = ["user", "event", "delivery"]


@admin.register(Recipient)
class RecipientAdmin(admin.ModelAdmin):
    list_display = ["user", "phone_number", "digest_frequency"]
    list_filter = ["digest_frequency"]


@admin.register(Topic)
class TopicAdmin(admin.ModelAdmin):
    """Topics by publisher ("user:<id>"; blank: the project's own code). Subscribers are
    listed on their own page: a topic may have a hundred thousand."""

    list_display = ["key", "scope", "name", "subscribers", "created_at"]
    search_fields = ["key", "name"]
    list_filter = ["scope"]
    readonly_fields = ["scope"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Topic]:
        return super().get_queryset(request).annotate(subscriber_count=Count("subscriptions"))

    @admin.display(ordering="subscriber_count")
    def subscribers(self, topic: Any) -> Any:
        url = reverse("admin:notifications_topicsubscription_changelist") + f"?topic__id__exact={topic.pk}"
        return format_html('<a href="{}">{}</a>', url, topic.subscriber_count)


@admin.register(TopicSubscription)
class TopicSubscriptionAdmin(admin.ModelAdmin):
    list_display = ["topic", "user", "created_at"]
    list_filter = ["topic"]
    search_fields = ["topic__key", "user__username", "user__email"]
    raw_id_fields = ["topic", "user"]


@admin.register(Digest)
class DigestAdmin(admin.ModelAdmin):
    """Digests sent (or found empty): a record per user and period, written by the job."""

    list_display = ["id", "user", "frequency", "period_start", "period_end", "status", "notification_count", "sent_at"]
    list_filter = ["status", "frequency"]
    search_fields = ["user__username", "user__email"]
    readonly_fields = [field.name for field in Digest._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

admin.site.register(Preference)


# django-celery-beat's admin lists, checks and runs tasks of Celery's *current* app,
# which in a web process may be the critical one; beat sends through the background app.
class BackgroundTaskSelectWidget(TaskSelectWidget):  # type: ignore[misc]
    celery_app = background_app


class BackgroundPeriodicTaskForm(PeriodicTaskForm):  # type: ignore[misc]
    regtask = TaskChoiceField(label="Task (registered)", required=False, widget=BackgroundTaskSelectWidget)

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean()
        task = data.get("task") or ""
        if not task.startswith((BACKGROUND_TASK_PREFIX, "celery.")):
            error = forms.ValidationError(
                f"{task!r} is not a background task: beat sends through the background app (Redis), "
                f"whose tasks are named {BACKGROUND_TASK_PREFIX}*; critical work is published as events"
            )
            self.add_error("task", error)
        return data


class BackgroundPeriodicTaskAdmin(PeriodicTaskAdmin):  # type: ignore[misc]
    form = BackgroundPeriodicTaskForm
    celery_app = background_app


admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, BackgroundPeriodicTaskAdmin)
