"""The worker's Prometheus families: their values after the shell's calls, bounded labels,
a real HTTP scrape, and multiprocess mode with real forked processes."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import values
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import CLIENT_ID, CLIENT_SECRET
from workflow_orchestrator import metrics as metrics_module
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.manager import TokenSource
from workflow_orchestrator.metrics import (
    DEAD_LETTER_KINDS,
    MULTIPROC_ENV,
    Metrics,
    NullMetrics,
    broker_label,
    call_label,
    metrics_for,
    prepare_multiprocess,
    start_metrics_server,
    status_label,
)
from workflow_orchestrator.runtime import EVENT_KINDS
from workflow_orchestrator.transition import Outcome

P = "workflow_orchestrator_"
REPO = Path(__file__).resolve().parent.parent


def sample(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(P + name, labels)


def label_values(m: Metrics, label: str) -> set[str]:
    return {
        s.labels[label]
        for family in m.registry.collect()
        for s in family.samples
        if label in s.labels
    }


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text-format scrape, keyed by name and sorted labels."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode("utf-8")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counters_hold_what_the_shell_reported() -> None:
    m = Metrics()
    for _ in range(3):
        m.transition(Outcome.APPLIED, 0.02)
    m.transition("duplicate", 0.001)
    m.transition(Outcome.AHEAD)
    m.finished("succeeded")
    m.finished("succeeded")
    m.finished("failed")
    m.dead_letter("gave_up")
    m.dead_letter("invalid_message")
    m.dead_letter("invalid_message")
    m.retry("transient")
    m.retry("ahead")
    m.retry("ahead")

    assert sample(m, "transitions_total", outcome="applied") == 3
    assert sample(m, "transitions_total", outcome="duplicate") == 1
    assert sample(m, "transitions_total", outcome="ahead") == 1
    assert sample(m, "transitions_total", outcome="inconsistent") == 0
    assert sample(m, "workflows_finished_total", result="succeeded") == 2
    assert sample(m, "workflows_finished_total", result="failed") == 1
    assert sample(m, "dead_letters_total", kind="invalid_message") == 2
    assert sample(m, "dead_letters_total", kind="gave_up") == 1
    assert sample(m, "dead_letters_total", kind="unknown_workflow") == 0
    assert sample(m, "retries_total", kind="ahead") == 2
    assert sample(m, "retries_total", kind="transient") == 1
    assert sample(m, "retries_total", kind="credentials") == 0
    # Only the transitions given a time are timed.
    assert sample(m, "transition_seconds_count") == 4
    assert sample(m, "transition_seconds_sum") == pytest.approx(0.061)
    assert sample(m, "transition_seconds_bucket", le="0.005") == 1
    assert sample(m, "transition_seconds_bucket", le="0.025") == 4


def test_histograms_by_call_broker_and_milestone() -> None:
    m = Metrics(milestones=["build", "deploy"])
    m.manager_call("GET /workflows/3f2c9a9e-0000-4000-8000-000000000001", 200, 0.004)
    m.manager_call("GET /workflows/3f2c9a9e-0000-4000-8000-000000000002", 200, 0.006)
    m.manager_call("PUT /workflows/3f2c9a9e-0000-4000-8000-000000000001", 503, 0.2)
    m.manager_call("GET /clusters/etcd-token-abc", None, 3.05)
    m.publish("1", 0.002)
    m.publish(1, 0.004)
    m.publish("7", 0.5)
    m.step_finished("build", 95)
    m.step_finished("deploy", 30)
    m.step_finished("deploy", 40)

    get = {"call": "GET /workflows/{id}", "status": "200"}
    assert sample(m, "manager_call_seconds_count", **get) == 2
    assert sample(m, "manager_call_seconds_sum", **get) == pytest.approx(0.01)
    put = {"call": "PUT /workflows/{id}", "status": "503"}
    assert sample(m, "manager_call_seconds_count", **put) == 1
    failed = {"call": "GET /clusters/{etcd_token}", "status": "error"}
    assert sample(m, "manager_call_seconds_count", **failed) == 1
    assert sample(m, "manager_call_seconds_bucket", le="2.5", **failed) == 0
    assert sample(m, "manager_call_seconds_bucket", le="5.0", **failed) == 1
    assert sample(m, "publish_seconds_count", broker="1") == 2
    assert sample(m, "publish_seconds_sum", broker="1") == pytest.approx(0.006)
    assert sample(m, "publish_seconds_count", broker="7") == 1
    assert sample(m, "step_duration_seconds_count", milestone="deploy") == 2
    assert sample(m, "step_duration_seconds_sum", milestone="deploy") == 70
    assert sample(m, "step_duration_seconds_bucket", milestone="build", le="60.0") == 0
    assert sample(m, "step_duration_seconds_bucket", milestone="build", le="120.0") == 1


def test_gauges_in_flight_and_deadlines() -> None:
    m = Metrics()
    assert sample(m, "workflows_in_flight") == 0
    with m.in_flight():
        with m.in_flight():
            assert sample(m, "workflows_in_flight") == 2
        assert sample(m, "workflows_in_flight") == 1
    with pytest.raises(RuntimeError), m.in_flight():
        raise RuntimeError("a failing message still leaves the gauge")
    assert sample(m, "workflows_in_flight") == 0
    m.deadlines_pending(12)
    m.deadlines_pending(5)
    assert sample(m, "deadlines_pending") == 5


def test_label_values_stay_bounded() -> None:
    """A thousand workflow ids, tokens and odd names make no new series."""
    m = Metrics(milestones=["build", "deploy"])
    for n in range(1000):
        wid = f"3f2c9a9e-0000-4000-8000-{n:012d}"
        m.manager_call(f"GET /workflows/{wid}", 200, 0.001)
        m.manager_call(f"PUT /workflows/{wid}", 204, 0.001)
        m.manager_call(f"GET /clusters/token-{n}", 404, 0.001)
        m.manager_call(f"GET /unknown/{n}", 200, 0.001)
        m.step_finished(f"step-{n}", 1)
        m.dead_letter(f"kind-{n}")
        m.retry(f"kind-{n}")
        m.transition(f"outcome-{n}")
        m.finished(f"result-{n}")
    assert label_values(m, "call") == {
        "GET /workflows/{id}",
        "PUT /workflows/{id}",
        "GET /clusters/{etcd_token}",
        "GET other",
    }
    assert label_values(m, "milestone") == {"other"}
    assert label_values(m, "kind") == set(DEAD_LETTER_KINDS) | {
        "transient",
        "credentials",
        "ahead",
        "other",
    }
    assert label_values(m, "outcome") == {"applied", "duplicate", "ahead", "inconsistent", "other"}
    assert label_values(m, "result") == {"succeeded", "failed", "other"}
    assert sample(m, "dead_letters_total", kind="other") == 1000
    assert sample(m, "step_duration_seconds_count", milestone="other") == 1000


@pytest.mark.parametrize(
    ("call", "label"),
    [
        ("GET /workflows/abc", "GET /workflows/{id}"),
        ("PUT /workflows/abc?x=1", "PUT /workflows/{id}"),
        ("POST /workflows/abc/execute", "POST /workflows/{id}/execute"),
        ("POST /system_events", "POST /system_events"),
        ("GET /clusters", "GET /clusters"),
        ("GET /clusters/tok", "GET /clusters/{etcd_token}"),
        ("GET /messaging/exchanges/2", "GET /messaging/exchanges/{id}"),
        ("GET /messaging/exchanges/2/clusters", "GET /messaging/exchanges/{id}/clusters"),
        ("POST /messaging/exchanges/2/modules", "POST /messaging/exchanges/{id}/modules"),
        ("GET /messaging/exchanges/2/brokers", "GET /messaging/exchanges/{id}/brokers"),
        ("GET /messaging/brokers/9", "GET /messaging/brokers/{id}"),
        ("GET /messaging/brokers/9/connections", "GET /messaging/brokers/{id}/connections"),
        ("POST https://login.example/oauth/token?secret=x", "POST oauth_token"),
        ("GET /workflows/a/b/c", "GET other"),
        ("BREW /workflows/a", "other /workflows/{id}"),
        ("", "other other"),
    ],
)
def test_call_labels_are_templates(call: str, label: str) -> None:
    assert call_label(call) == label


def test_status_and_broker_labels_never_carry_urls() -> None:
    assert status_label(204) == "204"
    assert status_label("503") == "503"
    assert status_label(None) == "error"
    assert status_label(True) == "error"
    assert status_label(999) == "error"
    assert broker_label(3) == "3"
    assert broker_label("broker-a") == "broker-a"
    assert broker_label("amqp://user:hunter2@rabbit:5672/%2F") == "other"
    assert broker_label(None) == "other"
    m = Metrics()
    m.publish("amqp://user:hunter2@rabbit:5672/%2F", 0.1)
    from prometheus_client import generate_latest

    assert b"hunter2" not in generate_latest(m.registry)
    assert sample(m, "publish_seconds_count", broker="other") == 1


def test_event_kinds_match_the_runtime() -> None:
    """The dead-letter kinds are the system events' kinds (runtime.EVENT_KINDS)."""
    assert DEAD_LETTER_KINDS == EVENT_KINDS


