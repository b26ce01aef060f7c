"""The benchmark's processes: children it starts, watches and stops, and the Procfile's worker command."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, BenchError
from bench.measure import process_tree

# -- subprocesses ---------------------------------------------------------------------------


class Child:
    """A subprocess in its own process group (so a prefork worker's children stop with it),
    its output in a log file."""

    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], log_path: Path, repo: Path = REPO
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.log_path = log_path
        self.repo = repo  # the tree whose code runs (cwd and PYTHONPATH)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> Child:
        env = {**os.environ, **self.env, "PYTHONPATH": str(self.repo), "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.cmd,
                cwd=self.repo,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log(self, offset: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = regex.search(self.log())
            if found:
                return found
            if not self.alive():
                raise BenchError(f"{self.name} exited early:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: no {pattern!r} within {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        except ProcessLookupError:
            pass


class Group:
    """Several workers consuming one queue (several processes, or hosts, in production),
    measured as one."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.name = children[0].name + (f" x{len(children)}" if len(children) > 1 else "")

    @property
    def pid(self) -> int | None:
        return self.children[0].pid

    def start(self) -> Group:
        for child in self.children:
            child.start()
        return self

    def stop(self, timeout: float = 20.0) -> None:
        for child in self.children:
            child.stop(timeout)

    def alive(self) -> bool:
        return all(child.alive() for child in self.children)

    def tree(self) -> list[int]:
        return [pid for child in self.children for pid in child.tree()]

    def log_size(self) -> list[int]:
        return [child.log_size() for child in self.children]

    def log(self, offset: list[int] | int = 0) -> str:
        offsets = offset if isinstance(offset, list) else [offset] * len(self.children)
        return "".join(c.log(o) for c, o in zip(self.children, offsets, strict=True))

    def tail(self, lines: int = 30) -> str:
        return "\n".join(f"[{c.name}]\n{c.tail(lines)}" for c in self.children)

    def wait_for_log(self, pattern: str, timeout: float) -> None:
        for child in self.children:
            child.wait_for_log(pattern, timeout)


# -- the Procfile ----------------------------------------------------------------------------


def procfile_worker(repo: Path = REPO) -> tuple[list[str], str, int]:
    """The Procfile's worker command (split), with its pool and concurrency."""
    line = next(
        raw.split(":", 1)[1].strip()
        for raw in (repo / "Procfile").read_text().splitlines()
        if raw.startswith("worker:")
    )
    args = shlex.split(line)
    pool, concurrency = "prefork", os.cpu_count() or 1  # Celery's defaults
    for i, arg in enumerate(args[:-1]):
        if arg in ("-P", "--pool"):
            pool = args[i + 1]
        if arg in ("-c", "--concurrency"):
            concurrency = int(args[i + 1])
    return args, pool, concurrency


def worker_command(
    args: list[str], env: dict[str, str], pool: str, concurrency: int, nodename: str
) -> list[str]:
    """The Procfile command with ${VAR:-default} expanded and -P/-c replaced; `celery`
    becomes this interpreter's `python -m celery`; a unique node name is added."""

    def expand(arg: str) -> str:
        return re.sub(
            r"\$\{(\w+)(?::-([^}]*))?\}",
            lambda m: env.get(m.group(1)) or os.environ.get(m.group(1)) or (m.group(2) or ""),
            arg,
        )

    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg in ("-P", "--pool", "-c", "--concurrency", "-n", "--hostname"):
            skip = True
            continue
        if i == 0 and arg == "celery":
            out += [sys.executable, "-m", "celery"]
            continue
        out.append(expand(arg))
    return [*out, "-P", pool, "-c", str(concurrency), "-n", nodename]
