"""The `workflow-orchestrator` command: the pure status view, then the real console
script run as a subprocess against a live system (Manager emulator, the orchestrator
worker process, RabbitMQ, demo peer workers in this process).

Queue names are unique to the session and deleted afterwards.
"""

from __future__ import annotations

import configparser
import importlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from kombu import Connection

from tests.services import Vhost
from tests.support import (
    REPO,
    OrchestratorProcess,
    delete_test_queues,
    in_process_worker,
    system_settings,
    wait_registered,
)
from workflow_orchestrator.cli import LiveLine, cancel_shown, cli, follow
from workflow_orchestrator.demo_system import Inbox, peer_queues, register_demo_workers
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.errors import ManagerNotFound, ManagerTransientError
from workflow_orchestrator.settings import Settings
from workflow_orchestrator.status_view import (
    describe_workflow,
    event_message,
    progress_text,
    render_status,
)
from workflow_orchestrator.worker_api import worker_app

SUFFIX = uuid.uuid4().hex[:8]
SECRET = f"cli-secret-{uuid.uuid4().hex}"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")

# -- the status view (pure) -------------------------------------------------------------

WID = "5b1d7f1e-8a4e-4c1e-9a55-0c1b2c3d4e5f"
P = f"[OA][{WID}][Org/app_docker]"


def stored(**fields: Any) -> dict[str, Any]:
    return {
        "id": WID,
        "deployment_repo": "Org/app_docker",
        "deployment_repo_git_ref": "master",
        "milestones": ["build", "deploy"],
        "current_step": None,
        "workflow_step_durations": {},
        "workflow_completed": False,
        "workflow_error": False,
        "event_log": [],
        **fields,
    }


def test_a_workflow_not_started_is_pending() -> None:
    view = describe_workflow(stored())
    assert view["state"] == "pending"
    assert view["finished"] is False
    assert [m["state"] for m in view["milestones"]] == ["pending", "pending"]
    assert (view["milestone_index"], view["milestone_count"]) == (0, 2)
    assert view["failure"] is None
    assert view["duration"] is None


def test_a_running_workflow_has_done_running_and_pending_milestones() -> None:
    view = describe_workflow(
        stored(
            milestones=["build", "deploy", "deploy_oa"],
            current_step="deploy",
            workflow_step_durations={"build": "3 second(s)"},
            elapsed_workflow_time="4 second(s)",
            event_log=[
                f"{P} Starting workflow...",
                f"{P} Starting Workflow Milestone: build",
                f"[OA][{WID}] build done",
                f"{P} Completed Workflow Milestone: build, in 3 second(s)",
                f"{P} Starting Workflow Milestone: deploy",
            ],
        ),
        events=2,
    )
    assert view["state"] == "running"
    assert view["milestones"] == [
        {"name": "build", "state": "done", "duration": "3 second(s)"},
        {"name": "deploy", "state": "running", "duration": None},
        {"name": "deploy_oa", "state": "pending", "duration": None},
    ]
    assert (view["milestone_index"], view["milestone_count"]) == (2, 3)
    assert view["events"] == [
        "Completed Workflow Milestone: build, in 3 second(s)",
        "Starting Workflow Milestone: deploy",
    ]
    assert view["event_count"] == 5
    assert view["elapsed"] == "4 second(s)"
    assert progress_text(view, 4.25) == "[2/3] deploy running  4.2s"


def test_a_succeeded_workflow_has_every_milestone_done() -> None:
    view = describe_workflow(
        stored(
            current_step="workflow_completed",
            workflow_completed=True,
            workflow_duration="9 second(s)",
            workflow_step_durations={"build": "5 second(s)", "deploy": "4 second(s)"},
        )
    )
    assert view["state"] == "succeeded"
    assert [m["state"] for m in view["milestones"]] == ["done", "done"]
    assert view["duration"] == "9 second(s)"
    assert view["milestone_index"] == 2
    assert "succeeded in 9 second(s)" in render_status(view)


