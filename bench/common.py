"""What every part of the benchmark shares: paths, names, the workload's shape."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
ORCHESTRATE_TASK = "workflow_orchestrator.orchestrate"
CLK_TCK = os.sysconf("SC_CLK_TCK")
MILESTONES = ["build", "deploy"]
TRANSITIONS_PER_WORKFLOW = len(MILESTONES) + 1  # start, build-callback, deploy-callback
#: What every start message carries besides its id: a completion e-mail to one group, so
#: every workflow also costs the e-mail of docs/behaviour.md §7.4 (and its log line).
START_FIELDS = {
    "notifications_config": {
        "email": {
            "events": {"on_workflow_completed": ["ops"]},
            "groups": {"ops": ["ops@bench.example"]},
        }
    }
}


class BenchError(RuntimeError):
    pass
