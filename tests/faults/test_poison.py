"""Poison input and the at-least-once bound: bad messages cost a dead letter each, the
worker keeps consuming, and a message that fails the same way forever stops coming back."""

from __future__ import annotations

import json
import tempfile
import uuid
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kombu import Connection, Exchange, Producer

from tests.support import wait_for

from .conftest import EMAIL_CONFIG, FaultSystem, report

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
#: (field, a value of a wrong JSON type for it)
wrong_types = st.one_of(
    st.tuples(
        st.just("milestones"),
        st.one_of(
            st.text(min_size=1),
            st.integers(),
            st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        ),
    ),
    st.tuples(
        st.just("milestones"),
        st.lists(st.one_of(st.integers(), st.none(), st.booleans()), min_size=1, max_size=3),
    ),
    st.tuples(
        st.just("current_step"),
        st.one_of(
            st.integers(),
            st.floats(allow_nan=False),
            st.lists(st.text(), max_size=2),
            st.booleans(),
        ),
    ),
    st.tuples(
        st.just("event_log"),
        st.one_of(st.text(min_size=1), st.lists(st.integers(), min_size=1, max_size=3)),
    ),
    st.tuples(st.just("workflow_completed"), st.one_of(st.text(min_size=1), st.integers())),
    st.tuples(
        st.just("notifications_config"),
        st.one_of(st.lists(st.integers(), max_size=2), st.text(min_size=1)),
    ),
    st.tuples(st.just("step_time"), st.one_of(st.booleans(), st.lists(st.integers(), max_size=2))),
)


@st.composite
def bad_payloads(draw: st.DrawFn) -> Any:
    kind = draw(
        st.sampled_from(["not_object", "no_id", "bad_id", "wrong_type", "unknown_workflow", "huge"])
    )
    if kind == "not_object":
        return draw(st.one_of(json_scalars, st.lists(json_values, max_size=4)))
    if kind == "no_id":
        return draw(
            st.dictionaries(
                st.text(max_size=8).filter(lambda k: k != "id"), json_values, max_size=4
            )
        )
    if kind == "bad_id":
        bad = draw(
            st.one_of(
                st.none(),
                st.just(""),
                st.integers(),
                st.lists(st.text(), max_size=2),
                st.booleans(),
            )
        )
        return {"id": bad, **draw(st.dictionaries(st.text(max_size=5), json_scalars, max_size=3))}
    if kind == "wrong_type":
        name, value = draw(wrong_types)
        return {"id": str(uuid.uuid4()), name: value}
    if kind == "huge":  # valid shape, unknown workflow: a 404 after a big, deep decode
        depth = draw(st.integers(50, 300))
        nested: Any = "x" * draw(st.integers(1, 200_000))
        for _ in range(depth):
            nested = {"n": nested}
        return {"id": str(uuid.uuid4()), "custom": nested}
    return {"id": str(uuid.uuid4()), "force_build": draw(json_scalars)}  # unknown to the Manager


RAW_BODIES = [
    b"\xff\xfe\x00 not utf-8 \x80\x81",
    b'{"id": "unterminated',
    b"[" * 5000 + b"]" * 5000,  # deeper than the JSON decoder goes
]


def publish_raw(system: FaultSystem, body: bytes, with_task_header: bool) -> None:
    with Connection(system.settings.celery_broker_url) as conn:
        producer = Producer(
            conn.default_channel, exchange=Exchange(system.settings.queue_name, "direct")
        )
        headers = {"task": system.settings.orchestrate_task, "id": str(uuid.uuid4())}
        producer.publish(
            body,
            routing_key=system.settings.queue_name,
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers if with_task_header else {},
        )


