"""Callbacks for builder/deployer workers written in Python (docs/behaviour.md §8).

The Python counterpart of OpenAperture's `workflow_orchestrator_api`: a worker gets the
orchestrator's request as its task's single argument and reports back with
`step_completed` or `step_failed`, which send the request to the orchestration task
on the queue the request names. Everything goes out by task name with `send_task`
(JSON, publisher confirms when the app enables them), so a worker needs none of the
orchestrator's code or settings, only a Celery app; `worker_app` builds a suitable one.

The caller's dict is never mutated: each helper works on a deep copy.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from amqp.exceptions import AMQPError, MessageNacked
from celery import Celery, bootsteps, current_app
from celery.exceptions import Reject
from kombu import Queue
from kombu.exceptions import OperationalError

from .broker_pool import BrokerPublisher, publish_failure
from .brokers import BrokerResolver
from .errors import ManagerTransientError, PublishError, SettingsError
from .manager import ManagerClient, fit_workload
from .notifications import chat_note, room_names
from .publisher import PUBLISH_RETRY_POLICY, describe
from .queues import plain_queue
from .settings import positive, setting_reader
from .transition import CONTROL_KEY

logger = logging.getLogger("workflow_orchestrator.worker_api")

ORCHESTRATE_TASK = "workflow_orchestrator.orchestrate"
ORCHESTRATION_QUEUE = "workflow_orchestration"
HIPCHAT_TASK = "notifications.hipchat"
HIPCHAT_QUEUE = "notifications_hipchat"

#: App setting naming queues a peer worker declares for publishing but never consumes.
PUBLISH_ONLY_SETTING = "worker_api_publish_only_queues"
#: App setting: how long (seconds) a report is tried again before `ReportNotSent`.
REPORT_PATIENCE_SETTING = "worker_api_report_patience"
REPORT_PATIENCE_SECONDS = 60.0

__all__ = [
    "HIPCHAT_QUEUE",
    "HIPCHAT_TASK",
    "ORCHESTRATE_TASK",
    "ORCHESTRATION_QUEUE",
    "ReportNotSent",
    "cancel_workflow",
    "execute_workflow",
    "publish_failure_notification",
    "publish_success_notification",
    "register",
    "retry_workflow",
    "save",
    "step_completed",
    "step_failed",
    "worker_app",
    "worker_prefix",
]


def worker_prefix(request: dict[str, Any]) -> str:
    """`[OA][{id}]`: the prefix OpenAperture workers put on their event lines and chats."""
    return f"[OA][{request.get('id')}]"


def _copy(request: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(request, dict):
        raise TypeError(f"the request must be a dict, got {type(request).__name__}")
    return copy.deepcopy(request)


def _log_event(request: dict[str, Any], message: str) -> None:
    """Append `{prefix} {message}` to the (copied) request's event log."""
    log = request.get("event_log")
    request["event_log"] = [
        *(log if isinstance(log, list) else []),
        f"{worker_prefix(request)} {message}",
    ]


def _destination(app: Celery, name: str) -> str | Queue:
    """The app's own declaration of `name` when it has one, else the plain Celery one."""
    if name in app.amqp.queues:
        return name
    return plain_queue(name)


F = TypeVar("F", bound=Callable[..., Any])


def app_optional(func: F) -> F:
    """Let `func(app, request, ...)` also be called as CONTRACT §8 names it,
    `func(request, ...)` (or with `app=` as a keyword): the app is then Celery's current
    app, which inside a worker's task is that worker's own app."""
    signature = inspect.signature(func)
    params = list(signature.parameters.values())[1:]
    at = next((i for i, p in enumerate(params) if p.kind is p.VAR_KEYWORD), len(params))
    app_param = inspect.Parameter(
        "app", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Celery | None"
    )

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], Celery):
            return func(*args, **kwargs)
        app = kwargs.pop("app", None) or current_app._get_current_object()
        return func(app, *args, **kwargs)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*params[:at], app_param, *params[at:]]
    )
    return wrapper  # type: ignore[return-value]


