"""Crash points for the fault-injection suite (tests/faults), inert in production.

A point does nothing unless WORKFLOW_ORCHESTRATOR_CRASH_AT names it and
WORKFLOW_ORCHESTRATOR_CRASH_BUDGET names a file holding how many crashes are still
allowed. Then, with WORKFLOW_ORCHESTRATOR_CRASH_PROBABILITY (default 0.2), the process
SIGKILLs itself there: exactly what a power cut or the OOM killer does mid-transition.
WORKFLOW_ORCHESTRATOR_CRASH_WORKFLOW limits the crashes to one workflow id.
"""

from __future__ import annotations

import fcntl
import os
import random
import signal

POINTS = ("after_load", "after_publish", "after_save")


def crash_point(name: str, workflow_id: str = "") -> None:
    wanted = os.environ.get("WORKFLOW_ORCHESTRATOR_CRASH_AT", "")
    if not wanted:  # production: one lookup, three times per transition
        return
    budget = os.environ.get("WORKFLOW_ORCHESTRATOR_CRASH_BUDGET", "")
    if not budget or name not in wanted.split(","):
        return
    only = os.environ.get("WORKFLOW_ORCHESTRATOR_CRASH_WORKFLOW", "")
    if only and only != workflow_id:
        return
    if random.random() >= float(os.environ.get("WORKFLOW_ORCHESTRATOR_CRASH_PROBABILITY", "0.2")):
        return
    with open(budget, "r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        left = int(handle.read().strip() or 0)
        if left <= 0:
            return
        handle.seek(0)
        handle.truncate()
        handle.write(str(left - 1))
        handle.flush()
        os.fsync(handle.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
