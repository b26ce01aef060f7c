"""What bench/run.py, bench/sweep.py and bench/profile.py share: a whole system on this
machine, every part its own subprocess, and the measurements taken around it.

* the Manager emulator: `python -m workflow_orchestrator.emulator`, seeded with a JSON
  file (exchange, modules, clusters and every workflow the run will use);
* the peers (bench/peers.py): builder, deployer and notification tasks, threads pool;
* the system under test, started and stopped per phase: the orchestrator worker exactly
  as the Procfile runs it (pool and concurrency overridable), or the baseline worker
  (bench/baseline.py) with the same command line shape.

Queue names carry a per-run suffix, so a run never meets another run's messages, and
they are deleted at the end. A phase is a closed loop: `window` workflows are in flight
at any time (the peers start the next one when one completes). The harness samples the
CPU time of every process involved (from /proc), the worker tree's RSS, the emulator's
call counters, and reads the latency samples the peers took.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench import vhosts
from bench.common import (
    DEFAULT_BROKER,
    MILESTONES,
    ORCHESTRATE_TASK,
    REPO,
    RESULTS,
    START_FIELDS,
    TRANSITIONS_PER_WORKFLOW,
    BenchError,
)
from bench.measure import (
    cpu_seconds,
    find_process,
    machine_busy_seconds,
    process_tree,
    pss_bytes,
    rss_bytes,
    slope,
    summary_ms,
    wait_for_quiet,
)
from bench.processes import Child, Group, procfile_worker, worker_command

# -- the system ------------------------------------------------------------------------------


@dataclass
class Names:
    suffix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def q(self, name: str) -> str:
        return f"bench_{self.suffix}_{name}"

    @property
    def orchestration(self) -> str:
        return self.q("orchestration")

    @property
    def baseline(self) -> str:
        return self.q("baseline")

    @property
    def floor(self) -> str:
        """The contract floor's own queue: with its worker and the baseline's both up
        for a whole run, they must not consume each other's phases."""
        return self.q("floor")

    def all_queues(self) -> list[str]:
        plain = ["builder", "deployer", "deploy_oa", "hipchat", "email", "done"]
        main = [self.orchestration, self.baseline, self.floor]
        waits = [f"{q}.wait.{n}s" for q in main for n in (2**i for i in range(15))]
        return [
            *main,
            *(f"{q}_error" for q in main),
            *(self.q(n) for n in plain),
            *waits,
        ]


@dataclass
class PhaseSpec:
    name: str
    queue: str
    ids: list[str]
    window: int
    start_fields: dict[str, Any] = field(default_factory=lambda: dict(START_FIELDS))