#: The app attribute holding the Manager client `save` and `register` make when given none.
MANAGER_ATTRIBUTE = "workflow_orchestrator_manager"


def manager_from_environment(config: Callable[..., Any] | None = None) -> ManagerClient:
    """A Manager client from the settings the orchestrator reads (MANAGER_URL,
    OAUTH_LOGIN_URL, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET, OAUTH_BODY and the
    MANAGER_*_TIMEOUT ones), from the environment or a `.env` in the working directory;
    a missing one raises SettingsError naming it."""
    read = setting_reader(config)
    return ManagerClient.connect(
        read("MANAGER_URL", str),
        read("OAUTH_LOGIN_URL", str),
        read("OAUTH_CLIENT_ID", str),
        read("OAUTH_CLIENT_SECRET", str),
        body=read("OAUTH_BODY", str),
        connect_timeout=read("MANAGER_CONNECT_TIMEOUT", float),
        read_timeout=read("MANAGER_READ_TIMEOUT", float),
    )


def _default_manager() -> ManagerClient:
    """One client per Celery app (the current one), made from the environment once."""
    app = current_app._get_current_object()
    client = getattr(app, MANAGER_ATTRIBUTE, None)
    if client is None:
        client = manager_from_environment()
        setattr(app, MANAGER_ATTRIBUTE, client)
    return client


#: The app attribute holding a worker's `WorkerRouting` (set by `worker_app`).
ROUTING_ATTRIBUTE = "workflow_orchestrator_routing"


class WorkerRouting:
    """How a worker reaches a broker other than its own: the one a request's routing
    fields name (the orchestrator's, for reports; the notifications', for chats),
    resolved through the Manager as the orchestrator resolves brokers."""

    def __init__(self, app: Celery, broker_id: str | int, manager: ManagerClient) -> None:
        self.broker_id = str(broker_id)
        self.resolver = BrokerResolver(manager, "", self.broker_id, app.conf.broker_write_url)
        self.publisher = BrokerPublisher(app, on_broker_failure=self.resolver.forget_broker)

    def elsewhere(self, broker_id: Any) -> bool:
        return broker_id not in (None, "") and str(broker_id) != self.broker_id

    def send(
        self, broker_id: Any, task: str, queue: str, payload: dict[str, Any], argsrepr: str
    ) -> str:
        task_id = str(uuid.uuid4())
        route = self.resolver.route_to_broker(broker_id, str(payload.get("id")))
        endpoint = self.publisher.publish(
            route, task, queue, payload, task_id=task_id, argsrepr=argsrepr
        )
        logger.info(
            "sent %s to queue %s on %s (task id %s)", task, queue, endpoint.display, task_id
        )
        return task_id


def _send(
    app: Celery,
    task: str,
    queue: str | Queue,
    payload: dict[str, Any],
    argsrepr: str,
    broker_id: Any = None,
) -> str:
    """Publish on the app's broker, or on the broker `broker_id` names when it is another."""
    routing = _routing(app) if broker_id not in (None, "") else None
    if routing is not None and routing.elsewhere(broker_id):
        name = queue.name if isinstance(queue, Queue) else queue
        return routing.send(broker_id, task, name, payload, argsrepr)
    result = app.send_task(
        task,
        args=[payload],
        queue=queue,
        argsrepr=argsrepr,
        kwargsrepr="{}",
        ignore_result=True,
        retry=True,
        retry_policy=PUBLISH_RETRY_POLICY,
    )
    queue_name = queue.name if isinstance(queue, Queue) else queue
    logger.info("sent %s to queue %s (task id %s): %s", task, queue_name, result.id, argsrepr)
    return result.id


