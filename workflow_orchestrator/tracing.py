"""Optional OpenTelemetry tracing: a span per orchestrate and per Manager call.

Tracing is on only when an ``OTEL_*`` variable is set (``OTEL_SDK_DISABLED=true``
turns it off again) and the ``otel`` extra is installed (opentelemetry-api, -sdk,
-instrumentation-celery, -instrumentation-requests). Otherwise ``setup_tracing``
returns ``NullTracing``: nothing from opentelemetry is imported and nothing changes.

When on, Celery (task publish and run spans, trace context carried in the message
headers) and requests (one client span per HTTP call) are instrumented, and ``span``
opens the orchestrator's own spans around them. Spans go to the exporters named by
``OTEL_TRACES_EXPORTER`` (default ``otlp``, which needs an OTLP exporter package;
``console`` is built in; ``none``), unless the process already has an SDK tracer
provider (run under ``opentelemetry-instrument``), which is then used as it is.

Wiring (the task shell does it): call ``setup_tracing()`` once per process that runs
tasks, after it is forked: Celery's ``worker_process_init`` signal under prefork (a span
processor's export thread does not survive a fork), at worker start under threads;
keep the returned object on the runtime; ``tracing.span("orchestrate",
workflow_id=..., workflow_step=...)`` around a message, ``tracing.span("manager GET
/workflows/{id}", manager_call=...)`` around a Manager call; ``shutdown()`` at exit
flushes what is buffered.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

logger = logging.getLogger("workflow_orchestrator.tracing")

SERVICE_NAME = "workflow-orchestrator"
TRACER_NAME = "workflow_orchestrator"


def tracing_requested(environ: Mapping[str, str] | None = None) -> bool:
    """True when some ``OTEL_*`` variable is set and the SDK is not disabled."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(name.startswith("OTEL_") and value for name, value in env.items())


def attribute_name(key: str) -> str:
    """A keyword argument's span attribute: ``workflow_id`` is ``workflow.id``."""
    return key.replace("_", ".")


def span_attributes(
    attributes: Mapping[str, Any] | None, keywords: Mapping[str, Any]
) -> dict[str, Any]:
    """The attributes of a span: ``attributes`` as given, keywords dotted; None dropped,
    anything but str/bool/int/float as its str."""
    merged: dict[str, Any] = dict(attributes or {})
    merged.update({attribute_name(k): v for k, v in keywords.items()})
    out = {}
    for key, value in merged.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
    return out


class Tracing(Protocol):
    """What the task shell calls."""

    enabled: bool

    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None, **keywords: Any
    ) -> contextlib.AbstractContextManager[Any]: ...

    def shutdown(self) -> None: ...


class NullTracing:
    """Tracing off: ``span`` is an empty block."""

    enabled = False

    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None, **keywords: Any
    ) -> contextlib.AbstractContextManager[Any]:
        """A block with no span."""
        return contextlib.nullcontext()

    def shutdown(self) -> None:
        """Nothing to flush."""


class OtelTracing:
    """Tracing on: spans from the tracer of ``provider``."""

    enabled = True

    def __init__(self, provider: Any, owned: bool) -> None:
        self.provider = provider
        self._owned = owned
        self._tracer = provider.get_tracer(TRACER_NAME)

    @contextlib.contextmanager
    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None, **keywords: Any
    ) -> Iterator[Any]:
        """A span named ``name``, current for the block; an exception leaving the block
        is recorded on it and sets its status to error."""
        with self._tracer.start_as_current_span(
            name, attributes=span_attributes(attributes, keywords)
        ) as current:
            yield current

    def shutdown(self) -> None:
        """Flush and stop the provider this module made (one it found is not ours)."""
        if self._owned:
            self.provider.shutdown()


def _exporters(environ: Mapping[str, str]) -> list[Any]:
    """The span exporters OTEL_TRACES_EXPORTER names, by the SDK's entry points."""
    from importlib.metadata import entry_points

    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    exporters = []
    for name in filter(None, names):
        if name == "none":
            continue
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            logger.warning(
                "OTEL_TRACES_EXPORTER names %r but no such exporter is installed; "
                "its spans are not exported",
                name,
            )
            continue
        exporters.append(found[0].load()())
    return exporters


def _provider(environ: Mapping[str, str], exporter: Any) -> tuple[Any, bool]:
    """The process's SDK tracer provider if it has one, else a new one set as global."""
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider) and exporter is None:
        return current, False
    # Given attributes win over OTEL_SERVICE_NAME in Resource.create: default only.
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": SERVICE_NAME})
    )
    if exporter is not None:  # tests: every span at once, no export thread
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        for each in _exporters(environ):
            provider.add_span_processor(BatchSpanProcessor(each))
    if not isinstance(current, TracerProvider):
        trace.set_tracer_provider(provider)
    return provider, True


def _instrument(provider: Any) -> list[str]:
    """Instrument Celery and requests where their instrumentation is installed."""
    done = []
    instrumentors = (
        ("celery", "opentelemetry.instrumentation.celery", "CeleryInstrumentor"),
        ("requests", "opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    )
    for label, module_name, class_name in instrumentors:
        try:
            module = __import__(module_name, fromlist=[class_name])
        except ImportError:
            logger.info("tracing: %s is not installed; %s is not traced", module_name, label)
            continue
        instrumentor = getattr(module, class_name)()
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
        done.append(label)
    return done


def setup_tracing(
    environ: Mapping[str, str] | None = None, *, exporter: Any = None
) -> NullTracing | OtelTracing:
    """Tracing for this process: ``OtelTracing`` when requested (``OTEL_*``) and
    installed, else ``NullTracing`` without importing opentelemetry. ``exporter`` (tests:
    an in-memory exporter) receives every span, instead of OTEL_TRACES_EXPORTER's."""
    env = os.environ if environ is None else environ
    if not tracing_requested(env):
        return NullTracing()
    try:
        import opentelemetry.sdk.trace  # noqa: F401 - is the SDK there at all?
    except ImportError:
        logger.warning(
            "OTEL_* is set but OpenTelemetry is not installed (pip install "
            "'workflow-orchestrator[otel]'); tracing stays off"
        )
        return NullTracing()
    provider, owned = _provider(env, exporter)
    instrumented = _instrument(provider)
    logger.info("tracing on (instrumented: %s)", ", ".join(instrumented) or "nothing")
    return OtelTracing(provider, owned)
