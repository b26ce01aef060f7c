"""The orchestration task's shell, in process: an in-memory Manager, a recording
publisher, real file locks, a clock the test moves. Each test pins down one rule of the
shell that the end-to-end tests only see indirectly (and slowly)."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.unit.fakes import WID, FakeTopology, stored_workflow
from workflow_orchestrator.errors import (
    CredentialsRejected,
    ManagerNotFound,
    ManagerTransientError,
)
from workflow_orchestrator.locking import FileLocks
from workflow_orchestrator.runtime import Runtime, engine_config
from workflow_orchestrator.settings import SETTINGS_DOC, Settings
from workflow_orchestrator.tasks import DeadLetter, RetryLater, backoff_delay, process

T0 = datetime(2026, 11, 27, 6, 0, 0, tzinfo=timezone.utc)


@dataclass
class MemoryManager:
    """The Manager calls the task makes, kept in memory; `fail_saves` PUTs answer 503."""

    workflows: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_saves: int = 0
    lookup_error: Exception | None = None
    calls: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def get_workflow(self, workflow_id: str) -> dict[str, Any]:
        self.calls.append("get")
        if self.lookup_error is not None:
            raise self.lookup_error
        if workflow_id not in self.workflows:
            raise ManagerNotFound(f"GET /workflows/{workflow_id}", 404)
        return copy.deepcopy(self.workflows[workflow_id])

    def save_workflow(self, workflow_id: str, workflow: dict[str, Any]) -> None:
        self.calls.append("save")
        if self.fail_saves:
            self.fail_saves -= 1
            raise ManagerTransientError(f"PUT /workflows/{workflow_id}", 503)
        self.workflows[workflow_id] = copy.deepcopy(workflow)

    def create_system_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@dataclass
class RecordingPublisher:
    manager: MemoryManager
    requests: list[Any] = field(default_factory=list)
    emails: list[Any] = field(default_factory=list)
    chats: list[Any] = field(default_factory=list)

    def worker_request(self, request: Any) -> str:
        self.manager.calls.append("publish")
        self.requests.append(request)
        return f"on the test broker, task id {request.task_id}"

    def email(self, email: Any, workflow_id: str) -> None:
        self.manager.calls.append("email")
        self.emails.append(email)

    def chat(self, note: Any, workflow_id: str) -> None:
        self.manager.calls.append("chat")
        self.chats.append(note)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Shell:
    rt: Runtime
    manager: MemoryManager
    publisher: RecordingPublisher
    clock: Clock

    def run(self, payload: dict[str, Any], key: str = "msg-1", **options: Any) -> str:
        return process(self.rt, payload, message_key=key, **options)


@pytest.fixture
def shell() -> Shell:
    return make_shell()


def make_shell(**overrides: Any) -> Shell:
    settings = Settings(
        exchange_id="1",
        broker_id="1",
        manager_url="http://manager.invalid",
        oauth_login_url="http://manager.invalid/oauth/token",
        oauth_client_id="orchestrator",
        oauth_client_secret="never-used",
        lock_dir=tempfile.mkdtemp(prefix="wo-shell-locks-"),
        out_of_order_timeout=300.0,
        retry_backoff_seconds=1.0,
        retry_backoff_max=60.0,
        max_retries=5,
        **overrides,
    )
    manager = MemoryManager({WID: stored_workflow()})
    publisher = RecordingPublisher(manager)
    clock = Clock()
    rt = Runtime(
        settings=settings,
        manager=manager,  # type: ignore[arg-type]
        topology=FakeTopology(),  # type: ignore[arg-type]
        locks=FileLocks(settings.lock_dir, wait=5),
        publisher=publisher,  # type: ignore[arg-type]
        config=engine_config(settings),
        clock=clock,
    )
    return Shell(rt, manager, publisher, clock)


def test_the_worker_request_is_published_before_the_save_and_chats_after(shell: Shell) -> None:
    shell.run({"id": WID})
    first_save = shell.manager.calls.index("save")
    assert shell.manager.calls[:2] == ["get", "publish"]
    assert "publish" not in shell.manager.calls[first_save:]
    assert shell.manager.calls[first_save + 1 :] == ["chat"] * len(shell.publisher.chats)
    assert shell.publisher.chats  # the start's lines were chatted


def test_a_dispatching_transition_returns_its_line_saying_where_its_requests_went(
    shell: Shell, caplog: pytest.LogCaptureFixture
) -> None:
    """The result is the transition's log line (Celery's `succeeded` line prints it);
    the orchestrator logs nothing of its own at INFO on the way."""
    caplog.set_level(logging.DEBUG)
    line = shell.run({"id": WID})
    request, deadline = shell.publisher.requests  # the build, then its deadline
    assert line == (
        f"workflow {WID}: dispatched build to {request.task}@{request.queue} "
        f"(on the test broker, task id {request.task_id}; "
        f"on the test broker, task id {deadline.task_id})"
    )
    ours = [r for r in caplog.records if r.name.startswith("workflow_orchestrator")]
    assert [r.getMessage() for r in ours if r.levelno >= logging.INFO] == []


def test_a_transition_that_changes_nothing_says_so_in_its_result(shell: Shell) -> None:
    shell.run({"id": WID})
    request = shell.publisher.requests[0]
    again = shell.run({"id": WID}, key="msg-2")  # the start, delivered twice
    assert again.startswith(f"workflow {WID}: ignored a stale or duplicate message: ")
    assert len(shell.publisher.requests) == 2 and shell.publisher.requests[0] is request


def test_a_failed_save_does_not_publish_the_request_again(shell: Shell) -> None:
    shell.manager.fail_saves = 3
    for attempt in range(3):
        with pytest.raises(RetryLater):
            shell.run({"id": WID}, attempts=attempt)
        shell.clock.now += timedelta(seconds=2)
    shell.run({"id": WID}, attempts=3)
    assert shell.manager.calls.count("save") == 4
    builds = [r for r in shell.publisher.requests if r.task == "builder.build"]
    assert len(builds) == 1  # published once, before the first save
    deadlines = [r for r in shell.publisher.requests if r.queue == shell.rt.settings.queue_name]
    assert len(deadlines) == 1  # and its deadline once
    saved = shell.manager.workflows[WID]
    assert saved["current_step"] == "build"


def test_a_redone_transition_reuses_the_first_clock_reading(shell: Shell) -> None:
    shell.manager.fail_saves = 1
    with pytest.raises(RetryLater):
        shell.run({"id": WID})
    (published,) = [r for r in shell.publisher.requests if r.task == "builder.build"]
    shell.clock.now = T0 + timedelta(minutes=7)
    shell.run({"id": WID}, attempts=1)
    saved = shell.manager.workflows[WID]
    assert (
        saved["step_time"] == published.payload["step_time"] == "2026-11-27T06:00:00.000000+00:00"
    )
    assert saved["event_log"] == published.payload["event_log"]


def test_an_unknown_workflow_is_dead_lettered_at_once(shell: Shell) -> None:
    other = "6b1d7f1e-8a4e-4c1e-9a55-0c1b2c3d4e5f"
    with pytest.raises(DeadLetter, match="does not exist in the Manager"):
        shell.run({"id": other})
    assert shell.manager.calls == ["get"]  # no retry, nothing published or saved
    (event,) = shell.manager.events
    assert event["data"]["kind"] == "unknown_workflow"
    assert (event["data"]["workflow_id"], event["data"]["message_id"]) == (other, "msg-1")


def test_an_ahead_message_keeps_its_first_sighting_until_the_timeout(shell: Shell) -> None:
    ahead = {"id": WID, "current_step": "deploy", "step_time": "2026-11-27T05:59:00Z"}
    with pytest.raises(RetryLater) as first:
        shell.run(ahead)
    since = first.value.carry["ahead_since"]
    assert since == "2026-11-27T06:00:00.000000+00:00"
    shell.clock.now += timedelta(seconds=200)
    with pytest.raises(RetryLater) as second:
        shell.run(ahead, ahead_since=since)
    assert second.value.carry["ahead_since"] == since  # not reset by a retry
    shell.clock.now += timedelta(seconds=101)  # 301 s after the first sighting
    with pytest.raises(DeadLetter):
        shell.run(ahead, ahead_since=since)
    assert shell.manager.events[-1]["data"]["kind"] == "inconsistent_message"
    assert shell.publisher.requests == []


@pytest.mark.parametrize("attempt", [1, 2, 5, 7, 20, 60])
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    for jitter in (0.0, 0.5, 0.999):
        delay = backoff_delay(attempt, 1.0, 60.0, jitter)
        assert min(60.0, 2.0 ** (attempt - 1)) / 2 <= delay <= 60.0


def test_transient_retries_are_capped_then_given_up(shell: Shell) -> None:
    """MAX_RETRIES (5 here) counts tries: the fifth failing try sets the message aside."""
    shell.manager.lookup_error = ManagerTransientError("GET /workflows/x", 503)
    with pytest.raises(RetryLater) as later:
        shell.run({"id": WID}, attempts=3)  # the fourth try
    assert later.value.carry["attempts"] == 4
    assert later.value.countdown <= shell.rt.settings.retry_backoff_max
    with pytest.raises(DeadLetter, match=f"Gave up on a message for workflow {WID} after 5 tries"):
        shell.run({"id": WID}, attempts=4)
    assert shell.manager.events[-1]["data"]["kind"] == "gave_up"


def test_refused_credentials_keep_the_message_past_max_retries(
    shell: Shell, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    shell.manager.lookup_error = CredentialsRejected("POST http://auth/token", 401, "bad")
    with pytest.raises(RetryLater) as later:
        shell.run({"id": WID}, attempts=5, credential_retries=50)
    assert later.value.carry["credential_retries"] == 51
    assert later.value.countdown <= shell.rt.settings.retry_backoff_max
    assert shell.manager.events == []  # nothing for an operator per message: the line says it
    (line,) = [r.getMessage() for r in caplog.records if "OAUTH_CLIENT_SECRET" in r.getMessage()]
    assert "OAUTH_CLIENT_ID" in line


def test_the_worker_refuses_to_start_on_a_missing_setting(tmp_path: Path) -> None:
    """`celery -A workflow_orchestrator worker` validates every setting before it starts."""
    env = {k: v for k, v in __import__("os").environ.items() if k not in SETTINGS_DOC}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workflow_orchestrator", "worker"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "workflow-orchestrator: cannot start: setting EXCHANGE_ID: is required but not set"
    ]


def age_memories(path: str, seconds: float) -> None:
    """Move every memory of a lock file `seconds` into the past, as if written then."""
    memories, _ = json.JSONDecoder().raw_decode(Path(path).read_text())
    aged = {name: [value, written - seconds] for name, (value, written) in memories.items()}
    Path(path).write_text(json.dumps(aged))


def deadline_of(shell: Shell) -> Any:
    """The deadline message the start's dispatch published to the orchestration queue."""
    (deadline,) = [r for r in shell.publisher.requests if r.queue == shell.rt.settings.queue_name]
    return deadline


