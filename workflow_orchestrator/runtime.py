"""The per-process objects a task uses, built once, after the fork.

Prefork children must not share the parent's HTTP sessions or sockets, so nothing here
is built at import; the first task of each process builds it (thread-safe for the
threads pool).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery import Celery

from .locking import WorkflowLocks, locks_from_settings
from .manager import ManagerClient
from .milestones import Target, Targets, build_registry
from .publisher import Publisher
from .settings import Settings, load_settings
from .topology import ManagerTopology
from .transition import EngineConfig

logger = logging.getLogger("workflow_orchestrator.runtime")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def engine_config(settings: Settings) -> EngineConfig:
    targets = Targets(
        builder=Target(settings.builder_task, settings.builder_queue),
        deployer=Target(settings.deployer_task, settings.deployer_queue),
        deploy_oa=Target(settings.deploy_oa_task, settings.deploy_oa_queue),
    )
    extra = [(m.name, Target(m.task, m.queue)) for m in settings.extra_milestones]
    return EngineConfig(
        exchange_id=settings.exchange_id,
        broker_id=settings.broker_id,
        queue_name=settings.queue_name,
        orchestrate_task=settings.orchestrate_task,
        ui_url=settings.ui_url,
        schedule_poll_seconds=settings.schedule_poll_seconds,
        out_of_order_timeout=settings.out_of_order_timeout,
        registry=build_registry(targets, extra),
    )


@dataclass
class Runtime:
    settings: Settings
    manager: ManagerClient
    topology: ManagerTopology
    locks: WorkflowLocks
    publisher: Publisher
    config: EngineConfig
    clock: Callable[[], datetime] = utc_now

    def system_event(self, message: str) -> dict[str, Any]:
        return {
            "unique": True,
            "type": "unhandled_exception",
            "severity": "error",
            "data": {
                "component": "workflow_orchestration",
                "exchange_id": self.settings.exchange_id,
                "hostname": self.settings.hostname,
            },
            "message": message,
        }

    def report_problem(self, message: str) -> None:
        """Post a system event; a Manager that cannot take it costs a log line only."""
        try:
            self.manager.create_system_event(self.system_event(message))
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not post system event (%s): %s", exc, message)

    def register(self) -> None:
        self.manager.register_module(
            self.settings.exchange_id,
            {
                "hostname": self.settings.hostname,
                "type": "workflow_orchestrator",
                "status": "active",
                "workload": [],
            },
        )


_runtime: Runtime | None = None
_lock = threading.Lock()


def build_runtime(app: Celery, settings: Settings | None = None) -> Runtime:
    settings = settings or load_settings()
    manager = ManagerClient.from_settings(settings)
    return Runtime(
        settings=settings,
        manager=manager,
        topology=ManagerTopology(
            manager,
            settings.exchange_id,
            cluster_cache_seconds=settings.cluster_cache_seconds,
            module_cache_seconds=settings.module_cache_seconds,
        ),
        locks=locks_from_settings(settings),
        publisher=Publisher(
            app,
            (settings.hipchat_task, settings.hipchat_queue),
            (settings.email_task, settings.email_queue),
        ),
        config=engine_config(settings),
    )


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        with _lock:
            if _runtime is None:
                from .celery_app import app

                _runtime = build_runtime(app)
    return _runtime


def current_runtime() -> Runtime | None:
    """The runtime if one was built or provided, without building one."""
    return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Replace the process's runtime (tests; after a fork)."""
    global _runtime
    with _lock:
        _runtime = runtime
