"""One exception hierarchy for the whole package.

Callers decide between "retry later" and "give up and tell a person" by the class
alone, so every boundary (Manager, broker, payload) maps its failures onto these.
Messages name the call and the status, never a credential.
"""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    """Base of every error this package raises on purpose."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (a prefork child hands a task's exception to its parent so) would call
        # the class with the message alone, which the subclasses' constructors refuse:
        # rebuild from the message and the attributes instead.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[OrchestratorError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls, *args)  # BaseException.__new__ sets `args`
    error.__dict__.update(state)
    return error


class SettingsError(OrchestratorError):
    """A required setting is missing or malformed; the worker must not start."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        self.problem = problem
        super().__init__(f"setting {name}: {problem}")


class InvalidRequest(OrchestratorError):
    """The orchestration payload cannot be processed; it is dead-lettered."""

    def __init__(self, field: str | None, problem: str) -> None:
        self.field = field
        self.problem = problem
        where = f"field '{field}'" if field else "payload"
        super().__init__(f"invalid orchestration request: {where} {problem}")


class ManagerError(OrchestratorError):
    """A call to the Manager failed. `call` is e.g. ``GET /workflows/{id}``."""

    def __init__(self, call: str, status: int | None, detail: str = "") -> None:
        self.call = call
        self.status = status
        self.detail = detail
        answered = f"answered {status}" if status is not None else "failed"
        text = f"Manager call {call} {answered}"
        if detail:
            text += f": {detail}"
        super().__init__(text)


class ManagerTransientError(ManagerError):
    """Transport error, timeout, 5xx or 429: worth retrying with backoff."""


class CredentialsRejected(ManagerTransientError):
    """The token endpoint (or the Manager, with a fresh token) refused our client
    credentials. A configuration error, not a property of any message: refused at
    worker start; while running, messages are kept and retried until it is fixed."""

    def __str__(self) -> str:
        answered = f"answered {self.status}" if self.status is not None else "failed"
        detail = f": {self.detail}" if self.detail else ""
        return (
            "the Manager refused the orchestrator's client credentials; check the settings "
            f"OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET ({self.call} {answered}{detail})"
        )


class ManagerPermanentError(ManagerError):
    """Any other 4xx: retrying will not help."""


class ManagerNotFound(ManagerPermanentError):
    """404: the thing asked for does not exist."""


class PublishError(OrchestratorError):
    """The broker did not confirm a publish; transient, the message is kept."""