@pytest.mark.parametrize(
    ("reason", "kind", "said"),
    [
        ("Cancelled by an operator: wrong branch", "cancelled", "cancelled"),
        ("Cancelled by an operator", "cancelled", "cancelled"),
        ("Milestone worker did not report back within 3 second(s)", "timed_out", "timed out"),
        ("Milestone worker has reported a failure", "failed", "failed"),
    ],
)
def test_a_cancelled_or_timed_out_workflow_says_so(reason: str, kind: str, said: str) -> None:
    view = describe_workflow(
        stored(
            current_step="build",
            workflow_completed=True,
            workflow_error=True,
            workflow_duration="3 second(s)",
            event_log=[
                f"{P} Starting Workflow Milestone: build",
                f"{P} Workflow Milestone Failed: build.  Reason: {reason}",
                f"{P} Workflow has failed in 3 second(s)",
            ],
        )
    )
    assert view["failure"]["kind"] == kind
    assert progress_text(view, 3.0) == f"[1/2] {said} at build: {reason}"
    text = render_status(view)
    assert f"State:    {said} at build (milestone 1 of 2) after 3 second(s)" in text
    assert f"Reason:   {reason}" in text


def test_a_worker_failure_names_the_step_and_both_reasons() -> None:
    log = [
        f"{P} Starting workflow...",
        f"{P} Starting Workflow Milestone: build",
        f"[OA][{WID}] build of Org/app_docker failed",
        f"[OA][{WID}] Workflow step failed: docker build exited with status 1",
        f"{P} Workflow Milestone Failed: build.  Reason: Milestone worker has reported a failure",
        f"{P} Workflow has failed in 2 second(s)",
        f"{P} Completed Workflow Milestone: build, in 2 second(s)",
    ]
    view = describe_workflow(
        stored(
            current_step="build",
            workflow_completed=True,
            workflow_error=True,
            workflow_duration="2 second(s)",
            workflow_step_durations={"build": "2 second(s)"},
            event_log=log,
        )
    )
    assert view["state"] == "failed"
    assert [m["state"] for m in view["milestones"]] == ["failed", "pending"]
    assert view["failure"] == {
        "kind": "failed",
        "step": "build",
        "reason": "Milestone worker has reported a failure",
        "worker_reason": "docker build exited with status 1",
    }
    text = render_status(view)
    assert "State:    failed at build (milestone 1 of 2) after 2 second(s)" in text
    assert (
        "Reason:   Milestone worker has reported a failure "
        "(worker: docker build exited with status 1)"
    ) in text
    assert re.search(r"^  build   failed   2 second\(s\)$", text, re.M)
    assert re.search(r"^  deploy  pending$", text, re.M)
    assert "Last 5 of 7 events:" in text


def test_a_failure_before_any_milestone_has_no_step() -> None:
    view = describe_workflow(
        stored(
            milestones=["build", "bake"],
            workflow_completed=True,
            workflow_error=True,
            event_log=[
                f"{P} Starting workflow...",
                f"{P} Workflow Milestone Failed: none.  Reason: Unknown milestone: bake",
            ],
        )
    )
    assert view["failure"] == {
        "kind": "failed",
        "step": None,
        "reason": "Unknown milestone: bake",
        "worker_reason": None,
    }
    assert [m["state"] for m in view["milestones"]] == ["pending", "pending"]
    assert "failed before any milestone" in render_status(view)


def test_odd_workflows_do_not_break_the_view() -> None:
    view = describe_workflow({"id": WID, "milestones": "build", "event_log": None}, events=0)
    assert view["state"] == "pending"
    assert view["milestones"] == [] and view["events"] == []
    failed = describe_workflow(stored(workflow_completed=True, workflow_error=True))
    assert failed["failure"]["reason"].startswith("unknown")


def test_event_prefixes_are_removed() -> None:
    assert event_message(f"{P} Starting workflow...") == "Starting workflow..."
    assert event_message(f"[OA][{WID}] build done") == "build done"
    assert event_message("no prefix") == "no prefix"


