"""The worker at start and around consuming, run as operators run it (`celery -A
workflow_orchestrator worker`): what stops it with one line, the module heartbeat, and the
sweep of the lock directory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
from kombu import Connection, Queue

from tests.support import (
    OrchestratorProcess,
    age_lock_file,
    delete_test_queues,
    system_settings,
    wait_for,
)
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.locking import FileLocks
from workflow_orchestrator.settings import Settings

SECRET = f"secret-{uuid.uuid4().hex}"
MODULES = "POST /messaging/exchanges/{id}/modules"


@pytest.fixture
def emulator() -> Iterator[ManagerEmulator]:
    with ManagerEmulator(client_id="orchestrator", client_secret=SECRET) as manager:
        manager.add_exchange("1", name="local")
        yield manager


@pytest.fixture
def settings(emulator: ManagerEmulator, broker_url: str) -> Iterator[Settings]:
    made = system_settings(
        emulator,
        secret=SECRET,
        prefix=f"wo_start_{uuid.uuid4().hex[:8]}",
        broker_url=broker_url,
        hostname=f"orchestrator-{uuid.uuid4().hex[:8]}",
    )
    yield made
    delete_test_queues(broker_url, made)


def exited(process: OrchestratorProcess) -> int:
    wait_for(lambda: not process.alive(), 60, "the worker to exit")
    assert process.process is not None
    return process.process.returncode


def test_wrong_secret_refuses_to_start_naming_the_setting(
    emulator: ManagerEmulator, settings: Settings
) -> None:
    wrong = "not-the-secret-" + uuid.uuid4().hex
    process = OrchestratorProcess(replace(settings, oauth_client_secret=wrong).to_env()).start()
    try:
        assert exited(process) == 2
    finally:
        process.stop()
    log = process.log()
    lines = [line for line in log.splitlines() if "OAUTH_CLIENT_SECRET" in line]
    assert len(lines) == 1, log
    assert lines[0].startswith("workflow-orchestrator: cannot start:")
    assert "OAUTH_CLIENT_ID" in lines[0]
    assert wrong not in log and SECRET not in log
    assert emulator.modules("1") == []  # it took nothing and registered nothing


def test_orchestration_queue_with_old_arguments_refuses_to_start(settings: Settings) -> None:
    old = Queue(
        settings.queue_name,
        routing_key=settings.queue_name,
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": settings.error_queue_name,
        },
    )
    with Connection(settings.celery_broker_url) as conn:
        old(conn.default_channel).declare()
    process = OrchestratorProcess(settings.to_env()).start()
    try:
        assert exited(process) == 2
    finally:
        process.stop()
    lines = [line for line in process.log().splitlines() if "cannot start" in line]
    assert len(lines) == 1, process.log()
    assert settings.queue_name in lines[0] and "migrate-queue" in lines[0]


def test_heartbeat_every_interval_then_inactive_on_warm_stop(
    emulator: ManagerEmulator, settings: Settings
) -> None:
    env = {**settings.to_env(), "MODULE_HEARTBEAT_SECONDS": "1"}
    process = OrchestratorProcess(env).start()
    try:
        wait_for(
            lambda: emulator.counters().get(MODULES, 0) >= 3 or not process.alive(),
            60,
            "three registrations a second apart",
        )
        assert process.alive(), process.log()
        (record,) = [m for m in emulator.modules("1") if m["hostname"] == settings.hostname]
        assert (record["type"], record["status"]) == ("workflow_orchestrator", "active")
        assert record["workload"] == []
    finally:
        process.stop()
    assert process.process is not None and process.process.returncode == 0
    (record,) = [m for m in emulator.modules("1") if m["hostname"] == settings.hostname]
    assert record["status"] == "inactive"


def test_the_worker_sweeps_lock_files_unused_for_a_week(settings: Settings) -> None:
    """One lock file per workflow ever run would fill the lock directory: the worker
    removes, at start and every hour, those unwritten for a week."""
    locks = FileLocks(settings.lock_dir, wait=1)
    old, recent = f"wf-{uuid.uuid4()}", f"wf-{uuid.uuid4()}"
    for wid in (old, recent):
        with locks.hold(wid):
            locks.remember(wid, {"published": "state task"})
    age_lock_file(locks.path_for(old), 7 * 86400 + 60)
    process = OrchestratorProcess(settings.to_env()).start()
    try:
        wait_for(
            lambda: not os.path.exists(locks.path_for(old)) or not process.alive(),
            60,
            "the week-old lock file to be swept",
        )
        assert process.alive(), process.log()
        assert os.path.exists(locks.path_for(recent))
        wait_for(
            lambda: "removed 1 lock files no longer needed" in process.log(),
            30,
            "the sweep's log line",
        )
    finally:
        process.stop()
