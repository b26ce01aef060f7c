"""Services of the test session's own, so tests never change the machine's shared ones.

The machine's RabbitMQ and Redis are used by other people at the same time. Tests
therefore get a virtual host and a user of their own on the broker (never vhost `/`),
extra virtual hosts standing in for other brokers, a private RabbitMQ node when a test
must stop and start a broker, and a Redis database of their own (never db 0). Each is
removed when its user is done. Nothing here runs at import time: the fixtures in
`tests/conftest.py` create these objects.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

#: The machine's RabbitMQ and Redis, as the CI starts them.
RABBIT_HOST = "127.0.0.1"
RABBIT_PORT = 5672
REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379

#: Marks a Redis database as taken by one test session (its value is the session's token).
REDIS_CLAIM_KEY = "wo-tests:claimed-by"
#: Every key the orchestrator writes to Redis (what `.ci/check-hygiene` watches in db 0).
ORCHESTRATOR_KEYS = "workflow-orchestrator:*"
#: A session that dies without cleaning up frees its Redis database after this long.
REDIS_CLAIM_SECONDS = 12 * 3600


class ServiceError(RuntimeError):
    """A test service could not be set up or removed; the message says what to fix."""


def token(length: int = 4) -> str:
    """A random hex tag for names (`wo-test-<tag>`)."""
    return secrets.token_hex(length)


def free_port() -> int:
    """A TCP port nobody listens on at the moment, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rabbitmqctl(
    *args: str,
    node: str | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
) -> str:
    """Run `rabbitmqctl [-n node] args...` and return its output; raise ServiceError on
    failure. Secrets are passed on `stdin`, never as arguments, so they appear neither
    in `ps` nor in the error text."""
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise ServiceError(
            "rabbitmqctl is not installed: the tests need it to give themselves a RabbitMQ "
            "virtual host of their own (apt-get install rabbitmq-server)"
        )
    command = [exe, *(["-n", node] if node else []), *args]
    shown = " ".join(command[1:])
    try:
        done = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )
    except subprocess.TimeoutExpired:
        raise ServiceError(f"`rabbitmqctl {shown}` did not finish within {timeout} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[:6]
        raise ServiceError(
            f"`rabbitmqctl {shown}` failed (exit {done.returncode}): " + " | ".join(detail)
        )
    return done.stdout


# -- virtual hosts on the machine's broker -------------------------------------------------


@dataclass(frozen=True)
class Vhost:
    """A RabbitMQ virtual host with a user of its own that may use only it."""

    name: str
    user: str
    password: str = field(repr=False)
    host: str = RABBIT_HOST
    port: int = RABBIT_PORT

    @property
    def url(self) -> str:
        """The broker URL of this virtual host (`amqp://user:password@host:port/vhost`)."""
        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{self.port}/{quote(self.name, safe='')}"
        )

    @property
    def redacted_url(self) -> str:
        """The URL as the orchestrator prints it: the password replaced by `***`."""
        return f"amqp://{self.user}:***@{self.host}:{self.port}/{quote(self.name, safe='')}"