def test_poison_messages(build_system) -> None:
    system = build_system(concurrency=4)
    sent: list[Any] = []

    @settings(
        max_examples=1,
        phases=[Phase.generate],  # one big corpus; no shrinking of a system test
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(bad_payloads(), min_size=240, max_size=240))
    def corpus(payloads: list[Any]) -> None:
        sent.extend(payloads)

    corpus()
    bad_workflows = [
        system.emulator.add_workflow({"milestones": ["build", "teleport"]}),
        system.emulator.add_workflow({"milestones": ["deploy", "deploy"]}),
    ]
    good: list[str] = []
    caller = system.caller()
    for n, payload in enumerate(sent):
        caller.send_task(
            system.settings.orchestrate_task, args=[payload], queue=system.settings.queue_name
        )
        if n % 40 == 0:  # good work in between
            good += system.start_workflows(2, notifications_config=EMAIL_CONFIG)
    for body in RAW_BODIES:
        publish_raw(system, body, with_task_header=True)
    publish_raw(system, json.dumps({"id": "no task header"}).encode(), with_task_header=False)
    caller.send_task(
        "workflow_orchestrator.no_such_task", args=[{}], queue=system.settings.queue_name
    )
    for wid in bad_workflows:
        system.send_start(wid)
    good += system.start_workflows(2, notifications_config=EMAIL_CONFIG)

    expected_dead = len(sent) + len(RAW_BODIES) + 2
    dead: list[Any] = []
    wait_for(
        lambda: dead.extend(system.dead_letters()) or len(dead) >= expected_dead,
        120,
        f"{expected_dead} dead letters",
    )
    system.wait_all_completed(good + bad_workflows, timeout=90)
    wait_for(lambda: system.orchestration_backlog() == 0, 60, "the queue to be drained")
    dead.extend(system.dead_letters())
    assert len(dead) == expected_dead
    assert all(o.alive() for o in system.orchestrators) and system.restarts == 0
    failed = {
        wid: [e for e in system.emulator.get_workflow(wid)["event_log"] if "Reason:" in e]
        for wid in bad_workflows
    }
    assert failed[bad_workflows[0]][0].endswith("Reason: Unknown milestone: teleport")
    assert failed[bad_workflows[1]][0].endswith("Reason: Milestone listed twice: deploy")
    figures = system.check(good)
    # one ERROR line per poison message, and a system event for every distinct reason
    # (the Manager answers 409 to a repeat of the same event within the hour)
    log = system.logs()
    reasons = {
        line.split("] workflow_orchestrator.tasks: ", 1)[1].split("; the message goes", 1)[0]
        for line in log.splitlines()
        if "; the message goes to the dead-letter queue" in line
    }
    assert log.count("; the message goes to the dead-letter queue") == len(sent)
    assert "celery.exceptions.Reject" not in log  # no traceback per poison message
    events = {e["message"] for e in system.emulator.system_events()}
    assert reasons <= events, reasons - events
    report(
        "poison messages (hypothesis)",
        {**figures, "faults": expected_dead + len(bad_workflows), "dead_lettered": len(dead)},
    )


def test_a_message_that_kills_its_worker_every_time_is_set_aside(build_system) -> None:
    killer = str(uuid.uuid4())
    budget = tempfile.mkstemp(prefix="wo-killer-budget-")[1]
    with open(budget, "w") as handle:
        handle.write("50")
    system = build_system(
        concurrency=2,
        max_redeliveries=3,
        extra_env={
            "WORKFLOW_ORCHESTRATOR_CRASH_AT": "after_load",
            "WORKFLOW_ORCHESTRATOR_CRASH_BUDGET": budget,
            "WORKFLOW_ORCHESTRATOR_CRASH_PROBABILITY": "1",
            "WORKFLOW_ORCHESTRATOR_CRASH_WORKFLOW": killer,
        },
    )
    system.emulator.add_workflow({"id": killer, "milestones": ["build"]})
    system.send_start(killer)
    dead: list[Any] = []
    wait_for(
        lambda: dead.extend(system.dead_letters()) or dead, 90, "the killer message to be set aside"
    )
    with open(budget) as handle:
        crashes = 50 - int(handle.read().strip())
    assert crashes == 4, f"1 delivery + 3 redeliveries should have crashed, saw {crashes}"
    assert json.loads(dead[0].body)[0][0]["id"] == killer
    wait_for(
        lambda: any("redelivered 4 times" in e["message"] for e in system.emulator.system_events()),
        20,
        "the system event",
    )
    good = system.start_workflows(10, notifications_config=EMAIL_CONFIG)
    system.wait_all_completed(good, timeout=60)
    report("message killing its worker every time", {**system.check(good), "faults": crashes})


def test_a_message_failing_transiently_forever_is_dead_lettered(build_system) -> None:
    system = build_system(concurrency=2, max_retries=4)
    wid = system.emulator.add_workflow({"milestones": ["build"]})
    system.emulator.fail_for(60, status=503)
    system.send_start(wid)
    dead: list[Any] = []
    wait_for(
        lambda: dead.extend(system.dead_letters()) or dead, 60, "the message to be dead-lettered"
    )
    assert len(dead) == 1
    log = system.logs()
    assert f"Gave up on a message for workflow {wid} after 4 tries" in log
    system.emulator.reset_faults()
    report(
        "Manager failing forever for one message",
        {"workflows": 1, "lost": 0, "faults": 4, "dead_lettered": 1},
    )


