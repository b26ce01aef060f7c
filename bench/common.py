"""What every part of the benchmark shares: paths, names, the workload's shape."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

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


def add_system_options(
    parser: argparse.ArgumentParser, json_name: str, warmup: int | None = 40
) -> None:
    """The options of every script that runs a bench System."""
    parser.add_argument("--window", "-w", type=int, default=64, help="workflows in flight")
    parser.add_argument("--warmup", type=int, default=warmup, help="warm-up workflows per phase")
    parser.add_argument("--json", default=str(RESULTS / json_name), help="where the figures go")
    parser.add_argument("--broker-url", default=DEFAULT_BROKER)
    parser.add_argument("--keep-logs", action="store_true", help="keep bench/results/logs/*")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="VAR=value",
        help="extra orchestrator setting, e.g. LOCK_URL=redis://127.0.0.1:6379/5 (repeatable)",
    )
    parser.add_argument(
        "--no-wait-quiet",
        action="store_true",
        help="do not wait for an idle machine before each phase",
    )


def write_report(path: str, report: dict[str, Any]) -> Path:
    """The figures of a run as JSON at `path` (its folder made if need be)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    return out
