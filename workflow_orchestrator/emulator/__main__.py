"""``workflow-orchestrator-manager-emulator``: run the Manager emulator as a process.

Used by the demo, by out-of-process tests (which steer its faults through
``/_emulator/*``) and by anyone trying the orchestrator without an OpenAperture Manager
(docs/emulator.md). Serving prints one line with its URL, then serves until SIGINT or
SIGTERM. ``create-workflow`` stores a workflow in a running emulator (or any Manager)
the way a user of the Manager would, over HTTP with a token, and prints its id, so a
script can go on with ``workflow-orchestrator execute``.
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
from typing import Any

from .server import ManagerEmulator
from .store import Conflict

#: The subcommand that talks to a running emulator instead of serving one.
CREATE_WORKFLOW = "create-workflow"
DEFAULT_PORT = 4000
DEFAULT_CLIENT_ID = "orchestrator"
DEFAULT_CLIENT_SECRET = "s3cret"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="workflow-orchestrator-manager-emulator",
        description="Serve an emulated OpenAperture Manager (REST + OAuth2) on loopback.",
        epilog=f"`%(prog)s {CREATE_WORKFLOW} --help`: store a workflow in a running "
        "emulator and print its id.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="0 picks a free port")
    p.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    p.add_argument(
        "--client-secret",
        default=os.environ.get("MANAGER_EMULATOR_CLIENT_SECRET", DEFAULT_CLIENT_SECRET),
        help=f"default: $MANAGER_EMULATOR_CLIENT_SECRET or {DEFAULT_CLIENT_SECRET}",
    )
    p.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime, seconds")
    p.add_argument("--broker-url", default=None, help="AMQP URL used by /workflows/{id}/execute")
    p.add_argument("--queue-name", default="workflow_orchestration")
    p.add_argument("--error-queue-name", default="", help="ignored (kept for old callers)")
    p.add_argument("--exchange-id", default="1", help="the Manager's own EXCHANGE_ID")
    p.add_argument("--broker-id", default="1", help="the Manager's own BROKER_ID")
    p.add_argument("--orchestrate-task", default="workflow_orchestrator.orchestrate")
    p.add_argument("--db", default=":memory:", help="SQLite file (default: in memory)")
    p.add_argument(
        "--seed",
        default=None,
        help="JSON file with exchanges, clusters, modules... (docs/emulator.md)",
    )
    p.add_argument("--log-level", default="WARNING")
    return p


def _create_parser(settings: Any) -> argparse.ArgumentParser:
    """`create-workflow`; defaults come from the orchestrator's own settings names."""
    url = str(settings("MANAGER_URL", default=f"http://127.0.0.1:{DEFAULT_PORT}"))
    p = argparse.ArgumentParser(
        prog=f"workflow-orchestrator-manager-emulator {CREATE_WORKFLOW}",
        description="Store a new workflow in a running Manager emulator (POST /workflows) "
        "and print its id. Defaults come from the environment or a .env file in the "
        "current directory: the orchestrator's MANAGER_URL, OAUTH_LOGIN_URL, "
        "OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET.",
    )
    p.add_argument("--url", default=url, help=f"the Manager's base URL (default {url})")
    p.add_argument(
        "--token-url",
        default=str(settings("OAUTH_LOGIN_URL", default="")),
        help="OAuth2 token endpoint (default: $OAUTH_LOGIN_URL, else URL/oauth/token)",
    )
    p.add_argument(
        "--client-id", default=str(settings("OAUTH_CLIENT_ID", default=DEFAULT_CLIENT_ID))
    )
    p.add_argument(
        "--file",
        metavar="FILE",
        help="a JSON object of workflow fields (examples/workflow.json); the options "
        "below override its fields",
    )
    p.add_argument("--repo", help="deployment_repo, e.g. acme/web_docker")
    p.add_argument("--ref", help="deployment_repo_git_ref, e.g. master")
    p.add_argument("--source-repo", help="source_repo")
    p.add_argument("--source-ref", help="source_repo_git_ref")
    p.add_argument("--milestones", help="comma-separated, e.g. build,deploy")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP call")
    return p


