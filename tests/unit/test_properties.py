"""Properties of the transition over any milestone list and any delivery order."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from workflow_orchestrator.transition import (
    EngineConfig,
    Outcome,
    WorkerRequest,
    classify,
    state_fingerprint,
    transition,
)
from workflow_orchestrator.workflow import persisted_view

from .fakes import WID, FakeTopology, stored_workflow

NOW = datetime(2026, 11, 27, 6, 0, tzinfo=timezone.utc)
NAMES = ["build", "config", "deploy", "deploy_oa", "deploy_ecs", "scheduled"]
CONFIG = EngineConfig()
milestone_lists = st.lists(st.sampled_from(NAMES), unique=True, max_size=6)


def initial(milestones: list[str]) -> dict[str, Any]:
    return stored_workflow(
        milestones=milestones, scheduled_start_time="Tue, 05 Mar 2013 23:25:19 GMT"
    )


START = {"id": WID, "etcd_token": "deploy-cluster-9"}


def save(workflow: dict[str, Any]) -> dict[str, Any]:
    return {"id": workflow["id"], **persisted_view(workflow)}


def in_order(milestones: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Run start + one completion per dispatched step; return final store and steps sent."""
    store, message, sent = initial(milestones), dict(START), []
    for n in range(20):
        decision = transition(
            store, message, now=NOW, topology=FakeTopology(), config=CONFIG, message_key=f"k{n}"
        )
        assert decision.outcome is Outcome.APPLIED
        store = save(decision.workflow)
        requests = [e for e in decision.effects if isinstance(e, WorkerRequest)]
        if not requests:
            return store, sent
        (request,) = requests
        sent.append(request.step)
        message = request.payload
    raise AssertionError("did not finish")


@given(milestone_lists)
def test_each_milestone_once_in_order_and_completed(milestones: list[str]) -> None:
    store, sent = in_order(milestones)
    assert store["workflow_completed"] is True and store["workflow_error"] is False
    assert sent == [m for m in milestones if m != "scheduled"]
    assert set(store["workflow_step_durations"]) == set(milestones)
    log = [line.split("] ", 1)[1] for line in store["event_log"]]
    started = [
        line.rsplit(": ", 1)[1] for line in log if line.startswith("Starting Workflow Milestone")
    ]
    assert started == milestones
    # Every line a transition writes is appended; the only text two milestones can share
    # is a dispatch to the same worker cluster (deploy, then deploy_oa).
    repeated = {line for line in log if log.count(line) > 1}
    assert all(line.startswith("Dispatching a deploy request") for line in repeated), repeated
    assert log[-1].startswith("Workflow completed in")


@settings(max_examples=150, deadline=None)
@given(milestone_lists, st.data())
def test_any_order_duplicates_and_redeliveries_end_in_the_same_state(
    milestones: list[str], data: st.DataObject
) -> None:
    reference, _ = in_order(milestones)
    store = initial(milestones)
    pool: list[tuple[str, dict[str, Any]]] = [("start", dict(START))]
    ids_per_step: dict[str, set[str]] = {}
    saved_logs: list[list[str]] = []
    counter = 0
    clock = NOW
    first_time: dict[str, datetime] = {}  # the shell's remembered transition times
    for _ in range(400):
        if not pool:
            break
        key, message = pool.pop(data.draw(st.integers(0, len(pool) - 1), label="pick"))
        clock += timedelta(seconds=0.6)  # every attempt happens later than the last
        now = clock
        if classify(store, message)[0] is None:
            now = first_time.setdefault(state_fingerprint(store), clock)
        decision = transition(
            store,
            message,
            now=now,
            topology=FakeTopology(),
            config=CONFIG,
            message_key=key,
            ahead_since=clock,
        )
        assert decision.outcome is not Outcome.INCONSISTENT, decision.summary
        if decision.outcome is Outcome.AHEAD:
            pool.append((key, message))  # retried shortly
            continue
        if decision.outcome is Outcome.DUPLICATE:
            continue
        for effect in decision.before_save:
            if isinstance(effect, WorkerRequest):
                ids_per_step.setdefault(effect.step, set()).add(effect.task_id)
                copies = data.draw(st.integers(1, 2), label="callback copies")
                for _copy in range(copies):
                    counter += 1
                    pool.append((f"cb{counter}", dict(effect.payload)))
        if data.draw(st.booleans(), label="crash before save"):
            pool.append((key, message))  # redelivered: same message, same key
            continue
        store = save(decision.workflow)
        saved_logs.append(store["event_log"])
    assert not pool, "messages left unprocessed"
    assert store["workflow_completed"] is True and store["workflow_error"] is False
    assert set(store["workflow_step_durations"]) == set(reference["workflow_step_durations"])

    # the same lines as the in-order run, each once (durations may read differently)
    def shape(log: list[str]) -> list[str]:
        return [line.split(", in ")[0].split(" in ")[0] for line in log]

    assert shape(store["event_log"]) == shape(reference["event_log"])
    assert all(len(ids) == 1 for ids in ids_per_step.values()), ids_per_step
    for before, after in zip(saved_logs, saved_logs[1:], strict=False):
        assert after[: len(before)] == before  # the saved log never shrinks or reorders
    # redeliveries and duplicate callbacks repeat no line: only what the in-order run
    # repeats (a dispatch to the same cluster by deploy and deploy_oa) stands twice
    log, ordered = store["event_log"], reference["event_log"]
    assert len(log) - len(set(log)) == len(ordered) - len(set(ordered))
