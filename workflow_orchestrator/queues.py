"""Queue declarations shared by the worker, the callers and the emulator.

RabbitMQ refuses a second declaration of a queue with other arguments
(PRECONDITION_FAILED), and every Celery client declares the queue it publishes to. So
the orchestration queue and its error queue are declared exactly as a vanilla
`send_task(..., queue=name)` declares them: durable, bound to the durable direct
exchange of the same name with the same routing key, and no x-arguments. Dead-lettering
is the orchestrator's own act (`dead_letters.py`), never a broker argument.
"""

from __future__ import annotations

from kombu import Exchange, Queue


def plain_queue(name: str) -> Queue:
    """A queue as Celery declares any routed queue of that name."""
    return Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True)


def orchestration_queue(name: str = "workflow_orchestration") -> Queue:
    """The queue the orchestrator consumes; any caller may declare it the Celery way."""
    return plain_queue(name)


def error_queue(name: str = "workflow_orchestration_error") -> Queue:
    """Where dead-lettered orchestration messages are kept for an operator."""
    return plain_queue(name)


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
    if arguments == "none":
        return plain_queue(name)
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{name}_error",
        },
    )


def wait_queue(target: str, seconds: int) -> Queue:
    """Where the broker keeps a deadline message for `seconds`, then dead-letters it
    back to `target`: RabbitMQ expires messages only at a queue's head, so each wait
    length has a queue of its own (`{target}.wait.{seconds}s`, nobody consumes it)."""
    return Queue(
        f"{target}.wait.{seconds}s",
        Exchange(""),
        routing_key=f"{target}.wait.{seconds}s",
        durable=True,
        queue_arguments={
            "x-message-ttl": int(seconds) * 1000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": target,
        },
    )


def wait_lengths(longest: float) -> list[int]:
    """Every wait a deadline can take when none exceeds `longest` seconds
    (SCHEDULE_POLL_SECONDS): the powers of two up to it, at least 1."""
    lengths, seconds = [], 1
    while True:
        lengths.append(seconds)
        if seconds * 2 > max(1, longest):
            return lengths
        seconds *= 2


def wait_queue_names(target: str, longest: float) -> list[str]:
    """The wait queues of `target` that a deadline can use (to delete them, say)."""
    return [wait_queue(target, seconds).name for seconds in wait_lengths(longest)]
