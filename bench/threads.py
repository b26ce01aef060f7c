"""The worker's CPU per transition split by thread: the consumer thread and the pool's.

Usage (from the repository root, in the project's virtualenv)::

    python bench/threads.py [--workflows N] [--rounds R] [--concurrency C]

The system of bench/run.py, the orchestrator and the contract floor in interleaved rounds
(both workers up all along). Around each phase it reads every thread's user and system
time from `/proc/<pid>/task/*/stat`: the consumer thread is the one whose id is the
process id (Celery's event loop: receiving, acks, task events), the rest are the pool's
threads and the orchestrator's own (module heartbeat). It also counts the consumer
thread's context switches (`/proc/<pid>/status`). Python-level profilers cannot give
this split: py-spy's `--gil` counts only the thread holding the GIL, and without it
counts threads waiting in system calls. This is how change 12 of docs/performance.md
was found: at concurrency 1 the orchestrator's consumer thread cost twice the floor's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CLK_TCK, BenchError, add_system_options, write_report  # noqa: E402
from bench.harness import System, run_interleaved  # noqa: E402

SIDES = ("orchestrator", "floor")


def thread_times(pid: int) -> dict[int, tuple[int, int]]:
    """Clock ticks of user and system time of each thread of `pid`."""
    out: dict[int, tuple[int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            raw = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        out[int(task.name)] = (int(fields[11]), int(fields[12]))
    return out


def switches(pid: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches of the thread `pid`."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.endswith("ctxt_switches"):
            values[name] = int(value)
    return values["voluntary_ctxt_switches"], values["nonvoluntary_ctxt_switches"]


def split(
    pid: int,
    before: dict[int, tuple[int, int]],
    after: dict[int, tuple[int, int]],
    transitions: int,
) -> dict[str, float]:
    """ms per transition of the consumer thread and of all other threads, user and system."""
    parts = {"consumer_user": 0, "consumer_system": 0, "pool_user": 0, "pool_system": 0}
    for tid, (user, system) in after.items():
        user0, system0 = before.get(tid, (0, 0))
        side = "consumer" if tid == pid else "pool"
        parts[f"{side}_user"] += user - user0
        parts[f"{side}_system"] += system - system0
    return {k: round(v / CLK_TCK / transitions * 1000, 3) for k, v in parts.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", "-n", type=int, default=400, help="workflows per phase")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool", default=None, help="default: the Procfile's")
    p.add_argument("--concurrency", "-c", type=int, default=None, help="default: the Procfile's")
    add_system_options(p, "threads.json", warmup=100)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    system = System(args.broker_url, keep_logs=args.keep_logs)
    for side in SIDES:
        system.add_phase(f"{side}-warmup", args.warmup, args.window, floor=side == "floor")
        for r in range(args.rounds):
            system.add_phase(f"{side}-{r}", args.workflows, args.window, floor=side == "floor")
    extra = dict(item.split("=", 1) for item in args.env)
    rows: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    try:
        with system:
            system.start()
            workers = {
                "orchestrator": system.orchestrator(args.pool, args.concurrency, extra_env=extra),
                "floor": system.baseline(args.pool, args.concurrency, chats=True),
            }
            before: dict[str, Any] = {}

            def read_before(side: str, r: int) -> None:
                pid = workers[side].pid
                before.update(pid=pid, times=thread_times(pid), ctx=switches(pid))

            def read_after(side: str, r: int, result: dict[str, Any]) -> None:
                pid, n = before["pid"], result["transitions"]
                row = split(pid, before["times"], thread_times(pid), n)
                after, ctx = switches(pid), before["ctx"]
                row["consumer_switches_voluntary"] = round((after[0] - ctx[0]) / n, 2)
                row["consumer_switches_involuntary"] = round((after[1] - ctx[1]) / n, 2)
                row["transitions_per_s"] = result["transitions_per_s"]
                rows[side].append(row)
                print(f"  round {r + 1}/{args.rounds} {side}: {row}", flush=True)

            run_interleaved(
                system,
                workers,
                args.rounds,
                quiet_max_wait=30.0,
                before_phase=read_before,
                on_phase=read_after,
            )
    except BenchError as exc:
        print(f"thread split failed: {exc}", file=sys.stderr)
        return 2
    keys = list(rows["orchestrator"][0])
    lines = ["| ms per transition (median) | orchestrator | contract floor |", "|---|---:|---:|"]
    for key in keys:
        values = [statistics.median(row[key] for row in rows[side]) for side in SIDES]
        lines.append(
            f"| {key.replace('_', ' ')} | " + " | ".join(f"{round(v, 3)}" for v in values) + " |"
        )
    table = "\n".join(lines)
    print(table)
    out = write_report(args.json, {"runs": rows, "markdown": table})
    print(f"figures written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
