"""Optional tracing: off and import-free without OTEL_*, spans with the workflow's
attributes when on. Each case runs in a fresh interpreter: OpenTelemetry's tracer
provider and instrumentors are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.support import (
    OrchestratorProcess,
    build_registry,
    delete_test_queues,
    system_settings,
    wait_for,
    wait_registered,
)
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.tracing import (
    NullTracing,
    attribute_name,
    span_attributes,
    tracing_requested,
)
from workflow_orchestrator.worker_api import worker_app

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cret-do-not-leak-7f3a"


def run_python(code: str, **env: str) -> str:
    """Run `code` in a fresh interpreter with no OTEL_* but `env`; its stdout."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    clean.update(env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


IMPORTED = """
import sys
from workflow_orchestrator.tracing import setup_tracing
tracing = setup_tracing()
with tracing.span("orchestrate", workflow_id="w", workflow_step="build"):
    pass
tracing.shutdown()
print(type(tracing).__name__, sorted(n for n in sys.modules if n.startswith("opentelemetry")))
"""


def test_without_otel_variables_nothing_is_imported() -> None:
    assert run_python(IMPORTED).split() == ["NullTracing", "[]"]


def test_sdk_disabled_is_off_too() -> None:
    out = run_python(IMPORTED, OTEL_SDK_DISABLED="true", OTEL_TRACES_EXPORTER="console")
    assert out.split() == ["NullTracing", "[]"]


def test_otel_requested_but_not_installed_stays_off() -> None:
    code = "import sys\nsys.modules['opentelemetry'] = None  # as if not installed\n" + IMPORTED
    out = run_python(code, OTEL_TRACES_EXPORTER="console")
    assert out.split()[0] == "NullTracing"


def test_tracing_requested_reads_otel_variables() -> None:
    assert not tracing_requested({})
    assert not tracing_requested({"PATH": "/bin", "OTEL_": ""})
    assert tracing_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert not tracing_requested({"OTEL_SERVICE_NAME": "x", "OTEL_SDK_DISABLED": "True"})


def test_span_attributes_are_dotted_and_plain() -> None:
    assert attribute_name("workflow_id") == "workflow.id"
    got = span_attributes(
        {"http.response.status_code": 200},
        {"workflow_id": "w1", "workflow_step": None, "manager_call": "GET /workflows/{id}"},
    )
    assert got == {
        "http.response.status_code": 200,
        "workflow.id": "w1",
        "manager.call": "GET /workflows/{id}",
    }
    assert span_attributes(None, {"x": ["a"]}) == {"x": "['a']"}


def test_null_tracing_spans_are_empty_blocks() -> None:
    tracing = NullTracing()
    assert not tracing.enabled
    with tracing.span("orchestrate", workflow_id="w") as span:
        assert span is None
    tracing.shutdown()


SPANS = f"""
import json
from celery import Celery
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.manager import ManagerClient, TokenSource
from workflow_orchestrator.tracing import setup_tracing

exporter = InMemorySpanExporter()
tracing = setup_tracing(exporter=exporter)
app = Celery("traced", broker="memory://", set_as_current=False)
app.conf.task_always_eager = True

@app.task(name="tests.traced")
def traced(payload):
    return payload["id"]

with ManagerEmulator(client_id="orchestrator", client_secret="{SECRET}") as emulator:
    wid = emulator.add_workflow({{"milestones": ["build"]}})
    tokens = TokenSource(emulator.token_url, "orchestrator", "{SECRET}")
    client = ManagerClient(emulator.url, tokens)
    with tracing.span("orchestrate", workflow_id=wid, workflow_step="build"):
        with tracing.span("manager GET /workflows/{{id}}", manager_call="GET /workflows/{{id}}"):
            client.get_workflow(wid)
    try:
        with tracing.span("orchestrate", workflow_id=wid, workflow_step="deploy"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    traced.apply(args=({{"id": wid}},))
    client.close()
tracing.shutdown()
print(json.dumps({{
    "enabled": tracing.enabled,
    "wid": wid,
    "spans": [
        {{
            "name": s.name,
            "id": s.context.span_id,
            "parent": s.parent.span_id if s.parent else None,
            "kind": s.kind.name,
            "status": s.status.status_code.name,
            "attributes": dict(s.attributes),
            "events": [e.name for e in s.events],
            "service": s.resource.attributes.get("service.name"),
        }}
        for s in exporter.get_finished_spans()
    ],
}}))
"""


