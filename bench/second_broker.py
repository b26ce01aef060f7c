"""Does a build dispatched to a second broker cost throughput? Interleaved, one worker.

Usage (from the repository root, in the project's virtualenv; RabbitMQ on 127.0.0.1)::

    python bench/second_broker.py [--workflows N] [--rounds R] [--warmup M] [--window W]
                                  [--pool P] [--concurrency C] [--env VAR=value ...]
                                  [--json out.json] [--keep-logs] [--no-wait-quiet]

The system of bench/run.py (bench/harness.py), with a second RabbitMQ virtual host
standing in for the broker of another exchange: the emulator's registry holds exchange 2
(a builder module, broker 2 whose one connection is the second vhost, with its own
`GET /messaging/exchanges/2/brokers` restriction row), and a second peers process runs
the builder on that vhost and reports back to the orchestrator's own broker.

One orchestrator worker (the Procfile's command) is measured in interleaved rounds (the
order reversed every other round) of two kinds of workflows, which differ only in where
their build goes:

* `one-broker`: start messages carry `build_messaging_exchange_id: "1"` (the own
  exchange: the build goes to the orchestrator's own broker, through the Celery app's
  producer pool);
* `second-broker`: `build_messaging_exchange_id: "2"`: the build goes to broker 2,
  resolved through the Manager (cached) and published through the pooled connections
  of `broker_pool.BrokerPublisher`, with a confirm from that broker.

Both write the same event lines (the override line included), so the only difference is
the build's broker. Prints both medians and `second_broker_ratio` (the median over rounds
of second-broker / one-broker transitions/s; target >= 0.9), last line::

    second_broker_ratio=<x> one_broker_tps=<a> second_broker_tps=<b>

Exit status 0 when the target is met, 1 when missed, 2 when the run failed.
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
from bench.harness import System, round_order  # noqa: E402
from bench.measure import machine, rss_bytes, wait_for_quiet  # noqa: E402
from bench.processes import procfile_worker  # noqa: E402

TARGET = 0.9
KINDS = {"one-broker": "1", "second-broker": "2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    _, pool, concurrency = procfile_worker()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", "-n", type=int, default=400)
    p.add_argument("--rounds", "-r", type=int, default=5)
    p.add_argument("--pool", default=pool, choices=["threads", "prefork"])
    p.add_argument("--concurrency", "-c", type=int, default=concurrency)
    add_system_options(p, "second-broker.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    system = System(args.broker_url, keep_logs=args.keep_logs, second_broker=True)
    for kind, exchange in KINDS.items():
        fields = {"build_messaging_exchange_id": exchange}
        system.add_phase(f"{kind}-warmup", args.warmup, args.window, start_fields=fields)
        for r in range(args.rounds):
            system.add_phase(f"{kind}-{r}", args.workflows, args.window, start_fields=fields)
    env = dict(e.split("=", 1) for e in args.env)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    started = time.monotonic()
    try:
        with system:
            print(f"starting the system with a second broker (run {system.names.suffix})")
            system.start()
            worker = system.orchestrator(args.pool, args.concurrency, extra_env=env).start()
            try:
                system.wait_ready(worker)
                time.sleep(0.5)
                for kind in KINDS:
                    system.run_phase(f"{kind}-warmup", worker)
                rss_first = rss_bytes(worker.tree())
                for r in range(args.rounds):
                    for kind in round_order(list(KINDS), r):
                        if not args.no_wait_quiet:
                            wait_for_quiet(0.15, 60.0)
                        result = system.run_phase(f"{kind}-{r}", worker)
                        runs[kind].append(result)
                        print(
                            f"  round {r + 1}/{args.rounds} {kind}: "
                            f"{result['transitions_per_s']} transitions/s, worker CPU "
                            f"{result['cpu_ms_per_transition']['worker']} ms/transition, "
                            f"{result['failed']} failed"
                            + (" (disturbed)" if result["disturbed"] else ""),
                            flush=True,
                        )
                rss_last = rss_bytes(worker.tree())
                remote_log = worker.log()
            finally:
                worker.stop()
            peers_b_log = system.peers_b.log() if system.peers_b else ""
    except BenchError as exc:
        print(f"second-broker run failed: {exc}", file=sys.stderr)
        return 2
    med = {
        kind: {
            "transitions_per_s": round(statistics.median(r["transitions_per_s"] for r in rs), 1),
            "all_transitions_per_s": [r["transitions_per_s"] for r in rs],
            "worker_cpu_ms": round(
                statistics.median(r["cpu_ms_per_transition"]["worker"] for r in rs), 3
            ),
            "manager_calls_per_transition": round(
                statistics.median(r["manager_calls_per_transition"] for r in rs), 3
            ),
            "failed": sum(r["failed"] for r in rs),
        }
        for kind, rs in runs.items()
    }
    ratios = [
        b["transitions_per_s"] / a["transitions_per_s"]
        for a, b in zip(runs["one-broker"], runs["second-broker"], strict=True)
    ]
    ratio = round(statistics.median(ratios), 3)
    # Where did the builds go? The peers on broker 2 log nothing per task (WARNING level),
    # so the check is the orchestrator's own "dispatched build ... on broker 2" lines.
    on_b2 = sum(
        1 for line in remote_log.splitlines() if "dispatched build" in line and "broker 2" in line
    )
    table = [
        "| | one broker (build on the own broker) | second broker (build on broker 2) |",
        "|---|---:|---:|",
        f"| transitions/s (median) | {med['one-broker']['transitions_per_s']} "
        f"| {med['second-broker']['transitions_per_s']} |",
        "| transitions/s per round | "
        + " | ".join(", ".join(str(x) for x in med[k]["all_transitions_per_s"]) for k in KINDS)
        + " |",
        f"| worker CPU ms per transition (median) | {med['one-broker']['worker_cpu_ms']} "
        f"| {med['second-broker']['worker_cpu_ms']} |",
        f"| Manager calls per transition (median) "
        f"| {med['one-broker']['manager_calls_per_transition']} "
        f"| {med['second-broker']['manager_calls_per_transition']} |",
        f"| failed workflows | {med['one-broker']['failed']} | {med['second-broker']['failed']} |",
        "",
        f"second broker / one broker, per round: {', '.join(f'{x:.3f}' for x in ratios)}; "
        f"median {ratio} (target >= {TARGET}: {'met' if ratio >= TARGET else 'missed'}). "
        f"Builds the worker logged as dispatched on broker 2: {on_b2}. Worker RSS "
        f"{rss_first / 2**20:.1f} -> {rss_last / 2**20:.1f} MB.",
    ]
    markdown = "\n".join(table)
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "rounds": args.rounds,
        "workflows": args.workflows,
        "summary": med,
        "ratios": ratios,
        "second_broker_ratio": ratio,
        "builds_on_broker_2": on_b2,
        "peers_b_errors": peers_b_log.count("ERROR"),
        "runs": runs,
        "markdown": markdown,
        "seconds_total": round(time.monotonic() - started, 1),
    }
    out = write_report(args.json, report)
    print()
    print(markdown)
    print(f"\nfigures written to {out} (took {report['seconds_total']} s)")
    print(
        f"second_broker_ratio={ratio:.3f} "
        f"one_broker_tps={med['one-broker']['transitions_per_s']:.1f} "
        f"second_broker_tps={med['second-broker']['transitions_per_s']:.1f}"
    )
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
