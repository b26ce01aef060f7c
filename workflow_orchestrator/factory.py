"""`create_app(settings)`: the one place validated Settings become a Celery app.

Queues, routes, task names, the broker and the runtime all come from the one Settings
given, so the CLI worker, the demo, the tests and the benchmark each build their own app
and none of them mutates a global one. Importing this module creates nothing.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any

from celery import Celery

from .consumer import install_consumer
from .logs import OrchestratorLogging
from .queues import orchestration_queue
from .runtime import Runtime, build_runtime
from .settings import Settings
from .startup import install_startup_steps
from .task_events import install_batched_task_events
from .tasks import register_tasks


class OrchestratorApp(Celery):
    """A Celery app that carries its Settings and builds its runtime once per process."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__("workflow_orchestrator", **kwargs)
        self.settings = settings
        self._runtime: Runtime | None = None
        self._runtime_pid = 0
        self._runtime_lock = threading.Lock()

    @property
    def runtime(self) -> Runtime:
        """The process's runtime; a prefork child builds its own (no inherited sockets)."""
        runtime = self._runtime
        if runtime is not None and self._runtime_pid == os.getpid():
            return runtime  # built: no lock for the pool's threads to queue on per task
        with self._runtime_lock:
            if self._runtime is None or self._runtime_pid != os.getpid():
                self._runtime = build_runtime(self, self.settings)
                self._runtime_pid = os.getpid()
            return self._runtime

    def use_runtime(self, runtime: Runtime | None) -> None:
        """Provide the runtime (tests: a recording publisher, an in-memory Manager)."""
        with self._runtime_lock:
            self._runtime = runtime
            self._runtime_pid = os.getpid() if runtime is not None else 0


def celery_settings(settings: Settings) -> dict[str, Any]:
    """What Settings decide in Celery's configuration (celeryconfig.py has the rest)."""
    url = settings.celery_broker_url
    return {
        # Celery prefers the CELERY_BROKER_URL environment variable over broker_url;
        # the read and write URLs win over both, so an app built for a broker uses it.
        "broker_url": url,
        "broker_read_url": url,
        "broker_write_url": url,
        "task_queues": (orchestration_queue(settings.queue_name),),
        "task_default_queue": settings.queue_name,
        "task_routes": {settings.orchestrate_task: {"queue": settings.queue_name}},
    }


def module_settings(name: str) -> dict[str, Any]:
    """A settings module's settings as a plain dict.

    Not `config_from_object`: Celery would keep the module behind a wrapper that every
    setting read falls through (a getattr that fails and a KeyError, for each of the
    dozen settings a `send_task` reads that only the defaults hold).
    """
    module = importlib.import_module(name)
    return {k: v for k, v in vars(module).items() if k.islower() and not k.startswith("_")}


def create_app(settings: Settings, **celery_options: Any) -> OrchestratorApp:
    """The orchestrator's Celery app for these settings."""
    app = OrchestratorApp(settings, log=OrchestratorLogging, **celery_options)
    app.conf.update(module_settings("celeryconfig"))
    app.conf.update(celery_settings(settings))
    register_tasks(app)
    install_consumer(app)
    install_startup_steps(app)
    install_batched_task_events(app)
    return app
