"""Prometheus metrics of the orchestrator worker: what Flower and celery-exporter cannot see.

Celery's own task metrics (received, succeeded, runtime per task) are Flower's and
celery-exporter's; these families count what only the orchestrator knows: how each
message was classified, how workflows end, why messages were dead-lettered or retried,
and where the time of a transition goes (Manager calls, publishes). All names start with
``workflow_orchestrator_``; every label takes a bounded set of values (a raw workflow id,
URL or token never becomes a label value), see ``call_label`` and friends.

Nothing is registered at import and prometheus_client's global registry is never used:
creating a ``Metrics`` object registers its families on a registry of its own.
``NullMetrics`` has the same methods and does nothing, so the task shell calls the same
methods whether METRICS_PORT is set or not.

Wiring in the worker (the task shell does it; this module only offers the parts):

threads pool (one process)
    Build one ``Metrics`` for the process (on the runtime) and, in the main process at
    worker start, ``start_metrics_server(port, registry=metrics.registry)``.

prefork pool (multiprocess mode)
    1. In the main process, before the pool forks its children and before any ``Metrics``
       exists: ``mp = prepare_multiprocess(settings.metrics_multiproc_dir or None)``
       (a fresh temp dir by default; a given one is emptied of old ``*.db`` files).
    2. Then ``server = start_metrics_server(port, multiprocess_dir=mp.path)`` there:
       the scrape merges every process's files.
    3. Each child builds its own ``Metrics`` (the runtime is built per process).
    4. On a child's exit, ``process_exited(pid, mp.path)`` (Celery's
       ``worker_process_shutdown`` signal, in the child, with ``os.getpid()``). A child
       killed with SIGKILL never gets there: the scrape also drops the live gauges of
       processes that no longer exist, so ``workflows_in_flight`` never stays stuck.
    5. At worker shutdown ``server.close()`` then ``mp.close()`` (removes the directory
       if ``prepare_multiprocess`` made it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

PREFIX = "workflow_orchestrator_"
#: prometheus_client reads this variable to put itself in multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The label value of anything outside a label's known set.
OTHER = "other"

OUTCOMES = ("applied", "duplicate", "ahead", "inconsistent")
RESULTS = ("succeeded", "failed")
#: The `kind` of dead letters: the system-event kinds of CONTRACT.md 6 (runtime.EVENT_KINDS).
DEAD_LETTER_KINDS = (
    "invalid_message",
    "unknown_workflow",
    "inconsistent_message",
    "manager_refused",
    "gave_up",
    "unexpected_error",
)
RETRY_KINDS = ("transient", "credentials", "ahead")
METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH")
#: Manager paths the orchestrator calls, as templates (CONTRACT.md 4, 5.1, 6).
MANAGER_PATHS = (
    "/workflows",
    "/workflows/{id}",
    "/workflows/{id}/execute",
    "/system_events",
    "/clusters",
    "/clusters/{etcd_token}",
    "/messaging/exchanges/{id}",
    "/messaging/exchanges/{id}/clusters",
    "/messaging/exchanges/{id}/modules",
    "/messaging/exchanges/{id}/brokers",
    "/messaging/brokers/{id}",
    "/messaging/brokers/{id}/connections",
)
#: The `call` label of the OAuth2 token request (its URL is no label value).
TOKEN_CALL = "POST oauth_token"

#: Seconds. A transition is a GET, a PUT and a few confirmed publishes: milliseconds.
TRANSITION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Seconds; the top buckets reach MANAGER_READ_TIMEOUT's default (15 s).
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)
#: Seconds a milestone's worker took: from seconds to hours (STEP_TIMEOUT_DEFAULT is 3 h).
STEP_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 10800, 21600)

_STEP_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_BROKER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_STATIC_SEGMENTS = frozenset(
    ("workflows", "execute", "system_events", "clusters", "messaging", "exchanges")
    + ("modules", "brokers", "connections")
)


def _value(label: Any) -> Any:
    """An enum member's value, anything else unchanged (Outcome.APPLIED -> "applied")."""
    return getattr(label, "value", label)