class System:
    """Emulator + peers, and the workers under test started one at a time.

    With `own_vhost` (the default) the run makes a RabbitMQ virtual host of its own on
    `broker_url`'s server and uses only that one (the machine's broker is shared; vhost
    `/` stays as it was); it is deleted with everything in it at the end. With
    `second_broker`, a second virtual host stands in for another exchange's broker: the
    emulator's registry has exchange 2 (a builder module, a build cluster
    `build-cluster-2`, broker 2 whose connection is that vhost), and a second peers
    process runs the builder there (see `second_broker_fields`).
    """

    def __init__(
        self,
        broker_url: str = DEFAULT_BROKER,
        keep_logs: bool = False,
        *,
        own_vhost: bool = True,
        second_broker: bool = False,
    ) -> None:
        self.server_url = broker_url
        self.broker_url = broker_url
        self.own_vhost = own_vhost
        self.second_broker = second_broker
        self.second_url = ""
        self.vhosts: list[str] = []
        self.names = Names()
        self.secret = f"bench-{uuid.uuid4().hex}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.names.suffix}-"))
        self.logdir = RESULTS / "logs"
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.keep_logs = keep_logs
        self.phases: dict[str, PhaseSpec] = {}
        self.emulator: Child | None = None
        self.peers: Child | None = None
        self.peers_b: Child | None = None
        self.url = ""
        self.caller: Any = None
        self.rabbit_pid = find_process("beam.smp")
        self._children: list[Child] = []

    # -- set-up -------------------------------------------------------------------------

    def add_phase(
        self,
        name: str,
        workflows: int,
        window: int,
        baseline: bool = False,
        start_fields: dict[str, Any] | None = None,
        floor: bool = False,
    ) -> None:
        """A phase of `workflows` workflows, `window` in flight, for the orchestrator, or
        with `baseline` for the baseline worker, with `floor` for the contract floor."""
        # Workflow ids are UUIDs, as the Manager's are (it refuses anything else).
        space = uuid.uuid5(uuid.NAMESPACE_URL, f"bench/{self.names.suffix}/{name}")
        ids = [str(uuid.uuid5(space, str(i))) for i in range(workflows)]
        if floor:
            queue = self.names.floor
        elif baseline:
            queue = self.names.baseline
        else:
            queue = self.names.orchestration
        fields = {**START_FIELDS, **(start_fields or {})}
        self.phases[name] = PhaseSpec(name, queue, ids, min(window, workflows), fields)

    def _log(self, name: str) -> Path:
        return self.logdir / f"{self.names.suffix}-{name}.log"

    def _child(self, name: str, cmd: list[str], env: dict[str, str], repo: Path = REPO) -> Child:
        child = Child(name, cmd, env, self._log(name), repo)
        self._children.append(child)
        return child

    def _make_vhosts(self) -> None:
        if self.own_vhost:
            name = f"wo-bench-{self.names.suffix}"
            self.vhosts.append(name)
            self.broker_url = vhosts.create(self.server_url, name)
        if self.second_broker:
            name = f"wo-bench-{self.names.suffix}-b2"
            self.vhosts.append(name)
            self.second_url = vhosts.create(self.server_url, name)

    def start(self) -> System:
        """Start the emulator (seeded with every phase's workflows) and the peers."""
        self._make_vhosts()
        seed: dict[str, Any] = {
            "exchanges": [{"id": "1", "name": "bench"}],
            "clusters": [
                {
                    "etcd_token": "build-cluster-1",
                    "messaging_exchange_id": "1",
                    "allow_docker_builds": True,
                },
                {"etcd_token": "deploy-cluster-1", "messaging_exchange_id": "1"},
            ],
            "modules": [
                {"exchange_id": "1", "type": "builder", "hostname": "bench-builder"},
                {"exchange_id": "1", "type": "deployer", "hostname": "bench-deployer"},
            ],
            "workflows": [
                {
                    "id": wid,
                    "deployment_repo": "Bench-Org/app_docker",
                    "deployment_repo_git_ref": "master",
                    "source_repo": "Bench-Org/app",
                    "source_repo_git_ref": "0123abc",
                    "milestones": MILESTONES,
                    "execute_options": {"force_build": False},
                }
                for spec in self.phases.values()
                for wid in spec.ids
            ],
        }
        if self.second_broker:
            from urllib.parse import unquote, urlsplit

            b2 = urlsplit(self.second_url)
            seed["exchanges"].append({"id": "2", "name": "bench second broker"})
            seed["clusters"].append(
                {
                    "etcd_token": "build-cluster-2",
                    "messaging_exchange_id": "2",
                    "allow_docker_builds": False,
                }
            )
            seed["modules"].append(
                {"exchange_id": "2", "type": "builder", "hostname": "bench-builder-2"}
            )
            seed["brokers"] = [{"id": 2, "exchange_id": "2", "name": "bench broker 2"}]
            seed["broker_connections"] = [
                {
                    "broker_id": 2,
                    "host": b2.hostname,
                    "port": b2.port,
                    "username": unquote(b2.username or ""),
                    "password": unquote(b2.password or ""),
                    "virtual_host": unquote(b2.path.lstrip("/")),
                }
            ]
        seed_path = self.workdir / "seed.json"
        seed_path.write_text(json.dumps(seed))
        self.emulator = self._child(
            "emulator",
            [
                sys.executable,
                "-m",
                "workflow_orchestrator.emulator",
                "--port",
                "0",
                "--broker-url",
                self.broker_url,
                "--client-secret",
                self.secret,
                "--queue-name",
                self.names.orchestration,
                "--seed",
                str(seed_path),
                "--log-level",
                "WARNING",
            ],
            {},
        ).start()
        self.url = self.emulator.wait_for_log(r"listening on (http://\S+)", 60).group(1)

        plan = {
            "broker_url": self.broker_url,
            "orchestrate_task": ORCHESTRATE_TASK,
            "orchestration_queue": self.names.orchestration,
            "builder": {"task": "builder.build", "queue": self.names.q("builder")},
            "deployer": {"task": "deployer.deploy", "queue": self.names.q("deployer")},
            "hipchat": {"task": "notifications.hipchat", "queue": self.names.q("hipchat")},
            "email": {"task": "notifications.email", "queue": self.names.q("email")},
            "done": {"task": "bench.done", "queue": self.names.q("done")},
            "status_path": str(self.workdir / "peers-status.json"),
            "latency_dir": str(self.workdir),
            "start_fields": START_FIELDS,
            "phases": {
                s.name: {
                    "queue": s.queue,
                    "ids": s.ids,
                    "window": s.window,
                    "start_fields": s.start_fields,
                }
                for s in self.phases.values()
            },
        }
        self.plan = plan
        (self.workdir / "plan.json").write_text(json.dumps(plan))
        queues = ",".join(
            plan[k]["queue"] for k in ("builder", "deployer", "hipchat", "email", "done")
        )
        self.peers = self._peer_worker(
            "peers",
            self.workdir / "plan.json",
            queues,
            16,
            lambda: bool(self.peer_status().get("ready")),
        )
        if self.second_broker:
            self._start_peers_b()

        from workflow_orchestrator.worker_api import worker_app

        self.caller = worker_app(
            "bench-caller", self.broker_url, queues=[], orchestration_queue=self.names.orchestration
        )
        return self

    def _start_peers_b(self) -> None:
        """The builder of exchange 2, consuming on the second broker; it reports back to
        the orchestrator's own broker (as a worker in another region does)."""
        plan = {
            **self.plan,
            "broker_url": self.second_url,
            "callback_broker_url": self.broker_url,
            "status_path": str(self.workdir / "peers-b-status.json"),
            "latency_dir": str(self.workdir / "peers-b"),
        }
        (self.workdir / "peers-b").mkdir(exist_ok=True)
        (self.workdir / "plan-b.json").write_text(json.dumps(plan))
        status = self.workdir / "peers-b-status.json"
        self.peers_b = self._peer_worker(
            "peers-b", self.workdir / "plan-b.json", plan["builder"]["queue"], 8, status.exists
        )

    def _peer_worker(
        self, name: str, plan: Path, queues: str, concurrency: int, ready: Callable[[], bool]
    ) -> Child:
        """A bench.peers worker (threads pool) on `queues`, started and ready."""
        child = self._child(
            name,
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.peers",
                "worker",
                "-P",
                "threads",
                "-c",
                str(concurrency),
                "-Q",
                queues,
                "-n",
                f"bench-{name}-{self.names.suffix}@bench",
                "--without-mingle",
                "--without-gossip",
                "-l",
                "WARNING",
            ],
            {"BENCH_PLAN": str(plan)},
        ).start()
        deadline = time.monotonic() + 60
        while not ready():
            if not child.alive():
                raise BenchError(f"{name} exited early:\n{child.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{name} not ready within 60 s:\n{child.tail()}")
            time.sleep(0.1)
        return child

    # -- the workers under test -----------------------------------------------------------------

    def orchestrator_env(self) -> dict[str, str]:
        n = self.names
        return {
            "EXCHANGE_ID": "1",
            "BROKER_ID": "1",
            "MANAGER_URL": self.url,
            "OAUTH_LOGIN_URL": f"{self.url}/oauth/token",
            "OAUTH_CLIENT_ID": "orchestrator",
            "OAUTH_CLIENT_SECRET": self.secret,
            "QUEUE_NAME": n.orchestration,
            "CELERY_BROKER_URL": self.broker_url,
            "HOSTNAME": f"bench-orchestrator-{n.suffix}",
            "LOCK_DIR": str(self.workdir / "locks"),
            "UI_URL": "http://ui.bench",
            "BUILDER_QUEUE": n.q("builder"),
            "DEPLOYER_QUEUE": n.q("deployer"),
            "DEPLOY_OA_QUEUE": n.q("deploy_oa"),
            "HIPCHAT_QUEUE": n.q("hipchat"),
            "EMAIL_QUEUE": n.q("email"),
            # Deadlines on (the default, stated so a run shows it): every dispatch also
            # publishes a deadline message to a TTL wait queue.
            "STEP_TIMEOUT_DEFAULT": "3h",
        }

    def orchestrator(
        self,
        pool: str | None = None,
        concurrency: int | None = None,
        extra_env: dict | None = None,
        workers: int = 1,
        repo: Path = REPO,
        label: str = "orchestrator",
    ) -> Child | Group:
        """The orchestrator worker as the Procfile runs it (pool and concurrency overridable);
        `workers` > 1 starts that many, each its own process, all on the same queue. `repo`
        runs another tree's package and Procfile (a patched copy, for A/B comparisons)."""
        args, p_pool, p_conc = procfile_worker(repo)
        pool, concurrency = pool or p_pool, concurrency or p_conc
        env = {**self.orchestrator_env(), **(extra_env or {})}
        children = []
        for i in range(workers):
            name = f"{label}-{pool}-{concurrency}" + (f"-w{i}" if workers > 1 else "")
            cmd = worker_command(
                args, env, pool, concurrency, f"bench-{name}-{self.names.suffix}@bench"
            )
            children.append(self._child(name, cmd, env, Path(repo)))
        return children[0] if workers == 1 else Group(children)

    def baseline(
        self, pool: str | None = None, concurrency: int | None = None, chats: bool = False
    ) -> Child:
        """The baseline worker, with the Procfile's command line shape, pool and concurrency;
        with `chats`, the contract floor (the baseline plus the contract's chat fan-out)."""
        args, p_pool, p_conc = procfile_worker()
        pool, concurrency = pool or p_pool, concurrency or p_conc
        conf = {
            "broker_url": self.broker_url,
            "queue": self.names.floor if chats else self.names.baseline,
            "orchestrate_task": ORCHESTRATE_TASK,
            "manager_url": self.url,
            "token_url": f"{self.url}/oauth/token",
            "client_id": "orchestrator",
            "client_secret": self.secret,
            "builder": self.plan["builder"],
            "deployer": self.plan["deployer"],
            "done": self.plan["done"],
            "hipchat": self.plan["hipchat"],
            "email": self.plan["email"],
            "chats": chats,
            "ui_url": "http://ui.bench",
            "step_timeout_seconds": 3 * 3600,
            "schedule_poll_seconds": 600,
        }
        path = self.workdir / ("floor.json" if chats else "baseline.json")
        path.write_text(json.dumps(conf))
        queue = self.names.floor if chats else self.names.baseline
        env = {"BENCH_BASELINE": str(path), "QUEUE_NAME": queue}
        shaped = ["celery", "-A", "bench.baseline", *args[3:]]  # same flags as the Procfile
        name = f"{'floor' if chats else 'baseline'}-{pool}-{concurrency}"
        cmd = worker_command(
            shaped, env, pool, concurrency, f"bench-{name}-{self.names.suffix}@bench"
        )
        return self._child(name, cmd, env)

    @staticmethod
    def wait_ready(worker: Child | Group, timeout: float = 60) -> None:
        worker.wait_for_log(r"\bready\.", timeout)

    # -- observation ----------------------------------------------------------------------------

    def peer_status(self) -> dict[str, Any]:
        try:
            return json.loads(Path(self.workdir / "peers-status.json").read_text())
        except (OSError, ValueError):
            return {}

    def counters(self) -> dict[str, int]:
        return requests.get(f"{self.url}/_emulator/counters", timeout=10).json()

    def reset_counters(self) -> None:
        requests.delete(f"{self.url}/_emulator/counters", timeout=10).raise_for_status()

    def cpu(self, worker: Child | Group) -> dict[str, float]:
        peers = process_tree(self.peers.pid if self.peers else None)
        peers += process_tree(self.peers_b.pid if self.peers_b else None)
        parts = {
            "worker": cpu_seconds(worker.tree()),
            "peers": cpu_seconds(peers),
            "emulator": cpu_seconds(process_tree(self.emulator.pid if self.emulator else None)),
            "rabbitmq": cpu_seconds([self.rabbit_pid] if self.rabbit_pid else []),
            "bench": cpu_seconds([os.getpid()]),
        }
        parts["machine_processes"], parts["kernel_irq"] = machine_busy_seconds()
        return parts

    # -- a phase --------------------------------------------------------------------------------

    def send_start(
        self, queue: str, workflow_id: str, fields: dict[str, Any] | None = None
    ) -> None:
        from workflow_orchestrator.queues import orchestration_queue

        fields = START_FIELDS if fields is None else fields
        self.caller.send_task(
            ORCHESTRATE_TASK,
            args=[{"id": workflow_id, **fields, "bench_sent_at": time.time()}],
            queue=orchestration_queue(queue),
            retry=True,
        )

    def run_phase(
        self,
        name: str,
        worker: Child | Group,
        *,
        stall_timeout: float = 60.0,
        on_sample: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Run one phase's workflows through `worker`; return its measurements."""
        spec = self.phases[name]
        total = len(spec.ids)
        tree = worker.tree()
        rss_before = rss_bytes(tree)
        pss_before = pss_bytes(tree)
        self.reset_counters()
        log_offset = worker.log_size()
        peers_offset = self.peers.log_size() if self.peers else 0
        cpu_before = self.cpu(worker)
        started = time.time()
        for wid in spec.ids[: spec.window]:
            self.send_start(spec.queue, wid, spec.start_fields)
        samples: list[tuple[float, int, int]] = []
        last_progress, last_done = time.monotonic(), -1
        while True:
            time.sleep(0.25)
            status = self.peer_status().get("phases", {}).get(name, {})
            done = int(status.get("done", 0))
            tree = worker.tree()
            samples.append((time.time() - started, done, rss_bytes(tree)))
            if on_sample:
                on_sample({"done": done, "total": total})
            if done >= total:
                break
            if done != last_done:
                last_done, last_progress = done, time.monotonic()
            if not worker.alive():
                raise BenchError(f"{worker.name} died:\n{worker.tail()}")
            if time.monotonic() - last_progress > stall_timeout:
                raise BenchError(
                    f"phase {name}: no progress for {stall_timeout:g} s at {done}/{total}; "
                    f"peers: {status}\n{worker.name}:\n{worker.tail()}\npeers:\n"
                    f"{self.peers.tail() if self.peers else ''}"
                )
        finished = float(status.get("last_done_at") or time.time())
        cpu_after = self.cpu(worker)
        cpu_wall = time.time() - started
        counters = self.counters()
        rss_after = rss_bytes(tree)
        pss_after = pss_bytes(tree)
        latency = self._latency(name)
        log = worker.log(log_offset)

        elapsed = finished - started
        transitions = total * TRANSITIONS_PER_WORKFLOW
        manager_calls = {k: v for k, v in counters.items() if k != "total"}
        calls = sum(manager_calls.values())
        cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
        ours = sum(cpu[k] for k in ("worker", "peers", "emulator", "rabbitmq", "bench"))
        # other: processes that are not part of the benchmark (other sessions' tests...)
        cpu["other"] = max(0.0, cpu.pop("machine_processes") - ours)
        cpu["machine"] = ours + cpu["other"] + cpu["kernel_irq"]
        runtimes = [float(x) for x in re.findall(r"succeeded in ([0-9.eE+-]+)s", log)]
        all_latency = [v for values in latency.values() for v in values]
        rss_points = [(d * TRANSITIONS_PER_WORKFLOW, r) for _, d, r in samples if d > 0]
        rss_slope = slope(rss_points)
        peers_log = self.peers.log(peers_offset) if self.peers else ""
        broker_errors = len(
            re.findall(r"Connection to broker lost|Cannot connect to amqp", log + peers_log)
        )
        errors_logged = len(re.findall(r"\b(ERROR|CRITICAL)\b", log))
        other_share = cpu["other"] / cpu["machine"] if cpu["machine"] else 0.0
        busy_cores = cpu["machine"] / cpu_wall if cpu_wall > 0 else 0.0
        return {
            "phase": name,
            "disturbed": broker_errors > 0 or other_share > 0.15,
            "broker_errors_logged": broker_errors,
            "other_cpu_share": round(other_share, 3),
            "busy_cores": round(busy_cores, 2),
            "worker": worker.name,
            "workflows": total,
            "transitions": transitions,
            "window": spec.window,
            "seconds": round(elapsed, 3),
            "transitions_per_s": round(transitions / elapsed, 1),
            "workflows_per_s": round(total / elapsed, 1),
            "failed": status.get("failed", 0),
            "duplicates": status.get("duplicates", 0),
            "chats": status.get("chats", 0),
            "emails": status.get("emails", 0),
            "messages_per_transition": round(
                sum(status.get(k, 0) for k in ("requests", "chats", "emails", "done_messages"))
                / transitions,
                2,
            ),
            "manager_calls": manager_calls,
            "manager_calls_per_transition": round(calls / transitions, 3),
            "puts": manager_calls.get("PUT /workflows/{id}", 0),
            "latency": {
                "all": summary_ms(all_latency),
                **{k: summary_ms(v) for k, v in latency.items()},
            },
            "task_runtime": summary_ms(runtimes),
            "retries_logged": len(re.findall(r"retrying|Retry in", log)),
            "errors_logged": errors_logged,
            "cpu_seconds": {k: round(v, 3) for k, v in cpu.items()},
            "cpu_ms_per_transition": {k: round(v * 1000 / transitions, 3) for k, v in cpu.items()},
            "rss_mb_before": round(rss_before / 2**20, 2),
            "rss_mb_after": round(rss_after / 2**20, 2),
            "pss_mb_before": round(pss_before / 2**20, 2),
            "pss_mb_after": round(pss_after / 2**20, 2),
            "rss_growth_mb_per_10k": round((rss_after - rss_before) / 2**20 / transitions * 1e4, 2),
            "rss_slope_mb_per_10k": None
            if rss_slope is None
            else round(rss_slope * 1e4 / 2**20, 2),
            "loadavg_after": list(os.getloadavg()),
        }

    def _latency(self, name: str, timeout: float = 10.0) -> dict[str, list[float]]:
        path = self.workdir / f"latency-{name}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.05)
        return json.loads(path.read_text())

    # -- tear-down ------------------------------------------------------------------------------

    def close(self) -> None:
        for child in reversed(self._children):
            child.stop()
        if self.caller is not None:
            self.caller.close()
        for name in self.vhosts:  # its queues and exchanges go with it
            try:
                vhosts.delete(name)
            except Exception as exc:  # noqa: BLE001
                print(f"warning: could not delete vhost {name}: {exc}", file=sys.stderr)
        if self.own_vhost:
            self._cleanup_files()
            return
        try:
            from kombu import Connection

            with Connection(self.broker_url, connect_timeout=3) as conn:
                channel = conn.channel()
                for queue in self.names.all_queues():
                    try:
                        channel.queue_delete(queue)
                        channel.exchange_delete(queue)
                    except Exception:  # noqa: BLE001 - best effort
                        channel = conn.channel()
        except Exception as exc:  # noqa: BLE001
            print(f"warning: could not delete the run's queues: {exc}", file=sys.stderr)
        self._cleanup_files()

    def _cleanup_files(self) -> None:
        if not self.keep_logs:
            for child in self._children:
                try:
                    child.log_path.unlink()
                except OSError:
                    pass
        import shutil

        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measured_worker(
    system: System,
    worker: Child | Group,
    warmup: str | None,
    measure: str,
    quiet: float | None = 0.15,
    **kwargs: Any,
) -> dict[str, Any]:
    """Start `worker`, warm it up, measure one phase, stop it; RSS at boot is kept too.

    With `quiet`, first wait until the machine's busy share is below it (other sessions'
    tests share the cores and the broker)."""
    if quiet is not None:
        wait_for_quiet(quiet)
    worker.start()
    try:
        system.wait_ready(worker)
        time.sleep(0.5)  # let the start-up (registration, token) finish
        boot_rss = rss_bytes(worker.tree())
        if warmup:
            system.run_phase(warmup, worker)
        result = system.run_phase(measure, worker, **kwargs)
        result["rss_mb_at_boot"] = round(boot_rss / 2**20, 2)
        return result
    finally:
        worker.stop()


def round_order(names: list[str], r: int) -> list[str]:
    """The order of the sides in round `r`: as given in even rounds, reversed in odd ones
    (A B C, C B A, A B C, ...). Over each two rounds every side has the same mean
    position, so a machine whose speed drifts steadily favours none; and a side does
    not always run right after the same other side. With the order fixed the
    orchestrator always followed the baseline's fast phase in the full run, and in one
    such run the other processes (identical work on both sides) cost 9 to 27 % more per
    transition in all three of its rounds than in the floor's."""
    return list(reversed(names)) if r % 2 else list(names)


def run_interleaved(
    system: System,
    workers: dict[str, Child | Group],
    rounds: int,
    *,
    quiet: float | None = 0.15,
    quiet_max_wait: float = 300.0,
    on_phase: Callable[[str, int, dict[str, Any]], None] | None = None,
    on_sample: Callable[[str], Callable[[dict[str, Any]], None]] | None = None,
    before_phase: Callable[[str, int], None] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Start every worker once, warm each up (phase `{name}-warmup`), then measure the
    phases `{name}-{r}` round after round, so a machine whose load drifts (other sessions
    share it) drifts for every side alike, each round in `round_order`; stop them.

    The workers stay up between their phases, idle while another side is measured. Each
    side's RSS is read at boot, before its first measured phase and after its last one,
    which gives the memory growth over all its measured transitions (`memory` below).
    `before_phase(name, round)` runs just before each measured phase, `on_phase` after it."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in workers}
    try:
        for worker in workers.values():
            worker.start()
        for worker in workers.values():
            system.wait_ready(worker)
        time.sleep(0.5)  # let the start-up (registration, token) finish
        boot = {name: rss_bytes(w.tree()) for name, w in workers.items()}
        for name, worker in workers.items():
            if f"{name}-warmup" in system.phases:
                system.run_phase(f"{name}-warmup", worker)
        first = {name: rss_bytes(w.tree()) for name, w in workers.items()}
        for r in range(rounds):
            for name in round_order(list(workers), r):
                worker = workers[name]
                if quiet is not None:
                    wait_for_quiet(quiet, quiet_max_wait)
                sample = on_sample(name) if on_sample else None
                if before_phase:
                    before_phase(name, r)
                result = system.run_phase(f"{name}-{r}", worker, on_sample=sample)
                result["rss_mb_at_boot"] = round(boot[name] / 2**20, 2)
                results[name].append(result)
                if on_phase:
                    on_phase(name, r, result)
        for name, worker in workers.items():
            last = rss_bytes(worker.tree())
            transitions = sum(p["transitions"] for p in results[name])
            for p in results[name]:
                p["memory"] = {
                    "rss_mb_at_boot": round(boot[name] / 2**20, 2),
                    "rss_mb_after_warmup": round(first[name] / 2**20, 2),
                    "rss_mb_at_end": round(last / 2**20, 2),
                    "measured_transitions": transitions,
                    "rss_growth_mb_per_10k": round(
                        (last - first[name]) / 2**20 / transitions * 1e4, 2
                    ),
                }
    finally:
        for worker in workers.values():
            worker.stop()
    return results