class RabbitVhosts:
    """The virtual hosts (and their users) a test session made on one RabbitMQ node.

    `create` makes one, `remove` deletes one, `remove_all` deletes whatever is left; a
    session calls `remove_all` at its end so the broker is as it found it.
    """

    def __init__(self, host: str = RABBIT_HOST, port: int = RABBIT_PORT) -> None:
        self.host = host
        self.port = port
        self.made: list[Vhost] = []

    def create(self, label: str = "", password: str | None = None) -> Vhost:
        """A new virtual host `wo-test-[label-]<random>`, its user of the same name with
        `password` (default: a random one), full permissions on it only; checked by
        connecting to it."""
        name = f"wo-test-{label + '-' if label else ''}{token()}"
        password = password or f"wo-pw-{secrets.token_hex(12)}"
        vhost = Vhost(name, name, password, self.host, self.port)
        rabbitmqctl("add_vhost", name)
        self.made.append(vhost)  # from here on, remove() undoes whatever was made
        rabbitmqctl("add_user", vhost.user, stdin=vhost.password)
        rabbitmqctl("set_permissions", "-p", name, vhost.user, ".*", ".*", ".*")
        check_broker(vhost.url, f"the test virtual host {name} on {self.host}:{self.port}")
        return vhost

    def remove(self, vhost: Vhost) -> None:
        """Delete a virtual host (its queues and exchanges with it) and its user."""
        problems = []
        for args in (("delete_vhost", vhost.name), ("delete_user", vhost.user)):
            try:
                rabbitmqctl(*args)
            except ServiceError as exc:
                if "does not exist" not in str(exc):  # already gone is fine
                    problems.append(str(exc))
        if vhost in self.made:
            self.made.remove(vhost)
        if problems:
            raise ServiceError("; ".join(problems))

    def remove_all(self) -> None:
        """Delete every virtual host and user still on the list."""
        problems = []
        for vhost in list(self.made):
            try:
                self.remove(vhost)
            except ServiceError as exc:
                problems.append(str(exc))
        if problems:
            raise ServiceError("; ".join(problems))


def check_broker(url: str, what: str) -> None:
    """Connect once to `url` (an AMQP round trip); raise ServiceError naming `what`."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1)
            conn.default_channel.exchange_declare("amq.direct", "direct", passive=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the tests cannot run
        # the exception text never holds the password; the URL is not repeated
        raise ServiceError(f"cannot use {what}: {type(exc).__name__}: {exc}") from None


# -- a RabbitMQ node of a test's own ---------------------------------------------------------


class PrivateRabbitNode:
    """A RabbitMQ node started for one test: its own node name, AMQP and distribution
    ports, data and log directories under a temp dir, no plugins. A test may stop and
    start it without disturbing anyone else's broker; `stop` removes every trace."""

    def __init__(self) -> None:
        self.name = f"wo-test-{token()}@localhost"
        self.port = free_port()
        self.dist_port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="wo-rabbit-"))
        self.pid_file = self.directory / "pid"
        self.started = False

    @property
    def url(self) -> str:
        """The node's default virtual host, as guest (a loopback-only user)."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def env(self) -> dict[str, str]:
        """The variables that make `rabbitmq-server` start this node and not the default."""
        d = self.directory
        return {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            # not the machine's rabbitmq-env.conf (it names the default node)
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            # a crash dump lands here, not in the broker's home directory
            "ERL_CRASH_DUMP": str(d / "erl_crash.dump"),
        }

    def _write_files(self) -> None:
        d = self.directory
        (d / "mnesia").mkdir()
        (d / "log").mkdir()
        (d / "enabled_plugins").write_text("[].\n")  # no management port to clash
        (d / "rabbitmq-env.conf").write_text("")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\nloopback_users.guest = true\n"
        )
        if os.geteuid() == 0:
            # run as root, rabbitmq-server drops to the rabbitmq user, who must write here
            shutil.chown(d, "rabbitmq", "rabbitmq")
            for path in d.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        """`rabbitmqctl -n <this node> args...`: acts on this node only."""
        return rabbitmqctl(*args, node=self.name, env=self.env(), timeout=timeout)

    def start(self) -> PrivateRabbitNode:
        """Start the node and wait until it accepts clients."""
        exe = shutil.which("rabbitmq-server")
        if exe is None:
            raise ServiceError("rabbitmq-server is not installed: apt-get install rabbitmq-server")
        self._write_files()
        self.started = True
        done = subprocess.run(
            [exe, "-detached"],
            env={**os.environ, **self.env()},
            capture_output=True,
            text=True,
            timeout=60,
        )
        try:
            if done.returncode != 0:
                raise ServiceError(f"rabbitmq-server -detached failed: {done.stderr.strip()}")
            self.ctl("wait", str(self.pid_file), "--timeout", "90", timeout=120)
            check_broker(self.url, f"the private RabbitMQ node {self.name}")
        except ServiceError as exc:
            log = self.log_tail()
            self.stop()
            raise ServiceError(f"{exc}\n--- node log ---\n{log}") from None
        return self

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (clients are dropped); the Erlang node stays."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start the application again and wait until it accepts clients."""
        self.ctl("start_app")
        self.ctl("await_startup")

    def log_tail(self, lines: int = 20) -> str:
        logs = sorted((self.directory / "log").glob("*.log"))
        text = "\n".join(p.read_text(errors="replace") for p in logs)
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the node (waiting until its process is gone) and remove its directory."""
        try:
            if self.started and self.pid_file.exists():
                try:
                    self.ctl("stop", str(self.pid_file), timeout=60)
                except ServiceError:
                    self._kill()
        finally:
            self.started = False
            shutil.rmtree(self.directory, ignore_errors=True)

    def _kill(self) -> None:
        """Last resort when the node does not answer: end exactly its process."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass

    def __enter__(self) -> PrivateRabbitNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a Redis database of the session's own ------------------------------------------------


