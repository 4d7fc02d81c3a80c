from django.apps import AppConfig


class RoomsConfig(AppConfig):
    name = "rooms"
    verbose_name = "Ordered rooms"

    def ready(self) -> None:
        from notifications.queues import TASKS_EXCHANGE, queue_declare
        from rooms.queues import rooms_queue

        queue_declare(rooms_queue(TASKS_EXCHANGE))
