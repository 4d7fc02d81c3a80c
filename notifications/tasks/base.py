"""The machinery every delivery task shares: retries for transient errors only, a
FailedJob and a dead-lettered message for everything else."""

import logging
import random
import traceback
from typing import Any

from celery import Task
from celery.exceptions import Reject
from django.conf import settings

from core.errors import DATABASE_UNREACHABLE, ProviderTransientError
from core.send_rate import SendRateExceeded
from notifications.exceptions import BatchPending
from notifications.services.deliveries import delivery_send
from notifications.services.failed_jobs import failed_job_record

logger = logging.getLogger(__name__)

# Worth retrying: the provider or our own database was briefly unavailable.
TRANSIENT_ERRORS = (ProviderTransientError, *DATABASE_UNREACHABLE)


def retry_countdown(retries: int) -> int:
    """Exponential backoff with jitter: half fixed, half random, so retries spread out
    but never come back at once."""
    ceiling = min(settings.CARILLON_RETRY_BACKOFF_MAX_SECONDS, settings.CARILLON_RETRY_BACKOFF_SECONDS * 2**retries)
    return max(1, round(ceiling / 2 + random.uniform(0, ceiling / 2)))  # noqa: S311 - jitter, not crypto


class DeliveryTask(Task):  # type: ignore[misc]
    """Base of the channel tasks. Acknowledged late, requeued if its worker dies."""

    acks_late = True
    reject_on_worker_lost = True
    ignore_result = True
    own_queue: str | None = None  # its channel and lane's queue (config.task_routing.own_queue_route)

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        return int(settings.CARILLON_DELIVERY_MAX_RETRIES)

    def deliver(self, event_id: str, subscriber: str, *, chunk: int | None = None, waited: bool = False) -> None:
        try:
            delivery_send(event_id=event_id, subscriber_name=subscriber, chunk=chunk, waited=waited)
        except (BatchPending, SendRateExceeded) as later:
            self.put_off(self.request.id, self.request.args, self.request.kwargs or {}, later.retry_after)
        except TRANSIENT_ERRORS as exc:
            if self.request.retries >= self.max_retries:
                self._give_up(exc)
            countdown = retry_countdown(self.request.retries)
            logger.warning(
                "task %s (%s for event %s): %s; retry %d in %ds",
                self.request.id, subscriber, event_id, exc, self.request.retries + 1, countdown,
            )
            raise self.retry(exc=exc, countdown=countdown) from exc
        except Exception as exc:  # noqa: BLE001 - everything else is permanent: keep it, dead-letter it
            self._give_up(exc)

    def put_off(self, task_id: str, args: list[Any], kwargs: dict[str, Any], seconds: float) -> None:
        """Put a job off, not failed (an analytics batch to join, a send rate to respect):
        publish it again, `waited`, to run in `seconds`; the caller then finishes (acks)
        this copy. Killed in between, both copies run, and the Delivery rows keep it once.
        A put-off is no retry: a broadcast held back by a rate limit for minutes never runs
        out of retries."""
        self.apply_async(args=args, kwargs={**kwargs, "waited": True}, countdown=max(1, round(seconds)),
                         task_id=task_id)

    def _give_up(self, exc: BaseException) -> None:
        """Record a FailedJob, then reject without requeue: RabbitMQ dead-letters it."""
        request = self.request
        failed_job_record(
            task_name=self.name,
            task_id=request.id or "",
            queue=self.own_queue or "",
            args=list(request.args or []),
            error=exc,
            traceback="".join(traceback.format_exception(exc)),
            attempts=request.retries + 1,
        )
        raise Reject(str(exc), requeue=False) from exc
