"""How close is the orchestrator to the contract's floor? One command, interleaved rounds.

Usage (from the repository root, in the project's virtualenv; RabbitMQ on 127.0.0.1)::

    python bench/run.py --quick             # < 4 minutes: 5 rounds of 400 workflows per side
    python bench/run.py                     # 3 rounds of 1000 per side, with the baseline
                        [--workflows N] [--rounds R] [--pool threads|prefork]
                        [--concurrency C] [--window W] [--warmup M] [--json out.json]
                        [--keep-logs] [--env VAR=value ...] [--skip-baseline]
                        [--no-wait-quiet]

What it does, every part its own subprocess (bench/harness.py), on a RabbitMQ virtual
host of its own (deleted at the end; vhost `/` is never used):

1. starts the Manager emulator (`python -m workflow_orchestrator.emulator`, seeded from
   a JSON file with one exchange, builder and deployer modules, a build and a deploy
   cluster, and every workflow of the run: milestones [build, deploy]);
2. starts the peers (bench/peers.py, threads pool): builder and deployer tasks that call
   back at once with `worker_api.step_completed`, notification tasks that only count;
3. starts, once for the whole run, the workers under test, each as the Procfile runs
   the orchestrator (pool, concurrency, log level):
   * the orchestrator: `celery -A workflow_orchestrator worker` (`--env` adds settings;
     deadlines are on, STEP_TIMEOUT_DEFAULT=3h, so every dispatch also publishes a
     deadline message);
   * the contract floor (bench/baseline.py with chats): per transition exactly the I/O
     the contract requires, the cheapest way: GET + PUT to the Manager, the confirmed
     worker request, the confirmed deadline message of §11.1 with each dispatch, one
     confirmed chat task per event line (§7.1), the completion e-mail (§7.4);
   * unless --skip-baseline (the default with --quick): the plain baseline, one GET, one
     PUT and one confirmed publish per hop, for reference;
4. warms each up (M workflows), then measures R rounds, the order reversed every other
   round: orchestrator, floor[, baseline], [baseline,] floor, orchestrator, ...
   (`harness.round_order`; N workflows per phase, each started by `send_task` of
   `{"id": ..., "notifications_config": ...}` asking for the completion e-mail).

Every phase is a closed loop with W workflows in flight (the peers start the next
workflow when one completes), so the worker under test always has work queued. Before
each phase the run waits (boundedly) for the machine to be idle.

The targets (issue #14) are judged on medians over the rounds:

* `ratio_vs_floor`: the median over rounds of (orchestrator transitions/s) / (floor
  transitions/s of the same round) >= 0.9;
* `worker_cpu_ratio`: the median over rounds of the orchestrator worker's CPU time per
  transition / the floor worker's <= 1.25;
* `calls_per_transition`: the median of the orchestrator's Manager calls per transition
  <= 2.0 (judged at 2 decimals: cached lookups refresh on a timer, about 0.2 calls per
  second whatever the load);
* `rss_mb_per_10k`: the orchestrator worker's RSS growth from the end of its warm-up to
  the end of its last phase, per 10k of the transitions it measured, < 10.

With the two ratios it prints where their median lies, from the run's rounds alone
(`measure.median_interval`: order statistics, at least 90 % confidence, or the widest
interval with 5 rounds or fewer): an interval that straddles a target says the run did
not decide it, on a machine whose rounds move by a third.

Prints the table of docs/performance.md, writes every figure to --json (default
bench/results/latest.json), and as its LAST line::

    ratio_vs_floor=<x> worker_cpu_ratio=<y> calls_per_transition=<z> rss_mb_per_10k=<w>

Exit status 0 when every target is met, 1 when one is missed, 2 when the run failed.
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
from bench.harness import System, run_interleaved  # noqa: E402
from bench.measure import machine, median_interval, rabbitmq_version  # noqa: E402
from bench.processes import procfile_worker  # noqa: E402

TARGETS = {
    "ratio_vs_floor_min": 0.9,
    "worker_cpu_ratio_max": 1.25,
    "manager_calls_per_transition_max": 2.0,
    "rss_growth_mb_per_10k_max": 10.0,
}
WORKFLOW_CALLS = ("GET /workflows/{id}", "PUT /workflows/{id}")
SIDES = (("orchestrator", "orchestrator"), ("floor", "contract floor"), ("baseline", "baseline"))
QUICK = {"workflows": 400, "rounds": 5, "warmup": 40}
FULL = {"workflows": 1000, "rounds": 3, "warmup": 100}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    _, pool, concurrency = procfile_worker()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK['rounds']} rounds of {QUICK['workflows']} workflows, no baseline (< 4 min)",
    )
    p.add_argument("--workflows", "-n", type=int, help="measured workflows per phase")
    p.add_argument("--rounds", "-r", type=int, help="interleaved rounds")
    p.add_argument("--pool", default=pool, choices=["threads", "prefork"], help=f"default {pool}")
    p.add_argument(
        "--concurrency", "-c", type=int, default=concurrency, help=f"default {concurrency}"
    )
    p.add_argument("--skip-baseline", action="store_true", help="do not measure the baseline")
    add_system_options(p, "latest.json", warmup=None)
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.skip_baseline = True
    if args.rounds < 1 or args.workflows < 1:
        p.error("--rounds and --workflows must be at least 1")
    return args


def _progress(label: str) -> Any:
    last = [0.0]

    def show(sample: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] > 5 or sample["done"] >= sample["total"]:
            last[0] = now
            print(f"    {label}: {sample['done']}/{sample['total']} workflows", flush=True)

    return show


def calls_split(phase: dict[str, Any]) -> dict[str, float]:
    """Manager calls per transition: the workflow's GET + PUT, and everything else."""
    calls = phase["manager_calls"]
    per = phase["transitions"]
    workflow = sum(calls.get(k, 0) for k in WORKFLOW_CALLS)
    return {
        "workflow_get_put": round(workflow / per, 4),
        "lookups_and_tokens": round((sum(calls.values()) - workflow) / per, 4),
    }