def _one_of(label: Any, allowed: Iterable[str]) -> str:
    label = _value(label)
    return label if isinstance(label, str) and label in allowed else OTHER


def call_label(call: str) -> str:
    """The bounded `call` label of a Manager call: ``GET /workflows/1b4e...`` becomes
    ``GET /workflows/{id}``; a token request is ``POST oauth_token``; anything else is
    ``{method} other`` so no id, URL or query string ever becomes a label value."""
    method, _, target = (call or "").strip().partition(" ")
    method = method.upper() if method.upper() in METHODS else OTHER
    target = target.split("?", 1)[0].strip()
    if target and not target.startswith("/"):  # "POST https://login/oauth/token"
        return TOKEN_CALL if method == "POST" else f"{method} {OTHER}"
    parts = [p for p in target.split("/") if p]
    templated = []
    for index, part in enumerate(parts):
        if part in _STATIC_SEGMENTS:
            templated.append(part)
        elif index > 0 and parts[index - 1] == "clusters" and parts[0] == "clusters":
            templated.append("{etcd_token}")
        else:
            templated.append("{id}")
    path = "/" + "/".join(templated)
    return f"{method} {path}" if path in MANAGER_PATHS else f"{method} {OTHER}"


def status_label(status: int | str | None) -> str:
    """An HTTP status as a label (``"204"``); no answer at all (refused, timed out) is
    ``"error"``."""
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return str(status)
    return "error"


def broker_label(broker: Any) -> str:
    """A broker id as a label; anything that is not a short id (a URL, which may carry a
    password) is ``other``."""
    ok = isinstance(broker, (str, int)) and not isinstance(broker, bool)
    text = str(broker) if ok else ""
    return text if _BROKER_ID.fullmatch(text) else OTHER


class OrchestratorMetrics(Protocol):
    """What the task shell calls: ``Metrics`` records, ``NullMetrics`` ignores."""

    def transition(self, outcome: Any, seconds: float | None = None) -> None: ...
    def finished(self, result: str) -> None: ...
    def dead_letter(self, kind: str) -> None: ...
    def retry(self, kind: str) -> None: ...
    def manager_call(self, call: str, status: int | str | None, seconds: float) -> None: ...
    def publish(self, broker: Any, seconds: float) -> None: ...
    def step_finished(self, milestone: str, seconds: float) -> None: ...
    def in_flight(self) -> contextlib.AbstractContextManager[None]: ...
    def deadlines_pending(self, count: int) -> None: ...


class NullMetrics:
    """Metrics off (METRICS_PORT unset): every call accepted, nothing recorded."""

    registry = None

    def transition(self, outcome: Any, seconds: float | None = None) -> None:
        """Count one classified message."""

    def finished(self, result: str) -> None:
        """Count a workflow that ended."""

    def dead_letter(self, kind: str) -> None:
        """Count a dead-lettered message."""

    def retry(self, kind: str) -> None:
        """Count a message sent back for a later try."""

    def manager_call(self, call: str, status: int | str | None, seconds: float) -> None:
        """Time one Manager call."""

    def publish(self, broker: Any, seconds: float) -> None:
        """Time one confirmed publish."""

    def step_finished(self, milestone: str, seconds: float) -> None:
        """Record how long a milestone's worker took."""

    def in_flight(self) -> contextlib.AbstractContextManager[None]:
        """Mark a message being processed for the duration of the block."""
        return contextlib.nullcontext()

    def deadlines_pending(self, count: int) -> None:
        """Set the number of step deadlines waiting."""


