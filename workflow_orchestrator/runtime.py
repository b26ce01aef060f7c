"""The objects a task uses (Manager client, topology, locks, publisher), built per process.

Prefork children must not share the parent's HTTP sessions or sockets, so the runtime
is built on first use in each process (`OrchestratorApp.runtime` checks the pid) and
never at import.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from celery import Celery

from .broker_pool import BrokerPublisher
from .brokers import BrokerResolver
from .locking import WorkflowLocks, locks_from_settings
from .manager import ManagerClient, fit_workload
from .metrics import DEAD_LETTER_KINDS, NullMetrics, OrchestratorMetrics, metrics_for
from .milestones import Target, Targets, build_registry
from .publisher import Publisher
from .settings import Settings
from .topology import ManagerTopology
from .tracing import NullTracing, Tracing, setup_tracing
from .transition import EngineConfig

logger = logging.getLogger("workflow_orchestrator.runtime")

#: `data.kind` of the system events the orchestrator posts (CONTRACT.md 6); each is
#: also a dead letter's kind in the metrics.
EVENT_KINDS = DEAD_LETTER_KINDS


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
        step_timeouts=dict(settings.step_timeouts),
        step_timeout_default=settings.step_timeout_default,
    )


def system_event(
    settings: Settings, kind: str, message: str, workflow_id: Any, message_id: Any
) -> dict[str, Any]:
    """A system event whose `data` tells distinct problems apart: the Manager answers
    409 to a unique event whose type and data equal one of the last hour."""
    return {
        "unique": True,
        "type": "unhandled_exception",
        "severity": "error",
        "data": {
            "component": "workflow_orchestration",
            "exchange_id": settings.exchange_id,
            "hostname": settings.hostname,
            "kind": kind,
            "workflow_id": workflow_id if isinstance(workflow_id, str) else None,
            "message_id": message_id if isinstance(message_id, str) else None,
        },
        "message": message,
    }


def module_record(settings: Settings, status: str, workload: list[str]) -> dict[str, Any]:
    """This orchestrator's module record: the registration and each heartbeat."""
    return {
        "hostname": settings.hostname,
        "type": "workflow_orchestrator",
        "status": status,
        "workload": fit_workload(workload),
    }


@dataclass
class Runtime:
    settings: Settings
    manager: ManagerClient
    topology: ManagerTopology
    locks: WorkflowLocks
    publisher: Publisher
    config: EngineConfig
    clock: Callable[[], datetime] = utc_now
    metrics: OrchestratorMetrics = field(default_factory=NullMetrics)
    tracing: Tracing = field(default_factory=NullTracing)

    def report_problem(
        self, kind: str, message: str, *, workflow_id: Any = None, message_id: Any = None
    ) -> None:
        """Post a system event; a Manager that cannot take it costs a log line only."""
        event = system_event(self.settings, kind, message, workflow_id, message_id)
        try:
            self.manager.create_system_event(event)
        except Exception as exc:  # noqa: BLE001
            logger.warning("could not post system event (%s): %s", exc, message)

    def register(self, status: str = "active", workload: list[str] | None = None) -> None:
        self.manager.register_module(
            self.settings.exchange_id, module_record(self.settings, status, workload or [])
        )


def build_runtime(app: Celery, settings: Settings) -> Runtime:
    config = engine_config(settings)
    metrics = metrics_for(settings.metrics_port is not None, milestones=list(config.registry))
    tracing = setup_tracing()  # per process: after a prefork child's fork
    manager = ManagerClient.from_settings(settings, metrics=metrics, tracing=tracing)
    resolver = BrokerResolver(
        manager,
        settings.exchange_id,
        settings.broker_id,
        settings.celery_broker_url,
        cache_seconds=settings.cluster_cache_seconds,
    )
    brokers = BrokerPublisher(
        app,
        queue_arguments=settings.worker_queue_arguments,
        on_broker_failure=resolver.forget_broker,
        metrics=metrics,
    )
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
            resolver,
            brokers,
            own_queue=settings.queue_name,
            hipchat=(settings.hipchat_task, settings.hipchat_queue),
            email=(settings.email_task, settings.email_queue),
        ),
        config=config,
        metrics=metrics,
        tracing=tracing,
    )