def _median(values: list[float]) -> float:
    return statistics.median(values)


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the rounds: per side, and the paired ratios of each round."""
    out: dict[str, Any] = {}
    for side, phases in runs.items():
        out[side] = {
            "transitions_per_s": round(_median([p["transitions_per_s"] for p in phases]), 1),
            "all_transitions_per_s": [p["transitions_per_s"] for p in phases],
            "worker_cpu_ms": round(
                _median([p["cpu_ms_per_transition"]["worker"] for p in phases]), 3
            ),
            "all_worker_cpu_ms": [p["cpu_ms_per_transition"]["worker"] for p in phases],
            "machine_cpu_ms": round(
                _median([p["cpu_ms_per_transition"]["machine"] for p in phases]), 3
            ),
            "manager_calls_per_transition": round(
                _median([p["manager_calls_per_transition"] for p in phases]), 3
            ),
            "rss_growth_mb_per_10k": phases[-1]["memory"]["rss_growth_mb_per_10k"],
            "memory": phases[-1]["memory"],
            "disturbed_rounds": sum(1 for p in phases if p["disturbed"]),
            "failed_workflows": sum(p["failed"] for p in phases),
            "duplicates": sum(p["duplicates"] for p in phases),
            "errors_logged": sum(p["errors_logged"] for p in phases),
        }
    orch, floor = runs["orchestrator"], runs.get("floor") or []
    if floor:
        ratios = [
            o["transitions_per_s"] / f["transitions_per_s"]
            for o, f in zip(orch, floor, strict=True)
        ]
        cpu = [
            o["cpu_ms_per_transition"]["worker"] / f["cpu_ms_per_transition"]["worker"]
            for o, f in zip(orch, floor, strict=True)
        ]
        out["ratio_vs_floor"] = round(_median(ratios), 3)
        out["all_ratios_vs_floor"] = [round(x, 3) for x in ratios]
        out["worker_cpu_ratio"] = round(_median(cpu), 3)
        out["all_worker_cpu_ratios"] = [round(x, 3) for x in cpu]
        for name, values in (("ratio_vs_floor", ratios), ("worker_cpu_ratio", cpu)):
            low, high, chance = median_interval(values)
            out[f"{name}_interval"] = {
                "low": round(low, 3),
                "high": round(high, 3),
                "confidence": round(chance, 3),
            }
    return out


def evaluate(summary: dict[str, Any]) -> dict[str, Any]:
    orch = summary["orchestrator"]
    checks: dict[str, Any] = {}
    if "ratio_vs_floor" in summary:
        checks["ratio_vs_floor"] = {
            "value": summary["ratio_vs_floor"],
            "target": f">= {TARGETS['ratio_vs_floor_min']}",
            "met": summary["ratio_vs_floor"] >= TARGETS["ratio_vs_floor_min"],
        }
        checks["worker_cpu_ratio"] = {
            "value": summary["worker_cpu_ratio"],
            "target": f"<= {TARGETS['worker_cpu_ratio_max']}",
            "met": summary["worker_cpu_ratio"] <= TARGETS["worker_cpu_ratio_max"],
        }
    calls = orch["manager_calls_per_transition"]
    checks["calls_per_transition"] = {
        "value": calls,
        "target": f"<= {TARGETS['manager_calls_per_transition_max']} (2 decimals)",
        "met": round(calls, 2) <= TARGETS["manager_calls_per_transition_max"],
    }
    growth = orch["rss_growth_mb_per_10k"]
    checks["rss_mb_per_10k"] = {
        "value": growth,
        "target": f"< {TARGETS['rss_growth_mb_per_10k_max']}",
        "met": growth < TARGETS["rss_growth_mb_per_10k_max"],
    }
    return checks


def last_line(summary: dict[str, Any]) -> str:
    orch = summary["orchestrator"]
    ratio = summary.get("ratio_vs_floor")
    cpu = summary.get("worker_cpu_ratio")
    return (
        f"ratio_vs_floor={'nan' if ratio is None else f'{ratio:.3f}'} "
        f"worker_cpu_ratio={'nan' if cpu is None else f'{cpu:.3f}'} "
        f"calls_per_transition={orch['manager_calls_per_transition']:.3f} "
        f"rss_mb_per_10k={orch['rss_growth_mb_per_10k']:.2f}"
    )


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def _median_phase(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose throughput is the median one (for the latency and CPU rows)."""
    ordered = sorted(phases, key=lambda p: p["transitions_per_s"])
    return ordered[(len(ordered) - 1) // 2]


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    summary = report["summary"]
    sides = [(key, label, _median_phase(runs[key])) for key, label in SIDES if runs.get(key)]
    orch = summary["orchestrator"]
    m = report["machine"]
    first = runs["orchestrator"][0]

    def row(name: str, get: Any) -> str:
        cells = []
        for key, _, phase in sides:
            try:
                cells.append(_fmt(get(key, phase)))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        return f"| {name} | " + " | ".join(cells) + " |"

    out = [
        f"Machine: {m['usable_cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, Celery {m['celery']}, RabbitMQ {m.get('rabbitmq', '?')}; "
        f"pool {report['pool']}, concurrency {report['concurrency']}; "
        f"{report['rounds']} interleaved rounds of {first['workflows']} workflows "
        f"({first['transitions']} transitions) per side, window {first['window']}. "
        "Medians over the rounds; latency, messages and the CPU split are of each side's "
        "median round.",
        "",
        "| | " + " | ".join(label for _, label, _ in sides) + " |",
        "|---|" + "---:|" * len(sides),
        row("transitions/s (median)", lambda k, p: summary[k]["transitions_per_s"]),
        row(
            "transitions/s per round",
            lambda k, p: ", ".join(str(x) for x in summary[k]["all_transitions_per_s"]),
        ),
        row(
            "throughput vs orchestrator",
            lambda k, p: round(summary[k]["transitions_per_s"] / orch["transitions_per_s"], 2),
        ),
    ]
    for q in ("p50", "p99"):
        out.append(
            row(
                f"latency per transition {q} (ms)", lambda k, p, q=q: p["latency"]["all"][f"{q}_ms"]
            )
        )
    out += [
        row(
            "task run time p50 / p99 (ms)",
            lambda k, p: f"{p['task_runtime']['p50_ms']} / {p['task_runtime']['p99_ms']}",
        ),
        row(
            "Manager calls per transition", lambda k, p: summary[k]["manager_calls_per_transition"]
        ),
        row("messages published per transition", lambda k, p: p["messages_per_transition"]),
        row("worker CPU ms per transition (median)", lambda k, p: summary[k]["worker_cpu_ms"]),
        row("whole-machine CPU ms per transition", lambda k, p: summary[k]["machine_cpu_ms"]),
        row("busy cores (of the machine's)", lambda k, p: p["busy_cores"]),
        row(
            "worker RSS at boot / after warm-up / at end (MB)",
            lambda k, p: (
                f"{p['memory']['rss_mb_at_boot']} / {p['memory']['rss_mb_after_warmup']}"
                f" / {p['memory']['rss_mb_at_end']}"
            ),
        ),
        row(
            "RSS growth per 10k transitions (MB)", lambda k, p: summary[k]["rss_growth_mb_per_10k"]
        ),
        row(
            "failed workflows / duplicates / errors logged",
            lambda k, p: (
                f"{summary[k]['failed_workflows']} / {summary[k]['duplicates']} / "
                f"{summary[k]['errors_logged']}"
            ),
        ),
        "",
        "| target | measured (median) | per round | met |",
        "|---|---:|---|:---:|",
    ]
    per_round = {
        "ratio_vs_floor": summary.get("all_ratios_vs_floor"),
        "worker_cpu_ratio": summary.get("all_worker_cpu_ratios"),
    }
    for name, check in report["targets"].items():
        rounds = per_round.get(name)
        out.append(
            f"| {name} {check['target']} | {check['value']} | "
            f"{', '.join(str(x) for x in rounds) if rounds else '-'} | "
            f"{'yes' if check['met'] else '**no**'} |"
        )
    interval = summary.get("ratio_vs_floor_interval")
    if interval:
        out += [
            "",
            f"Where the median of such rounds lies, from these {report['rounds']} rounds alone "
            f"(order statistics, {interval['confidence']:.0%} confidence): ratio_vs_floor "
            f"{interval['low']} to {interval['high']}, worker_cpu_ratio "
            f"{summary['worker_cpu_ratio_interval']['low']} to "
            f"{summary['worker_cpu_ratio_interval']['high']}. An interval that straddles a "
            "target means this run does not decide it: add rounds (`--rounds`) or pool runs.",
        ]
    split = report["orchestrator_calls"]
    out += [
        "",
        f"Manager calls per transition (orchestrator, median round): "
        f"{split['workflow_get_put']} workflow GET + PUT, {split['lookups_and_tokens']} cached "
        "lookups and tokens.",
        "",
        "CPU ms per transition by process (median round of each side):",
        "",
    ]
    names = list(sides[0][2]["cpu_ms_per_transition"])
    out.append("| process | " + " | ".join(label for _, label, _ in sides) + " |")
    out.append("|---|" + "---:|" * len(sides))
    for name in names:
        out.append(row(name, lambda k, p, name=name: p["cpu_ms_per_transition"][name]))
    for key, label, _ in sides:
        disturbed = summary[key]["disturbed_rounds"]
        if disturbed:
            out.append(
                f"\n**Warning**: {disturbed} of the {label}'s rounds were disturbed (other "
                "processes used over 15 % of the busy CPU, or the broker dropped connections)."
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "pool": args.pool,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "quick": args.quick,
        "procfile": " ".join(procfile_worker()[0]),
        "orchestrator_env": args.env,
        "targets_set": TARGETS,
    }
    try:
        report["machine"]["rabbitmq"] = rabbitmq_version(args.broker_url)
    except Exception as exc:  # noqa: BLE001
        print(f"RabbitMQ is not reachable at {args.broker_url}: {exc}", file=sys.stderr)
        return 2
    quiet = None if args.no_wait_quiet else 0.15
    system = System(args.broker_url, keep_logs=args.keep_logs)
    sides = ["orchestrator", "floor"] + ([] if args.skip_baseline else ["baseline"])
    for name in sides:
        kind = {"baseline": name == "baseline", "floor": name == "floor"}
        system.add_phase(f"{name}-warmup", args.warmup, args.window, **kind)
        for r in range(args.rounds):
            system.add_phase(f"{name}-{r}", args.workflows, args.window, **kind)
    env = dict(e.split("=", 1) for e in args.env)
    started = time.monotonic()

    def shown(name: str, r: int, result: dict[str, Any]) -> None:
        print(
            f"  round {r + 1}/{args.rounds} {name}: {result['transitions_per_s']} transitions/s, "
            f"worker CPU {result['cpu_ms_per_transition']['worker']} ms/transition"
            + (" (disturbed)" if result["disturbed"] else ""),
            flush=True,
        )

    try:
        with system:
            print(f"starting the emulator and the peers (run {system.names.suffix})", flush=True)
            system.start()
            workers = {
                "orchestrator": system.orchestrator(args.pool, args.concurrency, extra_env=env),
                "floor": system.baseline(args.pool, args.concurrency, chats=True),
            }
            if not args.skip_baseline:
                workers["baseline"] = system.baseline(args.pool, args.concurrency)
            print(
                f"{', '.join(workers)}: {args.pool} pool, concurrency {args.concurrency}; "
                f"{args.rounds} rounds of {args.workflows} workflows",
                flush=True,
            )
            runs = run_interleaved(
                system,
                workers,
                args.rounds,
                quiet=quiet,
                quiet_max_wait=20.0 if args.quick else 120.0,
                on_phase=shown,
                on_sample=None if args.quick else _progress,
            )
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    report["seconds_total"] = round(time.monotonic() - started, 1)
    report["runs"] = runs
    report["summary"] = summary = summarise(runs)
    report["targets"] = evaluate(summary)
    report["orchestrator_calls"] = calls_split(_median_phase(runs["orchestrator"]))
    report["markdown"] = markdown(report)
    out = write_report(args.json, report)
    print()
    print(report["markdown"])
    print(f"\nfigures written to {out} (run took {report['seconds_total']} s)")
    if summary["orchestrator"]["failed_workflows"]:
        print("warning: some orchestrator workflows failed; see the worker's log (--keep-logs)")
    met = all(c["met"] for c in report["targets"].values())
    print(last_line(summary), flush=True)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