class Feed:
    """A fake Manager answering the stored workflow of successive polls."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.now = 0.0

    def fetch(self) -> dict[str, Any]:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _events(*messages: str) -> list[str]:
    return [f"{P} {m}" for m in messages]


RUNNING = stored(
    current_step="build",
    event_log=_events("Starting workflow...", "Starting Workflow Milestone: build"),
)
DONE = stored(
    current_step="workflow_completed",
    workflow_completed=True,
    workflow_duration="3 second(s)",
    event_log=_events(
        "Starting workflow...",
        "Starting Workflow Milestone: build",
        "Completed Workflow Milestone: build, in 1 second(s)",
        "Workflow completed in 3 second(s)",
    ),
)


def test_follow_prints_each_event_once_and_exits_0_on_success() -> None:
    feed = Feed(RUNNING, RUNNING, DONE)
    out = io.StringIO()
    code = follow(feed.fetch, LiveLine(out, tty=False), clock=feed.clock, sleep=feed.sleep)
    assert code == 0
    lines = out.getvalue().splitlines()
    assert lines == [
        f"Watching workflow {WID} (Org/app_docker): build > deploy",
        "  Starting workflow...",
        "  Starting Workflow Milestone: build",
        "[1/2] build running  0.0s",
        "  Completed Workflow Milestone: build, in 1 second(s)",
        "  Workflow completed in 3 second(s)",
        f"Workflow {WID} succeeded in 3 second(s) (2 of 2 milestones)",
    ]


def test_follow_redraws_one_status_line_on_a_terminal() -> None:
    feed = Feed(RUNNING, RUNNING, RUNNING, DONE)
    out = io.StringIO()
    assert follow(feed.fetch, LiveLine(out, tty=True), clock=feed.clock, sleep=feed.sleep) == 0
    text = out.getvalue()
    assert text.count("[1/2] build running") >= 3 * 5  # redrawn 5 times a second...
    assert text.count("\r\x1b[K") >= 4  # ...in place
    assert text.count("Starting Workflow Milestone: build") == 1
    assert text.endswith(f"Workflow {WID} succeeded in 3 second(s) (2 of 2 milestones)\n")


def test_follow_exits_1_with_the_reason_on_failure() -> None:
    failed = stored(
        current_step="build",
        workflow_completed=True,
        workflow_error=True,
        workflow_duration="1 second(s)",
        event_log=_events("Workflow Milestone Failed: build.  Reason: no build clusters"),
    )
    out = io.StringIO()
    feed = Feed(failed)
    assert follow(feed.fetch, LiveLine(out, tty=False), clock=feed.clock, sleep=feed.sleep) == 1
    assert out.getvalue().endswith("Reason: no build clusters\n")


def test_follow_times_out_with_exit_2() -> None:
    feed = Feed(RUNNING)
    out = io.StringIO()
    code = follow(
        feed.fetch,
        LiveLine(out, tty=False),
        interval=1.0,
        timeout=5.0,
        clock=feed.clock,
        sleep=feed.sleep,
    )
    assert code == 2
    assert out.getvalue().splitlines()[-1] == (
        "Timed out after 5.0s; the workflow is still running"
    )


def test_follow_rides_out_a_short_manager_outage_but_not_a_long_one() -> None:
    down = ManagerTransientError("GET /workflows/x", 503, "")
    feed = Feed(RUNNING, down, down, DONE)
    out = io.StringIO()
    assert follow(feed.fetch, LiveLine(out, tty=False), clock=feed.clock, sleep=feed.sleep) == 0
    assert out.getvalue().count("Manager unavailable") == 1  # once per outage off a TTY
    feed = Feed(RUNNING, down)
    with pytest.raises(ManagerTransientError):
        follow(
            feed.fetch,
            LiveLine(io.StringIO(), tty=False),
            clock=feed.clock,
            sleep=feed.sleep,
            give_up_after=10,
        )
    feed = Feed(down)
    with pytest.raises(ManagerTransientError):  # down from the start: no waiting
        follow(feed.fetch, LiveLine(io.StringIO(), tty=False), clock=feed.clock, sleep=feed.sleep)
    feed = Feed(ManagerNotFound("GET /workflows/x", 404, ""))
    with pytest.raises(ManagerNotFound):
        follow(feed.fetch, LiveLine(io.StringIO(), tty=False), clock=feed.clock, sleep=feed.sleep)


def test_the_console_script_points_at_main() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"]
    target = next(
        line.split("=", 1)[1].strip()
        for line in scripts.splitlines()
        if line.strip().startswith("workflow-orchestrator =")
    )
    module, _, name = target.partition(":")
    assert callable(getattr(importlib.import_module(module), name))


# -- CliRunner: argument handling and errors, in process ---------------------------------

REQUIRED_ENV = ("EXCHANGE_ID", "BROKER_ID", "MANAGER_URL", "OAUTH_LOGIN_URL", "OAUTH_CLIENT_ID")


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No orchestrator setting in the environment and no .env file in the directory."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name in REQUIRED_ENV or name.startswith(("OAUTH_", "CELERY_BROKER")):
            monkeypatch.delenv(name)


def test_check_names_a_missing_setting_in_one_line(bare_env: None) -> None:
    result = CliRunner().invoke(cli, ["check"], env={"OAUTH_CLIENT_SECRET": SECRET})
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "FAIL  settings  setting EXCHANGE_ID: is required but not set "
        "(set it in the environment or in a .env file in this directory)"
    ]


def test_commands_refuse_bad_settings_in_one_line(bare_env: None) -> None:
    result = CliRunner().invoke(cli, ["status", WID], env={"EXCHANGE_ID": "1"})
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "workflow-orchestrator: setting BROKER_ID: is required but not set "
        "(set it in the environment or in a .env file in this directory)"
    ]


def test_demo_rejects_zero_workflows() -> None:
    result = CliRunner().invoke(cli, ["demo", "--workflows", "0"])
    assert result.exit_code == 2
    assert "must be at least 1" in result.output


# -- the live system ----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Live:
    emulator: ManagerEmulator
    settings: Settings
    orchestrator: OrchestratorProcess
    workdir: Path

    def env(self, **overrides: str) -> dict[str, str]:
        env = {**os.environ, **self.settings.to_env(), "PYTHONPATH": str(REPO)}
        env.update(overrides)
        return {k: v for k, v in env.items() if v is not None}

    def cli(
        self, *args: str, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workflow_orchestrator.cli", *args],
            env=env or self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, *args: str, stderr: Any) -> subprocess.Popen[str]:
        """The command running, its stdout a pipe read line by line (stderr to a file)."""
        return subprocess.Popen(
            [sys.executable, "-m", "workflow_orchestrator.cli", *args],
            env=self.env(),
            cwd=self.workdir,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )

    def new_workflow(self, repo: str, milestones: list[str]) -> str:
        return self.emulator.add_workflow(
            {"deployment_repo": repo, "deployment_repo_git_ref": "master", "milestones": milestones}
        )


@contextmanager
def live_system(
    broker_url: str, tag: str = "cli", step_seconds: tuple[float, float] = (0.3, 0.5)
) -> Iterator[Live]:
    """Emulator + orchestrator process + demo peers in this process, on unique queues of
    the test's own virtual host `broker_url`.

    The peers send task events (as the orchestrator does) so Flower sees them finish.
    """

    with Connection(broker_url, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)
    emulator = ManagerEmulator(client_id="orchestrator", client_secret=SECRET).start()
    emulator.add_exchange("1", name="cli-test")
    emulator.add_module("1", "builder", hostname="builder-1")
    emulator.add_module("1", "deployer", hostname="deployer-1")
    emulator.add_cluster("build-cluster-1", "1", allow_docker_builds=True)
    emulator.add_cluster("demo-deploy-cluster", "1")
    settings = system_settings(
        emulator,
        secret=SECRET,
        prefix=f"wo_{tag}_{SUFFIX}",
        broker_url=broker_url,
        hostname=f"{tag}-orchestrator-{SUFFIX}",
    )
    orchestrator = OrchestratorProcess(settings.to_env(), name=f"{tag}-orchestrator").start()
    peers = worker_app(
        "cli-test-peers",
        broker_url,
        queues=peer_queues(settings),
        orchestration_queue=settings.queue_name,
    )
    peers.conf.update(worker_send_task_events=True, task_send_sent_event=True)
    register_demo_workers(peers, settings, Inbox(), step_seconds)
    try:
        wait_registered(emulator, orchestrator, settings.hostname)
        with in_process_worker(peers, f"{tag}-peers-{SUFFIX}@test"):
            yield Live(emulator, settings, orchestrator, Path(tempfile.mkdtemp(prefix="wo-cli-")))
    finally:
        orchestrator.stop()
        emulator.stop()
        delete_test_queues(broker_url, settings)


@pytest.fixture(scope="module")
def live(broker_url: str) -> Iterator[Live]:
    with live_system(broker_url) as system:
        yield system


@dataclass
class Ran:
    ok_id: str
    failing_id: str
    executes: list[subprocess.CompletedProcess[str]]
    ok_watch: tuple[int, str, str]
    failing_watch: tuple[int, str, str]


@pytest.fixture(scope="module")
def ran(live: Live) -> Ran:
    """Two workflows followed with `watch` from before their start by `execute`."""
    ok_id = live.new_workflow("Org/web_docker", ["build", "deploy"])
    failing_id = live.new_workflow("Org/broken_docker", ["build", "deploy"])
    errors = [tempfile.TemporaryFile("w+") for _ in range(2)]
    watches = [
        live.popen("watch", wid, "--interval", "0.2", "--timeout", "30", stderr=err)
        for wid, err in zip((ok_id, failing_id), errors, strict=True)
    ]
    # Each watch has polled once (and seen a workflow not started) before `execute` runs.
    first_lines = [process.stdout.readline() for process in watches]  # type: ignore[union-attr]
    executes = [live.cli("execute", ok_id, "--force-build"), live.cli("execute", failing_id)]
    results = []
    for process, first, err in zip(watches, first_lines, errors, strict=True):
        out = first + process.stdout.read()  # type: ignore[union-attr]  # same buffered reader
        process.wait(timeout=40)
        err.seek(0)
        results.append((process.returncode, out, err.read()))
        err.close()
    return Ran(ok_id, failing_id, executes, results[0], results[1])


def test_execute_prints_the_task_id(ran: Ran) -> None:
    for result in ran.executes:
        assert result.returncode == 0, result.stderr
        assert UUID.match(result.stdout.strip()), result.stdout
        assert result.stderr == ""


def test_watch_exits_0_when_the_workflow_succeeds(ran: Ran) -> None:
    code, out, err = ran.ok_watch
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0] == f"Watching workflow {ran.ok_id} (Org/web_docker): build > deploy"
    assert "  Starting Workflow Milestone: build" in lines
    assert "  Starting Workflow Milestone: deploy" in lines
    assert "[0/2] waiting for the orchestrator  " in out  # watch started before execute
    assert any(re.match(r"\[[12]/2\] (build|deploy) running", line) for line in lines)
    assert re.match(
        rf"Workflow {ran.ok_id} succeeded in \d+ second\(s\) \(2 of 2 milestones\)$", lines[-1]
    )
    assert "\x1b" not in out  # no terminal codes when stdout is not a terminal
    assert err == ""


def test_watch_exits_1_when_the_workflow_fails(ran: Ran) -> None:
    code, out, _ = ran.failing_watch
    assert code == 1, out
    assert "  docker build exited with status 1" in out  # the worker's reason line
    assert out.splitlines()[-1] == (
        "Reason: Milestone worker has reported a failure "
        "(worker: docker build exited with status 1)"
    )


def test_status_shows_milestones_durations_events_and_the_reason(live: Live, ran: Ran) -> None:
    result = live.cli("status", ran.failing_id, "--events", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Workflow {ran.failing_id}  Org/broken_docker @ master"
    assert re.match(r"State:    failed at build \(milestone 1 of 2\) after \d+ second", lines[1])
    assert lines[2] == (
        "Reason:   Milestone worker has reported a failure "
        "(worker: docker build exited with status 1)"
    )
    assert re.search(r"^  build   failed   \d+ second\(s\)$", result.stdout, re.M)
    assert re.search(r"^  deploy  pending$", result.stdout, re.M)
    assert re.search(r"^Last 3 of \d+ events:$", result.stdout, re.M)


def test_status_json_is_the_documented_view(live: Live, ran: Ran) -> None:
    result = live.cli("status", ran.ok_id, "--json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert sorted(view) == sorted(
        [
            "id",
            "deployment_repo",
            "deployment_repo_git_ref",
            "state",
            "finished",
            "current_step",
            "milestone_index",
            "milestone_count",
            "milestones",
            "duration",
            "elapsed",
            "failure",
            "events",
            "event_count",
            "updated_at",
        ]
    )
    assert view["id"] == ran.ok_id
    assert view["state"] == "succeeded" and view["finished"] is True
    assert [(m["name"], m["state"]) for m in view["milestones"]] == [
        ("build", "done"),
        ("deploy", "done"),
    ]
    assert all(re.match(r"\d+ second\(s\)$", m["duration"]) for m in view["milestones"])
    assert len(view["events"]) == 5
    assert view["failure"] is None


def test_status_in_process_matches_the_manager(live: Live, ran: Ran) -> None:
    result = CliRunner().invoke(cli, ["status", ran.failing_id, "--json"], env=live.env())
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view == describe_workflow(live.emulator.get_workflow(ran.failing_id) or {})


def test_execute_refuses_a_workflow_that_already_ran(live: Live, ran: Ran) -> None:
    result = live.cli("execute", ran.ok_id)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"workflow-orchestrator: workflow {ran.ok_id} has already ")
    assert "nothing sent" in result.stderr


def test_an_unknown_workflow_is_one_clear_line(live: Live) -> None:
    missing = str(uuid.uuid4())
    for command in (["status", missing], ["watch", missing], ["execute", missing]):
        result = live.cli(*command)
        assert result.returncode == 2, command
        assert result.stderr.splitlines() == [
            f"workflow-orchestrator: workflow {missing} not found in the Manager at "
            f"{live.emulator.url}"
        ]


def test_check_passes_against_a_live_system(live: Live, broker_vhost: Vhost) -> None:
    result = live.cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    words = [line.split()[:2] for line in result.stdout.splitlines()]
    assert words == [
        ["OK", "settings"],
        ["OK", "broker"],
        ["OK", "queue"],
        ["OK", "token"],
        ["OK", "manager"],
    ]
    assert broker_vhost.redacted_url in result.stdout
    assert broker_vhost.password not in result.stdout + result.stderr
    assert "1 builder, 1 deployer, 1 workflow_orchestrator" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_check_fails_when_the_manager_is_down(live: Live) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    result = live.cli("check", env=live.env(MANAGER_URL=down, OAUTH_LOGIN_URL=f"{down}/token"))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[3] == (
        f"FAIL  token     cannot reach the token endpoint {down}/token (ConnectionError): "
        "is it up? check OAUTH_LOGIN_URL"
    )
    assert lines[4] == "SKIP  manager   not tried: it needs a token"
    only_manager = live.cli("check", env=live.env(MANAGER_URL=down))
    assert only_manager.returncode == 1
    assert only_manager.stdout.splitlines()[-1] == (
        f"FAIL  manager   cannot reach the Manager at {down} "
        "(GET /messaging/exchanges/1: ConnectionError): is it up? check MANAGER_URL"
    )
    assert "Traceback" not in result.stderr + only_manager.stderr


def test_check_names_an_exchange_the_manager_does_not_know(live: Live) -> None:
    result = live.cli("check", env=live.env(EXCHANGE_ID="999"))
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1].startswith(
        f"FAIL  manager   EXCHANGE_ID 999 is unknown to the Manager at {live.emulator.url}"
    )


def test_check_fails_on_a_wrong_secret_without_printing_it(live: Live) -> None:
    wrong = "wrong-secret-123456"
    result = live.cli("check", env=live.env(OAUTH_CLIENT_SECRET=wrong))
    assert result.returncode == 1
    assert "refused the client credentials (answered 401)" in result.stdout
    assert wrong not in result.stdout + result.stderr


def test_status_when_the_manager_is_down_is_one_line(live: Live) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    result = live.cli("status", str(uuid.uuid4()), env=live.env(OAUTH_LOGIN_URL=f"{down}/t"))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"workflow-orchestrator: cannot reach the token endpoint {down}/t (ConnectionError): "
        "is it up? check OAUTH_LOGIN_URL"
    ]
    debug = live.cli("--debug", "status", str(uuid.uuid4()), env=live.env(MANAGER_URL=down))
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_execute_when_the_broker_is_down_is_one_line(live: Live, broker_vhost: Vhost) -> None:
    password = "broker-pw-5150"
    broker = f"amqp://guest:{password}@127.0.0.1:{closed_port()}//"
    result = live.cli(
        "execute", str(uuid.uuid4()), "--no-verify", env=live.env(CELERY_BROKER_URL=broker)
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(
        f"workflow-orchestrator: cannot connect to the broker at {broker.replace(password, '***')}: "
    )
    assert password not in result.stderr
    wrong = Vhost(broker_vhost.name, broker_vhost.user, password)  # the session's user
    refused = live.cli(
        "execute", str(uuid.uuid4()), "--no-verify", env=live.env(CELERY_BROKER_URL=wrong.url)
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith(
        f"workflow-orchestrator: cannot connect to the broker at {wrong.redacted_url}: "
    )
    assert "ACCESS_REFUSED" in refused.stderr and password not in refused.stderr


# -- the demo -------------------------------------------------------------------------------


def test_demo_runs_the_whole_system_in_one_process(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in REQUIRED_ENV and not k.startswith(("OAUTH_", "CELERY_", "QUEUE_"))
    }
    result = subprocess.run(
        [sys.executable, "-m", "workflow_orchestrator.cli", "demo", "--log", "demo.log"],
        env={**env, "PYTHONPATH": str(REPO)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard only
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "broker       memory:// (in this process)" in out
    assert re.search(r"workflow\s+scenario\s+milestones\s+result\s+duration\s+e-mails", out)
    assert re.search(r"build \+ deploy\s+build > deploy\s+succeeded\s+.*1 SUCCEEDED", out)
    assert re.search(r"config \+ deploy_oa\s+config > deploy_oa\s+succeeded\s+.*1 SUCCEEDED", out)
    assert re.search(r"builder fails\s+build > deploy\s+failed\s+.*1 FAILED", out)
    # the step deadline fires on memory:// too, and the retried run gets its own e-mail
    assert re.search(r"builder goes silent\s+build > deploy\s+timed out\s+.*\s0\s", out)
    assert "timed out at build: Milestone worker did not report back within 4 second(s)" in out
    assert re.search(
        r"fails, then retried\s+build > deploy\s+succeeded\s+.*2 FAILED, SUCCEEDED", out
    )
    assert "All 5 workflows ended as expected" in out
    assert result.stderr == ""
    log = (tmp_path / "demo.log").read_text()
    assert "registered with the Manager" in log  # the orchestrator ran in that process


def test_follow_says_a_workflow_that_never_started_has_not_started() -> None:
    feed = Feed(stored())  # no current step, not completed, empty event log
    out = io.StringIO()
    code = follow(
        feed.fetch,
        LiveLine(out, tty=False),
        interval=1.0,
        timeout=3.0,
        clock=feed.clock,
        sleep=feed.sleep,
    )
    assert code == 2
    lines = out.getvalue().splitlines()
    assert lines[1] == "[0/2] waiting for the orchestrator  0.0s"
    assert lines[-1] == (
        "Timed out after 3.0s; the workflow has not started (not executed yet, or no "
        "orchestrator is consuming its queue)"
    )
    assert "still running" not in out.getvalue()


def test_the_worker_reason_is_read_from_the_originals_line_order() -> None:
    """OpenAperture's workers log their reason, then their message, with no marker."""
    log = [
        f"{P} Starting workflow...",
        f"{P} Starting Workflow Milestone: build",
        f"[OA][{WID}] Builder received the request",
        f"[OA][{WID}] docker build exited with status 1",
        f"[OA][{WID}] build of Org/app_docker failed",
        f"{P} Workflow Milestone Failed: build.  Reason: Milestone worker has reported a failure",
        f"{P} Workflow has failed in 2 second(s)",
    ]
    view = describe_workflow(
        stored(current_step="build", workflow_completed=True, workflow_error=True, event_log=log)
    )
    assert view["failure"]["worker_reason"] == "docker build exited with status 1"
    other = [*log[:2], f"{P} Workflow Milestone Failed: build.  Reason: Cancelled by an operator"]
    view = describe_workflow(
        stored(current_step="build", workflow_completed=True, workflow_error=True, event_log=other)
    )
    assert view["failure"]["worker_reason"] is None


