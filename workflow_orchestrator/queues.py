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