def test_spans_carry_the_workflow_and_nest_the_manager_call() -> None:
    pytest.importorskip("opentelemetry.sdk.trace")
    pytest.importorskip("opentelemetry.instrumentation.requests")
    pytest.importorskip("opentelemetry.instrumentation.celery")
    out = run_python(SPANS, OTEL_TRACES_EXPORTER="none", OTEL_SERVICE_NAME="orch-test")
    result = json.loads(out.strip().splitlines()[-1])
    assert result["enabled"] is True
    spans = result["spans"]
    wid = result["wid"]
    by_name: dict[str, list[dict]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)

    first, failed = by_name["orchestrate"]
    assert first["attributes"] == {"workflow.id": wid, "workflow.step": "build"}
    assert first["parent"] is None
    (manager,) = by_name["manager GET /workflows/{id}"]
    assert manager["parent"] == first["id"]
    assert manager["attributes"] == {"manager.call": "GET /workflows/{id}"}
    # requests is instrumented: the HTTP calls under the manager span are client spans.
    http = [s for s in spans if s["kind"] == "CLIENT" and s["parent"] == manager["id"]]
    assert http, spans
    assert any(f"/workflows/{wid}" in str(s["attributes"]) for s in http)
    # An exception leaving the block marks the span.
    assert failed["attributes"]["workflow.step"] == "deploy"
    assert failed["status"] == "ERROR" and "exception" in failed["events"]
    # Celery is instrumented: the task run has its span.
    assert [s for s in spans if "tests.traced" in s["name"]], [s["name"] for s in spans]
    # OTEL_SERVICE_NAME wins over the default name.
    assert {s["service"] for s in spans} == {"orch-test"}
    # No secret in any span: not the client secret, not a bearer token.
    assert SECRET not in out
    assert "Bearer" not in out


def spans_in(log: str) -> list[dict]:
    """The spans the console exporter printed into a worker's log (JSON objects)."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while (at := log.find('{\n    "name": ', at)) != -1:
        span, end = decoder.raw_decode(log, at)
        found.append(span)
        at = end
    return found


def test_a_real_worker_traces_each_orchestrate_and_its_manager_calls(broker_url: str) -> None:
    """`celery -A workflow_orchestrator worker` with OTEL_* set, as an operator runs it."""
    pytest.importorskip("opentelemetry.sdk.trace")
    pytest.importorskip("opentelemetry.instrumentation.celery")
    with ManagerEmulator(client_id="orchestrator", client_secret=SECRET) as emulator:
        build_registry(emulator)
        settings = system_settings(
            emulator,
            secret=SECRET,
            prefix=f"wo_trace_{uuid.uuid4().hex[:8]}",
            broker_url=broker_url,
            hostname=f"orchestrator-{uuid.uuid4().hex[:8]}",
        )
        env = {
            **settings.to_env(),
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "orchestrator-e2e",
        }
        process = OrchestratorProcess(env).start()
        try:
            wait_registered(emulator, process, settings.hostname)
            wid = emulator.add_workflow({"milestones": ["build"], "deployment_repo": "Org/app"})
            caller = worker_app(
                "test-caller", broker_url, queues=[], orchestration_queue=settings.queue_name
            )
            caller.send_task(
                settings.orchestrate_task, args=[{"id": wid}], queue=settings.queue_name
            )
            wait_for(
                lambda: (
                    "Starting Workflow Milestone: build"
                    in " ".join(emulator.get_workflow(wid).get("event_log") or [])
                ),
                what="the build to be dispatched",
            )
        finally:
            process.stop()  # a warm stop flushes the batched spans
            delete_test_queues(broker_url, settings)
    log = process.log()
    spans = spans_in(log)
    (orchestrate,) = [s for s in spans if s["name"] == "orchestrate"]
    assert orchestrate["attributes"]["workflow.id"] == wid
    assert orchestrate["resource"]["attributes"]["service.name"] == "orchestrator-e2e"
    trace_id = orchestrate["context"]["trace_id"]
    inside = {
        s["name"]
        for s in spans
        if s["context"]["trace_id"] == trace_id
        and s["parent_id"] == orchestrate["context"]["span_id"]
    }
    assert {"manager GET /workflows/{id}", "manager PUT /workflows/{id}"} <= inside
    assert SECRET not in log and "Bearer" not in log
