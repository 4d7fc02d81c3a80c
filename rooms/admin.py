"""Admin: watch rooms, and skip or retry a stuck message (permission rooms.operate_room)."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from rooms.models import ChatProvider, Room, RoomMessage, RoomSequence, RoomShard
from rooms.services.operator import room_message_retry, room_message_skip

# The room's shard owner applies the action moments later (rooms/owner.py).
ASKED = "asked the rooms' owner to {action} {asked} message(s); refresh to see them move"


@admin.register(ChatProvider)
class ChatProviderAdmin(admin.ModelAdmin):
    list_display = ["name", "ack_timeout_ms", "timeout_policy", "max_resends"]


@admin.register(RoomShard)
class RoomShardAdmin(admin.ModelAdmin):
    """Which owner process holds each shard; written by the owners alone."""

    list_display = ["shard", "owner", "epoch", "taken_at", "flushed_at"]
    readonly_fields = ["shard", "owner", "epoch", "taken_at", "flushed_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


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

    @admin.display(description="last sequence")
    def last_sequence(self, room: Room) -> int:
        """The number of the room's last message (0: none yet)."""
        counter = RoomSequence.objects.filter(room=room).values_list("last_sequence", flat=True).first()
        return counter or 0

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("rooms.operate_room")

    @admin.action(description="Skip the in-flight message (the next one goes out)", permissions=["operate"])
    def skip_in_flight(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        asked = sum(
            room_message_skip(message_id=room.in_flight_id) for room in queryset if room.in_flight_id
        )
        self.message_user(request, ASKED.format(asked=asked, action="skip"), messages.SUCCESS)

    @admin.action(description="Retry the in-flight message (same idempotency key)", permissions=["operate"])
    def retry_in_flight(self, request: HttpRequest, queryset: QuerySet[Room]) -> None:
        asked = sum(
            room_message_retry(message_id=room.in_flight_id) for room in queryset if room.in_flight_id
        )
        self.message_user(request, ASKED.format(asked=asked, action="retry"), messages.SUCCESS)


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
        asked = sum(room_message_skip(message_id=m.pk) for m in queryset)
        self.message_user(request, ASKED.format(asked=asked, action="skip"), messages.SUCCESS)

    @admin.action(description="Retry these messages if in flight", permissions=["operate"])
    def retry(self, request: HttpRequest, queryset: QuerySet[RoomMessage]) -> None:
        asked = sum(room_message_retry(message_id=m.pk) for m in queryset)
        self.message_user(request, ASKED.format(asked=asked, action="retry"), messages.SUCCESS)