def _routing(app: Celery) -> WorkerRouting | None:
    """The app's routing: the one `worker_app(..., broker_id=, manager=)` set, else one
    from the environment (BROKER_ID and the Manager settings, as the orchestrator reads
    them), made once per app; None when the environment does not say (own broker only)."""
    routing = getattr(app, ROUTING_ATTRIBUTE, None)
    if routing is None:
        try:
            broker_id = setting_reader()("BROKER_ID", str)
            routing = WorkerRouting(app, broker_id, _default_manager())
        except SettingsError as exc:
            logger.warning(
                "reports and chats go to this worker's own broker whatever broker a request "
                "names: %s (set BROKER_ID and the Manager settings, or use worker_app("
                "..., broker_id=, manager=))",
                exc,
            )
            routing = False
        setattr(app, ROUTING_ATTRIBUTE, routing)
    return routing or None


#: What Celery's publish to the worker's own broker raises when that broker fails.
_OWN_BROKER_ERRORS = (OperationalError, AMQPError, MessageNacked, OSError)


class ReportNotSent(Reject):
    """A step's report could not be sent: the broker or the Manager failed.

    A `Reject` asking for a requeue, so that inside a worker task (acks late) the request
    goes back to its queue and the step is done again, instead of Celery acking a
    request whose outcome the orchestrator never heard of.
    """

    def __init__(self, reason: str, requeue: bool = True) -> None:
        # `requeue` only so that pickle, which calls the class with the exception's args,
        # rebuilds it: a prefork child hands its task's exception to the parent that way.
        super().__init__(reason, requeue=requeue)

    def __str__(self) -> str:
        return str(self.reason)


def _report_back(
    app: Celery,
    request: dict[str, Any],
    event: str,
    orchestrate_task: str,
    orchestration_queue: str,
) -> str:
    destination = _destination(app, request.get("orchestration_queue_name") or orchestration_queue)
    argsrepr = describe(request, event)
    broker_id = request.get("workflow_orchestration_broker_id") or request.get(
        "orchestration_broker_id"
    )
    what = f"the {event} report of workflow {request.get('id')} step {request.get('current_step')}"
    patience = float(app.conf.get(REPORT_PATIENCE_SETTING, REPORT_PATIENCE_SECONDS))
    give_up = time.monotonic() + patience
    pause = 0.5
    while True:
        try:
            return _send(app, orchestrate_task, destination, request, argsrepr, broker_id)
        except (PublishError, ManagerTransientError) as exc:
            failure: Exception = exc
        except _OWN_BROKER_ERRORS as exc:
            url = str(app.conf.broker_write_url or app.conf.broker_url or "")
            failure = PublishError(f"this worker's broker failed: {publish_failure(exc, url)}")
        # A broker restart takes seconds: wait it out here rather than have the step
        # done again, and never spin on a broker that stays away.
        if time.monotonic() + pause > give_up:
            reason = f"{what} was not sent: {failure}"
            logger.error("%s", reason)
            raise ReportNotSent(reason) from None
        logger.warning("%s was not sent, trying again in %.1f s: %s", what, pause, failure)
        time.sleep(pause)
        pause = min(2 * pause, 5.0)


def _notify(
    app: Celery,
    request: dict[str, Any],
    message: str,
    is_success: bool,
    hipchat_task: str,
    hipchat_queue: str,
) -> str:
    payload = chat_note(worker_prefix(request), message, is_success, room_names(request))
    return _send(
        app,
        hipchat_task,
        _destination(app, hipchat_queue),
        payload,
        describe(request, "notification"),
        request.get("notifications_broker_id"),
    )


@app_optional
def step_completed(
    app: Celery,
    request: dict[str, Any],
    message: str | None = None,
    *,
    orchestrate_task: str = ORCHESTRATE_TASK,
    orchestration_queue: str = ORCHESTRATION_QUEUE,
) -> str:
    """Tell the orchestrator the requested step is done; returns the task id.

    `current_step` and `step_time` go back untouched: the orchestrator uses them to
    recognise which step completed (and to ignore duplicates). `orchestration_queue`
    is used only when the request names no `orchestration_queue_name`. Raises
    `ReportNotSent` when no broker took the report: left to Celery, it sends the
    worker's request back to its queue (the step is done again), never acked unheard.
    """
    request = _copy(request)
    if message:
        _log_event(request, message)
    return _report_back(app, request, "completed", orchestrate_task, orchestration_queue)


