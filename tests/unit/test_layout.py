"""Guards for decisions in ../shared/BRIEF.md that a careless change could undo."""

import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_no_importable_platform_package_shadows_the_standard_library() -> None:
    assert not (ROOT / "platform" / "__init__.py").exists()
    assert not (ROOT / "platform.py").exists()
    assert not list((ROOT / "platform").rglob("*.py"))


def test_import_platform_under_manage_py_is_the_standard_library() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-v", "0", "-c",
         "import platform; print(platform.python_implementation(), platform.__file__)"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    )

    implementation, path = result.stdout.split()
    assert implementation == platform.python_implementation()
    assert not Path(path).is_relative_to(ROOT)
