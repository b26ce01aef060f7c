"""Celery settings of the orchestrator worker (docs/design.md "Celery settings that matter").

Loaded by `workflow_orchestrator.celery_app`. Only what Celery needs to connect and
route is read here; the orchestrator's own settings are validated at worker start.
"""

from celery.app.defaults import NAMESPACES as _DEFAULTS
from decouple import config

from workflow_orchestrator.queues import orchestration_queue

broker_url = config("CELERY_BROKER_URL", default="amqp://guest:guest@localhost:5672//")

_queue = config("QUEUE_NAME", default="workflow_orchestration")
_error_queue = config("ERROR_QUEUE_NAME", default="") or f"{_queue}_error"
_orchestrate = config("ORCHESTRATE_TASK", default="workflow_orchestrator.orchestrate")

# Only the orchestration queue is consumed; the error queue is declared by a consumer
# step (celery_app.DeclareErrorQueue) so a plain `celery worker` never eats it.
task_queues = (orchestration_queue(_queue, _error_queue),)
task_default_queue = _queue
task_routes = {_orchestrate: {"queue": _queue}}
task_create_missing_queues = True

# At least once: ack after the transition, redeliver if the worker dies mid-task.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# A failure that escapes the task is rejected (dead-lettered), never acked and lost.
if "acks_on_failure" in _DEFAULTS["task"]:  # Celery 5.7 split the setting in two
    task_acks_on_failure = False
    task_acks_on_timeout = False
else:
    task_acks_on_failure_or_timeout = False
# On a lost broker connection stop the running transitions: their messages come back.
worker_cancel_long_running_tasks_on_connection_loss = True

# JSON only: the bus is shared with other teams' workers.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
event_serializer = "json"

# Every publish waits for the broker's confirm.
broker_transport_options = {"confirm_publish": True}
broker_connection_retry_on_startup = True
broker_heartbeat = 30

# Nobody waits for results; state lives in the Manager.
task_ignore_result = True
result_backend = None

# Flower: every orchestrate task shows up through the worker's task events. No
# `task-sent` events: each is a second confirmed publish per send_task (3.3 per
# transition, through Celery's app-wide event dispatcher and its mutex) for a state
# the receiving worker's own events replace; bench/compare.py: +29% transitions/s.
worker_send_task_events = True
task_send_sent_event = False
task_track_started = True

# Undecodable bodies are dead-lettered, not acked and dropped (docs/behaviour.md §9).
worker_consumer = "workflow_orchestrator.consumer:DeadLetteringConsumer"
worker_hijack_root_logger = True
worker_redirect_stdouts = False
