"""Admin: watch rooms, and skip or retry a stuck message (permission rooms.operate_room)."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from rooms.models import ChatProvider, Room, RoomMessage
from rooms.services.enqueue import room_dispatch
from rooms.services.operator import room_message_retry, room_message_skip


@admin.register(ChatProvider)
class ChatProviderAdmin(admin.ModelAdmin):
    list_display = ["name", "ack_timeout_ms", "timeout_policy", "max_resends"]


class RoomMessageInline(admin.TabularInline):
    model = RoomMessage
    fields = ["sequence", "status", "attempts", "provider_message_id", "enqueued_at", "sent_at", "acked_at", "note"]
    readonly_fields = ["sequence", "status", "attempts", "provider_message_id", "enqueued_at", "sent_at",
                       "acked_at", "note"]
    extra = 0
    can_delete = False
    ordering = ["-sequence"]
    max_num = 0


@admin.register(Room)
class RoomAdmin(admin.ModelAdmin):
    list_display = ["id", "provider", "recipient", "owner", "in_flight", "attempt", "last_ack_at", "timeouts",
                    "version"]
    list_filter = ["provider"]
    search_fields = ["recipient"]
    raw_id_fields = ["owner"]
    readonly_fields = ["in_flight", "attempt", "version", "last_sequence", "last_ack_at", "timeouts"]
    inlines = [RoomMessageInline]
    actions = ["skip_in_flight", "retry_in_flight"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rooms.operate_room")

    @admin.action(description="Skip the in-flight message (the next one goes out)", permissions=["operate"])
    def skip_in_flight(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        done = sum(
            room_message_skip(message_id=room.in_flight_id) for room in queryset if room.in_flight_id
        )
        self.message_user(request, f"skipped {done} message(s)", messages.SUCCESS)

    @admin.action(
        description="Retry the in-flight message (same idempotency key), or send the head", permissions=["operate"]
    )
    def retry_in_flight(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        done = 0
        for room in queryset:
            if room.in_flight_id:
                done += room_message_retry(message_id=room.in_flight_id)
            else:
                done += room_dispatch(room_id=room.pk) is not None
        self.message_user(request, f"retried {done} room(s)", messages.SUCCESS)


@admin.register(RoomMessage)
class RoomMessageAdmin(admin.ModelAdmin):
    list_display = ["id", "room", "sequence", "status", "attempts", "enqueued_at", "acked_at", "note"]
    list_filter = ["status"]
    readonly_fields = [f.name for f in RoomMessage._meta.fields]
    actions = ["skip", "retry"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rooms.operate_room")

    @admin.action(description="Skip these messages", permissions=["operate"])
    def skip(self, request: HttpRequest, queryset: QuerySet[RoomMessage]) -> None:
        done = sum(room_message_skip(message_id=m.pk) for m in queryset)
        self.message_user(request, f"skipped {done} message(s)", messages.SUCCESS)

    @admin.action(description="Retry these messages if in flight", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet[RoomMessage]) -> None:
        done = sum(room_message_retry(message_id=m.pk) for m in queryset)
        self.message_user(request, f"retried {done} message(s)", messages.SUCCESS)
