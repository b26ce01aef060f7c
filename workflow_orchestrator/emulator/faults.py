"""Switchable misbehaviour of the Manager emulator: fail, be slow, drop connections.

Tests and the demo rehearse a Manager outage with these; the token endpoint is spared
unless asked, since a real outage of the Manager need not take the auth server down.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """What to do with one request before it reaches a route."""

    latency: float
    drop: bool
    fail_status: int | None


class Faults:
    """Thread-safe fault switches; every switch ends by itself or with ``reset()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail_until = 0.0
        self._fail_status = 503
        self._fail_token = False
        self._drop_until = 0.0
        self._drop_token = False
        self._latency = 0.0
        self._fail_next: dict[str, tuple[int, int]] = {}

    def fail_next(self, call: str, count: int, status: int = 500) -> None:
        """Answer the next ``count`` calls ``call`` (e.g. ``PUT /workflows/{id}``) with ``status``."""
        with self._lock:
            self._fail_next[call] = (int(count), int(status))

    def fail_for(self, seconds: float, status: int = 503, *, include_token: bool = False) -> None:
        """Answer every API call (the token endpoint too if asked) with ``status`` for a while."""
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_status = int(status)
            self._fail_token = include_token

    def set_latency(self, seconds: float) -> None:
        """Sleep this long before answering any API call (0 turns it off)."""
        with self._lock:
            self._latency = max(0.0, float(seconds))

    def drop_connections_for(self, seconds: float, *, include_token: bool = False) -> None:
        """Close the socket without answering, for a while."""
        with self._lock:
            self._drop_until = time.monotonic() + seconds
            self._drop_token = include_token

    def reset(self) -> None:
        """Behave again."""
        with self._lock:
            self._fail_until = self._drop_until = self._latency = 0.0
            self._fail_status = 503
            self._fail_token = self._drop_token = False
            self._fail_next.clear()

    def verdict(self, is_token: bool, call: str = "") -> Verdict:
        """The faults that apply to a request now (``is_token``: the token endpoint;
        ``call``: its templated name, for ``fail_next``)."""
        with self._lock:
            now = time.monotonic()
            drop = now < self._drop_until and (self._drop_token or not is_token)
            fail = now < self._fail_until and (self._fail_token or not is_token)
            status = self._fail_status if fail else None
            left, next_status = self._fail_next.get(call, (0, 0))
            if status is None and left > 0:
                self._fail_next[call] = (left - 1, next_status)
                status = next_status
            return Verdict(self._latency, drop, status)

    def snapshot(self) -> dict[str, Any]:
        """The switches as ``/_emulator/faults`` shows them."""
        with self._lock:
            now = time.monotonic()
            return {
                "fail_for": max(0.0, self._fail_until - now),
                "status": self._fail_status,
                "drop_for": max(0.0, self._drop_until - now),
                "latency": self._latency,
            }