def test_null_metrics_has_every_method_and_accepts_every_call() -> None:
    public = {n for n in dir(Metrics) if not n.startswith("_")}
    assert public == {n for n in dir(NullMetrics) if not n.startswith("_")} - {"registry"}
    for name in public:
        mine = inspect.signature(getattr(Metrics, name)).parameters
        assert mine == inspect.signature(getattr(NullMetrics, name)).parameters, name
    null = NullMetrics()
    null.transition(Outcome.APPLIED, 0.1)
    null.transition("anything")
    null.finished("succeeded")
    null.dead_letter("gave_up")
    null.retry("transient")
    null.manager_call("GET /workflows/x", 200, 0.1)
    null.publish("1", 0.1)
    null.step_finished("build", 1.0)
    null.deadlines_pending(3)
    with null.in_flight():
        pass
    assert null.registry is None
    assert isinstance(metrics_for(False), NullMetrics)
    assert isinstance(metrics_for(True), Metrics)


def test_families_live_on_their_own_registry() -> None:
    """Two Metrics in one process do not collide, and the global registry stays empty
    of ours (creating a Metrics is what registers its families)."""
    from prometheus_client import REGISTRY

    first, second = Metrics(), Metrics()
    first.finished("failed")
    assert sample(first, "workflows_finished_total", result="failed") == 1
    assert sample(second, "workflows_finished_total", result="failed") == 0
    assert not [n for n in REGISTRY._names_to_collectors if n.startswith(P)]