@app_optional
def step_failed(
    app: Celery,
    request: dict[str, Any],
    message: str,
    reason: str,
    *,
    orchestrate_task: str = ORCHESTRATE_TASK,
    orchestration_queue: str = ORCHESTRATION_QUEUE,
    hipchat_task: str = HIPCHAT_TASK,
    hipchat_queue: str = HIPCHAT_QUEUE,
) -> str:
    """Report the step as failed, which fails the workflow; returns the callback's task id.

    As OpenAperture's `workflow_orchestrator_api`: logs `reason`, then `message`, sends
    `message` as a failure chat notification (best effort: a chat outage must not
    leave the workflow hanging), then reports back with `workflow_error` and
    `workflow_completed` set. Raises `ReportNotSent` as `step_completed` does.
    """
    request = _copy(request)
    request["workflow_error"] = True
    request["workflow_completed"] = True
    _log_event(request, reason)
    _log_event(request, message)
    try:
        _notify(app, request, message, False, hipchat_task, hipchat_queue)
    except Exception:  # the report back below matters more than the chat line
        logger.exception(
            "could not send the failure notification of workflow %s", request.get("id")
        )
    return _report_back(app, request, "failed", orchestrate_task, orchestration_queue)


def _publish_notification(
    app: Celery,
    request: dict[str, Any],
    message: str,
    is_success: bool,
    hipchat_task: str,
    hipchat_queue: str,
) -> dict[str, Any]:
    request = _copy(request)
    _log_event(request, message)
    _notify(app, request, message, is_success, hipchat_task, hipchat_queue)
    return request


@app_optional
def publish_success_notification(
    app: Celery,
    request: dict[str, Any],
    message: str,
    *,
    hipchat_task: str = HIPCHAT_TASK,
    hipchat_queue: str = HIPCHAT_QUEUE,
) -> dict[str, Any]:
    """A progress line: appended to the request's event log (so it reaches the workflow
    with the report) and posted to the workflow's chat rooms; returns the updated request."""
    return _publish_notification(app, request, message, True, hipchat_task, hipchat_queue)


@app_optional
def publish_failure_notification(
    app: Celery,
    request: dict[str, Any],
    message: str,
    *,
    hipchat_task: str = HIPCHAT_TASK,
    hipchat_queue: str = HIPCHAT_QUEUE,
) -> dict[str, Any]:
    """A failure line, logged and posted like `publish_success_notification`."""
    return _publish_notification(app, request, message, False, hipchat_task, hipchat_queue)


def save(*args: Any, manager: ManagerClient | None = None) -> None:
    """`save(request)`: `PUT /workflows/{id}` of the request's workflow fields, as
    OpenAperture's builder does on receipt, so the Manager shows the step's progress
    before the report. The Manager client is `manager` (or `save(manager, request)`),
    else one made from the environment (`manager_from_environment`), once per app."""
    if len(args) == 2 and isinstance(args[0], ManagerClient):
        manager, args = args[0], args[1:]
    if len(args) != 1 or not isinstance(args[0], dict):
        raise TypeError("save takes the request: save(request) or save(manager, request)")
    request: dict[str, Any] = args[0]
    manager = manager or _default_manager()
    workflow_id = request.get("id")
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError("the request has no workflow id")
    manager.save_workflow(workflow_id, request)


