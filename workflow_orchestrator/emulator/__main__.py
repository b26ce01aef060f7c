"""``workflow-orchestrator-manager-emulator``: run the Manager emulator as a process.

Used by the demo and by out-of-process tests, which steer its faults through
``/_emulator/*``. Prints one line with its URL, then serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from types import FrameType

from .server import ManagerEmulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="workflow-orchestrator-manager-emulator",
        description="Serve an emulated OpenAperture Manager (REST + OAuth2) on loopback.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=4000, help="0 picks a free port")
    p.add_argument("--client-id", default="orchestrator")
    p.add_argument(
        "--client-secret",
        default=os.environ.get("MANAGER_EMULATOR_CLIENT_SECRET", "s3cret"),
        help="default: $MANAGER_EMULATOR_CLIENT_SECRET or s3cret",
    )
    p.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime, seconds")
    p.add_argument("--broker-url", default=None, help="AMQP URL used by /workflows/{id}/execute")
    p.add_argument("--queue-name", default="workflow_orchestration")
    p.add_argument("--error-queue-name", default="", help="ignored (kept for old callers)")
    p.add_argument("--exchange-id", default="1", help="the Manager's own EXCHANGE_ID")
    p.add_argument("--broker-id", default="1", help="the Manager's own BROKER_ID")
    p.add_argument("--orchestrate-task", default="workflow_orchestrator.orchestrate")
    p.add_argument("--db", default=":memory:", help="SQLite file (default: in memory)")
    p.add_argument("--seed", default=None, help="JSON file with exchanges, clusters, modules...")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    """Start the emulator, print its URL, serve until SIGINT/SIGTERM; returns an exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    emulator = ManagerEmulator(
        args.host,
        args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl=args.token_ttl,
        broker_url=args.broker_url,
        orchestrate_task=args.orchestrate_task,
        queue_name=args.queue_name,
        error_queue_name=args.error_queue_name,
        db_path=args.db,
        exchange_id=args.exchange_id,
        broker_id=args.broker_id,
    )
    if args.seed:
        try:
            with open(args.seed, encoding="utf-8") as fh:
                emulator.seed(json.load(fh))
        except (OSError, ValueError, KeyError, TypeError, LookupError) as exc:
            print(f"cannot load seed {args.seed}: {exc}", file=sys.stderr)
            return 2
    stopping = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        emulator.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"Manager emulator listening on {emulator.url}", flush=True)
    try:
        while not stopping.wait(1.0):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
