"""An example builder worker: what a Python peer of the orchestrator looks like.

It consumes `builder.build` requests (CONTRACT.md 4, examples/builder-request.json),
pretends to build, and reports back with `workflow_orchestrator.worker_api`: success
for any repository, failure when the request's `deployment_repo` contains `fail`.

Run it next to the orchestrator (from the repository root):

    CELERY_BROKER_URL=amqp://guest:guest@localhost:5672// \\
        celery -A examples.builder_worker worker -Q builder -P threads

Environment: `CELERY_BROKER_URL` (default amqp://guest:guest@localhost:5672//),
`BUILD_SECONDS` (how long a "build" takes, default 0), `HIPCHAT_TASK` / `HIPCHAT_QUEUE`
(where failure chat notifications go, defaults notifications.hipchat /
notifications_hipchat).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from workflow_orchestrator.worker_api import step_completed, step_failed, worker_app

logger = logging.getLogger("examples.builder_worker")

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//")
BUILD_SECONDS = float(os.environ.get("BUILD_SECONDS", "0"))
HIPCHAT_TASK = os.environ.get("HIPCHAT_TASK", "notifications.hipchat")
HIPCHAT_QUEUE = os.environ.get("HIPCHAT_QUEUE", "notifications_hipchat")

app = worker_app("example-builder", BROKER_URL, queues=["builder"])


# shared=False: importing this module must not add `builder.build` to other Celery apps
# of the importing process (Celery's default would, and their own task would lose).
@app.task(name="builder.build", shared=False)
def build(request: dict[str, Any]) -> str:
    """Build the request's repository, then report the outcome to the orchestrator."""
    repo = request.get("deployment_repo") or ""
    step = request.get("current_step")
    logger.info("building %s (%s) for workflow %s", repo, step, request.get("id"))
    time.sleep(BUILD_SECONDS)

    if "fail" in repo:
        return step_failed(
            app,
            request,
            f"Build of {repo} failed on builder {socket.gethostname()}",
            reason="docker build exited with status 1",
            hipchat_task=HIPCHAT_TASK,
            hipchat_queue=HIPCHAT_QUEUE,
        )
    return step_completed(
        app, request, f"Builder {socket.gethostname()} completed the {step} of {repo}"
    )
