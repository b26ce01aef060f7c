"""System calls per transition of the orchestrator and of the contract floor (strace -c).

Usage (strace installed; from the repository root, in the project's virtualenv)::

    python bench/syscalls.py [--workflows N] [--side orchestrator|floor|both]

The system of bench/run.py; each worker is warmed up, then `strace -f -c` is attached to
its process tree for one phase of N workflows (default 200: 600 transitions). Counts do
not depend on the machine's load (strace slows the worker a lot; use run.py for speed).
Prints the calls per transition by name for each side, side by side, and writes them to
bench/results/syscalls.json. The worker CPU the floor does not spend is mostly kernel
time: this says in which calls.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, TRANSITIONS_PER_WORKFLOW, BenchError  # noqa: E402
from bench.harness import System  # noqa: E402

ROW = re.compile(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$")


def parse_strace(text: str) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in text.splitlines():
        m = ROW.match(line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    return calls


def traced(system: System, worker, phase: str, out: Path) -> dict[str, int]:
    proc = subprocess.Popen(
        [shutil.which("strace") or "strace", "-f", "-c", "-o", str(out), "-p", str(worker.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        system.run_phase(phase, worker, stall_timeout=120)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    return parse_strace(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", "-n", type=int, default=200)
    p.add_argument("--side", default="both", choices=["orchestrator", "floor", "both"])
    p.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--env", action="append", default=[], help="extra worker env VAR=value")
    args = p.parse_args(argv)
    if not shutil.which("strace"):
        print("strace is not installed", file=sys.stderr)
        return 2
    sides = ["orchestrator", "floor"] if args.side == "both" else [args.side]
    system = System(args.broker_url)
    for side in sides:
        system.add_phase(f"{side}-warmup", 40, 64, floor=side == "floor")
        system.add_phase(side, args.workflows, 64, floor=side == "floor")
    extra = dict(item.split("=", 1) for item in args.env)
    counts: dict[str, dict[str, int]] = {}
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        with system:
            system.start()
            for side in sides:
                worker = (
                    system.orchestrator(extra_env=extra)
                    if side == "orchestrator"
                    else system.baseline(chats=True)
                ).start()
                try:
                    system.wait_ready(worker)
                    system.run_phase(f"{side}-warmup", worker)
                    counts[side] = traced(system, worker, side, RESULTS / f"strace-{side}.txt")
                finally:
                    worker.stop()
    except BenchError as exc:
        print(f"syscall count failed: {exc}", file=sys.stderr)
        return 2
    per = args.workflows * TRANSITIONS_PER_WORKFLOW
    names = sorted(
        {n for c in counts.values() for n in c},
        key=lambda n: -max(c.get(n, 0) for c in counts.values()),
    )
    lines = ["| system call | " + " | ".join(sides) + " |", "|---|" + "---:|" * len(sides)]
    totals = {s: sum(c.values()) / per for s, c in counts.items()}
    lines.append("| **all** | " + " | ".join(f"{totals[s]:.1f}" for s in sides) + " |")
    for name in names:
        values = [counts[s].get(name, 0) / per for s in sides]
        if max(values) >= 0.5:
            lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    table = "\n".join(lines)
    (RESULTS / "syscalls.json").write_text(
        json.dumps({"transitions": per, "counts": counts, "markdown": table}, indent=2)
    )
    print(f"system calls per transition ({per} transitions per side):\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