class ModuleRegistration:
    """A worker's module record in the Manager, kept alive by a heartbeat thread.

    OpenAperture's Overseer marks a module inactive when its record is ten minutes old
    and then deletes it; the orchestrator then fails workflows for lack of a builder.
    """

    def __init__(
        self,
        manager: ManagerClient,
        exchange_id: str | int,
        module_type: str,
        *,
        hostname: str | None = None,
        interval: float = 30.0,
        workload: Callable[[], list[Any]] = list,
    ) -> None:
        self.manager = manager
        self.exchange_id = exchange_id
        self.module_type = module_type
        self.hostname = hostname or socket.gethostname()
        self.interval = interval
        self.workload = workload
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, name=f"register-{module_type}", daemon=True
        )

    def record(self, status: str) -> dict[str, Any]:
        workload = fit_workload(list(self.workload())) if status == "active" else []
        return {
            "hostname": self.hostname,
            "type": self.module_type,
            "status": status,
            "workload": workload,
        }

    def start(self) -> ModuleRegistration:
        self._thread.start()
        return self

    def _beat(self) -> None:
        while True:
            try:
                self.manager.register_module(self.exchange_id, self.record("active"))
            except Exception as exc:  # noqa: BLE001 - a refused heartbeat costs a line
                logger.warning("could not register %s with the Manager: %s", self.module_type, exc)
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        """Stop the heartbeat and register once more as `inactive`."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self.manager.register_module(self.exchange_id, self.record("inactive"))
        except Exception as exc:  # noqa: BLE001 - shutting down anyway
            logger.warning("could not register %s as inactive: %s", self.module_type, exc)


def register(*args: Any, **options: Any) -> ModuleRegistration:
    """`register(module_type)`: register this worker's module (e.g. `builder`) and keep it
    alive with a heartbeat; `.stop()` at exit. Also `register(manager, exchange_id,
    module_type)`; otherwise `manager=` and `exchange_id=` default to a client made from
    the environment and its EXCHANGE_ID. The heartbeat interval is `interval=`, else
    MODULE_HEARTBEAT_SECONDS as the orchestrator reads it (default 30)."""
    if "interval" not in options:
        seconds = setting_reader()("MODULE_HEARTBEAT_SECONDS", float)
        options["interval"] = positive("MODULE_HEARTBEAT_SECONDS", seconds)
    if len(args) == 3:
        manager, exchange_id, module_type = args
    elif len(args) == 1:
        (module_type,) = args
        manager = options.pop("manager", None) or _default_manager()
        exchange_id = options.pop("exchange_id", None) or setting_reader()("EXCHANGE_ID", str)
    else:
        raise TypeError("register(module_type) or register(manager, exchange_id, module_type)")
    return ModuleRegistration(manager, exchange_id, module_type, **options).start()


@app_optional
def execute_workflow(
    app: Celery,
    workflow_id: str,
    *,
    force_build: bool = False,
    build_messaging_exchange_id: Any = None,
    deploy_messaging_exchange_id: Any = None,
    queue: str = ORCHESTRATION_QUEUE,
    orchestrate_task: str = ORCHESTRATE_TASK,
) -> str:
    """Start a workflow the Manager already stores; returns the task id.

    The orchestrator loads the rest of the workflow from the Manager, so the start
    message only carries the id and the request options; unset overrides are left out
    so they never mask anything.
    """
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError("workflow_id must be a non-empty string")
    payload: dict[str, Any] = {
        "id": workflow_id,
        "workflow_id": workflow_id,
        "force_build": force_build,
    }
    if build_messaging_exchange_id is not None:
        payload["build_messaging_exchange_id"] = build_messaging_exchange_id
    if deploy_messaging_exchange_id is not None:
        payload["deploy_messaging_exchange_id"] = deploy_messaging_exchange_id
    return _send(
        app,
        orchestrate_task,
        _destination(app, queue),
        payload,
        describe(payload, "start"),
    )


def _control(
    app: Celery, workflow_id: str, control: dict[str, Any], queue: str, orchestrate_task: str
) -> str:
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValueError("workflow_id must be a non-empty string")
    payload = {"id": workflow_id, CONTROL_KEY: control}
    return _send(
        app,
        orchestrate_task,
        _destination(app, queue),
        payload,
        f"workflow={workflow_id} control={control['kind']}",
    )


@app_optional
def cancel_workflow(
    app: Celery,
    workflow_id: str,
    reason: str | None = None,
    *,
    queue: str = ORCHESTRATION_QUEUE,
    orchestrate_task: str = ORCHESTRATE_TASK,
) -> str:
    """Ask the orchestrator to fail a running workflow (`Cancelled by an operator`); it
    travels through the orchestration queue, so it keeps the workflow's order."""
    control: dict[str, Any] = {"kind": "cancel"}
    if reason:
        control["reason"] = reason
    return _control(app, workflow_id, control, queue, orchestrate_task)


