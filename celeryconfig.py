"""Celery settings of the orchestrator worker that do not depend on its Settings.

`workflow_orchestrator.factory.create_app` loads this module, then adds what the
Settings decide (broker, queues, routes, task name). Nothing here reads the
environment: settings are read once, by `workflow_orchestrator.settings`.
"""

from celery.app.defaults import NAMESPACES as _DEFAULTS

task_create_missing_queues = True

# At least once: ack after the transition, redeliver if the worker dies mid-task.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# A failure that escapes the task is dead-lettered (consumer.OrchestrationRequest),
# never acked and lost.
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

# Every publish waits for the broker's confirm, at most 10 s: a blocking read of a
# connection's socket gives up then (py-amqp's read_timeout: SO_RCVTIMEO, set once per
# connection; a per-publish confirm_timeout switches the socket's mode around every
# confirm instead). The consumer reads without blocking, from the event loop.
broker_transport_options = {"confirm_publish": True, "read_timeout": 10.0}
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

worker_hijack_root_logger = True
worker_redirect_stdouts = False
