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

import importlib.util
import logging
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from celery import Celery
from kombu import Connection

from .emulator import ManagerEmulator
from .factory import create_app
from .logs import configure_logging
from .queues import orchestration_queue, plain_queue
from .settings import Settings, redact_url
from .status_view import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    describe_workflow,
    failure_text,
    fit,
    progress_text,
    seconds_text,
    terminal_width,
)
from .worker_api import execute_workflow, step_completed, step_failed, worker_app

#: Seconds a demo builder or deployer spends on one step.
STEP_SECONDS = (0.3, 1.5)
#: Deadline of the default run; every extra workflow adds a little.
DEADLINE_SECONDS = 22.0
EXCHANGE_ID = "1"
BUILD_CLUSTER = "demo-build-cluster"
DEPLOY_CLUSTER = "demo-deploy-cluster"
#: What the demo builder "reads from the deployment repo": one team gets the e-mails.
NOTIFICATIONS_CONFIG = {
    "hipchat": {"room_names": ["Deploys"]},
    "email": {
        "groups": {"team": ["dev@example.com", "ops@example.com"]},
        "events": {"on_workflow_completed": ["team"]},
    },
}
_WORKFLOW_ID = re.compile(r"\[OA\]\[([^\]]*)\]")


class DemoError(Exception):
    """The demo could not run (broker unreachable, a worker did not start)."""


@dataclass(frozen=True)
class Scenario:
    """One kind of demo workflow and how it must end."""

    title: str
    milestones: tuple[str, ...]
    repo: str
    expected: str  # "succeeded" or "failed"


SCENARIOS = (
    Scenario("build + deploy", ("build", "deploy"), "demo-org/web_docker", "succeeded"),
    Scenario("config + deploy_oa", ("config", "deploy_oa"), "demo-org/api_docker", "succeeded"),
    Scenario("builder fails", ("build", "deploy"), "demo-org/broken_docker", "failed"),
)


@dataclass
class Inbox:
    """What the demo notification workers received, per workflow id (thread-safe)."""

    emails: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    chats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_email(self, payload: dict[str, Any]) -> None:
        with self.lock:
            self.emails[_workflow_of(payload.get("prefix"))].append(payload)

    def add_chat(self, payload: dict[str, Any]) -> None:
        with self.lock:
            self.chats[_workflow_of(payload.get("prefix"))] += 1

    def emails_for(self, workflow_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.emails.get(workflow_id, ()))

    def chats_for(self, workflow_id: str) -> int:
        with self.lock:
            return self.chats.get(workflow_id, 0)


def _workflow_of(prefix: Any) -> str:
    found = _WORKFLOW_ID.search(str(prefix))
    return found.group(1) if found else "?"


def peer_queues(settings: Settings) -> list[str]:
    """The queues the demo workers consume: builder, deployers, notifications."""
    return [
        settings.builder_queue,
        settings.deployer_queue,
        settings.deploy_oa_queue,
        settings.hipchat_queue,
        settings.email_queue,
    ]


def register_demo_workers(
    app: Celery,
    settings: Settings,
    inbox: Inbox,
    step_seconds: tuple[float, float] = STEP_SECONDS,
) -> None:
    """The demo builder, deployer and notification tasks, on `app` (never shared)."""
    callback = {
        "orchestrate_task": settings.orchestrate_task,
        "orchestration_queue": settings.queue_name,
    }

    def work(role: str, request: dict[str, Any]) -> None:
        step = request.get("current_step")
        repo = request.get("deployment_repo") or "?"
        time.sleep(random.uniform(*step_seconds))
        reply = dict(request)
        if role == "builder":
            # What a real builder reads from the deployment repo's configuration.
            reply["etcd_token"] = reply.get("etcd_token") or DEPLOY_CLUSTER
            reply["notifications_config"] = (
                reply.get("notifications_config") or NOTIFICATIONS_CONFIG
            )
            if "broken" in repo:
                step_failed(
                    app,
                    reply,
                    f"The {step} of {repo} failed on the demo builder",
                    "docker build exited with status 1",
                    hipchat_task=settings.hipchat_task,
                    hipchat_queue=settings.hipchat_queue,
                    **callback,
                )
                return
        step_completed(app, reply, f"Demo {role} finished the {step} of {repo}", **callback)

    @app.task(name=settings.builder_task, shared=False)
    def build(request: dict[str, Any]) -> None:
        work("builder", request)

    @app.task(name=settings.deployer_task, shared=False)
    def deploy(request: dict[str, Any]) -> None:
        work("deployer", request)

    @app.task(name=settings.deploy_oa_task, shared=False)
    def deploy_oa(request: dict[str, Any]) -> None:
        work("deployer", request)

    @app.task(name=settings.hipchat_task, shared=False)
    def hipchat(payload: dict[str, Any]) -> None:
        inbox.add_chat(payload)

    @app.task(name=settings.email_task, shared=False)
    def email(payload: dict[str, Any]) -> None:
        inbox.add_email(payload)


