from django.contrib import admin

from notifications.models import (
    Delivery,
    Event,
    FailedJob,
    Notification,
    OutboxMessage,
    Preference,
    ProviderCallback,
    Recipient,
)


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
    list_display = ["id", "type", "version", "actor", "occurred_at", "created_at"]
    list_filter = ["type"]
    search_fields = ["id", "idempotency_key", "actor"]
    readonly_fields = ["id", "type", "version", "occurred_at", "actor", "data", "idempotency_key", "created_at"]
    inlines = [OutboxInline, DeliveryInline]


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


@admin.register(FailedJob)
class FailedJobAdmin(admin.ModelAdmin):
    list_display = ["id", "task_name", "queue", "error_class", "state", "attempts", "created_at"]
    list_filter = ["queue", "task_name", "error_class", "state", "source"]
    search_fields = ["event__id", "error_message", "task_id"]
    raw_id_fields = ["event", "delivery"]


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "kind", "title", "read_at", "created_at"]
    list_filter = ["kind"]
    raw_id_fields = ["user", "event", "delivery"]


admin.site.register(Recipient)
admin.site.register(Preference)
