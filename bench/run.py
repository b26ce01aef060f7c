"""How close is the orchestrator to the floor? One command, one run, all measured.

Usage (from the repository root, in the project's virtualenv; RabbitMQ on 127.0.0.1)::

    python bench/run.py [--workflows N] [--pool threads|prefork] [--concurrency C]
                        [--window W] [--warmup M] [--json out.json] [--keep-logs]
                        [--env VAR=value ...] [--skip-baseline] [--skip-floor]
                        [--no-wait-quiet]

What it does, every part its own subprocess (bench/harness.py):

1. starts the Manager emulator (`python -m workflow_orchestrator.emulator`, seeded from
   a JSON file with one exchange, builder and deployer modules, a build and a deploy
   cluster, and every workflow of the run: milestones [build, deploy]);
2. starts the peers (bench/peers.py, threads pool): builder and deployer tasks that call
   back at once with `worker_api.step_completed`, notification tasks that only count;
3. the baseline: bench/baseline.py, a plain Celery task that does per hop only what a
   minimal orchestrator cannot avoid (one GET and one PUT to the emulator with the bearer
   token over a keep-alive session, one confirmed send_task to the next hop), started
   with the Procfile's command line, pool and concurrency; M warm-up workflows, then N
   measured ones;
4. the contract floor: the same baseline plus the chat notifications the contract
   requires (one confirmed `notifications.hipchat` task per event line, 8 per workflow,
   as the orchestrator sends), to tell the contract's own cost from the orchestrator's;
5. the orchestrator: `celery -A workflow_orchestrator worker` exactly as the Procfile
   runs it (`--pool`/`--concurrency` override its -P/-c, `--env` adds settings), M
   warm-up then N measured workflows, each started by `send_task` of `{"id": ...}` (plus
   `bench_sent_at`, an unknown key the orchestrator passes through, for latency).

Every phase is a closed loop with W workflows in flight (the peers start the next
workflow when one completes), so the worker under test always has work queued. Before
each side the run waits for the machine to be idle (other test runs share the cores).

Prints, and writes to --json (default bench/results/latest.json): transitions/s and
workflows/s of each, the ratios orchestrator/baseline (the target) and
orchestrator/contract floor, latency per transition (from the message that triggered it
being published to the next message being received by the next party; p50/p95/p99, which
at window W includes queueing), the task run time Celery logs, Manager calls per
transition (the emulator's counters), CPU time per transition of every process involved,
the orchestrator worker's RSS (at boot, before and after the measured phase, growth per
10k transitions) and the machine. The markdown it prints is the table of
docs/performance.md.

Defaults: N=2000, W=64, M=100; about 2 minutes on a 2-core machine. Exit status 0 when
every target is met, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, BenchError  # noqa: E402
from bench.harness import System, measured_worker  # noqa: E402
from bench.measure import machine, rabbitmq_version  # noqa: E402
from bench.processes import procfile_worker  # noqa: E402

TARGETS = {
    "throughput_ratio_min": 0.8,
    "manager_calls_per_transition_max": 2.0,
    "rss_growth_mb_per_10k_max": 10.0,
}
WORKFLOW_CALLS = ("GET /workflows/{id}", "PUT /workflows/{id}")
SIDES = (("orchestrator", "orchestrator"), ("baseline", "baseline"), ("floor", "contract floor"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    _, pool, concurrency = procfile_worker()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workflows", "-n", type=int, default=2000, help="measured workflows per side")
    p.add_argument("--pool", default=pool, choices=["threads", "prefork"], help=f"default {pool}")
    p.add_argument(
        "--concurrency", "-c", type=int, default=concurrency, help=f"default {concurrency}"
    )
    p.add_argument("--window", "-w", type=int, default=64, help="workflows in flight")
    p.add_argument("--warmup", type=int, default=100, help="warm-up workflows per side")
    p.add_argument("--json", default=str(RESULTS / "latest.json"), help="where the figures go")
    p.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//")
    p.add_argument("--skip-baseline", action="store_true", help="do not measure the baseline")
    p.add_argument("--skip-floor", action="store_true", help="do not measure the contract floor")
    p.add_argument("--keep-logs", action="store_true", help="keep bench/results/logs/*")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="VAR=value",
        help="extra orchestrator setting, e.g. LOCK_URL=redis://127.0.0.1:6379/0 (repeatable)",
    )
    p.add_argument(
        "--no-wait-quiet",
        action="store_true",
        help="do not wait for an idle machine before each side",
    )
    return p.parse_args(argv)


def _progress(label: str) -> Any:
    last = [0.0]

    def show(sample: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - last[0] > 2 or sample["done"] >= sample["total"]:
            last[0] = now
            print(f"  {label}: {sample['done']}/{sample['total']} workflows", flush=True)

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


def evaluate(orch: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    if base:
        ratio = orch["transitions_per_s"] / base["transitions_per_s"]
        checks["throughput_ratio"] = {
            "value": round(ratio, 3),
            "target": f">= {TARGETS['throughput_ratio_min']}",
            "met": ratio >= TARGETS["throughput_ratio_min"],
        }
    # Cached lookups refresh on a timer (MODULE_CACHE_SECONDS), not per transition: they
    # add ~0.2 calls per second whatever the load, hence the comparison at 2 decimals.
    calls = orch["manager_calls_per_transition"]
    checks["manager_calls_per_transition"] = {
        "value": calls,
        "target": f"<= {TARGETS['manager_calls_per_transition_max']} (2 decimals)",
        "met": round(calls, 2) <= TARGETS["manager_calls_per_transition_max"],
    }
    growth = orch["rss_growth_mb_per_10k"]
    checks["rss_growth_mb_per_10k"] = {
        "value": growth,
        "target": f"< {TARGETS['rss_growth_mb_per_10k_max']}",
        "met": growth < TARGETS["rss_growth_mb_per_10k_max"],
    }
    return checks


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def markdown(report: dict[str, Any]) -> str:
    sides = [(key, label, report[key]) for key, label in SIDES if report.get(key)]
    orch = report["orchestrator"]
    m = report["machine"]

    def row(name: str, get: Any) -> str:
        cells = []
        for _, _, phase in sides:
            try:
                cells.append(_fmt(get(phase)))
            except (KeyError, TypeError):
                cells.append("-")
        return f"| {name} | " + " | ".join(cells) + " |"

    out = [
        f"Machine: {m['usable_cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, Celery {m['celery']}, RabbitMQ {m.get('rabbitmq', '?')}; "
        f"pool {report['pool']}, concurrency {report['concurrency']}, "
        f"{orch['workflows']} workflows ({orch['transitions']} transitions) per side, "
        f"window {orch['window']}.",
        "",
        "| | " + " | ".join(label for _, label, _ in sides) + " |",
        "|---|" + "---:|" * len(sides),
        row("transitions/s", lambda p: p["transitions_per_s"]),
        row("workflows/s", lambda p: p["workflows_per_s"]),
        row(
            "throughput vs orchestrator",
            lambda p: round(p["transitions_per_s"] / orch["transitions_per_s"], 2),
        ),
    ]
    for q in ("p50", "p95", "p99"):
        out.append(
            row(f"latency per transition {q} (ms)", lambda p, q=q: p["latency"]["all"][f"{q}_ms"])
        )
    out += [
        row(
            "task run time p50 / p99 (ms)",
            lambda p: f"{p['task_runtime']['p50_ms']} / {p['task_runtime']['p99_ms']}",
        ),
        row("Manager calls per transition", lambda p: p["manager_calls_per_transition"]),
        row("messages published per transition", lambda p: p["messages_per_transition"]),
        row("worker CPU ms per transition", lambda p: p["cpu_ms_per_transition"]["worker"]),
        row("whole-machine CPU ms per transition", lambda p: p["cpu_ms_per_transition"]["machine"]),
        row("busy cores (of the machine's)", lambda p: p["busy_cores"]),
        row(
            "worker RSS at boot / before / after (MB)",
            lambda p: f"{p['rss_mb_at_boot']} / {p['rss_mb_before']} / {p['rss_mb_after']}",
        ),
        row("RSS growth per 10k transitions (MB)", lambda p: p["rss_growth_mb_per_10k"]),
        "",
        "| target | measured | met |",
        "|---|---:|:---:|",
    ]
    for name, check in report["targets"].items():
        out.append(
            f"| {name.replace('_', ' ')} {check['target']} | {check['value']} | "
            f"{'yes' if check['met'] else '**no**'} |"
        )
    split = report["orchestrator_calls"]
    out += [
        "",
        f"Manager calls per transition (orchestrator): {split['workflow_get_put']} workflow "
        f"GET + PUT, {split['lookups_and_tokens']} cached lookups and tokens.",
    ]
    if report.get("floor"):
        out.append(
            "Orchestrator / contract floor throughput: "
            f"{orch['transitions_per_s'] / report['floor']['transitions_per_s']:.3f}."
        )
    out += ["", "CPU ms per transition by process:", ""]
    names = list(orch["cpu_ms_per_transition"])
    out.append("| process | " + " | ".join(label for _, label, _ in sides) + " |")
    out.append("|---|" + "---:|" * len(sides))
    for name in names:
        out.append(row(name, lambda p, name=name: p["cpu_ms_per_transition"][name]))
    for _, label, phase in sides:
        if phase.get("disturbed"):
            out.append(
                f"\n**Warning**: the {label} phase was disturbed (other processes used "
                f"{phase['other_cpu_share']:.0%} of the busy CPU, "
                f"{phase['broker_errors_logged']} broker connection errors logged); "
                "rerun on a quiet machine."
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine(),
        "pool": args.pool,
        "concurrency": args.concurrency,
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
    plan: list[tuple[str, Any]] = []
    if not args.skip_baseline:
        plan.append(("baseline", lambda: system.baseline(args.pool, args.concurrency)))
    if not args.skip_floor:
        plan.append(("floor", lambda: system.baseline(args.pool, args.concurrency, chats=True)))
    env = dict(e.split("=", 1) for e in args.env)
    plan.append(
        ("orchestrator", lambda: system.orchestrator(args.pool, args.concurrency, extra_env=env))
    )
    for name, _ in plan:
        system.add_phase(
            f"{name}-warmup", args.warmup, args.window, baseline=name != "orchestrator"
        )
        system.add_phase(name, args.workflows, args.window, baseline=name != "orchestrator")
    started = time.monotonic()
    try:
        with system:
            print(f"starting the emulator and the peers (run {system.names.suffix})", flush=True)
            system.start()
            for name, make in plan:
                print(f"{name}: {args.pool} pool, concurrency {args.concurrency}", flush=True)
                report[name] = measured_worker(
                    system,
                    make(),
                    f"{name}-warmup" if args.warmup else None,
                    name,
                    quiet=quiet,
                    on_sample=_progress(name),
                )
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    report["seconds_total"] = round(time.monotonic() - started, 1)
    report["targets"] = evaluate(report["orchestrator"], report.get("baseline"))
    report["orchestrator_calls"] = calls_split(report["orchestrator"])
    report["markdown"] = markdown(report)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print()
    print(report["markdown"])
    print(f"\nfigures written to {out} (run took {report['seconds_total']} s)")
    return 0 if all(c["met"] for c in report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