def seeded_emulator(client_secret: str) -> ManagerEmulator:
    """A started Manager emulator with one exchange, its builder and deployer, two clusters."""
    emulator = ManagerEmulator(client_id="orchestrator", client_secret=client_secret).start()
    emulator.add_exchange(EXCHANGE_ID, name="demo")
    emulator.add_module(EXCHANGE_ID, "builder", hostname="demo-builder")
    emulator.add_module(EXCHANGE_ID, "deployer", hostname="demo-deployer")
    emulator.add_cluster(BUILD_CLUSTER, EXCHANGE_ID, allow_docker_builds=True)
    emulator.add_cluster(DEPLOY_CLUSTER, EXCHANGE_ID)
    return emulator


def demo_settings(
    emulator: ManagerEmulator, client_secret: str, broker_url: str, prefix: str, lock_dir: str
) -> Settings:
    """The orchestrator's settings for the demo; `prefix` makes every queue name unique."""
    return Settings(
        exchange_id=EXCHANGE_ID,
        broker_id="1",
        manager_url=emulator.url,
        oauth_login_url=emulator.token_url,
        oauth_client_id="orchestrator",
        oauth_client_secret=client_secret,
        celery_broker_url=broker_url,
        queue_name=f"{prefix}workflow_orchestration",
        builder_queue=f"{prefix}builder",
        deployer_queue=f"{prefix}deployer",
        deploy_oa_queue=f"{prefix}deploy_oa",
        hipchat_queue=f"{prefix}notifications_hipchat",
        email_queue=f"{prefix}notifications_email",
        hostname=f"demo-orchestrator-{uuid.uuid4().hex[:6]}",
        lock_dir=lock_dir,
        manager_read_timeout=5.0,
        out_of_order_retry_seconds=0.1,
        retry_backoff_seconds=0.2,
        retry_backoff_max=2.0,
    )


# -- workers ----------------------------------------------------------------------------


@contextmanager
def embedded_worker(
    app: Celery, *, hostname: str, concurrency: int, heartbeat: bool
) -> Iterator[Any]:
    """One Celery worker (threads pool) in a thread of this process; warm stop on exit.

    Only one may run per process: kombu's event-loop hub is a process global.
    `heartbeat` (AMQP only) wakes the event loop twice a second so a stop is noticed.
    """
    from celery.worker import state as worker_state

    # The pool's threads look tasks up on the default app, as `celery worker` arranges.
    app.set_current()
    app.set_default()
    started = threading.Event()
    worker = app.WorkController(
        hostname=hostname,
        pool="threads",
        concurrency=concurrency,
        loglevel="INFO",
        ready_callback=lambda *_: started.set(),
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=not heartbeat,
        heartbeat_interval=0.5,
    )
    thread = threading.Thread(target=worker.start, name=f"worker-{hostname}", daemon=True)
    thread.start()
    while not started.wait(0.1):
        if not thread.is_alive():
            raise DemoError("the demo worker stopped while starting (see the log)")
    try:
        yield worker
    finally:
        worker_state.should_stop = 0  # a warm shutdown, noticed by the consumer loop...
        if not heartbeat:
            # ...at its next wake-up: without heartbeats, a synchronous loop only wakes
            # on a message (or every 2 s), so send it the shutdown command.
            app.control.shutdown(destination=[worker.hostname])
        thread.join(15)
        worker_state.should_stop = None