def assert_failed_by_its_deadline(shell: Shell, duration: str) -> None:
    saved = shell.manager.workflows[WID]
    assert saved["workflow_completed"] is True and saved["workflow_error"] is True
    reason = f"Reason: Milestone worker did not report back within {duration}"
    assert any(reason in line for line in saved["event_log"])


def test_a_deadline_further_than_its_record_lasts_still_fails_its_step() -> None:
    """The record of a workflow's last dispatch is forgotten a week after it was written;
    a step's deadline may be further away (`STEP_TIMEOUTS=deploy=200h`). Each poll of
    the deadline keeps the record alive: without it the deadline, a week on, took the
    step for one that started again, and the workflow of a dead worker stayed stuck."""
    shell = make_shell(step_timeout_default=200 * 3600.0)
    shell.run({"id": WID})
    deadline = deadline_of(shell)
    path = shell.rt.locks.path_for(WID)
    for hours in range(24, 200, 24):  # a poll a day (every 10 min in a real run)
        age_memories(path, 24 * 3600)
        shell.clock.now = T0 + timedelta(hours=hours)
        assert "deadline of build in" in shell.run(deadline.payload, key=deadline.task_id)
    age_memories(path, 24 * 3600)
    shell.clock.now = T0 + timedelta(hours=200, seconds=1)
    shell.run(deadline.payload, key=deadline.task_id)
    assert_failed_by_its_deadline(shell, "1 week(s)")  # 8.3 days (CONTRACT 7.3)


def test_a_deadline_sees_the_clock_move_until_it_is_due(shell: Shell) -> None:
    shell.run({"id": WID})
    deadline = deadline_of(shell)
    for minutes in (60, 120):
        shell.clock.now = T0 + timedelta(minutes=minutes)
        assert "deadline of build in" in shell.run(deadline.payload, key=deadline.task_id)
    shell.clock.now = T0 + timedelta(hours=3, seconds=1)
    shell.run(deadline.payload, key=deadline.task_id)
    assert_failed_by_its_deadline(shell, "3 hour(s)")
