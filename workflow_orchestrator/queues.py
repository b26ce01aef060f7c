"""Queue declarations shared by the worker, the callers and the emulator.

The orchestration queue must be declared with exactly the same arguments by every
party, or RabbitMQ refuses the second declaration (PRECONDITION_FAILED). Keeping it in
one function is what keeps them equal.
"""

from __future__ import annotations

from kombu import Exchange, Queue


def orchestration_queue(name: str = "workflow_orchestration", error_name: str = "") -> Queue:
    """The durable orchestration queue that dead-letters to its error queue."""
    error_name = error_name or f"{name}_error"
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": error_name,
        },
    )


def error_queue(name: str = "workflow_orchestration_error") -> Queue:
    """Where rejected orchestration messages land (via the default exchange)."""
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


#: ``WORKER_QUEUE_ARGUMENTS`` modes: how worker and notification queues are declared.
WORKER_QUEUE_MODES = ("none", "openaperture")


def worker_queue(name: str, arguments: str = "none") -> Queue:
    """A builder/deployer/notification queue, declared as its consumers declare it.

    ``"none"`` is what Celery declares for any routed queue (durable, bound to the
    durable direct exchange of the same name, no arguments), so a plain Celery worker
    matches it. ``"openaperture"`` is OpenAperture's own declaration
    (``x-dead-letter-exchange ""``, ``x-dead-letter-routing-key {name}_error``), for a
    broker whose queues OpenAperture's modules already declared: RabbitMQ refuses a
    second declaration with other arguments (PRECONDITION_FAILED).
    """
    if arguments not in WORKER_QUEUE_MODES:
        raise ValueError(
            f"worker queue arguments must be one of {WORKER_QUEUE_MODES}, not {arguments!r}"
        )
    queue_arguments = None
    if arguments == "openaperture":
        queue_arguments = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}_error",
        }
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments=queue_arguments,
    )
