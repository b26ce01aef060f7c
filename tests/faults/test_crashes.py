"""Workers SIGKILLed mid-transition, restarted: every workflow still completes once."""

from __future__ import annotations

import os
import random
import signal
import tempfile
import threading
import time

import pytest

from .conftest import EMAIL_CONFIG, report


def crash_budget(crashes: int) -> str:
    fd, path = tempfile.mkstemp(prefix="wo-crash-budget-")
    os.write(fd, str(crashes).encode())
    os.close(fd)
    return path


def crashes_left(path: str) -> int:
    with open(path) as handle:
        return int(handle.read().strip() or 0)


@pytest.mark.parametrize(
    ("point", "pool"),
    [
        ("after_load", "threads"),
        ("after_publish", "threads"),
        ("after_save", "threads"),
        ("after_publish", "prefork"),  # the child dies; the main process replaces it
    ],
)
def test_killed_at_a_point_of_the_transition(build_system, point: str, pool: str) -> None:
    budget = crash_budget(4)
    system = build_system(
        pool=pool,
        concurrency=4,
        extra_env={
            "WORKFLOW_ORCHESTRATOR_CRASH_AT": point,
            "WORKFLOW_ORCHESTRATOR_CRASH_BUDGET": budget,
            "WORKFLOW_ORCHESTRATOR_CRASH_PROBABILITY": "0.15",
        },
    )
    ids = system.start_workflows(30, notifications_config=EMAIL_CONFIG)
    system.wait_all_completed(ids, timeout=150)
    used = 4 - crashes_left(budget)
    assert used >= 1, "no crash happened: the scenario proved nothing"
    figures = system.check(ids)
    report(f"SIGKILL {point} ({pool})", {**figures, "faults": used})


def test_whole_worker_killed_from_outside(build_system) -> None:
    """kill -9 of the main process and its children at random moments."""
    system = build_system(pool="prefork", concurrency=3)
    system.supervise = True
    ids = system.start_workflows(30, notifications_config=EMAIL_CONFIG)
    kills = 0
    stop = threading.Event()

    def killer() -> None:
        nonlocal kills
        while not stop.is_set() and kills < 3:
            time.sleep(random.uniform(0.8, 1.6))
            process = system.orchestrators[0].process
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                kills += 1

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        system.wait_all_completed(ids, timeout=150)
    finally:
        stop.set()
        thread.join()
    assert kills >= 1
    report("SIGKILL main+children (prefork)", {**system.check(ids), "faults": kills})
