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


class BenchError(RuntimeError):
    pass
