"""Profile the orchestrator worker under the benchmark's load, with py-spy.

Usage (py-spy in the virtualenv: `pip install py-spy`)::

    python bench/profile.py [--workflows N] [--pool threads|prefork] [--concurrency C]
                            [--rate HZ] [--out DIR]

Runs the same system as bench/run.py (emulator, peers, the Procfile's worker), warms the
worker up, then attaches two py-spy samplers to the worker process tree for the measured
phase (non-blocking, so the worker is never paused):

* CPU: only threads on the CPU (where the worker's CPU time goes);
* wall (`--idle`): every thread, idle or not; the samples of threads inside an
  `orchestrate` task are what one transition's wall time is made of (HTTP waits,
  publisher-confirm waits, lock waits, waiting for the GIL).

Writes the raw collapsed stacks (`cpu.txt`, `wall.txt`; flamegraph.pl or speedscope read
them) to --out (default bench/results/profile/) and prints a summary: CPU by area, wall
time of a transition by area, the top functions by self time and by inclusive time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, BenchError  # noqa: E402
from bench.harness import System  # noqa: E402
from bench.measure import wait_for_quiet  # noqa: E402
from bench.processes import procfile_worker  # noqa: E402

#: (area, alternatives): a sample belongs to the first area one of whose alternatives
#: (a tuple of substrings, all required) occurs in its stack.
Areas = list[tuple[str, list[tuple[str, ...]]]]

CPU_AREAS: Areas = [
    ("task-sent events (inside send_task)", [("events/dispatcher.py", "send_task_message")]),
    ("worker task events (consumer thread)", [("events/dispatcher.py",)]),
    ("publish: chat notifications", [("Publisher.chat (",)]),
    ("publish: deadline message", [("Publisher.deadline (",)]),
    ("publish: worker request", [("Publisher.worker_request (",)]),
    ("publish: e-mail", [("Publisher.email (",)]),
    ("Manager HTTP: GET workflow", [("get_workflow (",)]),
    ("Manager HTTP: PUT workflow", [("save_workflow (",)]),
    ("Manager HTTP: lookups, token", [("manager.py",)]),
    ("lock and its delivery-time file", [("locking.py",)]),
    ("transition (pure core)", [("transition.py",), ("milestones.py",), ("workflow.py",)]),
    ("logging", [("logging/__init__.py",), ("logs.py",)]),
    ("rest of the task (Celery tracing, parse, ack)", [("orchestrate (",), ("app/trace.py",)]),
    ("consumer thread: receive, ack, hub", [("",)]),
]

WALL_AREAS: Areas = [
    ("task-sent event (waiting for the dispatcher mutex + confirm)", [("events/dispatcher.py",)]),
    ("lock and its delivery-time file", [("locking.py",)]),
    ("publish: chat notifications", [("Publisher.chat (",)]),
    ("publish: deadline message", [("Publisher.deadline (",)]),
    ("publish: worker request", [("Publisher.worker_request (",)]),
    ("publish: e-mail", [("Publisher.email (",)]),
    ("Manager: GET workflow", [("get_workflow (",)]),
    ("Manager: PUT workflow", [("save_workflow (",)]),
    ("Manager: lookups", [("topology.py",)]),
    ("transition (pure core)", [("transition.py",), ("milestones.py",)]),
    ("logging", [("logging/__init__.py",)]),
    ("rest of the task", [("",)]),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    _, pool, concurrency = procfile_worker()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", "-n", type=int, default=1500)
    p.add_argument("--pool", default=pool, choices=["threads", "prefork"])
    p.add_argument("--concurrency", "-c", type=int, default=concurrency)
    p.add_argument("--window", "-w", type=int, default=64)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--rate", type=int, default=200, help="samples per second")
    p.add_argument(
        "--gil",
        action="store_true",
        help="CPU view of GIL-holding threads only (py-spy --gil): Python-level CPU, without "
        "the time a thread spends blocked in a socket call",
    )
    p.add_argument(
        "--side",
        default="orchestrator",
        choices=["orchestrator", "floor"],
        help="the worker to profile: the orchestrator, or the contract floor (bench/baseline.py)",
    )
    p.add_argument("--out", default=str(RESULTS / "profile"))
    p.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--env", action="append", default=[], help="extra worker env VAR=value")
    return p.parse_args(argv)


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return found


def start_sampler(
    pid: int, out: Path, rate: int, idle: bool, gil: bool = False
) -> subprocess.Popen[bytes]:
    cmd = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--threads",
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    if idle:
        cmd.append("--idle")
    if gil:  # only threads holding the GIL: Python-level CPU, no time blocked in syscalls
        cmd.append("--gil")
    log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def stop_sampler(proc: subprocess.Popen[bytes], out: Path) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    deadline = time.monotonic() + 10
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        head, _, count = line.rpartition(" ")
        if head and count.isdigit():
            stacks.append((head.split(";"), int(count)))
    return stacks


def area(frames: list[str], areas: Areas) -> str:
    text = ";".join(frames)
    for name, alternatives in areas:
        if any(all(n in text for n in needed) for needed in alternatives):
            return name
    return "other"


def frame_key(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`; lines merged."""
    func, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rstrip(")")
    parts = file.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else file
    return f"{func} ({short})"


