"""Ending the process's long-running loops when they are cancelled.

A loop that runs until its server stops (the pub/sub reader, presence, stats) must end on
cancel, yet it also retries Redis errors, and Python 3.11 lets a cancellation get lost on
the way to it: `asyncio.timeout` takes one that arrives as it expires for its own (and
raises TimeoutError), and redis-py may turn one delivered inside its call into its
connection error. The request still counts on the task (`cancelling()`), so each pass of
such a loop checks it; otherwise `asyncio.run` (or a server's shutdown) waits on the loop
forever.
"""

import asyncio


def cancellation_pending_raise() -> None:
    """Raise CancelledError if this task was asked to stop and something took the request."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