def _client_secret(settings: Any) -> str:
    """Never an option: a secret on the command line shows in `ps` and shell history."""
    return str(
        settings(
            "OAUTH_CLIENT_SECRET",
            default=os.environ.get("MANAGER_EMULATOR_CLIENT_SECRET", DEFAULT_CLIENT_SECRET),
        )
    )


def workflow_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /workflows body: the file's fields, then the options given."""
    fields: dict[str, Any] = {}
    if args.file:
        with open(args.file, encoding="utf-8") as fh:
            loaded = json.load(fh)
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.file} must hold a JSON object of workflow fields")
        fields.update(loaded)
    options = {
        "deployment_repo": args.repo,
        "deployment_repo_git_ref": args.ref,
        "source_repo": args.source_repo,
        "source_repo_git_ref": args.source_ref,
    }
    fields.update({k: v for k, v in options.items() if v is not None})
    if args.milestones is not None:
        fields["milestones"] = [m.strip() for m in args.milestones.split(",") if m.strip()]
    if not fields.get("milestones"):
        raise ValueError("a workflow needs milestones: give --milestones (or them in --file)")
    return fields


def create_workflow(argv: list[str]) -> int:
    """`create-workflow`: fetch a token, POST /workflows, print the new id; an exit code."""
    import requests
    from decouple import AutoConfig

    from ..errors import CredentialsRejected, ManagerError, ManagerTransientError
    from ..manager import TokenSource

    settings = AutoConfig(search_path=os.getcwd())
    args = _create_parser(settings).parse_args(argv)
    base = args.url.rstrip("/")
    prog = f"workflow-orchestrator-manager-emulator {CREATE_WORKFLOW}"
    try:
        body = workflow_fields(args)
    except (OSError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    secret = _client_secret(settings)
    tokens = TokenSource(
        args.token_url or f"{base}/oauth/token",
        args.client_id,
        secret,
        body=str(settings("OAUTH_BODY", default="json")),
        connect_timeout=args.timeout,
        read_timeout=args.timeout,
    )
    try:
        token = tokens.token()
        response = requests.post(
            f"{base}/workflows",
            json=body,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=args.timeout,
        )
    except CredentialsRejected as exc:
        print(f"{prog}: no token: {exc}", file=sys.stderr)  # names the settings to check
        return 2
    except ManagerTransientError as exc:
        print(f"{prog}: no token: {exc}: is the emulator up at {base}?", file=sys.stderr)
        return 2
    except ManagerError as exc:
        print(
            f"{prog}: no token: {exc} (check OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET)",
            file=sys.stderr,
        )
        return 2
    except requests.RequestException as exc:
        print(f"{prog}: cannot reach {base} ({type(exc).__name__}): is it up?", file=sys.stderr)
        return 2
    finally:
        tokens.close()
    if response.status_code != 201:
        text = response.text[:300].replace(secret, "***") if secret else response.text[:300]
        print(
            f"{prog}: POST {base}/workflows answered {response.status_code}: {text}",
            file=sys.stderr,
        )
        return 2
    workflow_id = created_id(response.headers.get("Location"))
    if not workflow_id:
        print(f"{prog}: POST {base}/workflows answered 201 without a Location", file=sys.stderr)
        return 2
    print(workflow_id)
    return 0


def created_id(location: str | None) -> str:
    """The new workflow's id: the Manager answers 201 with an empty body and its Location."""
    from urllib.parse import unquote, urlsplit

    path = urlsplit(location or "").path.rstrip("/")
    head, _, tail = path.rpartition("/")
    return unquote(tail) if head.endswith("workflows") else ""


def main(argv: list[str] | None = None) -> int:
    """Serve the emulator (default) or run `create-workflow`; returns an exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == CREATE_WORKFLOW:
        return create_workflow(argv[1:])
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
        except (OSError, ValueError, KeyError, TypeError, LookupError, Conflict) as exc:
            hint = " (the --db file already holds it?)" if isinstance(exc, Conflict) else ""
            print(f"cannot load seed {args.seed}: {exc}{hint}", file=sys.stderr)
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
