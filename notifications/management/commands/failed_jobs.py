from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db.models import QuerySet

from notifications.exceptions import FailedJobStateError
from notifications.models import FailedJob
from notifications.services.failed_jobs import failed_job_discard, failed_job_replay


class Command(BaseCommand):
    help = "List, replay or discard failed jobs, filtered as in the admin."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["list", "replay", "discard"])
        parser.add_argument("--id", type=int, action="append", dest="ids", help="a failed job id (repeatable)")
        parser.add_argument("--queue")
        parser.add_argument("--task")
        parser.add_argument("--error-class")
        parser.add_argument("--event")
        parser.add_argument("--state", default="failed", choices=[s.value for s in FailedJob.State])
        parser.add_argument("--reason", default="", help="why (required to discard)")

    def handle(self, *args: Any, action: str, **options: Any) -> None:
        jobs = _filtered(options)
        if action == "list":
            for job in jobs:
                self.stdout.write(
                    f"{job.pk}\t{job.state}\t{job.queue}\t{job.task_name}\t{job.error_class}: {job.error_message[:80]}"
                )
            self.stdout.write(f"{jobs.count()} failed jobs")
            return
        if action == "discard" and not options["reason"]:
            raise CommandError("--reason is required to discard")
        done = 0
        for job in jobs:
            try:
                if action == "replay":
                    failed_job_replay(failed_job_id=job.pk, user_id=None)
                else:
                    failed_job_discard(failed_job_id=job.pk, user_id=None, reason=options["reason"])
            except FailedJobStateError as exc:
                self.stderr.write(f"{job.pk}: {exc}")
                continue
            done += 1
        self.stdout.write(f"{'replayed' if action == 'replay' else 'discarded'} {done} failed jobs")


def _filtered(options: dict[str, Any]) -> QuerySet[FailedJob]:
    jobs = FailedJob.objects.filter(state=options["state"])
    for option, lookup in (("ids", "pk__in"), ("queue", "queue"), ("task", "task_name"),
                           ("error_class", "error_class"), ("event", "event_id")):
        if options.get(option):
            jobs = jobs.filter(**{lookup: options[option]})
    return jobs.order_by("pk")