#: Celery's own headers, each given a random JSON value: the shapes a confused or
#: hostile publisher can produce. (`eta` and `expires` get no strings, so a generated
#: value is never a real date: an expired task is Celery's to drop, by design.)
CELERY_HEADERS = (
    "lang",
    "root_id",
    "parent_id",
    "group",
    "group_index",
    "retries",
    "timelimit",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "shadow",
    "ignore_result",
    "stamped_headers",
    "stamps",
    "replaced_task_nesting",
)
NOT_A_DATE = st.one_of(
    json_scalars.filter(lambda v: not isinstance(v, str)), st.lists(json_scalars)
)


@st.composite
def raw_envelopes(draw: st.DrawFn, task: str) -> tuple[dict[str, Any], bytes]:
    """Headers and a body that name the orchestration task but are no valid call of it."""
    headers: dict[str, Any] = {"task": task}
    if draw(st.integers(0, 9)):  # usually an id, sometimes none or a wrong one
        headers["id"] = str(uuid.uuid4())
    elif draw(st.booleans()):
        headers["id"] = draw(json_scalars)
    for name in draw(st.lists(st.sampled_from(CELERY_HEADERS), max_size=4, unique=True)):
        headers[name] = draw(json_values)
    if draw(st.integers(0, 4)) == 0:
        headers[draw(st.sampled_from(["eta", "expires"]))] = draw(NOT_A_DATE)
    shape = draw(st.sampled_from(["json", "triple", "bytes"]))
    if shape == "bytes":
        return headers, draw(st.binary(max_size=64))
    if shape == "triple":  # Celery's shape, wrong parts
        body: Any = [draw(json_values), draw(json_values), draw(json_values)]
    else:
        body = draw(json_values)
    return headers, json.dumps(body).encode()


#: The shapes a new user saw kill the worker on every restart.
REPORTED_BODIES = [b'{"id": "x"}', b'[[{"id": "x"}], {}]', b'"just a string"', b"null"]


def test_malformed_envelopes_never_stop_the_worker(build_system) -> None:
    from workflow_orchestrator.envelope import message_identity

    system = build_system(concurrency=4)
    task = system.settings.orchestrate_task
    sent: list[tuple[dict[str, Any], bytes]] = [
        ({"task": task, "id": str(uuid.uuid4())}, body) for body in REPORTED_BODIES
    ]

    @settings(
        max_examples=1,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(raw_envelopes(task), min_size=150, max_size=150))
    def corpus(envelopes: list[tuple[dict[str, Any], bytes]]) -> None:
        sent.extend(envelopes)

    corpus()
    with Connection(system.settings.celery_broker_url) as conn:
        producer = Producer(
            conn.default_channel, exchange=Exchange(system.settings.queue_name, "direct")
        )
        for headers, body in sent:
            producer.publish(
                body,
                routing_key=system.settings.queue_name,
                content_type="application/json",
                content_encoding="utf-8",
                headers=headers,
            )
    good = system.start_workflows(2, notifications_config=EMAIL_CONFIG)
    system.wait_all_completed(good, timeout=90)
    dead: list[Any] = []
    wait_for(
        lambda: dead.extend(system.dead_letters()) or len(dead) >= len(sent),
        120,
        f"{len(sent)} dead letters",
    )
    assert len(dead) == len(sent)
    assert all(o.alive() for o in system.orchestrators) and system.restarts == 0
    # bodies unchanged (py-amqp hands a body that decodes as UTF-8 over as text)
    received = [m.body if isinstance(m.body, bytes) else m.body.encode() for m in dead]
    assert sorted(received) == sorted(body for _, body in sent)
    for message in dead:
        assert message.headers["x-orchestrator-dead-letter-reason"]
        assert message.headers["x-orchestrator-dead-lettered-at"].startswith("20")
        assert message.headers["task"] == task  # the original headers are kept
    identities = {message_identity(headers, body) for headers, body in sent}

    def reported() -> set[str]:
        return {e["data"].get("message_id") for e in system.emulator.system_events()}

    wait_for(lambda: identities <= reported(), 60, "a system event for every bad message")
    system.check(good)
    report("malformed envelopes (hypothesis)", {"faults": len(sent), "dead_lettered": len(dead)})
