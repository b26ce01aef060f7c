"""Publishing a Celery task to a ``brokers.Route``: pooled connections, confirms, failover.

A worker request for another exchange goes to that exchange's broker (docs/behaviour.md §5.1).
The own broker is the Celery app's own producer pool (its connections, its
``broker_transport_options``, its retry policy): nothing changes for the default case.
Every other broker gets a small bounded pool of kombu connections per URL, in confirm
mode, reused across tasks.

Failover is per publish: the route's endpoints are tried in order, and an endpoint fails
when no connection can be made within ``connect_timeout``, when the broker refuses the
declaration, or when it does not confirm (nack, or no confirm within
``confirm_timeout``). A pooled connection found dead costs one reconnect, not the
request. When no endpoint works, ``PublishError`` (transient: the task retries it).

The confirm timeout is the connection's read timeout (py-amqp's ``read_timeout``, the
socket's ``SO_RCVTIMEO``, set once when it connects): a publish's ``confirm_timeout``
would switch the socket to timeout mode and back around every confirm, 4 system calls
per publish, each a hand-over of the GIL among the pool's threads. The own broker's
connections take it from ``broker_transport_options`` (celeryconfig.py); an app
without one gets ``confirm_timeout`` on each publish instead.

Passwords: endpoint URLs are used only to connect. Logs and errors name an endpoint by
``broker {id} host:port/vhost``, and exception texts are scrubbed before they are shown.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from amqp.exceptions import MessageNacked
from celery import Celery
from kombu import Connection, Producer, Queue
from kombu.exceptions import SerializationError
from kombu.utils.url import url_to_parts

from .brokers import Endpoint, Route
from .errors import PublishError
from .metrics import NullMetrics, OrchestratorMetrics
from .queues import worker_queue

logger = logging.getLogger("workflow_orchestrator.broker_pool")

#: Retries of a publish on the own broker (kombu reconnects in between).
OWN_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5}

#: Errors that no other broker would avoid: raised as they are, never failed over.
_NOT_BROKER_ERRORS = (SerializationError, TypeError)
#: The `kwargsrepr` of a task sent with no keyword arguments: what Celery's saferepr of
#: them gives, passed so that Celery does not work it out per publish.
NO_KWARGS_REPR = "{}"


class PoolExhausted(PublishError):
    """Every pooled connection to one broker stayed busy for ``acquire_timeout``."""


def _secrets(url: str) -> list[str]:
    """The passwords of a (possibly ``;``-separated) broker URL, raw and URL-quoted."""
    found: list[str] = []
    for part in url.split(";"):
        try:
            password = url_to_parts(part.strip()).password
        except Exception:  # noqa: BLE001 - an unparsable URL has nothing we can find
            continue
        if password:
            found.append(password)
            found.append(part.split("@", 1)[0].rsplit(":", 1)[-1])
    return [s for s in found if s]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def describe_failure(exc: BaseException, secrets: list[str]) -> str:
    """One line saying why a publish failed, with no password in it."""
    if isinstance(exc, MessageNacked):
        return "not confirmed (the broker nacked it)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "no confirm or answer in time"
    detail = " ".join(_scrub(str(exc), secrets).split())
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def publish_failure(exc: BaseException, url: str) -> str:
    """Why a publish to the broker at `url` failed, with none of its passwords."""
    return describe_failure(exc, _secrets(url))


class _UrlPool:
    """At most ``limit`` connections to one URL, each used by one thread at a time."""

    def __init__(
        self, endpoint: Endpoint, limit: int, connect_timeout: float, confirm_timeout: float
    ) -> None:
        self.display = endpoint.display.split(" ", 2)[-1]
        self._url = endpoint.url
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self._slots = threading.BoundedSemaphore(limit)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Connections established (first connects and reconnects) over the pool's life.
        self.opened = 0

    def __repr__(self) -> str:
        return f"_UrlPool({self.display!r}, limit={self.limit})"

    def _new(self) -> Connection:
        return Connection(
            self._url,
            connect_timeout=self.connect_timeout,
            heartbeat=0,
            transport_options={"confirm_publish": True, "read_timeout": self.confirm_timeout},
        )

    @contextlib.contextmanager
    def connection(self, acquire_timeout: float) -> Iterator[Connection]:
        """A pooled connection (maybe not connected yet), returned to the pool after."""
        if not self._slots.acquire(timeout=acquire_timeout):
            raise PoolExhausted(f"all {self.limit} connections to {self.display} stayed busy")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._new()
            try:
                yield conn
            finally:
                with self._lock:
                    keep = not self._closed
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.collect()
        finally:
            self._slots.release()

    def connect(self, conn: Connection) -> None:
        """Connect if needed: one attempt, bounded by ``connect_timeout``."""
        if conn.connected:
            return
        conn.ensure_connection(max_retries=0, timeout=self.connect_timeout)
        with self._lock:
            self.opened += 1

    def open_connections(self) -> int:
        """Idle connections that are connected now (busy ones are not counted)."""
        with self._lock:
            return sum(1 for conn in self._idle if conn.connected)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may fail
                conn.collect()


class BrokerPublisher:
    """Publishes Celery tasks by name to the endpoints of a route, in order.

    One instance per worker process, shared by its threads. ``queue_arguments`` is the
    ``WORKER_QUEUE_ARGUMENTS`` mode (``"none"`` or ``"openaperture"``) of the target
    queues; ``on_broker_failure`` is called with the broker id of every endpoint that
    failed (``BrokerResolver.forget_broker``, so its Manager records are asked again).
    """

    def __init__(
        self,
        app: Celery,
        *,
        queue_arguments: str = "none",
        pool_limit: int = 4,
        connect_timeout: float = 3.0,
        confirm_timeout: float = 10.0,
        acquire_timeout: float = 10.0,
        own_retry_policy: dict[str, Any] | None = None,
        on_broker_failure: Callable[[str], None] | None = None,
        metrics: OrchestratorMetrics | None = None,
    ) -> None:
        if pool_limit < 1:
            raise ValueError("pool_limit must be at least 1")
        worker_queue("check", queue_arguments)  # an unknown mode fails here, not later
        self.app = app
        self.queue_arguments = queue_arguments
        self.pool_limit = pool_limit
        self.connect_timeout = connect_timeout
        self.confirm_timeout = confirm_timeout
        self.acquire_timeout = acquire_timeout
        self.own_retry_policy = dict(own_retry_policy or OWN_RETRY_POLICY)
        self.on_broker_failure = on_broker_failure
        self.metrics: OrchestratorMetrics = metrics or NullMetrics()
        self._pools: dict[str, _UrlPool] = {}
        self._lock = threading.Lock()
        #: The kombu queue of each (name, mode) published to, built once: a publish only
        #: reads it (binding to a channel makes a copy), and building one costs a
        #: `Queue` and an `Exchange` per publish, 4.67 publishes per transition.
        self._queues: dict[tuple[str, str], Queue] = {}
        #: Whether the own broker's connections carry the confirm timeout as their read
        #: timeout (`broker_transport_options`), read once instead of on every publish.
        self._own_read_timeout: bool | None = None

    def __repr__(self) -> str:
        return f"BrokerPublisher(brokers={len(self._pools)}, pool_limit={self.pool_limit})"

    def queue(self, name: str, mode: str) -> Queue:
        """The declaration of queue `name` in `mode` (`queues.worker_queue`), cached."""
        key = (name, mode)
        queue = self._queues.get(key)
        if queue is None:  # two threads may both build it: the same value, one kept
            queue = self._queues.setdefault(key, worker_queue(name, mode))
        return queue

    def publish(
        self,
        route: Route,
        task: str,
        queue: str,
        payload: dict[str, Any],
        *,
        task_id: str,
        argsrepr: str | None = None,
        countdown: float | None = None,
        queue_arguments: str | None = None,
    ) -> Endpoint:
        """Send ``task(payload)`` to ``queue`` on the first endpoint that confirms it.

        Returns that endpoint. Raises ``PublishError`` naming every endpoint tried and
        why it failed when none confirmed. ``queue_arguments`` overrides the mode for
        this queue (the orchestrator's own queue is always plain).
        """
        if argsrepr is None:  # never Celery's default: the whole payload, in Flower
            argsrepr = f"workflow={payload.get('id')} step={payload.get('current_step')}"
        message = {
            "args": [payload],
            "queue": self.queue(queue, queue_arguments or self.queue_arguments),
            "task_id": task_id,
            "argsrepr": argsrepr,
            # What Celery would show for no keyword arguments, without its saferepr of
            # them (7.6 us a publish, alone).
            "kwargsrepr": NO_KWARGS_REPR,
            "countdown": countdown,
        }
        failures: list[str] = []
        for endpoint in route.endpoints:
            started = time.perf_counter()
            try:
                if endpoint.own:
                    self._publish_own(task, message)
                else:
                    self._publish_remote(endpoint, task, message)
            except _NOT_BROKER_ERRORS:
                raise
            except Exception as exc:  # noqa: BLE001 - any broker failure: try the next one
                reason = describe_failure(exc, _secrets(endpoint.url) + self._own_secrets())
                failures.append(f"{endpoint.display}: {reason}")
                logger.warning(
                    "publishing %s (task id %s) to %s failed: %s",
                    task,
                    task_id,
                    endpoint.display,
                    reason,
                )
                if self.on_broker_failure is not None and not endpoint.own:
                    self.on_broker_failure(endpoint.broker_id)
                continue
            self.metrics.publish(endpoint.broker_id, time.perf_counter() - started)
            if failures:
                logger.warning(
                    "published %s (task id %s) to failover %s", task, task_id, endpoint.display
                )
            else:
                logger.debug("published %s (task id %s) to %s", task, task_id, endpoint.display)
            return endpoint
        tried = "; ".join(failures) or "the route has no endpoint"
        raise PublishError(
            f"publishing {task} (task id {task_id}) to queue {queue} failed on "
            f"broker {route.broker_id} and its failover: {tried}"
        ) from None

    def opened(self, endpoint: Endpoint) -> int:
        """Connections made to an endpoint's URL so far (0 for the own broker)."""
        with self._lock:
            pool = self._pools.get(endpoint.url)
        return pool.opened if pool is not None else 0

    def open_connections(self, endpoint: Endpoint) -> int:
        """Idle pooled connections to an endpoint's URL that are connected now."""
        with self._lock:
            pool = self._pools.get(endpoint.url)
        return pool.open_connections() if pool is not None else 0

    def close(self) -> None:
        """Close every pooled connection (at worker shutdown)."""
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    # -- internals ---------------------------------------------------------------------

    def _own_secrets(self) -> list[str]:
        return _secrets(str(self.app.conf.broker_url or ""))

    def _pool(self, endpoint: Endpoint) -> _UrlPool:
        with self._lock:
            pool = self._pools.get(endpoint.url)
            if pool is None:
                pool = _UrlPool(
                    endpoint, self.pool_limit, self.connect_timeout, self.confirm_timeout
                )
                self._pools[endpoint.url] = pool
            return pool

    def _publish_own(self, task: str, message: dict[str, Any]) -> None:
        """The app's own pool; confirms come from its ``broker_transport_options``."""
        if self._own_read_timeout is None:
            options = self.app.conf.broker_transport_options or {}
            self._own_read_timeout = bool(options.get("read_timeout"))
        if not self._own_read_timeout:
            message = {**message, "confirm_timeout": self.confirm_timeout}
        self.app.send_task(task, retry=True, retry_policy=self.own_retry_policy, **message)

    def _publish_remote(self, endpoint: Endpoint, task: str, message: dict[str, Any]) -> None:
        pool = self._pool(endpoint)
        with pool.connection(self.acquire_timeout) as conn:
            for attempt in (1, 2):
                reused = conn.connected
                try:
                    pool.connect(conn)
                    producer = Producer(conn.default_channel)
                    self.app.send_task(task, producer=producer, retry=False, **message)
                    return
                except _NOT_BROKER_ERRORS:
                    raise
                except Exception as exc:
                    conn.collect()  # a channel or connection in an unknown state: start over
                    if attempt == 1 and reused:
                        logger.info(
                            "pooled connection to %s was unusable (%s); reconnecting",
                            endpoint.display,
                            type(exc).__name__,
                        )
                        continue
                    raise
