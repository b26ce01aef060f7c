"""The Manager and the broker going away, and duplicated, racing callbacks."""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

from tests.support import wait_for

from .conftest import EMAIL_CONFIG, report

RETRY_LINE = re.compile(r"transient failure \(attempt (\d+)\), retrying in ([\d.]+) s")


def retry_delays(log: str) -> list[tuple[int, float]]:
    return [(int(a), float(d)) for a, d in RETRY_LINE.findall(log)]


@pytest.mark.slow
def test_manager_outage_then_recovery(build_system) -> None:
    """503 for 30 s, then dropped connections for 10 s, then answers slower than the
    read timeout for 6 s: every workflow completes once the Manager is back."""
    system = build_system(concurrency=4)
    emulator = system.emulator
    emulator.fail_for(30, status=503)
    ids = system.start_workflows(24, notifications_config=EMAIL_CONFIG)
    time.sleep(30)
    emulator.reset_faults()
    emulator.drop_connections_for(10)
    time.sleep(10)
    emulator.reset_faults()
    emulator.set_latency(3.0)  # read timeout is 2 s
    time.sleep(6)
    emulator.set_latency(0)
    system.wait_all_completed(ids, timeout=120)
    figures = system.check(ids)
    delays = retry_delays(system.logs())
    assert delays, "no retry was logged"
    by_attempt: dict[int, list[float]] = {}
    for attempt, delay in delays:
        by_attempt.setdefault(attempt, []).append(delay)
    # exponential backoff with jitter in [d/2, d), capped at RETRY_BACKOFF_MAX
    for attempt, seen in by_attempt.items():
        ceiling = min(4.0, 0.25 * 2 ** (attempt - 1))
        assert all(ceiling / 2 - 0.006 <= d <= ceiling + 0.006 for d in seen), (attempt, seen)
    assert max(by_attempt) >= 4, "the outage should have needed several attempts"
    shown = {a: round(max(v), 2) for a, v in sorted(by_attempt.items())}
    report("Manager 503 30 s, drops 10 s, slow 6 s", {**figures, "retry_delay_by_attempt": shown})


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="rabbitmqctl is not installed")
def test_broker_restart_mid_run(build_system) -> None:
    system = build_system(concurrency=4)
    ids = system.start_workflows(30, notifications_config=EMAIL_CONFIG)
    time.sleep(0.5)
    rabbitmqctl("stop_app")
    try:
        time.sleep(5)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
    system.wait_all_completed(ids, timeout=150)
    report("RabbitMQ stop_app / start_app mid-run", {**system.check(ids), "faults": 1})


def test_duplicated_callbacks_racing_on_two_workers(build_system) -> None:
    """Every callback is sent twice, from two threads at once, to two orchestrator
    processes: no lost update, no line or e-mail twice."""
    system = build_system(orchestrators=2, concurrency=4, duplicate=True)
    ids = system.start_workflows(40, notifications_config=EMAIL_CONFIG)
    system.wait_all_completed(ids, timeout=120)
    figures = system.check(ids, settle=2.0)
    ignored = system.logs().count("ignored a stale or duplicate message")
    assert ignored >= len(ids), f"expected the duplicates to be seen and ignored, got {ignored}"
    report("every callback twice, 2 workers", {**figures, "faults": ignored})


def test_duplicate_start_messages(build_system) -> None:
    system = build_system(orchestrators=2, concurrency=4)
    ids = system.start_workflows(20, notifications_config=EMAIL_CONFIG)
    for wid in ids:  # the same start again, e.g. an operator clicking twice
        system.send_start(wid, notifications_config=EMAIL_CONFIG)
    system.wait_all_completed(ids, timeout=120)
    report("start message sent twice", {**system.check(ids), "faults": len(ids)})


def test_redis_lock_holder_dies(build_system) -> None:
    """With LOCK_URL=redis, a worker killed while holding a workflow's lock blocks it
    only until the lock expires; the other worker then proceeds."""
    budget_path = "/tmp/wo-redis-crash-budget"
    with open(budget_path, "w") as handle:
        handle.write("2")
    system = build_system(
        orchestrators=2,
        concurrency=4,
        lock_url="redis://127.0.0.1:6379/0",
        lock_timeout=3.0,
        lock_wait=10.0,
        extra_env={
            "WORKFLOW_ORCHESTRATOR_CRASH_AT": "after_load",  # inside the lock
            "WORKFLOW_ORCHESTRATOR_CRASH_BUDGET": budget_path,
            "WORKFLOW_ORCHESTRATOR_CRASH_PROBABILITY": "0.2",
        },
    )
    system.supervise = True
    ids = system.start_workflows(20, notifications_config=EMAIL_CONFIG)
    system.wait_all_completed(ids, timeout=150)
    with open(budget_path) as handle:
        used = 2 - int(handle.read().strip())
    assert used >= 1, "no lock holder died: the scenario proved nothing"
    wait_for(lambda: system.restarts >= used, 10, "the supervisor to restart the killed worker")
    report("lock holder killed (Redis lock)", {**system.check(ids), "faults": used})
