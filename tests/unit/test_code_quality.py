"""The package stays ruff- and mypy-clean: checked by the same test run CI does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


# The tools of the interpreter running the tests (its venv, with the [test] extra), not whatever is on
# PATH: a venv that is not activated still checks, and a stray global ruff of another version cannot.


def test_ruff_check() -> None:
    pytest.importorskip("ruff", reason="ruff not installed (pip install -e '.[test]')")
    res = run(sys.executable, "-m", "ruff", "check", "src", "tests", "bench")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format() -> None:
    pytest.importorskip("ruff", reason="ruff not installed (pip install -e '.[test]')")
    res = run(sys.executable, "-m", "ruff", "format", "--check", "src", "tests", "bench")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict_on_package() -> None:
    pytest.importorskip("mypy", reason="mypy not installed (pip install -e '.[test]')")
    res = run(sys.executable, "-m", "mypy")
    assert res.returncode == 0, res.stdout + res.stderr