def summarize(cpu_path: Path, wall_path: Path, transitions: int, top: int = 25) -> str:
    out: list[str] = []
    cpu = read_stacks(cpu_path)
    total = sum(c for _, c in cpu) or 1
    out.append(f"CPU samples: {total} ({total / transitions:.2f} per transition)")
    by_area: Counter[str] = Counter()
    main_thread = 0
    for frames, count in cpu:
        text = ";".join(frames)
        if "orchestrate" not in text and "celery/app/trace.py" not in text:
            main_thread += count
        by_area[area(frames, CPU_AREAS)] += count
    out.append(f"  outside any task (consumer thread, hub, timers): {main_thread / total:.1%}")
    out.append("\nCPU by area (share of the worker's CPU samples):")
    for name, count in by_area.most_common():
        out.append(f"  {count / total:6.1%}  {name}")

    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in cpu:
        code = [f for f in frames if " (" in f]
        if not code:
            continue
        self_time[frame_key(code[-1])] += count
        for key in {frame_key(f) for f in code}:
            inclusive[key] += count
    out.append(f"\nTop {top} functions by self CPU time:")
    for key, count in self_time.most_common(top):
        out.append(f"  {count / total:6.1%}  {key}")
    interesting = [
        (k, c)
        for k, c in inclusive.most_common()
        if any(
            s in k
            for s in (
                "workflow_orchestrator/",
                "json/",
                "logging/",
                "events/",
                "amqp/",
                "kombu/",
                "requests/",
                "urllib3/",
                "http/client",
                "app/trace",
                "app/base",
                "app/amqp",
            )
        )
    ]
    out.append(
        f"\nTop {top} functions by inclusive CPU time (our code, Celery, kombu, HTTP, JSON):"
    )
    for key, count in interesting[:top]:
        out.append(f"  {count / total:6.1%}  {key}")

    wall = read_stacks(wall_path)
    in_task = [(f, c) for f, c in wall if any("orchestrate (" in x for x in f)]
    busy = sum(c for _, c in in_task) or 1
    out.append(
        f"\nWall time inside orchestrate tasks: {busy} samples "
        f"({busy / transitions:.2f} per transition)"
    )
    wall_area: Counter[str] = Counter()
    for frames, count in in_task:
        wall_area[area(frames, WALL_AREAS)] += count
    for name, count in wall_area.most_common():
        out.append(f"  {count / busy:6.1%}  {name}")
    leaf: Counter[str] = Counter()
    for frames, count in in_task:
        code = [f for f in frames if " (" in f]
        if code:
            leaf[frame_key(code[-1])] += count
    out.append(f"\nTop {top} leaf frames of the wall time inside tasks:")
    for key, count in leaf.most_common(top):
        out.append(f"  {count / busy:6.1%}  {key}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu_path, wall_path = out / "cpu.txt", out / "wall.txt"
    for p in (cpu_path, wall_path):
        if p.exists():
            p.unlink()
    extra = dict(item.split("=", 1) for item in args.env)
    system = System(args.broker_url, keep_logs=args.keep_logs)
    floor = args.side == "floor"
    system.add_phase("orchestrator-warmup", args.warmup, args.window, floor=floor)
    system.add_phase("orchestrator", args.workflows, args.window, floor=floor)
    try:
        with system:
            system.start()
            wait_for_quiet()
            if floor:
                worker = system.baseline(args.pool, args.concurrency, chats=True).start()
            else:
                worker = system.orchestrator(args.pool, args.concurrency, extra_env=extra).start()
            try:
                system.wait_ready(worker)
                system.run_phase("orchestrator-warmup", worker)
                samplers = [
                    start_sampler(worker.pid, cpu_path, args.rate, idle=False, gil=args.gil),
                    start_sampler(worker.pid, wall_path, args.rate, idle=True),
                ]
                time.sleep(1.0)  # py-spy attaches
                result = system.run_phase("orchestrator", worker)
                for proc, path in zip(samplers, (cpu_path, wall_path), strict=True):
                    stop_sampler(proc, path)
            finally:
                worker.stop()
    except BenchError as exc:
        print(f"profile failed: {exc}", file=sys.stderr)
        return 2
    print(
        f"profiled {result['transitions']} transitions at {result['transitions_per_s']} /s "
        f"(sampling slows the worker; use bench/run.py for throughput)\n"
    )
    text = summarize(cpu_path, wall_path, result["transitions"])
    print(text)
    (out / "summary.txt").write_text(text + "\n")
    print(f"\nraw stacks: {cpu_path}, {wall_path}; summary: {out / 'summary.txt'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
