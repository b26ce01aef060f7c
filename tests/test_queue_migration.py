"""Migrating an orchestration queue declared by an earlier version loses no message."""

from __future__ import annotations

import uuid

from kombu import Connection, Exchange, Producer, Queue

from workflow_orchestrator.queue_migration import migrate_orchestration_queue
from workflow_orchestrator.queues import orchestration_queue


def test_old_queue_becomes_plain_with_every_message_kept(broker_url: str) -> None:
    name = f"wo_migrate_{uuid.uuid4().hex[:8]}"
    old = Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}_error",
        },
    )
    bodies = [f'[[{{"id": "{i}"}}], {{}}, {{}}]'.encode() for i in range(5)]
    with Connection(broker_url) as conn:
        channel = conn.channel()
        try:
            old(channel).declare()
            producer = Producer(channel)
            for i, body in enumerate(bodies):
                producer.publish(
                    body,
                    exchange=old.exchange,
                    routing_key=name,
                    headers={"task": "workflow_orchestrator.orchestrate", "id": f"task-{i}"},
                    content_type="application/json",
                    content_encoding="utf-8",
                )
            done = migrate_orchestration_queue(broker_url, name)
            assert (done.moved, done.already_plain) == (5, False)
            fresh = conn.channel()
            orchestration_queue(name)(fresh).declare()  # the plain declaration is accepted
            queue = orchestration_queue(name)(fresh)
            got = []
            while (message := queue.get(no_ack=True)) is not None:
                got.append(message)
            assert [m.body.encode() for m in got] == bodies  # every message, in order
            assert [m.headers["id"] for m in got] == [f"task-{i}" for i in range(5)]
            again = migrate_orchestration_queue(broker_url, name)
            assert again.already_plain and again.moved == 0
            check = conn.channel()
            try:
                check.queue_declare(f"{name}.migrating", passive=True)
                raise AssertionError("the holding queue was left behind")
            except Exception as exc:  # noqa: BLE001 - NOT_FOUND is the expected answer
                assert "NOT_FOUND" in str(exc) or "404" in str(exc)
        finally:
            cleanup = conn.channel()
            cleanup.queue_delete(name)
            cleanup.exchange_delete(name)


def test_check_names_the_old_queue_and_migrate_queue_fixes_it(broker_url: str) -> None:
    from click.testing import CliRunner

    from workflow_orchestrator.cli import cli

    name = f"wo_migrate_{uuid.uuid4().hex[:8]}"
    env = {
        "EXCHANGE_ID": "1",
        "BROKER_ID": "1",
        "MANAGER_URL": "http://127.0.0.1:9",
        "OAUTH_LOGIN_URL": "http://127.0.0.1:9/oauth/token",
        "OAUTH_CLIENT_ID": "orchestrator",
        "OAUTH_CLIENT_SECRET": "unused-here",
        "CELERY_BROKER_URL": broker_url,
        "QUEUE_NAME": name,
    }
    old = Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "x"},
    )
    runner = CliRunner()
    with Connection(broker_url) as conn:
        try:
            old(conn.channel()).declare()
            Producer(conn.channel()).publish(
                b"[[{}], {}, {}]", exchange=old.exchange, routing_key=name, declare=[]
            )
            checked = runner.invoke(cli, ["check", "--timeout", "1"], env=env)
            (line,) = [x for x in checked.output.splitlines() if "queue" in x and name in x]
            assert line.startswith("FAIL") and "migrate-queue" in line, checked.output
            migrated = runner.invoke(cli, ["migrate-queue"], env=env)
            assert migrated.exit_code == 0, migrated.output
            assert "1 message(s) kept" in migrated.output
            again = runner.invoke(cli, ["migrate-queue"], env=env)
            assert again.exit_code == 1 and "nothing to migrate" in again.output
            checked = runner.invoke(cli, ["check", "--timeout", "1"], env=env)
            assert "migrate-queue" not in checked.output
        finally:
            cleanup = conn.channel()
            cleanup.queue_delete(name)
            cleanup.exchange_delete(name)
