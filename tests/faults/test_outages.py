"""The Manager and the broker going away, and duplicated, racing callbacks."""

from __future__ import annotations

import re
import time

import amqp
import pytest

from tests.services import PrivateRabbitNode, Vhost
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


@pytest.mark.slow
def test_broker_restart_mid_run(
    broker_vhost: Vhost, private_rabbit: PrivateRabbitNode, build_private_system
) -> None:
    """The broker's application stops for 5 s mid-run and comes back: every workflow
    completes. The broker is a private node of this test's own; a client of the
    machine's broker, connected throughout, proves that broker was never touched."""
    bystander = amqp.Connection(
        host=f"{broker_vhost.host}:{broker_vhost.port}",
        userid=broker_vhost.user,
        password=broker_vhost.password,
        virtual_host=broker_vhost.name,
        connect_timeout=5,
    )
    bystander.connect()
    try:
        system = build_private_system(concurrency=4)
        ids = system.start_workflows(30, notifications_config=EMAIL_CONFIG)

        def stored(wid: str) -> dict:
            return system.emulator.get_workflow(wid) or {}

        # a broker of its own is fast: stop it as soon as work is moving, not after a delay
        wait_for(lambda: any(stored(w).get("event_log") for w in ids), 30, "a workflow to start")
        # counted as the stop is asked for: `rabbitmqctl stop_app` itself takes seconds
        in_flight = sum(not stored(w).get("workflow_completed") for w in ids)
        private_rabbit.stop_app()
        try:
            time.sleep(5)  # the outage
        finally:
            private_rabbit.start_app()
        assert in_flight, "every workflow completed before the broker stopped: nothing was shown"
        system.wait_all_completed(ids, timeout=150)
        figures = {**system.check(ids), "faults": 1, "in_flight_at_stop": in_flight}
        report("RabbitMQ stop_app / start_app mid-run", figures)
        # the same connection, never reopened, still makes a round trip to the broker
        channel = bystander.channel()
        channel.exchange_declare("amq.direct", "direct", passive=True)
        channel.close()
    finally:
        try:
            bystander.close()
        except Exception:  # noqa: BLE001 - already dropped: the assertion above has failed
            bystander.collect()


def test_duplicated_callbacks_racing_on_two_workers(build_system) -> None:
    """Every callback is sent twice, from two threads at once, to two orchestrator
    processes: no lost update, no line or e-mail twice."""
    system = build_system(orchestrators=2, concurrency=4, duplicate=True)
    ids = system.start_workflows(40, notifications_config=EMAIL_CONFIG)
    system.wait_all_completed(ids, timeout=120)
    figures = system.check(ids)
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


def test_redis_lock_holder_dies(redis_url: str, build_system) -> None:
    """With LOCK_URL=redis, a worker killed while holding a workflow's lock blocks it
    only until the lock expires; the other worker then proceeds."""
    budget_path = "/tmp/wo-redis-crash-budget"
    with open(budget_path, "w") as handle:
        handle.write("2")
    system = build_system(
        orchestrators=2,
        concurrency=4,
        lock_url=redis_url,
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
