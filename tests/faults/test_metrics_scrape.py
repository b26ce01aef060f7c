"""A scrape of the worker's /metrics after a few workflows counts exactly what happened,
under both pools (prefork merges its processes' files)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.services import free_port
from tests.support import wait_for

from .conftest import EMAIL_CONFIG

P = "workflow_orchestrator_"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: Any) -> float:
    return samples.get((P + name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_scrape_counts_the_run(build_system: Any, pool: str) -> None:
    port = free_port()
    system = build_system(pool=pool, concurrency=2, extra_env={"METRICS_PORT": str(port)})
    ids = system.start_workflows(3, notifications_config=EMAIL_CONFIG)
    system.caller().send_task(
        system.settings.orchestrate_task, args=["not an object"], queue=system.settings.queue_name
    )
    system.wait_all_completed(ids, timeout=90)

    def counted() -> dict:
        samples = scrape(port)
        done = value(samples, "workflows_finished_total", result="succeeded") == 3
        dead = value(samples, "dead_letters_total", kind="invalid_message") == 1
        return samples if done and dead else {}

    samples = wait_for(counted, 60, "the scrape to count three workflows and a dead letter")
    # start, build reported, deploy reported: three applied transitions per workflow
    assert value(samples, "transitions_total", outcome="applied") == 9
    assert value(samples, "transitions_total", outcome="duplicate") == 0
    assert value(samples, "workflows_finished_total", result="failed") == 0
    assert value(samples, "transition_seconds_count") == 9
    get = {"call": "GET /workflows/{id}", "status": "200"}
    assert value(samples, "manager_call_seconds_count", **get) == 9
    put = {"call": "PUT /workflows/{id}", "status": "204"}
    assert value(samples, "manager_call_seconds_count", **put) == 9
    assert value(samples, "step_duration_seconds_count", milestone="build") == 3
    assert value(samples, "step_duration_seconds_count", milestone="deploy") == 3
    assert value(samples, "workflows_in_flight") == 0
    assert value(samples, "publish_seconds_count", broker="1") >= 6  # requests, chats, e-mails
    assert (
        system.settings.oauth_client_secret
        not in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    )