@app_optional
def retry_workflow(
    app: Celery,
    workflow_id: str,
    *,
    queue: str = ORCHESTRATION_QUEUE,
    orchestrate_task: str = ORCHESTRATE_TASK,
) -> str:
    """Ask the orchestrator to run a failed workflow again from the step that failed."""
    return _control(app, workflow_id, {"kind": "retry"}, queue, orchestrate_task)


class _SkipPublishOnlyQueues(bootsteps.Step):
    """Keep a peer worker off the queues it only publishes to.

    `celery worker` without `-Q` consumes every queue in `task_queues`; a builder doing
    so would take (and reject) the orchestrator's own messages. Runs after the worker
    selected its queues and before the consumer starts.
    """

    name = "workflow_orchestrator.worker_api.SkipPublishOnlyQueues"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        parent.app.amqp.queues.deselect(list(parent.app.conf.get(PUBLISH_ONLY_SETTING) or ()))


def worker_app(
    name: str,
    broker_url: str,
    *,
    queues: Sequence[str] = (),
    orchestration_queue: str = ORCHESTRATION_QUEUE,
    orchestrate_task: str = ORCHESTRATE_TASK,
    broker_id: str | int | None = None,
    manager: ManagerClient | None = None,
    report_patience: float = REPORT_PATIENCE_SECONDS,
) -> Celery:
    """A Celery app for a peer worker that reports back to the orchestrator.

    With `broker_id` (this worker's broker in the Manager's registry) and a `manager`
    client, reports and chats go to the broker the request's routing fields name
    when it is another one (`workflow_orchestration_broker_id`,
    `notifications_broker_id`), reached as the Manager describes it.

    JSON only (the bus is shared), at-least-once (acks late, prefetch 1, confirmed
    publishes), its own `queues` as plain durable queues, and the orchestration queue
    declared as any Celery client declares it; that queue is never consumed by this
    worker. The app uses `broker_url` whatever CELERY_BROKER_URL says. A report no
    broker takes is tried again for `report_patience` seconds, then its request goes
    back to its queue (`ReportNotSent`).
    """
    if isinstance(queues, str):
        raise TypeError("queues must be a list of queue names, not a string")
    if not report_patience >= 0:
        raise ValueError(f"report_patience must be 0 or more seconds, got {report_patience!r}")
    own = [plain_queue(q) for q in queues]
    settings: dict[str, Any] = {
        # Celery prefers CELERY_BROKER_URL over broker_url; the read/write URLs win.
        "broker_url": broker_url,
        "broker_read_url": broker_url,
        "broker_write_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"confirm_publish": True},
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_queues": [*own, plain_queue(orchestration_queue)],
        "task_routes": {orchestrate_task: {"queue": orchestration_queue}},
        PUBLISH_ONLY_SETTING: [orchestration_queue],
        REPORT_PATIENCE_SETTING: float(report_patience),
    }
    if own:
        settings["task_default_queue"] = own[0].name
    app = Celery(name)
    app.conf.update(settings)
    app.steps["worker"].add(_SkipPublishOnlyQueues)
    if (broker_id is None) != (manager is None):
        raise ValueError("broker_id and manager go together")
    if broker_id is not None and manager is not None:
        setattr(app, ROUTING_ATTRIBUTE, WorkerRouting(app, broker_id, manager))
    return app