class OrchestratorProcess:
    """`celery -A workflow_orchestrator worker` as a child process, configured by env."""

    def __init__(self, settings: Settings, log_path: str) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OrchestratorProcess:
        env = {**os.environ, **self.settings.to_env()}
        spec = importlib.util.find_spec("celeryconfig")
        if spec is None or not spec.origin:
            raise DemoError("cannot find the celeryconfig module the worker loads")
        root = str(Path(spec.origin).resolve().parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workflow_orchestrator",
            "worker",
            "-P",
            "threads",
            "-c",
            "4",
            "-Q",
            self.settings.queue_name,
            "-n",
            f"{self.settings.hostname}@%h",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "INFO",
        ]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if not self.alive():
            return
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


# -- the run ----------------------------------------------------------------------------


@dataclass
class Run:
    """One demo workflow and what was seen of it."""

    scenario: Scenario
    workflow_id: str
    started: float
    ended: float | None = None
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def short(self) -> str:
        return self.workflow_id[:8]


class Board:
    """One line per workflow: redrawn in place on a terminal, changes appended otherwise."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._drawn = 0
        self._keys: dict[int, Any] = {}

    def draw(self, rows: list[tuple[str, Any]]) -> None:
        out = []
        if self.tty:
            if self._drawn:
                out.append(f"\x1b[{self._drawn}A\r")
            width = terminal_width()
            for text, _ in rows:
                out.append("\x1b[K" + fit(text, width) + "\n")
            self._drawn = len(rows)
        else:
            for index, (text, key) in enumerate(rows):
                if self._keys.get(index) != key:
                    self._keys[index] = key
                    out.append(text + "\n")
        self.stream.write("".join(out))
        self.stream.flush()


def _row(run: Run, now: float) -> tuple[str, Any]:
    view = run.view
    elapsed = (run.ended or now) - run.started
    text = f"  {run.short}  {run.scenario.title:<20} {progress_text(view, elapsed)}"
    return text, (view.get("state"), view.get("current_step"))


def _summary(runs: list[Run], inbox: Inbox, total: float) -> tuple[list[str], bool]:
    header = ("workflow", "scenario", "milestones", "result", "duration", "e-mails", "chats")
    rows = []
    all_good = True
    for run in runs:
        state = run.view.get("state", "pending")
        emails = inbox.emails_for(run.workflow_id)
        good = state == run.scenario.expected and len(emails) == 1
        all_good = all_good and good
        verdict = (
            state
            if state == run.scenario.expected
            else f"{state} (expected {run.scenario.expected})"
        )
        manager = run.view.get("duration") or "-"
        measured = seconds_text((run.ended or time.monotonic()) - run.started)
        sent = ", ".join(str(e.get("prefix", "")).split(" ", 1)[0] for e in emails)
        rows.append(
            (
                run.short,
                run.scenario.title,
                " > ".join(run.scenario.milestones),
                verdict,
                f"{measured} ({manager})",
                f"{len(emails)} {sent}".strip(),
                str(inbox.chats_for(run.workflow_id)),
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    for run in runs:
        if run.view.get("state") == "failed":
            lines.append(
                f"  {run.short} failed at {(run.view['failure'] or {}).get('step')}: "
                f"{failure_text(run.view)}"
            )
    done = sum(1 for r in runs if r.view.get("finished"))
    verdict = (
        f"All {len(runs)} workflows ended as expected in {seconds_text(total)}."
        if all_good
        else f"{done} of {len(runs)} workflows finished in {seconds_text(total)}; "
        "some did not end as expected."
    )
    return [*lines, "", verdict], all_good


def _memory_app(settings: Settings) -> Celery:
    """An orchestrator app on the in-process broker that consumes every demo queue too."""
    app = create_app(settings)
    app.conf.update(
        broker_transport_options={"polling_interval": 0.01},
        task_queues=[
            orchestration_queue(settings.queue_name),
            *(plain_queue(q) for q in peer_queues(settings)),
        ],
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def _reachable(broker_url: str) -> None:
    try:
        with Connection(broker_url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0.2, timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot use it"
        raise DemoError(
            f"cannot reach the broker at {redact_url(broker_url)}: {exc or type(exc).__name__}; "
            "is it running? (without --broker the demo needs no broker at all)"
        ) from None


def _delete_queues(broker_url: str, settings: Settings) -> None:
    """Remove the demo's uniquely named queues and exchanges from a shared broker."""
    names = [settings.queue_name, settings.error_queue_name, *peer_queues(settings)]
    try:
        with Connection(broker_url, connect_timeout=3) as conn:
            channel = conn.channel()
            for name in names:
                for method in ("queue_delete", "exchange_delete"):
                    try:
                        getattr(channel, method)(name)
                    except Exception:  # noqa: BLE001 - best effort; an error closes the channel
                        channel = conn.channel()
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).warning("could not delete the demo queues", exc_info=True)


