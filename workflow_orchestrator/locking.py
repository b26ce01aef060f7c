"""Per-workflow mutual exclusion around load-transition-save.

Two messages of one workflow must never interleave their load-transition-save, or one
transition silently overwrites the other. The worker may run the threads pool (many
threads in one process) or prefork (many processes), on one host or on many, so there
are two implementations behind one protocol:

* `FileLocks`: ``fcntl.flock`` on one file per workflow. It excludes threads and
  processes of one host, and the kernel frees it when its holder dies.
* `RedisLocks`: a redis-py ``Lock`` with an expiry. It excludes workers on any host;
  the expiry is what frees the lock of a dead holder.

Neither lock is re-entrant: holding a workflow's lock and asking for it again, even
from the same thread, waits and ends in `LockTimeout`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol
from urllib.parse import urlsplit

from .errors import OrchestratorError
from .settings import Settings, redact_url

log = logging.getLogger(__name__)

REDIS_KEY_PREFIX = "workflow-orchestrator:lock:"
REDIS_DELIVERY_PREFIX = "workflow-orchestrator:deliveries:"
REDIS_TIME_PREFIX = "workflow-orchestrator:transition-time:"
#: `workflow-orchestrator:memory:{name}:{workflow id}`: what `remember` keeps.
REDIS_MEMORY_PREFIX = "workflow-orchestrator:memory:"
#: How long a redelivery count, and a workflow's memory, is remembered.
DELIVERY_MEMORY_SECONDS = 86400.0
#: Memories kept longer than a day: the record of a workflow's last dispatch, which an
#: operator's retry of a workflow that failed days ago needs (its `notifications_config`
#: and durations, which the Manager does not store).
MEMORY_SECONDS: Mapping[str, float] = {"dispatch": 7 * 86400.0}
#: A lock file unwritten this long holds nothing anybody needs: the sweep removes it.
LOCK_FILE_SECONDS = max(DELIVERY_MEMORY_SECONDS, *MEMORY_SECONDS.values())
#: A holder whose lock file holds a memory written this recently knows no sweep can
#: have removed the file (a sweep removes only files unwritten for LOCK_FILE_SECONDS,
#: at least a day): the hour spares that check a clock read late by the sweep.
_SURELY_KEPT_SECONDS = DELIVERY_MEMORY_SECONDS - 3600.0
#: Directory entries a sweep looks at before it pauses (`_SWEEP_PAUSE` seconds), so a
#: lock directory of millions of files never takes the pool threads' GIL for long.
_SWEEP_BATCH = 500
_SWEEP_PAUSE = 0.05

_FIRST_SLEEP = 0.002
_MAX_SLEEP = 0.05
_BACKOFF = 1.5
_HUMAN_PREFIX_LEN = 40
#: Bytes asked for by each read of a lock file (one read unless it holds more).
_READ_SIZE = 16384
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
#: The memories' codec, built once (stateless): `json.dumps` with separators and a new
#: `JSONDecoder` built a codec for every read and write, 3.7 per transition.
_DECODER = json.JSONDecoder()
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def memory_lifetime(name: str) -> float:
    """Seconds a memory called `name` is remembered, by the files and by Redis alike."""
    return MEMORY_SECONDS.get(name, DELIVERY_MEMORY_SECONDS)


class LockTimeout(OrchestratorError):
    """The workflow's lock stayed taken for `wait` seconds; the caller retries the task."""

    def __init__(self, workflow_id: str, wait: float) -> None:
        self.workflow_id = workflow_id
        self.wait = wait
        super().__init__(f"could not lock workflow {workflow_id!r} within {wait:g} s")


class LockUnavailable(OrchestratorError):
    """The lock backend itself failed (Redis unreachable, lock dir unusable): transient."""

    def __init__(self, workflow_id: str, problem: str) -> None:
        self.workflow_id = workflow_id
        self.problem = problem
        super().__init__(f"could not lock workflow {workflow_id!r}: {problem}")


class WorkflowLocks(Protocol):
    """What the orchestration task needs: an exclusive hold on one workflow, and a
    count of how often a message came back (to bound a message that kills its worker)."""

    def hold(self, workflow_id: str) -> AbstractContextManager[None]:
        """Block up to the configured wait for the lock; release it on exit."""
        ...

    def count_delivery(self, message_id: str) -> int:
        """Add one redelivery of this message; return how many were counted so far."""
        ...

    def forget_deliveries(self, message_id: str) -> None:
        """Drop the redeliveries counted for this message (a replay starts it afresh)."""
        ...

    def transition_time(self, workflow_id: str, state: str, now: str) -> str:
        """The time first used to transition this workflow from stored `state`, or `now`
        (remembered) if none was. Called while holding the workflow's lock."""
        ...

    def recall(self, workflow_id: str, name: str) -> str | None:
        """What was remembered under `name` for this workflow, or None: forgotten after
        a day (`MEMORY_SECONDS` names those kept longer)."""
        ...

    def remember(self, workflow_id: str, memories: Mapping[str, str]) -> None:
        """Keep each value under its name for this workflow, in one write; called
        holding its lock."""
        ...

    def sweep(self) -> int:
        """Remove what no workflow needs any more (everything it keeps is forgotten and
        nobody holds it); return how many entries went."""
        ...


def lock_file_name(workflow_id: str) -> str:
    """A file name safe for ANY id: a sanitised prefix for humans plus the id's sha256.

    The hash alone makes names unique and free of ``/``, ``..``, NUL and length
    problems; the prefix (only ``[A-Za-z0-9_-]``) just helps a person browsing the dir.
    """
    digest = hashlib.sha256(workflow_id.encode("utf-8", "surrogatepass")).hexdigest()
    prefix = _UNSAFE.sub("_", workflow_id)[:_HUMAN_PREFIX_LEN]
    return f"{prefix}-{digest}.lock" if prefix else f"{digest}.lock"


def _read_all(fd: int) -> bytes:
    """The whole content of an open file, read from its start. No fstat to size the
    read first: one read takes any file shorter than `_READ_SIZE` (a lock file's
    memories are a few hundred bytes), and a short read is the end of the file."""
    chunks = []
    offset = 0
    while True:
        chunk = os.pread(fd, _READ_SIZE, offset)
        chunks.append(chunk)
        offset += len(chunk)
        if len(chunk) < _READ_SIZE:
            return b"".join(chunks)


def _write_over(fd: int, data: bytes, old_size: int) -> int:
    """Replace an open file's content of `old_size` bytes with `data`, padded with
    spaces to the old size: written over in place, never cut, so the file is never
    seen empty and a write costs one call (plain os calls: a Python file object per
    small read or write costs several more). Returns the size written."""
    if old_size > len(data):
        data += b" " * (old_size - len(data))
    offset = 0
    while offset < len(data):
        offset += os.pwrite(fd, data[offset:], offset)
    return len(data)


def _read_memories(fd: int, workflow_id: str, path: str) -> tuple[dict[str, Any], int]:
    """The memories a lock file holds (a JSON object of `name: [value, written at]`) and
    its size. Anything after the object is ignored: the padding of a shorter object
    written over a longer one, or a tail left by a version that cut the file."""
    try:
        raw = _read_all(fd)
    except OSError as exc:
        raise LockUnavailable(workflow_id, f"cannot read {path}: {exc}") from exc
    try:
        value, _ = _DECODER.raw_decode(raw.decode("ascii"))
    except ValueError:  # empty (a lock file never written), or not ours
        return {}, len(raw)
    return (value if isinstance(value, dict) else {}), len(raw)


def _written_at(entry: Any) -> float | None:
    """When a memory of a lock file (`[value, written at]`) was written; None when the
    entry is not one (a file not ours, or torn)."""
    if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str):
        written = entry[1]
        if isinstance(written, (int, float)):
            return written
    return None


class _HeldFile:
    """A held lock file and the memories read from it when the lock was taken.

    Every memory of a workflow lives in its lock file, read once per hold and written
    through on each change: one open and one read per transition instead of an open,
    fstat, read and close per memory file."""

    def __init__(self, fd: int, memories: dict[str, Any], size: int) -> None:
        self.fd = fd
        self.memories = memories
        self.size = size

    def written_since(self, since: float) -> bool:
        """Whether any memory in the file was written after `since` (epoch seconds)."""
        for entry in self.memories.values():
            written = _written_at(entry)
            if written is not None and written > since:
                return True
        return False

    def fresh(self, name: str) -> str | None:
        """The memory `name` unless forgotten (a day, or its `MEMORY_SECONDS`), else None."""
        entry = self.memories.get(name)
        written = _written_at(entry)
        if written is None or time.time() - written >= memory_lifetime(name):
            return None
        return entry[0]

    def keep(self, workflow_id: str, memories: Mapping[str, str]) -> None:
        written = round(time.time(), 3)
        for name, value in memories.items():
            self.memories[name] = [value, written]
        data = _ENCODER.encode(self.memories).encode("ascii")
        try:
            self.size = _write_over(self.fd, data, self.size)
        except OSError as exc:
            raise LockUnavailable(workflow_id, f"cannot write its lock file: {exc}") from exc


def _linked(fd: int, workflow_id: str = "") -> bool:
    """Whether an open file still has a name (a sweep has not unlinked it)."""
    try:
        return os.fstat(fd).st_nlink > 0
    except OSError as exc:
        raise LockUnavailable(workflow_id, f"cannot check its lock file: {exc}") from exc


def _sweep_directory(directory: str, cutoff: float) -> int:
    """Remove the files of `directory` last written before `cutoff` that nobody holds."""
    removed = 0
    try:
        entries = os.scandir(directory)
    except FileNotFoundError:
        return 0
    with entries:
        for seen, entry in enumerate(entries, 1):
            if seen % _SWEEP_BATCH == 0:
                time.sleep(_SWEEP_PAUSE)
            if entry.name.endswith(".lock") and _sweep_file(entry.path, cutoff):
                removed += 1
    return removed


def _sweep_file(path: str, cutoff: float) -> bool:
    """Remove one file if it was last written before `cutoff`, holding its lock."""
    try:
        if os.stat(path, follow_symlinks=False).st_mtime >= cutoff:
            return False
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError:  # gone meanwhile, or not a file of ours
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: in use
        status = os.fstat(fd)
        if status.st_nlink == 0 or status.st_mtime >= cutoff:
            return False  # another sweep removed it first, or it was written meanwhile
        if _HeldFile(fd, *_read_memories(fd, "", path)).written_since(cutoff):
            return False  # a memory newer than the file's time (a restored copy?): kept
        os.unlink(path)  # still the file at `path`: nobody unlinks one without its lock
        return True
    except (OSError, LockUnavailable):
        return False
    finally:
        os.close(fd)


class _AlreadyHeld:
    """A lock file this thread holds already, as a context manager that does nothing."""

    __slots__ = ("held",)

    def __init__(self, held: _HeldFile) -> None:
        self.held = held

    def __enter__(self) -> _HeldFile:
        return self.held

    def __exit__(self, *_: object) -> None:
        return None


class FileLocks:
    """``fcntl.flock`` locks under `directory`: threads and processes of one host.

    flock (not lockf/fcntl record locks, which belong to the process and so never
    exclude two threads of it) is attached to the open file description; each
    acquisition opens the file anew, so two threads of one process exclude each other.
    The kernel drops the lock when the holder's descriptor closes, including when the
    holder dies: a dead holder never blocks a workflow. What the orchestrator remembers
    of a workflow (transition time, what was published, last dispatch) is kept in its
    lock file, read once when the lock is taken (`_HeldFile`).
    """

    def __init__(self, directory: str, wait: float) -> None:
        self.directory = directory
        self.wait = wait
        self._local = threading.local()
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def path_for(self, workflow_id: str) -> str:
        return os.path.join(self.directory, lock_file_name(workflow_id))

    def _open(self, path: str) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            # The directory vanished (a temp cleaner): recreate it once.
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            return os.open(path, flags, 0o600)

    @contextmanager
    def hold(self, workflow_id: str) -> Iterator[None]:
        path = self.path_for(workflow_id)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fd = self._open(path)
            except OSError as exc:
                raise LockUnavailable(workflow_id, f"cannot open lock file {path}: {exc}") from exc
            try:
                self._acquire(workflow_id, fd, deadline)
                held = _HeldFile(fd, *_read_memories(fd, workflow_id, path))
                recent = held.written_since(time.time() - _SURELY_KEPT_SECONDS)
                if recent or _linked(fd, workflow_id):
                    break
            except BaseException:
                os.close(fd)
                raise
            # A sweep removed the file between our open and our lock (it was unused for
            # LOCK_FILE_SECONDS): this lock guards nothing; the path's new file is the
            # one to take.
            os.close(fd)
        holding = self._holding()
        holding[workflow_id] = held
        try:
            yield
        finally:
            del holding[workflow_id]
            # Closing the only descriptor of the open file drops the flock (no LOCK_UN
            # call needed). The lock file is NOT deleted here: another acquirer may
            # already have opened this inode and would then lock a file nobody else can
            # find, while a third opens a fresh file at the same path -> two holders.
            # Only `sweep` deletes, days later, and `hold` checks for that case.
            os.close(fd)

    def _holding(self) -> dict[str, _HeldFile]:
        """The workflows this thread holds, with their open lock files."""
        holding = getattr(self._local, "holding", None)
        if holding is None:
            holding = self._local.holding = {}
        return holding

    def _held(self, workflow_id: str) -> AbstractContextManager[_HeldFile]:
        """The held lock file of `workflow_id`; taken for the call when not held yet.
        Held (the orchestration task's case) it is the file itself, without the
        generator a context manager of `contextlib` costs."""
        held = self._holding().get(workflow_id)
        return _AlreadyHeld(held) if held is not None else self._held_for_the_call(workflow_id)

    @contextmanager
    def _held_for_the_call(self, workflow_id: str) -> Iterator[_HeldFile]:
        with self.hold(workflow_id):
            yield self._holding()[workflow_id]

    def count_delivery(self, message_id: str) -> int:
        """A counter file per redelivered message, incremented under flock.

        Only redelivered messages get one, and a day-old file is stale, so the folder
        stays small; a crash-looping message is long dead-lettered by then.
        """
        path = self._delivery_path(message_id)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = self._open(path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            while not _linked(fd):  # swept meanwhile: count in the path's new file
                os.close(fd)
                fd = -1
                fd = self._open(path)
                fcntl.flock(fd, fcntl.LOCK_EX)
            stale = time.time() - os.fstat(fd).st_mtime > DELIVERY_MEMORY_SECONDS
            raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            count = 1 if stale or not raw.isdigit() else int(raw) + 1
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(count).encode(), 0)
            return count
        finally:
            if fd >= 0:
                os.close(fd)

    def _delivery_path(self, message_id: str) -> str:
        return os.path.join(self.directory, "deliveries", lock_file_name(message_id))

    def forget_deliveries(self, message_id: str) -> None:
        try:
            os.unlink(self._delivery_path(message_id))
        except FileNotFoundError:
            pass  # never redelivered, or a day old and swept

    def transition_time(self, workflow_id: str, state: str, now: str) -> str:
        """Kept in the lock file as the memory ``time``: `state now`."""
        with self._held(workflow_id) as held:
            remembered_state, _, remembered = (held.fresh("time") or "").partition(" ")
            if remembered_state == state and remembered:
                return remembered
            held.keep(workflow_id, {"time": f"{state} {now}"})
            return now

    def recall(self, workflow_id: str, name: str) -> str | None:
        with self._held(workflow_id) as held:
            return held.fresh(name)

    def remember(self, workflow_id: str, memories: Mapping[str, str]) -> None:
        with self._held(workflow_id) as held:
            held.keep(workflow_id, memories)

    def sweep(self, now: float | None = None) -> int:
        """Remove the lock files unwritten for `LOCK_FILE_SECONDS` (a week) and the
        redelivery counters unwritten for a day: what they keep is forgotten by then
        (`_HeldFile.fresh`), and without this a host would keep one file per workflow
        it ever ran. Returns how many went.

        Safe against every holder: a file is removed only while the sweep holds its
        lock, and only if it is still the file at its path (another sweep may have
        removed it first); a holder that locked a file it found unwritten for a day
        makes sure the file is still linked, or takes the path's new one (`hold`)."""
        now = time.time() if now is None else now
        removed = _sweep_directory(self.directory, now - LOCK_FILE_SECONDS)
        deliveries = os.path.join(self.directory, "deliveries")
        removed += _sweep_directory(deliveries, now - DELIVERY_MEMORY_SECONDS)
        if removed:
            log.info("removed %d lock files no longer needed from %s", removed, self.directory)
        return removed

    def _acquire(self, workflow_id: str, fd: int, deadline: float) -> None:
        """Poll with LOCK_NB (a blocking flock cannot time out) with a little backoff,
        until `deadline` (monotonic: `hold` gives one for all its attempts)."""
        delay = _FIRST_SLEEP
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockUnavailable(workflow_id, f"flock failed: {exc}") from exc
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockTimeout(workflow_id, self.wait)
            time.sleep(min(delay, remaining))
            delay = min(delay * _BACKOFF, _MAX_SLEEP)


