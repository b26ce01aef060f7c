"""A/B-test changes to the orchestrator: several package trees, one system, interleaved.

Usage (from the repository root, in the project's virtualenv)::

    cp -r workflow_orchestrator celeryconfig.py Procfile /tmp/variant/   # then patch it
    python bench/compare.py --variant main=. --variant patched=/tmp/variant \\
                            [--workflows N] [--rounds R] [--pool P] [--concurrency C]

Each variant is a directory holding a `workflow_orchestrator` package, a
`celeryconfig.py` and a `Procfile`; its worker runs with that directory as working
directory and PYTHONPATH, as its own Procfile says (or with --pool/--concurrency). One
emulator and one set of peers serve every variant; the variants are measured in turn,
round after round, the order reversed every other round (A B C, C B A, ...), so a machine
that drifts (other test runs share it) drifts for all of them alike. Prints the median of
each variant's throughput, latency and CPU per transition, and its gain over the first
variant; writes the figures to --json (default bench/results/compare.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchError, add_system_options, write_report  # noqa: E402
from bench.harness import System, measured_worker, round_order  # noqa: E402
from bench.measure import machine  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--variant",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a package tree to measure (repeatable; the first is the reference)",
    )
    p.add_argument("--workflows", "-n", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pool", default=None, help="default: each variant's Procfile")
    p.add_argument("--concurrency", "-c", type=int, default=None)
    add_system_options(p, "compare.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = []
    for item in args.variant:
        name, _, where = item.partition("=")
        path = Path(where or name).resolve()
        if not (path / "workflow_orchestrator").is_dir():
            print(f"{path} holds no workflow_orchestrator package", file=sys.stderr)
            return 2
        variants.append((name, path))
    extra = dict(item.split("=", 1) for item in args.env)
    system = System(args.broker_url, keep_logs=args.keep_logs)
    for r in range(args.rounds):
        for name, _ in variants:
            system.add_phase(f"{name}-{r}-warmup", args.warmup, args.window)
            system.add_phase(f"{name}-{r}", args.workflows, args.window)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    started = time.monotonic()
    try:
        with system:
            system.start()
            paths = dict(variants)
            for r in range(args.rounds):
                for name in round_order(list(paths), r):
                    path = paths[name]
                    print(f"{name} (round {r + 1}/{args.rounds})", flush=True)
                    worker = system.orchestrator(
                        args.pool, args.concurrency, extra_env=extra, repo=path, label=name
                    )
                    result = measured_worker(
                        system,
                        worker,
                        f"{name}-{r}-warmup",
                        f"{name}-{r}",
                        quiet=None if args.no_wait_quiet else 0.15,
                    )
                    print(
                        f"  {result['transitions_per_s']} transitions/s, worker CPU "
                        f"{result['cpu_ms_per_transition']['worker']} ms/transition"
                        + (" (disturbed)" if result["disturbed"] else ""),
                        flush=True,
                    )
                    runs[name].append(result)
    except BenchError as exc:
        print(f"comparison failed: {exc}", file=sys.stderr)
        return 2

    def med(name: str, get: Any) -> float:
        return round(statistics.median(get(r) for r in runs[name]), 2)

    rows = []
    ref = variants[0][0]
    ref_tps = med(ref, lambda r: r["transitions_per_s"])
    ref_cpu = med(ref, lambda r: r["cpu_ms_per_transition"]["machine"])
    for name, path in variants:
        tps = med(name, lambda r: r["transitions_per_s"])
        machine_cpu = med(name, lambda r: r["cpu_ms_per_transition"]["machine"])
        rows.append(
            {
                "variant": name,
                "path": str(path),
                "transitions_per_s": tps,
                "all_transitions_per_s": [r["transitions_per_s"] for r in runs[name]],
                "throughput_gain": round(tps / ref_tps - 1, 3),
                "latency_p50_ms": med(name, lambda r: r["latency"]["all"]["p50_ms"]),
                "task_runtime_p50_ms": med(name, lambda r: r["task_runtime"]["p50_ms"]),
                "worker_cpu_ms": med(name, lambda r: r["cpu_ms_per_transition"]["worker"]),
                "rabbitmq_cpu_ms": med(name, lambda r: r["cpu_ms_per_transition"]["rabbitmq"]),
                "machine_cpu_ms": machine_cpu,
                "machine_cpu_change": round(machine_cpu / ref_cpu - 1, 3),
                "disturbed_runs": sum(1 for r in runs[name] if r["disturbed"]),
            }
        )
    table = [
        "| variant | transitions/s (median) | runs | gain | latency p50 (ms) "
        "| task run p50 (ms) | worker CPU ms/tr | RabbitMQ CPU ms/tr | machine CPU ms/tr |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        table.append(
            f"| {row['variant']} | {row['transitions_per_s']} "
            f"| {', '.join(str(x) for x in row['all_transitions_per_s'])} "
            f"| {row['throughput_gain']:+.1%} | {row['latency_p50_ms']} "
            f"| {row['task_runtime_p50_ms']} | {row['worker_cpu_ms']} | {row['rabbitmq_cpu_ms']} "
            f"| {row['machine_cpu_ms']} |"
        )
    markdown = "\n".join(table)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "workflows": args.workflows,
        "rounds": args.rounds,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "rows": rows,
        "runs": runs,
        "markdown": markdown,
        "seconds_total": round(time.monotonic() - started, 1),
    }
    out = write_report(args.json, report)
    print()
    print(markdown)
    print(f"\nfigures written to {out} (took {report['seconds_total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