class RedisTestDatabase:
    """A Redis database number (never 0) that this session alone uses.

    `claim` takes the first of databases 15..1 that is empty, marking it with a key
    only one session can set; everything the tests write there is theirs, so `clean`
    deletes the orchestrator's keys there and `release` gives the database back.
    """

    def __init__(self, host: str = REDIS_HOST, port: int = REDIS_PORT) -> None:
        self.host = host
        self.port = port
        self.owner = f"wo-tests-{token(8)}"
        self.db: int | None = None

    @property
    def url(self) -> str:
        if self.db is None:
            raise ServiceError("no Redis database claimed yet")
        return f"redis://{self.host}:{self.port}/{self.db}"

    def _client(self, db: int) -> Any:
        import redis  # lazily: only sessions that use Redis need it

        return redis.Redis(
            host=self.host, port=self.port, db=db, socket_connect_timeout=2, socket_timeout=5
        )

    def claim(self) -> int:
        """Claim an empty database for this session; ServiceError when none is free."""
        for db in range(15, 0, -1):
            client = self._client(db)
            try:
                if not client.set(REDIS_CLAIM_KEY, self.owner, nx=True, ex=REDIS_CLAIM_SECONDS):
                    continue  # another test session has it
                if client.dbsize() == 1:
                    self.db = db
                    return db
                self._unclaim(client)  # something else keeps data there: not ours to use
            finally:
                client.close()
        raise ServiceError(
            f"no empty Redis database among 1..15 on {self.host}:{self.port} for the tests"
        )

    def _unclaim(self, client: Any) -> None:
        # compare and delete in one step: never remove another session's claim
        client.eval(
            "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end",
            1,
            REDIS_CLAIM_KEY,
            self.owner,
        )

    def keys(self) -> list[bytes]:
        """The orchestrator's keys in the database: its whole `workflow-orchestrator:`
        namespace (locks, delivery counts, transition times, memories), so a kind of key
        added later is cleaned too. (Listing the kinds had missed the memories: every
        session left its memories, and after fifteen no database was empty.)"""
        if self.db is None:
            return []
        client = self._client(self.db)
        try:
            return list(client.scan_iter(match=ORCHESTRATOR_KEYS, count=500))
        finally:
            client.close()

    def clean(self) -> None:
        """Delete the orchestrator's keys the tests wrote in the claimed database."""
        found = self.keys()
        if found and self.db is not None:
            client = self._client(self.db)
            try:
                client.delete(*found)
            finally:
                client.close()

    def release(self) -> None:
        """Clean up and give the database back."""
        if self.db is None:
            return
        self.clean()
        client = self._client(self.db)
        try:
            self._unclaim(client)
        finally:
            client.close()
        self.db = None


def redis_down_reason(host: str = REDIS_HOST, port: int = REDIS_PORT) -> str | None:
    """Why Redis cannot be used for the tests, or None when it answers PING."""
    try:
        import redis

        client = redis.Redis(host=host, port=port, socket_connect_timeout=1, socket_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:  # any failure means "no Redis to test against"
        return f"Redis at {host}:{port} does not answer PING ({type(exc).__name__}: {exc})"
    return None
