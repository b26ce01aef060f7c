"""Which pool and concurrency should the Procfile use? Measure every combination.

Usage (from the repository root, in the project's virtualenv)::

    python bench/sweep.py [--workflows N] [--pools threads,prefork]
                          [--concurrency 1,2,4,8] [--workers 1] [--repeat R]
                          [--env VAR=value ...] [--json out.json]

One emulator and one set of peers serve the whole sweep; for each pool x concurrency the
orchestrator worker is started as the Procfile runs it (with -P/-c replaced), warmed up,
measured on N workflows (default 300: 900 transitions) in a closed loop of W in flight,
and stopped. `--workers 1,2` also measures several worker processes on the one queue
(how the orchestrator scales out: more processes on a host, or more hosts on one broker
with `--env LOCK_URL=redis://127.0.0.1:6379/0`). With --repeat R every combination is measured R times, in an interleaved
order (all combinations, then all again), and the median is kept, which damps the
drift of a shared machine. Prints a table (transitions/s, workflows/s, latency, CPU per
transition, RSS) and says whether the Procfile's pool and concurrency are the best
measured; writes the figures to --json (default bench/results/sweep.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BenchError, add_system_options, write_report  # noqa: E402
from bench.harness import System, measured_worker  # noqa: E402
from bench.measure import machine  # noqa: E402
from bench.processes import procfile_worker  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", "-n", type=int, default=300)
    p.add_argument("--pools", default="threads,prefork")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--workers", default="1", help="worker processes per combination")
    p.add_argument("--repeat", type=int, default=1)
    add_system_options(p, "sweep.json")
    return p.parse_args(argv)


#: Key prefixes of the orchestrator's Redis lock (workflow_orchestrator.locking).
REDIS_PREFIX = "workflow-orchestrator:"


def redis_lock_url(extra: dict[str, str]) -> str | None:
    """LOCK_URL when it names Redis; a run must not use db 0 (the machine's shared one)."""
    url = extra.get("LOCK_URL", "")
    if not url.startswith(("redis://", "rediss://")):
        return None
    from urllib.parse import urlsplit

    db = urlsplit(url).path.strip("/") or "0"
    if db == "0":
        raise SystemExit("LOCK_URL must name a Redis database other than 0, e.g. redis://…/7")
    return url


#: The key by which the test sessions mark a Redis database as theirs (tests/services.py);
#: the sweep marks its database the same way, so no test session takes it meanwhile.
CLAIM_KEY = "wo-tests:claimed-by"


def claim_database(url: str, owner: str) -> None:
    """Take the database only when it is empty, and mark it as taken."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        if client.dbsize() or not client.set(CLAIM_KEY, owner, nx=True, ex=3600):
            raise SystemExit(f"Redis database of {url} is not empty: choose another one")
    finally:
        client.close()


def delete_lock_keys(url: str, owner: str) -> int:
    """Delete the run's keys (the orchestrator's prefixes only; never a flush), then the
    claim if it is still ours."""
    import redis

    client = redis.Redis.from_url(url)
    removed = 0
    for key in client.scan_iter(match=REDIS_PREFIX + "*", count=1000):
        removed += client.delete(key)
    if client.get(CLAIM_KEY) == owner.encode():
        client.delete(CLAIM_KEY)
    client.close()
    return removed


def markdown(rows: list[dict[str, Any]], procfile: tuple[str, int]) -> str:
    best = max(rows, key=lambda r: r["transitions_per_s"])
    out = [
        "| workers | pool | concurrency | transitions/s | workflows/s | latency p50 / p95 (ms) "
        "| worker CPU ms / transition | worker RSS after (MB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        mark = []
        if (r["pool"], r["concurrency"], r["workers"]) == (*procfile, 1):
            mark.append("Procfile")
        if r is best:
            mark.append("best")
        label = f" ({', '.join(mark)})" if mark else ""
        out.append(
            f"| {r['workers']} | {r['pool']}{label} | {r['concurrency']} | {r['transitions_per_s']} "
            f"| {r['workflows_per_s']} | {r['latency_p50_ms']} / {r['latency_p95_ms']} "
            f"| {r['worker_cpu_ms']} | {r['rss_mb_after']} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, p_pool, p_conc = procfile_worker()
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    combos = [(p, c, w) for w in counts for p in pools for c in levels]
    extra = dict(item.split("=", 1) for item in args.env)
    lock_url = redis_lock_url(extra)
    owner = f"wo-bench-sweep-{os.getpid()}"
    if lock_url:
        claim_database(lock_url, owner)
    system = System(args.broker_url, keep_logs=args.keep_logs)
    for r in range(args.repeat):
        for pool, conc, w in combos:
            system.add_phase(f"{pool}-{conc}-{w}-{r}-warmup", args.warmup, args.window)
            system.add_phase(f"{pool}-{conc}-{w}-{r}", args.workflows, args.window)
    results: dict[tuple[str, int, int], list[dict[str, Any]]] = {c: [] for c in combos}
    started = time.monotonic()
    try:
        with system:
            system.start()
            for r in range(args.repeat):
                for pool, conc, w in combos:
                    print(f"{w} x {pool} -c {conc} (round {r + 1}/{args.repeat})", flush=True)
                    result = measured_worker(
                        system,
                        system.orchestrator(pool, conc, extra_env=extra, workers=w),
                        f"{pool}-{conc}-{w}-{r}-warmup",
                        f"{pool}-{conc}-{w}-{r}",
                        quiet=None if args.no_wait_quiet else 0.15,
                    )
                    print(
                        f"  {result['transitions_per_s']} transitions/s, "
                        f"p50 {result['latency']['all']['p50_ms']} ms"
                        + (" (disturbed)" if result["disturbed"] else ""),
                        flush=True,
                    )
                    results[(pool, conc, w)].append(result)
    except BenchError as exc:
        print(f"sweep failed: {exc}", file=sys.stderr)
        return 2
    finally:
        if lock_url:
            print(f"deleted {delete_lock_keys(lock_url, owner)} lock keys from {lock_url}")
    rows = []
    for (pool, conc, w), runs in results.items():
        rows.append(
            {
                "pool": pool,
                "concurrency": conc,
                "workers": w,
                "runs": len(runs),
                "transitions_per_s": round(
                    statistics.median(r["transitions_per_s"] for r in runs), 1
                ),
                "all_transitions_per_s": [r["transitions_per_s"] for r in runs],
                "workflows_per_s": round(statistics.median(r["workflows_per_s"] for r in runs), 1),
                "latency_p50_ms": round(
                    statistics.median(r["latency"]["all"]["p50_ms"] for r in runs), 1
                ),
                "latency_p95_ms": round(
                    statistics.median(r["latency"]["all"]["p95_ms"] for r in runs), 1
                ),
                "worker_cpu_ms": round(
                    statistics.median(r["cpu_ms_per_transition"]["worker"] for r in runs), 2
                ),
                "rss_mb_after": max(r["rss_mb_after"] for r in runs),
                "disturbed": any(r["disturbed"] for r in runs),
            }
        )
    table = markdown(rows, (p_pool, p_conc))
    best = max(rows, key=lambda r: r["transitions_per_s"])
    procfile_row = next(
        (r for r in rows if (r["pool"], r["concurrency"], r["workers"]) == (p_pool, p_conc, 1)),
        None,
    )
    verdict = f"Procfile ({p_pool}, -c {p_conc}): " + (
        f"{procfile_row['transitions_per_s']} transitions/s; best measured: "
        f"{best['pool']} -c {best['concurrency']} at {best['transitions_per_s']}"
        if procfile_row
        else "not among the measured combinations"
    )
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "workflows": args.workflows,
        "window": args.window,
        "repeat": args.repeat,
        "procfile": {"pool": p_pool, "concurrency": p_conc},
        "rows": rows,
        "runs": {f"{p}-{c}-{w}": runs for (p, c, w), runs in results.items()},
        "orchestrator_env": args.env,
        "verdict": verdict,
        "markdown": table,
        "seconds_total": round(time.monotonic() - started, 1),
    }
    out = write_report(args.json, report)
    print()
    print(table)
    print()
    print(verdict)
    print(f"figures written to {out} (sweep took {report['seconds_total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
