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
