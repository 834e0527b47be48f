"""ruff is part of the test command: a lint error, or code not in ``ruff format``'s format, fails
the suite like any other bug."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _ruff() -> str:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    return ruff


def test_ruff_is_clean() -> None:
    out = subprocess.run([_ruff(), "check", str(ROOT)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_code_is_formatted() -> None:
    """The tracked files only: a file nobody has added yet is still its author's to shape.
    To fix: git ls-files -z '*.py' | xargs -0 ruff format"""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "*.py"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    files = [name for name in listed.stdout.split("\0") if name]
    assert files, "git ls-files found no Python files"
    out = subprocess.run(
        [_ruff(), "format", "--check", *files], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_modules_stay_readable() -> None:
    """One module, one idea: a file a reader can hold in mind."""
    long = []
    for folder in ("actors", "fabric", "storage", "gateway"):
        for path in sorted((ROOT / folder).rglob("*.py")):  # fabric/ has a folder per layer
            lines = len(path.read_text().splitlines())
            if lines > 600:
                long.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not long, long


def test_python_is_supported() -> None:
    assert sys.version_info >= (3, 11)
