"""What the benchmark measures with: /proc readings of CPU and memory, the machine, statistics."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.common import (
    CLK_TCK,
)

# -- /proc -------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def process_tree(pid: int | None) -> list[int]:
    """`pid` and all its descendants."""
    if pid is None:
        return []
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                parents.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time of these processes (all their threads)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_bytes(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def pss_bytes(pids: Iterable[int]) -> int:
    """Proportional set size: shared pages (prefork children) counted once overall."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """CPU seconds all cores spent since boot (1) running processes (user, nice, system)
    and (2) in interrupts, softirqs (loopback networking is mostly there) and steal."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (v[0] + v[1] + v[2]) / CLK_TCK, (v[5] + v[6] + v[7]) / CLK_TCK


def machine_busy_share(seconds: float = 2.0) -> float:
    """Share of all cores busy over the next `seconds`."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    time.sleep(seconds)
    after = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    delta = [b - a for a, b in zip(values, after, strict=True)]
    total = sum(delta) or 1
    return 1 - (delta[3] + delta[4]) / total


def wait_for_quiet(threshold: float = 0.15, max_wait: float = 300.0) -> float:
    """Wait (up to `max_wait` s) until the machine is mostly idle: other sessions' test runs
    share these cores and the broker. Returns the last busy share seen."""
    deadline = time.monotonic() + max_wait
    share = machine_busy_share()
    warned = False
    while share > threshold and time.monotonic() < deadline:
        if not warned:
            print(f"  waiting for a quiet machine ({share:.0%} busy)...", flush=True)
            warned = True
        share = machine_busy_share()
    return share


def find_process(comm: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == comm:
                    return int(entry)
            except OSError:
                pass
    return None


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) * 1024
    import celery
    import kombu

    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "loadavg_at_start": list(os.getloadavg()),
    }


def rabbitmq_version(broker_url: str) -> str:
    from kombu import Connection

    with Connection(broker_url, connect_timeout=3) as conn:
        conn.ensure_connection(max_retries=1)
        props = conn.connection.server_properties or {}
        version = props.get("version", "?")
        return version.decode() if isinstance(version, bytes) else str(version)


# -- statistics ---------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def median_interval(values: list[float], confidence: float = 0.9) -> tuple[float, float, float]:
    """A distribution-free interval for the median of what `values` sample: the k-th
    smallest and k-th largest value, k as large as keeps the chance that the median lies
    between them at least `confidence` (each value falls on either side of the median
    with chance 1/2, so that chance is a binomial sum). Returns (low, high, chance); with
    too few values for `confidence`, the widest interval (min, max) and its own chance.
    Rounds of the benchmark are such samples: the interval says whether a run decides."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")

    def chance(k: int) -> float:  # P(k-th smallest <= median <= k-th largest)
        below = sum(math.comb(n, i) for i in range(k)) / 2**n
        return 1 - 2 * below

    k = 1
    while k + 1 <= (n + 1) // 2 and chance(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], chance(k)


def summary_ms(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": _ms(percentile(values, 50)),
        "p95_ms": _ms(percentile(values, 95)),
        "p99_ms": _ms(percentile(values, 99)),
        "mean_ms": _ms(statistics.fmean(values)) if values else None,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x."""
    if len(points) < 3:
        return None
    xs, ys = zip(*points, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