def test_a_retried_running_step_shows_no_duration_of_the_failed_run() -> None:
    view = describe_workflow(
        stored(
            current_step="build",
            workflow_step_durations={"build": "10 second(s)"},  # the failed run's
            event_log=[
                f"{P} Workflow Milestone Failed: build.  Reason: Milestone worker did not "
                "report back within 10 second(s)",
                f"{P} Retrying Workflow Milestone: build (requested by an operator)",
                f"{P} Starting Workflow Milestone: build",
            ],
        )
    )
    assert view["state"] == "running"
    assert re.search(r"^  build   running$", render_status(view), re.M)


def test_cancel_is_shown_only_by_a_cancel_line_of_its_own() -> None:
    """A workflow cancelled once, retried, then failing by itself before a second cancel
    applies: its old cancel line does not make the second cancel look done."""
    old = (
        f"[OA][{'x' * 8}][repo] Workflow Milestone Failed: build.  Reason: Cancelled by an operator"
    )
    running = {"workflow_completed": False, "event_log": [old]}
    failed_by_itself = {
        "workflow_completed": True,
        "workflow_error": True,
        "event_log": [old, "[OA][x][repo] Workflow Milestone Failed: build.  Reason: boom"],
    }
    cancelled = {**failed_by_itself, "event_log": [*failed_by_itself["event_log"], old + ": now"]}
    assert cancel_shown(1, running) is None  # not yet
    assert cancel_shown(1, failed_by_itself) is False  # completed without this cancel
    assert cancel_shown(1, cancelled) is True
    assert cancel_shown(0, {"workflow_completed": True, "event_log": []}) is False
