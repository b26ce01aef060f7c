"""Importing the package or its worker-side library changes nothing in the importer, and
the architecture's import rules hold (import-linter contracts in .importlinter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = r"""
import logging, sys
import celery
from celery import signals
from celery.utils.dispatch import Signal

def receivers():
    return {n: len(s.receivers) for n, s in vars(signals).items() if isinstance(s, Signal)}

def logging_state():
    names = ["", "celery", "celery.app.trace", "celery.task"]
    return [(n, list(logging.getLogger(n).handlers), list(logging.getLogger(n).filters),
             logging.getLogger(n).level) for n in names]

app = celery.current_app._get_current_object()
before = (receivers(), logging_state(), logging.getLoggerClass(), logging.root.manager.disable)
import workflow_orchestrator
import workflow_orchestrator.worker_api
after = (receivers(), logging_state(), logging.getLoggerClass(), logging.root.manager.disable)
assert celery.current_app._get_current_object() is app, "current_app changed"
assert before == after, (before, after)
assert "app" not in vars(workflow_orchestrator), "the package built its app at import"
print("unchanged")
"""


def test_importing_the_worker_library_changes_nothing() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unchanged"


def test_import_rules_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is not installed (the dev extra has it)"
    result = subprocess.run([lint], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout
