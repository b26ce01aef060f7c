"""Per-workflow locks with real files, real processes and a real Redis.

Every test asserts something that fails if exclusion breaks: exact counters after
racing read-modify-writes, a timeout while another holder keeps the lock, a dead
holder that stops blocking. Redis tests use the session's own Redis database (the
`redis_url` fixture, never db 0) and skip only when 127.0.0.1:6379 does not PING.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import age_lock_file
from workflow_orchestrator import locking
from workflow_orchestrator.errors import OrchestratorError
from workflow_orchestrator.locking import (
    FileLocks,
    LockTimeout,
    LockUnavailable,
    RedisLocks,
    WorkflowLocks,
    locks_from_settings,
)
from workflow_orchestrator.settings import Settings

WEIRD_IDS = [
    "a/b",
    "../../escape",
    "..",
    ".",
    "",
    "/etc/passwd",
    "ünïcødé-工作流-🙂",
    "x" * 500,
    "nul\x00byte",
    "new\nline\ttab",
    "C:\\windows\\con",
    "lone-surrogate-\ud800",
    "*?[]{}$`'\"",
]


DAY = 86400
WEEK = 7 * DAY


@pytest.fixture
def wf_id() -> str:
    return f"wf-{uuid.uuid4()}"


Spec = tuple[str, str, float, float]  # (kind, directory or URL, wait, timeout): picklable


def _make(spec: Spec) -> WorkflowLocks:
    kind, where, wait, timeout = spec
    if kind == "file":
        return FileLocks(where, wait)
    return RedisLocks(where, timeout=timeout, wait=wait)


@dataclass
class Backend:
    kind: str
    where: str

    def spec(self, wait: float, timeout: float = 10.0) -> Spec:
        return (self.kind, self.where, wait, timeout)

    def make(self, wait: float, timeout: float = 10.0) -> WorkflowLocks:
        return _make(self.spec(wait, timeout))


@pytest.fixture(params=["file", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path) -> Backend:
    if request.param == "file":
        return Backend("file", str(tmp_path / "locks"))
    return Backend("redis", request.getfixturevalue("redis_url"))


# --- helpers run in child processes (module level so they pickle) -------------------


def _count_in_file(locks: WorkflowLocks, workflow_id: str, path: str, n: int, barrier) -> None:
    barrier.wait(10)
    for _ in range(n):
        with locks.hold(workflow_id):
            with open(path) as f:
                value = int(f.read())
            time.sleep(0.001)  # widen the read-write window: a missing lock loses updates
            with open(path, "w") as f:
                f.write(str(value + 1))


def _hold_forever(spec: Spec, workflow_id: str, conn) -> None:
    with _make(spec).hold(workflow_id):
        conn.send("held")
        time.sleep(60)


# --- threads ------------------------------------------------------------------------


def _race(
    hold: Callable[[], AbstractContextManager[None]], threads: int, n: int
) -> tuple[int, int]:
    """`threads` x `n` read-sleep-write increments; returns (final count, max inside)."""
    counter = [0]
    inside = [0, 0]  # current, max
    guard = threading.Lock()
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(10)
            for _ in range(n):
                with hold():
                    with guard:
                        inside[0] += 1
                        inside[1] = max(inside)
                    value = counter[0]
                    time.sleep(0.0005)
                    counter[0] = value + 1
                    with guard:
                        inside[0] -= 1
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(30)
    assert not errors, errors
    return counter[0], inside[1]


def test_threads_of_one_process_exclude_each_other(backend: Backend, wf_id: str) -> None:
    # Control: without a lock the same workload demonstrably loses updates.
    lost, overlap = _race(contextlib.nullcontext, 8, 50)
    assert lost < 400 and overlap > 1

    locks = backend.make(wait=30)
    count, overlap = _race(lambda: locks.hold(wf_id), 8, 50)
    assert count == 400
    assert overlap == 1


# --- processes ----------------------------------------------------------------------


def test_processes_exclude_each_other(backend: Backend, wf_id: str, tmp_path) -> None:
    # Built and used before the fork, like a Celery prefork worker's objects.
    locks = backend.make(wait=30)
    with locks.hold(wf_id):
        pass
    counter = tmp_path / "counter"
    counter.write_text("0")
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    procs = [
        ctx.Process(target=_count_in_file, args=(locks, wf_id, str(counter), 25, barrier))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert counter.read_text() == "100"


# --- independence, timeout ----------------------------------------------------------


def test_different_ids_do_not_block_each_other(backend: Backend, wf_id: str) -> None:
    locks = backend.make(wait=0.5)
    with locks.hold(wf_id + "-A"):
        with locks.hold(wf_id + "-B"):  # a shared lock would raise LockTimeout here
            pass


def test_lock_timeout_names_the_workflow(backend: Backend, wf_id: str) -> None:
    holder = backend.make(wait=5)
    held, release = threading.Event(), threading.Event()

    def keep() -> None:
        with holder.hold(wf_id):
            held.set()
            release.wait(10)

    t = threading.Thread(target=keep)
    t.start()
    try:
        assert held.wait(5)
        waiter = backend.make(wait=0.4)
        started = time.monotonic()
        with pytest.raises(LockTimeout) as caught:
            with waiter.hold(wf_id):
                pytest.fail("acquired a lock another holder keeps")
        elapsed = time.monotonic() - started
        # redis-py gives up once its next poll (every 50 ms) would pass the deadline.
        assert 0.33 <= elapsed < 2.0
        assert wf_id in str(caught.value)
        assert caught.value.workflow_id == wf_id
        assert isinstance(caught.value, OrchestratorError)
    finally:
        release.set()
        t.join(10)
    with backend.make(wait=2).hold(wf_id):  # free again once the holder leaves
        pass


def test_lock_is_not_reentrant(backend: Backend, wf_id: str) -> None:
    locks = backend.make(wait=0.1)
    with locks.hold(wf_id):
        with pytest.raises(LockTimeout):
            with locks.hold(wf_id):
                pass


# --- dead holders -------------------------------------------------------------------


def test_file_lock_of_killed_holder_is_freed_by_the_kernel(tmp_path, wf_id: str) -> None:
    spec: Spec = ("file", str(tmp_path / "locks"), 5.0, 0.0)
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_hold_forever, args=(spec, wf_id, send))
    child.start()
    try:
        assert receive.poll(20), "child never took the lock"
        assert receive.recv() == "held"
        with pytest.raises(LockTimeout):  # the child really holds it
            with FileLocks(spec[1], wait=0.1).hold(wf_id):
                pass
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        with FileLocks(spec[1], wait=1.0).hold(wf_id):  # a kept lock: LockTimeout
            pass
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)


def test_redis_lock_of_dead_holder_expires(redis_url: str, wf_id: str) -> None:
    import redis

    # A holder that dies without releasing: take the lock on a client of its own, drop it.
    dead = redis.Redis.from_url(redis_url)
    key = RedisLocks(redis_url, timeout=1, wait=0).key_for(wf_id)
    assert dead.lock(key, timeout=1.0, thread_local=False).acquire(blocking=False)
    taken_at = time.monotonic()
    dead.close()
    del dead

    with pytest.raises(LockTimeout):
        with RedisLocks(redis_url, timeout=1.0, wait=0.2).hold(wf_id):
            pass
    with RedisLocks(redis_url, timeout=1.0, wait=3.0).hold(wf_id):
        waited = time.monotonic() - taken_at
    assert 0.85 <= waited < 2.5  # blocked until the expiry, and not much longer


def test_redis_release_after_expiry_warns_and_spares_the_next_holder(
    redis_url: str, wf_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    import redis

    slow = RedisLocks(redis_url, timeout=0.2, wait=1.0)
    first = slow.hold(wf_id)
    first.__enter__()
    time.sleep(0.35)  # the body outlives the expiry
    second = RedisLocks(redis_url, timeout=5.0, wait=1.0).hold(wf_id)
    second.__enter__()  # a new holder gets in, as it should after expiry
    with caplog.at_level(logging.WARNING, logger="workflow_orchestrator.locking"):
        first.__exit__(None, None, None)  # must neither raise nor free the new holder's lock
    assert any(r.levelno == logging.WARNING and wf_id in r.getMessage() for r in caplog.records)
    client = redis.Redis.from_url(redis_url)
    assert client.exists(slow.key_for(wf_id)) == 1
    second.__exit__(None, None, None)
    assert client.exists(slow.key_for(wf_id)) == 0
    client.close()


def test_unreachable_redis_is_lock_unavailable_without_password(wf_id: str) -> None:
    locks = RedisLocks("redis://user:s3cr3t-pw@127.0.0.1:1/0", timeout=1.0, wait=1.0)
    with pytest.raises(LockUnavailable) as caught:
        with locks.hold(wf_id):
            pass
    text = str(caught.value)
    assert wf_id in text
    assert "s3cr3t-pw" not in text
    assert not isinstance(caught.value, LockTimeout)


# --- odd ids ------------------------------------------------------------------------


def test_weird_ids_stay_inside_the_lock_directory(tmp_path) -> None:
    directory = tmp_path / "locks"
    locks = FileLocks(str(directory), wait=1.0)
    probe = FileLocks(str(directory), wait=0)
    with contextlib.ExitStack() as stack:
        for workflow_id in WEIRD_IDS:
            stack.enter_context(locks.hold(workflow_id))  # distinct ids: no blocking
            with pytest.raises(LockTimeout):  # same id -> same file -> excluded
                with probe.hold(workflow_id):
                    pass
    names = sorted(os.listdir(directory))
    assert len(names) == len(WEIRD_IDS)  # one distinct file per id, kept after release
    assert os.listdir(tmp_path) == ["locks"]  # nothing escaped the directory
    for name in names:
        assert (directory / name).is_file()
        assert len(name.encode()) <= 255
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
    assert locks.path_for("a/b").startswith(str(directory) + os.sep)


def test_weird_ids_with_redis(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    unique = uuid.uuid4().hex
    locks = RedisLocks(redis_url, timeout=10.0, wait=1.0)
    probe = RedisLocks(redis_url, timeout=10.0, wait=0)
    for weird in WEIRD_IDS:
        workflow_id = unique + weird
        with locks.hold(workflow_id):
            assert client.exists(locks.key_for(workflow_id)) == 1
            with pytest.raises(LockTimeout):
                with probe.hold(workflow_id):
                    pass
        assert client.exists(locks.key_for(workflow_id)) == 0
    client.close()


# --- settings -----------------------------------------------------------------------


def _settings(**overrides: object) -> Settings:
    return Settings(
        exchange_id="1",
        broker_id="1",
        manager_url="http://manager",
        oauth_login_url="http://oauth",
        oauth_client_id="id",
        oauth_client_secret="secret",
        **overrides,  # type: ignore[arg-type]
    )


def test_locks_from_settings(tmp_path) -> None:
    files = locks_from_settings(_settings(lock_dir=str(tmp_path / "d"), lock_wait=7.0))
    assert isinstance(files, FileLocks)
    assert files.directory == str(tmp_path / "d") and files.wait == 7.0
    assert (tmp_path / "d").is_dir()

    url = "redis://:pw@127.0.0.1:6379/0"
    red = locks_from_settings(_settings(lock_url=url, lock_timeout=9.0, lock_wait=3.0))
    assert isinstance(red, RedisLocks)
    assert (red.timeout, red.wait) == (9.0, 3.0)


def test_file_delivery_counts_per_message(tmp_path: Path) -> None:
    locks = FileLocks(str(tmp_path), wait=1)
    assert [locks.count_delivery("m/1") for _ in range(3)] == [1, 2, 3]
    assert locks.count_delivery("m/2") == 1
    locks.forget_deliveries("m/1")  # a replay starts the count afresh, of that message only
    locks.forget_deliveries("never-seen")
    assert (locks.count_delivery("m/1"), locks.count_delivery("m/2")) == (1, 2)


def test_redis_delivery_counts_per_message(redis_url: str) -> None:
    locks = RedisLocks(redis_url, timeout=5, wait=1)
    message = f"msg-{uuid.uuid4()}"
    assert [locks.count_delivery(message) for _ in range(3)] == [1, 2, 3]
    assert 0 < locks.client.ttl(f"workflow-orchestrator:deliveries:{message}") <= 86400
    other = f"msg-{uuid.uuid4()}"
    assert locks.count_delivery(other) == 1
    locks.forget_deliveries(message)
    assert (locks.count_delivery(message), locks.count_delivery(other)) == (1, 2)


def check_transition_time(locks: object) -> None:
    wid = f"wf-{uuid.uuid4()}"
    first = locks.transition_time(wid, "state-a", "2026-01-01T00:00:00+00:00")
    again = locks.transition_time(wid, "state-a", "2026-01-01T00:00:09+00:00")
    moved = locks.transition_time(wid, "state-b", "2026-01-01T00:00:20+00:00")
    back = locks.transition_time(wid, "state-a", "2026-01-01T00:00:30+00:00")
    assert (first, again) == ("2026-01-01T00:00:00+00:00",) * 2  # a redo reuses the time
    assert moved == "2026-01-01T00:00:20+00:00"  # a new stored state gets a new time
    assert back == "2026-01-01T00:00:30+00:00"  # only the latest state is remembered


def test_file_transition_time(tmp_path: Path) -> None:
    check_transition_time(FileLocks(str(tmp_path), wait=1))


def test_redis_transition_time(redis_url: str) -> None:
    locks = RedisLocks(redis_url, timeout=5, wait=1)
    check_transition_time(locks)


def test_redis_memories_written_together_are_read_by_the_next_holder(redis_url: str) -> None:
    wid = f"wf-{uuid.uuid4()}"
    first = RedisLocks(redis_url, timeout=5, wait=1)
    with first.hold(wid):
        first.remember(wid, {"published": "state-a t1", "dispatch": '{"step": "build"}'})
    second = RedisLocks(redis_url, timeout=5, wait=1)
    with second.hold(wid):
        assert second.recall(wid, "published") == "state-a t1"
        assert second.recall(wid, "dispatch") == '{"step": "build"}'
        assert second.recall(wid, "other") is None
    for name, lifetime in (("published", DAY), ("dispatch", WEEK)):  # like the files'
        assert lifetime - 60 < second.client.ttl(second._memory_key(wid, name)) <= lifetime


def test_file_memories_outlive_their_holder_in_the_lock_file(tmp_path: Path) -> None:
    """What one holder remembers, the next holder (another process, here another
    FileLocks on the same directory) reads; every memory is in the workflow's lock file."""
    wid = f"wf-{uuid.uuid4()}"
    first = FileLocks(str(tmp_path), wait=1)
    with first.hold(wid):
        first.remember(wid, {"published": "state-a t1 t2", "dispatch": '{"step": "build"}'})
        assert first.transition_time(wid, "state-a", "T0") == "T0"
        size = os.path.getsize(first.path_for(wid))
        first.remember(wid, {"published": "state-a t1"})  # shorter: written over, padded
        assert os.path.getsize(first.path_for(wid)) == size
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(first.path_for(wid))]
    second = FileLocks(str(tmp_path), wait=1)
    with second.hold(wid):
        assert second.recall(wid, "published") == "state-a t1"
        assert second.recall(wid, "dispatch") == '{"step": "build"}'
        assert second.recall(wid, "other") is None
        assert second.transition_time(wid, "state-a", "T9") == "T0"
    assert second.recall(f"wf-{uuid.uuid4()}", "published") is None  # not held: taken


def test_file_memories_survive_a_torn_write_and_expire_after_a_day(tmp_path: Path) -> None:
    locks = FileLocks(str(tmp_path), wait=1)
    wid = f"wf-{uuid.uuid4()}"
    path = Path(locks.path_for(wid))
    now = time.time()
    # A tail after the object: padding, or what a version that cut the file left.
    path.write_text(f'{{"published":["s x",{now}]}}"dispatch":["a longer tail", 1]}}')
    assert locks.recall(wid, "published") == "s x"
    path.write_text(f'{{"published":["s x",{now - 86400 - 60}],"time":["s T",{now}]}}')
    assert locks.recall(wid, "published") is None  # a day old: forgotten
    assert locks.transition_time(wid, "s", "T2") == "T"
    path.write_text("not ours")
    assert locks.recall(wid, "published") is None
    locks.remember(wid, {"published": "s y"})  # written over whatever was there
    assert locks.recall(wid, "published") == "s y"


def test_the_dispatch_record_outlives_the_other_memories(tmp_path: Path) -> None:
    """An operator may retry a workflow that failed days ago: its last dispatch record
    is kept a week, the other memories (a redo's clock, what was published) a day."""
    locks = FileLocks(str(tmp_path), wait=1)
    wid = f"wf-{uuid.uuid4()}"
    with locks.hold(wid):
        locks.remember(wid, {"published": "s t", "dispatch": '{"step": "build"}'})
    age_lock_file(locks.path_for(wid), 2 * DAY)
    assert locks.recall(wid, "published") is None
    assert locks.recall(wid, "dispatch") == '{"step": "build"}'
    assert locks.sweep() == 0  # the file is kept while the record is
    age_lock_file(locks.path_for(wid), WEEK + 60)
    assert locks.recall(wid, "dispatch") is None


def test_redis_keeps_the_dispatch_record_a_week(redis_url: str) -> None:
    locks = RedisLocks(redis_url, timeout=5, wait=1)
    wid = f"wf-{uuid.uuid4()}"
    with locks.hold(wid):
        locks.remember(wid, {"published": "s t", "dispatch": '{"step": "build"}'})
    assert DAY < locks.client.ttl(locks._memory_key(wid, "dispatch")) <= WEEK
    assert 0 < locks.client.ttl(locks._memory_key(wid, "published")) <= DAY


def test_file_memories_larger_than_one_read_are_read_whole(tmp_path: Path, monkeypatch) -> None:
    """A lock file is read without an fstat to size the read: memories longer than one
    read (and exactly one read long) come back whole."""
    monkeypatch.setattr(locking, "_READ_SIZE", 64)
    locks = FileLocks(str(tmp_path), wait=1)
    wid = f"wf-{uuid.uuid4()}"
    long_value = "x" * 500
    with locks.hold(wid):
        locks.remember(wid, {"dispatch": long_value})
    with locks.hold(wid):
        assert locks.recall(wid, "dispatch") == long_value
    path = Path(locks.path_for(wid))
    for size in (64, 128):  # a file that ends exactly at a read's end
        now = time.time()
        value = "y" * (size - len(f'{{"published":["",{now}]}}'))
        path.write_text(f'{{"published":["{value}",{now}]}}')
        assert path.stat().st_size == size
        assert locks.recall(wid, "published") == value


# -- the sweep of the lock directory -------------------------------------------------------


def test_sweep_removes_what_is_unwritten_for_a_week_and_nothing_else(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    locks = FileLocks(str(tmp_path), wait=1)
    old, recent, held = (f"wf-{uuid.uuid4()}" for _ in range(3))
    for wid in (old, recent, held):
        with locks.hold(wid):
            locks.remember(wid, {"published": "s t"})
    age_lock_file(locks.path_for(old), WEEK + 60)
    age_lock_file(locks.path_for(recent), 2 * DAY)  # kept: a lock file lives a week
    age_lock_file(locks.path_for(held), WEEK + 60)
    locks.count_delivery("old-message")
    locks.count_delivery("new-message")
    age_lock_file(locks._delivery_path("old-message"), DAY + 60)
    restored = f"wf-{uuid.uuid4()}"  # a memory newer than the file's time: kept
    with locks.hold(restored):
        locks.remember(restored, {"published": "s t"})
    then = time.time() - WEEK - 60
    os.utime(locks.path_for(restored), (then, then))
    other = tmp_path / "not-a-lock-file"
    other.write_text("kept")
    age_lock_file(str(other), 3 * DAY)
    caplog.set_level(logging.INFO, "workflow_orchestrator.locking")
    holder = FileLocks(str(tmp_path), wait=1)  # another process's view of the directory
    with holder.hold(held):
        assert locks.sweep() == 2  # the old workflow's file and the old counter
    assert not os.path.exists(locks.path_for(old))
    assert not os.path.exists(locks._delivery_path("old-message"))
    for kept in (recent, held, restored):
        assert os.path.exists(locks.path_for(kept))
    assert os.path.exists(locks._delivery_path("new-message"))
    assert other.read_text() == "kept"
    assert f"removed 2 lock files no longer needed from {tmp_path}" in caplog.text
    assert locks.sweep() == 1  # the one held then: nobody holds it now
    assert os.path.exists(locks.path_for(recent))
    assert locks.sweep() == 0
    # the swept workflow starts afresh: its week-old memories were forgotten anyway
    with locks.hold(old):
        assert locks.recall(old, "published") is None
    assert locks.count_delivery("old-message") == 1
    assert locks.count_delivery("new-message") == 2


def test_a_holder_that_locked_a_file_swept_under_it_takes_the_new_one(tmp_path: Path) -> None:
    """The race the sweep must survive: a holder opens a week-old lock file, a sweep
    removes it before the holder locks it, the holder then locks a file nobody else can
    find. It must notice and take the file at the path, or two holders would coexist."""
    wid = f"wf-{uuid.uuid4()}"
    seed = FileLocks(str(tmp_path), wait=1)
    with seed.hold(wid):
        seed.remember(wid, {"published": "s t"})
    path = seed.path_for(wid)
    age_lock_file(path, WEEK + 60)
    swept: list[int] = []

    class SweptBeforeLocking(FileLocks):
        def _acquire(self, workflow_id: str, fd: int, deadline: float) -> None:
            if not swept:  # between this holder's open and its lock
                swept.append(seed.sweep())
            super()._acquire(workflow_id, fd, deadline)

    locks = SweptBeforeLocking(str(tmp_path), wait=1)
    other = FileLocks(str(tmp_path), wait=0.2)
    with locks.hold(wid):
        assert swept == [1]
        held_fd = locks._holding()[wid].fd
        assert os.fstat(held_fd).st_nlink == 1  # not the removed file
        assert os.fstat(held_fd).st_ino == os.stat(path).st_ino  # the one at the path
        assert os.fstat(held_fd).st_size == 0  # a new file (the old one held memories)
        with pytest.raises(LockTimeout):  # the file at the path is the held one
            with other.hold(wid):
                pass
    with other.hold(wid):  # and released with it
        pass


def test_a_holder_of_a_recently_written_file_does_not_check_it(tmp_path: Path) -> None:
    """The check costs a system call; a file written within the day cannot have been
    swept, so the transitions of a workflow in flight skip it (only a workflow's first
    transition, on a new file, pays it)."""
    wid = f"wf-{uuid.uuid4()}"
    calls: list[int] = []
    locks = FileLocks(str(tmp_path), wait=1)
    original = locking._linked

    def counting(fd: int, workflow_id: str = "") -> bool:
        calls.append(fd)
        return original(fd, workflow_id)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(locking, "_linked", counting)
        with locks.hold(wid):  # new file, nothing written yet: checked
            locks.remember(wid, {"published": "s t"})
        assert len(calls) == 1
        with locks.hold(wid):  # written a moment ago: not checked
            pass
        assert len(calls) == 1


def test_redis_locks_have_nothing_to_sweep(redis_url: str) -> None:
    assert RedisLocks(redis_url, timeout=5, wait=1).sweep() == 0
