"""Long-running processes leave their start-up heap out of garbage collection (core/heap.py)."""

import os
import subprocess
import sys

from core.processes import ROOT

# Django, DRF, Twisted and kombu alone make well over this many objects at start-up.
START_UP_OBJECTS = 50_000


def test_daphne_s_application_freezes_what_its_start_up_made() -> None:
    # In a process of its own: a freeze here would hold this test process's heap.
    found = subprocess.run(
        [sys.executable, "-c", "import gc, config.asgi; print(gc.get_freeze_count())"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_READ_DOT_ENV_FILE": "false"},
    )
    assert found.returncode == 0, found.stderr
    assert int(found.stdout.split()[-1]) > START_UP_OBJECTS
