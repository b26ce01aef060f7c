"""`workflow-orchestrator demo`: the whole system at work, on a machine with nothing else.

By default everything runs in this process: an emulated Manager on loopback, kombu's
`memory://` broker, and ONE threads-pool Celery worker that consumes the orchestrator's
queue and the demo builder, deployer and notification queues (the demo tasks are
registered on the orchestrator's own app). With `--broker amqp://...` the orchestrator
runs as its own `celery -A workflow_orchestrator worker` process, as in production, and
the demo workers run in this process; their queues get unique names and are deleted
afterwards, so a real orchestrator on the same broker is never disturbed.

The demo builder behaves like OpenAperture's: it reads the deployment repo's
configuration (here: fixed `etcd_token` and notification settings) into the request
and reports back; it fails any repository whose name contains `broken`.

Two things make one threads-pool worker over `memory://` work (both found the hard
way): the pool's threads look tasks up on the *default* app, so the app is made the
default before the worker starts (otherwise a task is accepted and silently never
runs); and `memory://` is not asynchronous, so Celery runs its synchronous loop, which
notices a stop request only after a 2 s drain (twice), so a remote-control `shutdown`
message wakes it at once. `memory://` accepts but ignores confirms, dead-lettering and
durability: the demo shows the orchestration, not the delivery guarantees.
"""

from __future__ import annotations

import logging
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from typing import TextIO

from .demo_board import Board, Run, board_row, summary_lines
from .demo_system import (
    DEADLINE_SECONDS,
    EXCHANGE_ID,
    SCENARIOS,
    STEP_SECONDS,
    DemoError,
    DemoSystem,
    Inbox,
    broker_system,
    embedded_worker,
    in_process_system,
    register_demo_workers,
    seeded_emulator,
)
from .emulator import ManagerEmulator
from .logs import configure_logging
from .status_view import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    describe_workflow,
    seconds_text,
)
from .worker_api import execute_workflow, retry_workflow


def _log_to_file(path: str) -> None:
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    configure_logging("text", root)
    logging.captureWarnings(True)


def run_demo(
    *,
    broker: str | None = None,
    workflows: int = 5,
    out: TextIO,
    tty: bool = False,
    step_seconds: tuple[float, float] = STEP_SECONDS,
    log_path: str | None = None,
) -> int:
    """Run the demo; returns the exit code (0 when every workflow ended as expected).

    Celery's and the orchestrator's logs go to `log_path` (a new temporary file when
    None), never to the terminal the progress is drawn on.
    """
    started = time.monotonic()
    if log_path is None:
        log_path = tempfile.mkstemp(prefix="workflow-orchestrator-demo-", suffix=".log")[1]
    _log_to_file(log_path)
    secret = secrets.token_urlsafe(16)
    inbox = Inbox()

    def say(text: str = "") -> None:
        out.write(text + "\n")
        out.flush()

    try:
        with ExitStack() as stack:
            emulator = seeded_emulator(secret)
            stack.callback(emulator.stop)
            locks = stack.enter_context(tempfile.TemporaryDirectory(prefix="wo-demo-locks-"))
            if broker is None:
                system = in_process_system(stack, emulator, secret, locks)
            else:
                system = broker_system(stack, emulator, secret, locks, broker, log_path)
            register_demo_workers(system.app, system.settings, inbox, step_seconds)
            low, high = step_seconds
            say("WorkflowOrchestrator demo")
            say(
                f"  Manager      emulator at {emulator.url} "
                f"(exchange {EXCHANGE_ID}: a builder, a deployer, 2 clusters)"
            )
            say(f"  broker       {system.broker}")
            say(f"  orchestrator {system.orchestrator}")
            say(f"  workers      demo builder, deployer, notifications ({low:g}-{high:g} s a step)")
            say(f"  log          {log_path}")
            if system.ready is not None:
                system.ready()
            stack.enter_context(
                embedded_worker(
                    system.app,
                    hostname=f"demo-workers-{uuid.uuid4().hex[:6]}@localhost",
                    concurrency=min(32, 4 + 2 * workflows),
                    heartbeat=system.heartbeat,
                )
            )
            code = _run_workflows(system, emulator, inbox, workflows, out, tty, say)
        say(f"(the demo took {seconds_text(time.monotonic() - started)})")
        return code
    except DemoError as exc:
        print(f"workflow-orchestrator: demo: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("\nworkflow-orchestrator: demo interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def max_ended(runs: list[Run]) -> float:
    return max(r.ended or 0.0 for r in runs)


def _run_workflows(
    system: DemoSystem,
    emulator: ManagerEmulator,
    inbox: Inbox,
    count: int,
    out: TextIO,
    tty: bool,
    say: Callable[..., None],
) -> int:
    """Start `count` workflows, show them live, then the summary; returns the exit code."""
    app, settings = system.app, system.settings
    runs: list[Run] = []
    say()
    say(f"Running {count} workflow{'s' if count > 1 else ''}:")
    for number in range(count):
        scenario = SCENARIOS[number % len(SCENARIOS)]
        workflow_id = emulator.add_workflow(
            {
                "deployment_repo": scenario.repo,
                "deployment_repo_git_ref": "master",
                "source_repo": scenario.repo.removesuffix("_docker"),
                "source_repo_git_ref": "main",
                "milestones": list(scenario.milestones),
            }
        )
        execute_workflow(
            app,
            workflow_id,
            queue=settings.queue_name,
            orchestrate_task=settings.orchestrate_task,
        )
        runs.append(Run(scenario, workflow_id, time.monotonic()))
    board = Board(out, tty)
    began = time.monotonic()
    deadline = began + DEADLINE_SECONDS + 0.5 * count
    last_chats: list[int] = []
    while True:
        now = time.monotonic()
        for run in runs:
            stored = emulator.get_workflow(run.workflow_id) or {"id": run.workflow_id}
            run.view = describe_workflow(stored, events=0)
            failed = run.view["state"] == "failed"
            if run.scenario.retry and failed and run.retried_after is None:
                # What an operator does with `workflow-orchestrator retry ID`.
                run.retried_after = run.view["event_count"]
                retry_workflow(
                    app,
                    run.workflow_id,
                    queue=settings.queue_name,
                    orchestrate_task=settings.orchestrate_task,
                )
            if run.finished() and run.ended is None:
                run.ended = now
        board.draw([board_row(run, now) for run in runs])
        finished = all(r.ended is not None for r in runs)
        mailed = all(len(inbox.emails_for(r.workflow_id)) >= r.scenario.emails for r in runs)
        chats = [inbox.chats_for(r.workflow_id) for r in runs]
        # Done once every workflow has its e-mail and the chat lines stopped coming.
        if finished and ((mailed and chats == last_chats) or now > max_ended(runs) + 3):
            break
        last_chats = chats
        if now > deadline:
            say(f"Gave up after {seconds_text(now - began)}: not every workflow finished.")
            break
        time.sleep(0.1)
    lines, good = summary_lines(runs, inbox, time.monotonic() - began)
    say()
    say("Summary:")
    for line in lines:
        say(line)
    return EXIT_OK if good else EXIT_FAILED