def test_importing_the_module_imports_and_registers_nothing() -> None:
    code = textwrap.dedent(
        """
        import sys
        import workflow_orchestrator.metrics as m
        null = m.metrics_for(False)
        null.transition("applied", 0.1)
        with null.in_flight():
            pass
        print(sorted(n for n in sys.modules if n.startswith(("prometheus", "opentelemetry"))))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_scrape_over_http() -> None:
    m = Metrics(milestones=["build"])
    m.transition(Outcome.APPLIED, 0.03)
    m.transition(Outcome.APPLIED, 0.04)
    m.dead_letter("unknown_workflow")
    m.manager_call("GET /workflows/3f2c9a9e-0000-4000-8000-000000000001", 200, 0.005)
    m.step_finished("build", 61)
    server = start_metrics_server(0, registry=m.registry)
    try:
        assert server.address == "127.0.0.1" and server.port > 0
        got = scrape(server.url)
        assert got[(P + "transitions_total", (("outcome", "applied"),))] == 2
        assert got[(P + "transitions_total", (("outcome", "duplicate"),))] == 0
        assert got[(P + "dead_letters_total", (("kind", "unknown_workflow"),))] == 1
        assert got[(P + "transition_seconds_count", ())] == 2
        call = (("call", "GET /workflows/{id}"), ("status", "200"))
        assert got[(P + "manager_call_seconds_count", call)] == 1
        assert got[(P + "step_duration_seconds_sum", (("milestone", "build"),))] == 61
        assert got[(P + "workflows_in_flight", ())] == 0
        # Nothing but our families: Celery's own task metrics are Flower's.
        assert all(name.startswith(P) for name, _ in got)
        m.transition(Outcome.DUPLICATE)
        assert scrape(server.url)[(P + "transitions_total", (("outcome", "duplicate"),))] == 1
    finally:
        server.close()


def test_start_metrics_server_needs_one_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        start_metrics_server(0)
    with pytest.raises(ValueError):
        start_metrics_server(0, registry=Metrics().registry, multiprocess_dir=str(tmp_path))


@pytest.fixture
def restore_value_class(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """prepare_multiprocess switches process-wide state: put it back after the test."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setenv(MULTIPROC_ENV, "recorded")  # so the teardown restores it
    monkeypatch.delenv(MULTIPROC_ENV)
    yield
    values.close_all_multiprocess_files()


def test_prepare_multiprocess_wipes_only_old_metric_files(
    tmp_path: Path, restore_value_class: None
) -> None:
    given = tmp_path / "metrics"
    given.mkdir()
    (given / "counter_4242.db").write_bytes(b"old run")
    (given / "notes.txt").write_text("not ours")
    mp = prepare_multiprocess(str(given))
    assert os.environ[MULTIPROC_ENV] == str(given)
    assert values.ValueClass._multiprocess is True
    assert sorted(p.name for p in given.iterdir()) == ["notes.txt"]
    mp.close()
    assert given.is_dir()  # a configured directory is left in place

    fresh = prepare_multiprocess(None)
    assert fresh.owned and os.path.isdir(fresh.path) and os.listdir(fresh.path) == []
    fresh.close()
    assert not os.path.exists(fresh.path)


#: Runs in a fresh interpreter (multiprocess mode is process-wide): the worker's main
#: process in miniature. prometheus_client is imported before prepare_multiprocess, as a
#: library might; children are forked and each builds its own Metrics.
MULTIPROCESS_SCRIPT = """
import multiprocessing, os, signal, sys, json
import prometheus_client  # imported first, as some library may do
from workflow_orchestrator.metrics import (
    Metrics, prepare_multiprocess, process_exited, start_metrics_server,
)

mp = prepare_multiprocess(sys.argv[1] if len(sys.argv) > 1 else None)
server = start_metrics_server(0, multiprocess_dir=mp.path)
main = Metrics()  # the main process has a runtime too: every family shows, at 0

def worker(applied, dead, hold):
    m = Metrics(milestones=["build"])
    for _ in range(applied):
        m.transition("applied", 0.01)
    for _ in range(dead):
        m.dead_letter("gave_up")
    m.finished("succeeded")
    m.step_finished("build", 30)
    m.manager_call("GET /workflows/%s" % os.getpid(), 200, 0.002)
    if hold is not None:
        with m.in_flight():
            hold.set()
            signal.pause()  # until SIGKILLed: its exit hook never runs
    process_exited(os.getpid(), mp.path)  # what worker_process_shutdown calls

ctx = multiprocessing.get_context("fork")
a = ctx.Process(target=worker, args=(3, 1, None))
b = ctx.Process(target=worker, args=(4, 0, None))
held = ctx.Event()
c = ctx.Process(target=worker, args=(1, 0, held))
for p in (a, b, c):
    p.start()
a.join(); b.join(); held.wait(30)
print(json.dumps({"url": server.url, "dir": mp.path, "held": c.pid}), flush=True)
for line in sys.stdin:
    if line.strip() == "kill":
        os.kill(c.pid, signal.SIGKILL)
        c.join()
        print("killed", flush=True)
    elif line.strip() == "stop":
        break
server.close()
mp.close()
print("stopped", flush=True)
"""


def test_multiprocess_scrape_sums_forked_processes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        info = json.loads(proc.stdout.readline())
        got = scrape(info["url"])
        assert got[(P + "transitions_total", (("outcome", "applied"),))] == 3 + 4 + 1
        assert got[(P + "dead_letters_total", (("kind", "gave_up"),))] == 1
        assert got[(P + "workflows_finished_total", (("result", "succeeded"),))] == 3
        assert got[(P + "transition_seconds_count", ())] == 8
        assert got[(P + "step_duration_seconds_count", (("milestone", "build"),))] == 3
        assert got[(P + "step_duration_seconds_sum", (("milestone", "build"),))] == 90
        call = (("call", "GET /workflows/{id}"), ("status", "200"))
        assert got[(P + "manager_call_seconds_count", call)] == 3
        # The two that exited cleanly left their counters but not their live gauges;
        # the held one is in flight.
        assert got[(P + "workflows_in_flight", ())] == 1

        # A process that has just created its file and not sized it yet (prometheus_client
        # opens it empty, then truncates it to size): the scrape leaves it out, not a 500.
        Path(info["dir"], "counter_424242.db").touch()
        assert scrape(info["url"]) == got

        proc.stdin.write("kill\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "killed"
        got = scrape(info["url"])
        assert got[(P + "workflows_in_flight", ())] == 0  # swept at the scrape
        assert got[(P + "transitions_total", (("outcome", "applied"),))] == 8  # kept
        assert not [f for f in os.listdir(info["dir"]) if str(info["held"]) in f and "live" in f]

        proc.stdin.write("stop\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "stopped"
        assert proc.wait(timeout=30) == 0
        assert not os.path.exists(info["dir"])  # the temp dir it made is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_metrics_module_has_no_module_level_registry() -> None:
    """No family is created at import: only constants and functions at module level."""
    from prometheus_client.metrics import MetricWrapperBase

    assert not [
        name for name, value in vars(metrics_module).items() if isinstance(value, MetricWrapperBase)
    ]


#: A Celery app wired the way the brief's recipe (module docstring) tells the task shell
#: to: multiprocess mode prepared at worker_init (main process, before the pool forks),
#: one Metrics per process, process_exited on worker_process_shutdown.
CELERY_APP = """
import os
import signal
import pathlib
import signal

from celery import Celery, signals

from workflow_orchestrator.metrics import (
    Metrics, prepare_multiprocess, process_exited, start_metrics_server,
)

app = Celery("metricsapp", broker=os.environ["TEST_BROKER_URL"], set_as_current=False)
app.conf.update(
    worker_prefetch_multiplier=1, task_acks_late=True, broker_connection_retry_on_startup=True
)
app.per_process = {}


def metrics():
    if app.per_process.get("pid") != os.getpid():
        app.per_process.update(pid=os.getpid(), metrics=Metrics(milestones=["build"]))
    return app.per_process["metrics"]


@signals.worker_init.connect(weak=False)
def start_endpoint(sender, **_):
    if os.environ["TEST_POOL"] == "prefork":
        mp = prepare_multiprocess(None)
        app.per_process["dir"] = mp.path
        server = start_metrics_server(0, multiprocess_dir=mp.path)
    else:
        server = start_metrics_server(0, registry=metrics().registry)
    metrics()  # the main process's families show from the start, at 0
    pathlib.Path(os.environ["TEST_URL_FILE"]).write_text(server.url)


@signals.worker_process_shutdown.connect(weak=False)
def child_exit(pid, **_):
    process_exited(pid, app.per_process["dir"])


@app.task(name="metricsapp.step")
def step(outcome):
    m = metrics()
    with m.in_flight():
        m.transition(outcome, 0.01)
        if outcome == "applied":
            m.step_finished("build", 12)


@app.task(name="metricsapp.hold", acks_late=False)
def hold(pid_file):
    with metrics().in_flight():
        pathlib.Path(pid_file).write_text(str(os.getpid()))
        signal.pause()  # until the test SIGKILLs this pool process
"""


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_celery_worker_scrape_counts_its_tasks(
    pool: str, tmp_path: Path, broker_url: str
) -> None:
    from celery import Celery

    from tests.services import token
    from tests.support import WorkerProcess, wait_for

    (tmp_path / "metricsapp.py").write_text(CELERY_APP)
    url_file, pid_file = tmp_path / "url", tmp_path / "pid"
    queue = f"metrics-test-{pool}-{token()}"

    class MetricsApp(WorkerProcess):
        app_module = "metricsapp"

    worker = MetricsApp(
        {
            "TEST_BROKER_URL": broker_url,
            "TEST_POOL": pool,
            "TEST_URL_FILE": str(url_file),
            "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}",
        },
        pool=pool,
        concurrency=2,
        name=f"metrics-{pool}",
        queues=[queue],
        cwd=tmp_path,
        unset=(MULTIPROC_ENV,),  # the worker decides its mode itself
    )
    client = Celery("metrics-client", broker=broker_url, set_as_current=False)
    worker.start()
    try:
        url = wait_for(
            lambda: url_file.exists() and url_file.read_text(), 60, "the metrics endpoint"
        )
        for outcome in ["applied"] * 5 + ["duplicate"] * 3 + ["ahead"]:
            client.send_task("metricsapp.step", args=[outcome], queue=queue)

        def counted() -> dict | None:
            # A multiprocess scrape reads the processes' counter and histogram files one
            # after another, so one scrape can catch a task between its two updates: wait
            # for one that holds all nine tasks in both, and the five steps.
            got = scrape(url)
            counters = sum(v for (name, _), v in got.items() if name == P + "transitions_total")
            timed = got.get((P + "transition_seconds_count", ()))
            steps = got.get((P + "step_duration_seconds_count", (("milestone", "build"),)))
            return got if counters == timed == 9 and steps == 5 else None

        got = wait_for(counted, 60, "the tasks' transitions in the scrape")
        assert got[(P + "transitions_total", (("outcome", "duplicate"),))] == 3
        assert got[(P + "transitions_total", (("outcome", "ahead"),))] == 1
        assert got[(P + "transitions_total", (("outcome", "applied"),))] == 5
        assert got[(P + "transitions_total", (("outcome", "inconsistent"),))] == 0
        assert got[(P + "step_duration_seconds_sum", (("milestone", "build"),))] == 60

        if pool == "prefork":  # a pool process killed mid-message leaves no stuck gauge
            client.send_task("metricsapp.hold", args=[str(pid_file)], queue=queue)
            wait_for(lambda: scrape(url).get((P + "workflows_in_flight", ())) == 1, 60, "hold")
            held = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), 10, "pid"))
            os.kill(held, signal.SIGKILL)
            wait_for(
                lambda: scrape(url).get((P + "workflows_in_flight", ())) == 0,
                60,
                "the killed process's gauge to be swept",
            )
            after = scrape(url)
            assert after[(P + "transitions_total", (("outcome", "applied"),))] == 5
    finally:
        worker.stop()
        with client.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        client.close()
    log = worker.log()
    # No hook failed (Celery logs a failing signal handler and goes on); the SIGKILLed
    # pool process's WorkerLostError is the only traceback expected.
    assert "Signal handler" not in log and "metrics.py" not in log, log
    assert log.count("Traceback (most recent") == (2 if pool == "prefork" else 0), log


def test_token_requests_are_timed_as_oauth_token_with_their_status(
    manager_emulator: ManagerEmulator,
) -> None:
    from workflow_orchestrator.manager import CredentialsRejected, ManagerTransientError

    m = Metrics()
    good = TokenSource(manager_emulator.token_url, CLIENT_ID, CLIENT_SECRET, metrics=m)
    good.token()
    wrong = TokenSource(manager_emulator.token_url, CLIENT_ID, "not-it", metrics=m)
    with pytest.raises(CredentialsRejected):
        wrong.token()
    down = TokenSource("http://127.0.0.1:9/oauth/token", "o", "s", connect_timeout=0.5, metrics=m)
    with pytest.raises(ManagerTransientError):
        down.token()
    counts = {
        status: sample(m, "manager_call_seconds_count", call="POST oauth_token", status=status)
        for status in ("200", "401", "error")
    }
    assert counts == {"200": 1.0, "401": 1.0, "error": 1.0}