class RedisLocks:
    """redis-py ``Lock`` per workflow: excludes workers on any number of hosts.

    `timeout` is the lock's expiry: it frees the lock of a holder that died (nothing
    else can), so it must exceed the longest load-transition-save. `wait` bounds how
    long an acquirer blocks before `LockTimeout`.
    """

    def __init__(self, url: str, timeout: float, wait: float, client: Any = None) -> None:
        self.url = url
        self.timeout = timeout
        self.wait = wait
        if client is None:
            import redis

            # Bounded socket timeouts, so an unreachable Redis is an error, not a hang.
            # Options in the URL's query string take precedence.
            client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        self.client = client

    def key_for(self, workflow_id: str) -> bytes:
        """``workflow-orchestrator:lock:{id}`` as bytes, so even ids with lone
        surrogates (valid in JSON) make a key instead of an encoding error."""
        return (REDIS_KEY_PREFIX + workflow_id).encode("utf-8", "surrogatepass")

    def _scrub(self, text: str) -> str:
        """Error text with the URL's password removed, whatever the client put in it."""
        try:
            password = urlsplit(self.url).password
        except ValueError:
            password = None
        return text.replace(password, "***") if password else text

    def _unavailable(self, key_id: str, exc: Exception) -> LockUnavailable:
        """A Redis failure as the error every lock call raises, without the password."""
        problem = f"Redis at {redact_url(self.url)} failed: {type(exc).__name__}: {exc}"
        return LockUnavailable(key_id, self._scrub(problem))

    def _delivery_key(self, message_id: str) -> bytes:
        return (REDIS_DELIVERY_PREFIX + message_id).encode("utf-8", "surrogatepass")

    def count_delivery(self, message_id: str) -> int:
        """INCR a per-message counter that expires after a day."""
        from redis.exceptions import RedisError

        key = self._delivery_key(message_id)
        try:
            pipe = self.client.pipeline()
            pipe.incr(key)
            pipe.expire(key, int(DELIVERY_MEMORY_SECONDS))
            count, _ = pipe.execute()
        except RedisError as exc:
            raise self._unavailable(message_id, exc) from None
        return int(count)

    def forget_deliveries(self, message_id: str) -> None:
        from redis.exceptions import RedisError

        try:
            self.client.delete(self._delivery_key(message_id))
        except RedisError as exc:
            raise self._unavailable(message_id, exc) from None

    def transition_time(self, workflow_id: str, state: str, now: str) -> str:
        from redis.exceptions import RedisError

        key = (REDIS_TIME_PREFIX + workflow_id).encode("utf-8", "surrogatepass")
        try:
            raw = self.client.get(key)
            if raw is not None:
                remembered_state, _, remembered = raw.decode().partition(" ")
                if remembered_state == state and remembered:
                    return remembered
            self.client.set(key, f"{state} {now}", ex=int(DELIVERY_MEMORY_SECONDS))
        except RedisError as exc:
            raise self._unavailable(workflow_id, exc) from None
        return now

    def _memory_key(self, workflow_id: str, name: str) -> bytes:
        return f"{REDIS_MEMORY_PREFIX}{name}:{workflow_id}".encode("utf-8", "surrogatepass")

    def recall(self, workflow_id: str, name: str) -> str | None:
        from redis.exceptions import RedisError

        try:
            raw = self.client.get(self._memory_key(workflow_id, name))
        except RedisError as exc:
            raise self._unavailable(workflow_id, exc) from None
        return None if raw is None else raw.decode("utf-8", "surrogatepass")

    def remember(self, workflow_id: str, memories: Mapping[str, str]) -> None:
        from redis.exceptions import RedisError

        try:
            with self.client.pipeline(transaction=False) as pipe:  # one round trip
                for name, value in memories.items():
                    pipe.set(
                        self._memory_key(workflow_id, name),
                        value.encode("utf-8", "surrogatepass"),
                        ex=int(memory_lifetime(name)),
                    )
                pipe.execute()
        except RedisError as exc:
            raise self._unavailable(workflow_id, exc) from None

    def sweep(self) -> int:
        """Nothing to do: every key this keeps expires by itself."""
        return 0

    @contextmanager
    def hold(self, workflow_id: str) -> Iterator[None]:
        from redis.exceptions import LockNotOwnedError, RedisError

        lock = self.client.lock(
            self.key_for(workflow_id),
            timeout=self.timeout,
            sleep=_MAX_SLEEP,
            blocking_timeout=self.wait,
            thread_local=False,
        )
        try:
            acquired = lock.acquire()
        except RedisError as exc:
            raise self._unavailable(workflow_id, exc) from None
        if not acquired:
            raise LockTimeout(workflow_id, self.wait)
        try:
            yield
        finally:
            try:
                lock.release()
            except LockNotOwnedError:
                log.warning(
                    "lock of workflow %r expired before release (held over %g s);"
                    " another worker may have entered meanwhile",
                    workflow_id,
                    self.timeout,
                )
            except RedisError as exc:
                # Raising here would mask the body's outcome; the expiry frees it anyway.
                log.warning(
                    "could not release lock of workflow %r (it expires within %g s): %s",
                    workflow_id,
                    self.timeout,
                    self._scrub(f"{type(exc).__name__}: {exc}"),
                )


def locks_from_settings(settings: Settings) -> WorkflowLocks:
    """Redis locks when LOCK_URL is set (many hosts), else file locks (one host)."""
    if settings.lock_url:
        return RedisLocks(settings.lock_url, settings.lock_timeout, settings.lock_wait)
    return FileLocks(settings.lock_dir, settings.lock_wait)
