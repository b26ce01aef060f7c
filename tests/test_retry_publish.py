"""A retry Celery cannot publish keeps its message: a transient failure is never a dead
letter. Celery answers a failed retry publish with `Reject(requeue=False)`, which would
set the message aside with no system event and leave its workflow stuck."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from celery import Celery
from kombu import Connection, Exchange

from tests.services import Vhost, rabbitmqctl, token
from tests.support import OrchestratorProcess, build_registry, system_settings, wait_for
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.queues import error_queue, orchestration_queue

SECRET = f"secret-{uuid.uuid4().hex}"


def test_a_retry_that_cannot_be_published_goes_back_to_its_queue(
    extra_vhost: Callable[..., Vhost],
) -> None:
    # Celery publishes a retry where its message came from. The message comes through an
    # exchange the orchestrator's user may not publish to, so its retry is refused by the
    # broker (ACCESS_REFUSED), as a retry is refused when the broker is failing.
    vhost = extra_vhost("retry")
    refused = f"client-only-{token()}"
    with ManagerEmulator(client_id="orchestrator", client_secret=SECRET) as emulator:
        build_registry(emulator)
        settings = system_settings(
            emulator,
            secret=SECRET,
            prefix="wo_retry",
            broker_url=vhost.url,
            hostname=f"orchestrator-{token()}",
        )
        wid = emulator.add_workflow({"milestones": ["build"]})
        with Connection(vhost.url) as conn:
            queue = orchestration_queue(settings.queue_name)(conn.default_channel)
            queue.declare()
            exchange = Exchange(refused, type="direct", durable=True)(conn.default_channel)
            exchange.declare()
            queue.bind_to(exchange, routing_key=settings.queue_name)
        client = Celery("retry-client", broker=vhost.url, set_as_current=False)
        client.send_task(
            settings.orchestrate_task,
            args=[{"id": wid}],
            exchange=refused,
            routing_key=settings.queue_name,
        )
        rabbitmqctl(
            "set_permissions", "-p", vhost.name, vhost.user, ".*", f"^(?!{refused}).*", ".*"
        )
        emulator.fail_next("GET /workflows/{id}", 1, status=503)  # the first try: retry
        process = OrchestratorProcess(settings.to_env()).start()
        try:
            wait_for(
                lambda: (emulator.get_workflow(wid) or {}).get("event_log") or not process.alive(),
                60,
                "the workflow to start once its message came back",
            )
            assert process.alive(), process.log()
            log = process.log()
            assert "the retry could not be published" in log
            assert "the message goes back to its queue" in log
        finally:
            process.stop()
        stored = emulator.get_workflow(wid)
        assert stored["current_step"] == "build"
        assert any("Dispatching a build request" in line for line in stored["event_log"])
        assert emulator.system_events() == []
        with Connection(vhost.url) as conn:
            dead = error_queue(settings.error_queue_name)(conn.default_channel)
            assert dead.get(no_ack=True) is None  # nothing was set aside