def _log_to_file(path: str) -> None:
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    configure_logging("text", root)
    logging.captureWarnings(True)


def _wait_registered(
    emulator: ManagerEmulator, process: OrchestratorProcess, hostname: str, log: str
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(m.get("hostname") == hostname for m in emulator.modules(EXCHANGE_ID)):
            return
        if not process.alive():
            tail = Path(log).read_text(errors="replace").strip().splitlines()[-3:]
            raise DemoError("the orchestrator process exited: " + " | ".join(tail))
        time.sleep(0.1)
    raise DemoError(f"the orchestrator process did not start within 30 s (log: {log})")


@dataclass
class _System:
    """What `run_demo` runs the workflows on, and how it describes it."""

    app: Celery
    settings: Settings
    broker: str
    orchestrator: str
    heartbeat: bool
    ready: Any = None  # called once the header is shown: waits for the orchestrator


def _in_process(stack: ExitStack, emulator: ManagerEmulator, secret: str, locks: str) -> _System:
    """memory://: the orchestrator's own app runs the demo workers too, in one worker."""
    settings = demo_settings(emulator, secret, "memory://localhost//", "", locks)
    app = _memory_app(settings)
    return _System(
        app,
        settings,
        "memory:// (in this process)",
        "one threads-pool worker in this process, consuming every queue",
        heartbeat=False,
    )


def _with_broker(
    stack: ExitStack, emulator: ManagerEmulator, secret: str, locks: str, broker: str, log: str
) -> _System:
    """A real broker: the orchestrator as its own worker process, demo workers here."""
    _reachable(broker)
    prefix = f"wo_demo_{uuid.uuid4().hex[:8]}_"
    settings = demo_settings(emulator, secret, broker, prefix, locks)
    stack.callback(_delete_queues, broker, settings)
    orchestrator = OrchestratorProcess(settings, log).start()
    stack.callback(orchestrator.stop)
    app = worker_app(
        "workflow-orchestrator-demo",
        broker,
        queues=peer_queues(settings),
        orchestration_queue=settings.queue_name,
        orchestrate_task=settings.orchestrate_task,
    )
    pid = orchestrator.process.pid if orchestrator.process else "?"
    return _System(
        app,
        settings,
        redact_url(broker),
        f"`celery -A workflow_orchestrator worker` process {pid}, queues prefixed {prefix}",
        heartbeat=True,
        ready=lambda: _wait_registered(emulator, orchestrator, settings.hostname, log),
    )


def run_demo(
    *,
    broker: str | None = None,
    workflows: int = 3,
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
                system = _in_process(stack, emulator, secret, locks)
            else:
                system = _with_broker(stack, emulator, secret, locks, broker, log_path)
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
    system: _System,
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
            if run.view["finished"] and run.ended is None:
                run.ended = now
        board.draw([_row(run, now) for run in runs])
        finished = all(r.ended is not None for r in runs)
        mailed = all(inbox.emails_for(r.workflow_id) for r in runs)
        chats = [inbox.chats_for(r.workflow_id) for r in runs]
        # Done once every workflow has its e-mail and the chat lines stopped coming.
        if finished and ((mailed and chats == last_chats) or now > max_ended(runs) + 3):
            break
        last_chats = chats
        if now > deadline:
            say(f"Gave up after {seconds_text(now - began)}: not every workflow finished.")
            break
        time.sleep(0.1)
    lines, good = _summary(runs, inbox, time.monotonic() - began)
    say()
    say("Summary:")
    for line in lines:
        say(line)
    return EXIT_OK if good else EXIT_FAILED