class Metrics:
    """The orchestrator's families on a registry of their own (``self.registry``).

    ``milestones``, when given, bounds the `milestone` label to those names (the
    milestone registry's); other names are counted as ``other``.
    """

    def __init__(self, registry: Any = None, *, milestones: Iterable[str] | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self._milestones = frozenset(milestones) if milestones is not None else None
        on = {"registry": self.registry}
        self._transitions = Counter(
            PREFIX + "transitions",
            "Orchestration messages by how they were classified against the stored workflow",
            ["outcome"],
            **on,
        )
        self._finished = Counter(
            PREFIX + "workflows_finished",
            "Workflows that ended, by result",
            ["result"],
            **on,
        )
        self._dead_letters = Counter(
            PREFIX + "dead_letters",
            "Messages copied to the dead-letter queue, by kind (the system event's kind)",
            ["kind"],
            **on,
        )
        self._retries = Counter(
            PREFIX + "retries",
            "Messages sent back for a later try: transient failure, refused credentials, "
            "or ahead of the stored workflow",
            ["kind"],
            **on,
        )
        self._transition_seconds = Histogram(
            PREFIX + "transition_seconds",
            "Time to process one orchestration message, lock to ack",
            buckets=TRANSITION_BUCKETS,
            **on,
        )
        self._manager_seconds = Histogram(
            PREFIX + "manager_call_seconds",
            "Time of one Manager call, by templated call and HTTP status (error: no answer)",
            ["call", "status"],
            buckets=CALL_BUCKETS,
            **on,
        )
        self._publish_seconds = Histogram(
            PREFIX + "publish_seconds",
            "Time of one confirmed publish, by broker id",
            ["broker"],
            buckets=CALL_BUCKETS,
            **on,
        )
        self._step_seconds = Histogram(
            PREFIX + "step_duration_seconds",
            "Time a milestone's worker took, from dispatch to its report",
            ["milestone"],
            buckets=STEP_BUCKETS,
            **on,
        )
        self._in_flight = Gauge(
            PREFIX + "workflows_in_flight",
            "Orchestration messages being processed now",
            multiprocess_mode="livesum",
            **on,
        )
        self._deadlines = Gauge(
            PREFIX + "deadlines_pending",
            "Step deadlines waiting (set to the node's whole count)",
            multiprocess_mode="livemostrecent",
            **on,
        )
        # Known label values start at 0, so a rate() sees the first increment.
        for outcome in OUTCOMES:
            self._transitions.labels(outcome=outcome)
        for result in RESULTS:
            self._finished.labels(result=result)
        for kind in DEAD_LETTER_KINDS:
            self._dead_letters.labels(kind=kind)
        for kind in RETRY_KINDS:
            self._retries.labels(kind=kind)

    def transition(self, outcome: Any, seconds: float | None = None) -> None:
        """Count one classified message (an ``Outcome`` or its value), and time it."""
        self._transitions.labels(outcome=_one_of(outcome, OUTCOMES)).inc()
        if seconds is not None:
            self._transition_seconds.observe(seconds)

    def finished(self, result: str) -> None:
        """Count a workflow that ended: ``succeeded`` or ``failed``."""
        self._finished.labels(result=_one_of(result, RESULTS)).inc()

    def dead_letter(self, kind: str) -> None:
        """Count a dead-lettered message by its system-event kind."""
        self._dead_letters.labels(kind=_one_of(kind, DEAD_LETTER_KINDS)).inc()

    def retry(self, kind: str) -> None:
        """Count a retry: ``transient``, ``credentials`` or ``ahead``."""
        self._retries.labels(kind=_one_of(kind, RETRY_KINDS)).inc()

    def manager_call(self, call: str, status: int | str | None, seconds: float) -> None:
        """Time one Manager call; ``call`` may be raw (``GET /workflows/<id>``), it is
        templated here."""
        self._manager_seconds.labels(call=call_label(call), status=status_label(status)).observe(
            seconds
        )

    def publish(self, broker: Any, seconds: float) -> None:
        """Time one confirmed publish to a broker (its id, never its URL)."""
        self._publish_seconds.labels(broker=broker_label(broker)).observe(seconds)

    def step_finished(self, milestone: str, seconds: float) -> None:
        """Record how long a milestone's worker took."""
        self._step_seconds.labels(milestone=self._milestone_label(milestone)).observe(seconds)

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count the block as one message in flight, however it ends."""
        self._in_flight.inc()
        try:
            yield
        finally:
            self._in_flight.dec()

    def deadlines_pending(self, count: int) -> None:
        """Set the number of step deadlines waiting."""
        self._deadlines.set(count)

    def _milestone_label(self, milestone: Any) -> str:
        if not isinstance(milestone, str) or not _STEP_NAME.fullmatch(milestone):
            return OTHER
        if self._milestones is not None and milestone not in self._milestones:
            return OTHER
        return milestone


def metrics_for(enabled: bool, *, milestones: Iterable[str] | None = None) -> OrchestratorMetrics:
    """``Metrics`` when METRICS_PORT is set, else ``NullMetrics`` (no prometheus import)."""
    return Metrics(milestones=milestones) if enabled else NullMetrics()


# -- multiprocess mode (prefork) -------------------------------------------------------


@dataclass
class MultiprocessDir:
    """The directory every pool process writes its metrics to; ``close()`` removes it
    when ``prepare_multiprocess`` made it (a configured one is left in place)."""

    path: str
    owned: bool

    def close(self) -> None:
        """Remove the directory if it is ours."""
        if self.owned:
            shutil.rmtree(self.path, ignore_errors=True)


def prepare_multiprocess(directory: str | None = None) -> MultiprocessDir:
    """Put this process and the children it forks in multiprocess mode.

    Call it in the worker's main process before the pool forks and before any
    ``Metrics`` is built. ``directory`` None makes a fresh temp dir; a given directory is
    created if missing and emptied of the ``*.db`` files of an earlier run (counters
    would otherwise add up across runs; nothing else in it is touched). The environment
    variable is what forked children inherit; prometheus_client picks its value class
    at import, so if a library imported it before, the class is switched here too.
    """
    owned = directory is None
    if directory is None:
        directory = tempfile.mkdtemp(prefix="workflow-orchestrator-metrics-")
    else:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
    os.environ[MULTIPROC_ENV] = directory
    from prometheus_client import values

    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    return MultiprocessDir(directory, owned)


def process_exited(pid: int, directory: str) -> None:
    """Forget the live gauges of a pool process that exited (its counters stay counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead_processes(directory: str) -> list[int]:
    """Drop the live-gauge files of processes that no longer exist (a SIGKILLed child
    never ran its exit hook); return their pids."""
    dead = set()
    for path in glob.glob(os.path.join(directory, "gauge_live*_*.db")):
        pid_text = os.path.basename(path)[: -len(".db")].rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            dead.add(int(pid_text))
    for pid in dead:
        process_exited(pid, directory)
    return sorted(dead)


def _sized(path: str) -> bool:
    """Whether a process's metrics file has its header yet: prometheus_client creates
    the file empty and sizes it a moment later, and reading it in between fails the
    whole scrape (`struct.error`: a 500 for Prometheus)."""
    try:
        return os.stat(path).st_size >= 8
    except FileNotFoundError:  # gone between the listing and now (a live gauge's)
        return False


class _MultiProcessScrape:
    """A collector that merges every process's files, after the dead processes' sweep."""

    def __init__(self, directory: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.directory = directory
        self._merge = MultiProcessCollector.merge

    def collect(self) -> Iterable[Any]:
        sweep_dead_processes(self.directory)
        # A file not sized yet holds no value yet: left out of this scrape.
        files = [p for p in glob.glob(os.path.join(self.directory, "*.db")) if _sized(p)]
        return self._merge(files, accumulate=True)


class MetricsServer:
    """The running ``/metrics`` endpoint: ``port`` (the real one when 0 was asked),
    ``url``, ``close()``."""

    def __init__(self, httpd: Any, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        self.address, self.port = httpd.server_address[:2]

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def start_metrics_server(
    port: int,
    *,
    address: str = "127.0.0.1",
    registry: Any = None,
    multiprocess_dir: str | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` on ``address:port`` in a daemon thread.

    Exactly one of ``registry`` (one process: the ``Metrics.registry`` of that process)
    or ``multiprocess_dir`` (prefork: the directory of ``prepare_multiprocess``) says
    what is served. Port 0 picks a free port (tests).
    """
    from prometheus_client import CollectorRegistry, start_http_server

    if (registry is None) == (multiprocess_dir is None):
        raise ValueError("start_metrics_server needs exactly one of registry or multiprocess_dir")
    if multiprocess_dir is not None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_MultiProcessScrape(multiprocess_dir))
    httpd, thread = start_http_server(port, addr=address, registry=registry)
    return MetricsServer(httpd, thread)
