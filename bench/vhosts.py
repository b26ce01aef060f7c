"""The benchmark's own RabbitMQ virtual hosts: the machine's broker is shared, so a run
never uses vhost `/`; its queues (wait queues of deadline messages included) go with
the virtual host when the run ends.

A virtual host `wo-bench-<suffix>[-label]` is made with `rabbitmqctl add_vhost` and the
URL's user (guest by default) is given full permissions on it; `delete` removes it.
"""

from __future__ import annotations

import shutil
import subprocess
from urllib.parse import quote, urlsplit, urlunsplit

from bench.common import BenchError


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    exe = shutil.which("rabbitmqctl")
    if exe is None:
        raise BenchError("rabbitmqctl is not installed: the benchmark makes a vhost of its own")
    done = subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        detail = " | ".join((done.stderr or done.stdout).strip().splitlines()[:4])
        raise BenchError(f"rabbitmqctl {' '.join(args)} failed: {detail}")
    return done.stdout


def with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(vhost, safe=""), "", ""))


def create(url: str, name: str) -> str:
    """Make vhost `name` for the URL's user; return the URL of that vhost."""
    user = urlsplit(url).username or "guest"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    except BaseException:
        delete(name)
        raise
    return with_vhost(url, name)


def delete(name: str) -> None:
    try:
        rabbitmqctl("delete_vhost", name)
    except BenchError as exc:
        if "does not exist" not in str(exc) and "not_found" not in str(exc):
            raise
