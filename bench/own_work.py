"""The orchestrator's own work per transition, alone: no broker, no HTTP, one thread.

Usage (from the repository root, in the project's virtualenv)::

    python bench/own_work.py [--tree DIR] [--workflows N] [--repeat R]
                             [--profile [--sort cumulative] [--top N]]

Runs `tasks.process` on the benchmark's workflow (milestones build then deploy, the
completion e-mail asked for, deadlines on), each workflow's three transitions in turn,
with an in-memory Manager, a publisher that only records, the builder's and deployer's
reports made as `worker_api.step_completed` makes them, real file locks in a temporary
directory, and logging at INFO to nowhere. That is what the orchestrator does per
transition beyond the I/O the contract floor does too (the publishes and the Manager
calls, which cost the same per call on both sides: docs/performance.md). Prints
microseconds of CPU (the thread's `time.thread_time`) per transition, the best of R
repeats of N workflows.

Single-threaded and warm, the figure repeats within about 1 % on a busy machine,
where an A/B of the whole system (bench/compare.py) cannot resolve a change of a few
percent; under the benchmark's load the same work costs several times more (8 threads
and the other processes share 2 cores). `--tree` imports the package from another tree
(a copy made with `git archive`, as bench/compare.py's variants), to compare two
versions of the orchestrator's own code; `--profile` adds cProfile's top functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/own_work.py`, this directory comes first on the path, and its
# profile.py would stand in for the standard library's (which cProfile imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timedelta, timezone  # noqa: E402
from typing import Any  # noqa: E402

#: What the benchmark's start messages carry (bench/common.py's START_FIELDS).
NOTIFICATIONS = {
    "email": {
        "events": {"on_workflow_completed": ["ops"]},
        "groups": {"ops": ["ops@bench.example"]},
    }
}
DEPLOY_CLUSTER = "deploy-cluster-1"


class Topology:
    """The benchmark's registry (bench/harness.py): one exchange, one build cluster,
    one deployment cluster, a builder and a deployer."""

    def build_clusters(self) -> list[dict[str, Any]]:
        return [
            {
                "etcd_token": "build-cluster-1",
                "messaging_exchange_id": "1",
                "allow_docker_builds": True,
            }
        ]

    def cluster(self, etcd_token: str) -> dict[str, Any] | None:
        if etcd_token == DEPLOY_CLUSTER:
            return {"etcd_token": DEPLOY_CLUSTER, "messaging_exchange_id": "1"}
        return None

    def has_module(self, exchange_id: Any, module_type: str) -> bool:
        return str(exchange_id) == "1" and module_type in ("builder", "deployer")


class Manager:
    """Workflows in a dict; a GET hands out a shallow copy (decoding the answer is work
    the floor does too, and the transition never changes what it was given)."""

    def __init__(self) -> None:
        self.workflows: dict[str, dict[str, Any]] = {}

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        return dict(self.workflows[workflow_id])

    def save_workflow(self, workflow_id: str, workflow: dict[str, Any]) -> None:
        self.workflows[workflow_id] = workflow

    def create_system_event(self, event: dict[str, Any]) -> None:
        raise AssertionError(f"unexpected system event: {event}")


class Publisher:
    """Keeps the last worker request per step; chats and e-mails are only counted."""

    def __init__(self) -> None:
        self.requests: dict[str, Any] = {}
        self.chats = self.emails = 0

    def worker_request(self, request: Any) -> str:
        if "orchestrator_control" not in request.payload:
            self.requests[request.step] = request
        return f"on broker 1, task id {request.task_id}"

    def email(self, email: Any, workflow_id: str) -> None:
        self.emails += 1

    def chat(self, note: Any, workflow_id: str) -> None:
        self.chats += 1


def report(request: Any, message: str, **changes: Any) -> dict[str, Any]:
    """A worker's report of its step, as `worker_api.step_completed` makes it (which
    deep-copies the request first: the peers' work, not the orchestrator's)."""
    payload = dict(request.payload)
    payload.update(changes)
    payload["event_log"] = [*(payload.get("event_log") or []), f"[OA][{payload['id']}] {message}"]
    return payload


def build_runtime(locks_dir: str) -> tuple[Any, Manager, Publisher]:
    from workflow_orchestrator.locking import FileLocks
    from workflow_orchestrator.runtime import Runtime, engine_config
    from workflow_orchestrator.settings import Settings

    settings = Settings(
        exchange_id="1",
        broker_id="1",
        manager_url="http://manager.invalid",
        oauth_login_url="http://manager.invalid/oauth/token",
        oauth_client_id="orchestrator",
        oauth_client_secret="never-used",
        ui_url="http://ui.bench",
        lock_dir=locks_dir,
    )
    manager, publisher = Manager(), Publisher()
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    ticks = iter(range(10**9))
    runtime = Runtime(
        settings=settings,
        manager=manager,  # type: ignore[arg-type]
        topology=Topology(),  # type: ignore[arg-type]
        locks=FileLocks(settings.lock_dir, wait=5),
        publisher=publisher,  # type: ignore[arg-type]
        config=engine_config(settings),
        clock=lambda: start + timedelta(milliseconds=next(ticks)),
    )
    return runtime, manager, publisher


def run_workflows(runtime: Any, manager: Manager, publisher: Publisher, count: int) -> int:
    """`count` workflows, each start, build report and deploy report; the transitions."""
    from workflow_orchestrator.tasks import process

    for _ in range(count):
        wid = str(uuid.uuid4())
        manager.workflows[wid] = {
            "id": wid,
            "deployment_repo": "Bench-Org/app_docker",
            "deployment_repo_git_ref": "master",
            "source_repo": "Bench-Org/app",
            "source_repo_git_ref": "0123abc",
            "milestones": ["build", "deploy"],
            "execute_options": {"force_build": False},
        }
        process(runtime, {"id": wid, "notifications_config": NOTIFICATIONS}, message_key=f"s-{wid}")
        built = report(publisher.requests["build"], "build done", etcd_token=DEPLOY_CLUSTER)
        process(runtime, built, message_key=f"b-{wid}")
        deployed = report(publisher.requests["deploy"], "deploy done")
        process(runtime, deployed, message_key=f"d-{wid}")
        stored = manager.workflows[wid]
        if not stored.get("workflow_completed") or stored.get("workflow_error"):
            raise SystemExit(f"workflow {wid} did not complete: {stored.get('event_log')}")
    return 3 * count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    p.add_argument("--workflows", "-n", type=int, default=400)
    p.add_argument("--repeat", "-r", type=int, default=5)
    p.add_argument("--profile", action="store_true")
    p.add_argument(
        "--sort",
        default="tottime",
        help="order of --profile's functions (pstats: tottime, cumulative, ncalls)",
    )
    p.add_argument("--top", type=int, default=25, help="how many functions --profile prints")
    p.add_argument(
        "--locks-under",
        default="/dev/shm" if Path("/dev/shm").is_dir() else None,
        help="where the temporary lock directory goes (default /dev/shm when there is one: "
        "creating a file on this machine's ext4 disk took from 5 to 600 us, depending on "
        "what the disk was doing; pass /tmp to include it)",
    )
    args = p.parse_args(argv)
    sys.path.insert(0, args.tree)
    # The Procfile's `-l INFO`, in Celery's worker format, written to nowhere: the
    # transition's INFO line is part of its work.
    logging.basicConfig(
        level=logging.INFO,
        stream=open(os.devnull, "w"),  # noqa: SIM115 - for the whole run
        format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s",
    )
    import workflow_orchestrator

    if not workflow_orchestrator.__file__.startswith(str(Path(args.tree).resolve())):
        raise SystemExit(f"workflow_orchestrator came from {workflow_orchestrator.__file__}")
    with tempfile.TemporaryDirectory(prefix="wo-own-work-", dir=args.locks_under) as locks_dir:
        runtime, manager, publisher = build_runtime(locks_dir)
        run_workflows(runtime, manager, publisher, 50)  # warm-up
        rounds = []
        for _ in range(args.repeat):
            started = time.thread_time()
            transitions = run_workflows(runtime, manager, publisher, args.workflows)
            rounds.append((time.thread_time() - started) / transitions * 1e6)
        print(
            f"{args.tree}: {min(rounds):.1f} us of CPU per transition (best of {args.repeat} "
            f"x {args.workflows} workflows; all: {', '.join(f'{r:.1f}' for r in rounds)}; "
            f"locks under {locks_dir})"
        )
        if args.profile:
            profile = cProfile.Profile()
            profile.runcall(run_workflows, runtime, manager, publisher, args.workflows)
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats(args.sort).print_stats(args.top)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
