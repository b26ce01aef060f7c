"""An example builder worker: what a Python peer of the orchestrator looks like.

It consumes `builder.build` requests (docs/behaviour.md §4, docs/examples/builder-request.json),
pretends to build, and reports back with `workflow_orchestrator.worker_api`: success
for any repository, failure when the request's `deployment_repo` contains `fail`.

A real builder reads the deployment repository's configuration into the request it
sends back, among it the `etcd_token` of the cluster to deploy to; without one the
`deploy` milestone fails ("an invalid deployment cluster was provided!"), and its
`notifications_config` (the Manager does not store it). This one sets `etcd_token`
from the `ETCD_TOKEN` setting when the request has none (its default,
`example-deploy-cluster`, is the deploy cluster of examples/manager-seed.json), and a
`notifications_config` sending the completion e-mail to `NOTIFY_EMAILS`.

Run it next to the orchestrator (from the repository root), with a node name of its
own: two workers on one host with the same name (`celery@<host>`) clash on their
remote-control queue (RESOURCE_LOCKED):

    celery -A examples.builder_worker worker -Q builder -P threads -n builder@%h -l INFO

Settings, from the environment or a `.env` file in the working directory (as the
orchestrator reads its own): `CELERY_BROKER_URL` (default
amqp://guest:guest@localhost:5672//), `BUILDER_QUEUE` (default builder), `ETCD_TOKEN`,
`NOTIFY_EMAILS` (comma-separated, default dev@example.com; empty for none),
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

from decouple import AutoConfig

from workflow_orchestrator.worker_api import step_completed, step_failed, worker_app

logger = logging.getLogger("examples.builder_worker")

config = AutoConfig(search_path=os.getcwd())
BROKER_URL = str(config("CELERY_BROKER_URL", default="amqp://guest:guest@localhost:5672//"))
BUILDER_QUEUE = str(config("BUILDER_QUEUE", default="builder"))
ETCD_TOKEN = str(config("ETCD_TOKEN", default="example-deploy-cluster"))
NOTIFY_EMAILS = [
    a.strip() for a in str(config("NOTIFY_EMAILS", default="dev@example.com")).split(",")
]
BUILD_SECONDS = float(config("BUILD_SECONDS", default="0"))
HIPCHAT_TASK = str(config("HIPCHAT_TASK", default="notifications.hipchat"))
HIPCHAT_QUEUE = str(config("HIPCHAT_QUEUE", default="notifications_hipchat"))

app = worker_app("example-builder", BROKER_URL, queues=[BUILDER_QUEUE])


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
    reply = dict(request)
    # What a real builder reads from the deployment repo: where `deploy` goes, who hears.
    reply["etcd_token"] = reply.get("etcd_token") or ETCD_TOKEN
    recipients = [a for a in NOTIFY_EMAILS if a]
    if recipients and not reply.get("notifications_config"):
        reply["notifications_config"] = {"email": {"events": {"on_workflow_completed": recipients}}}
    return step_completed(
        app, reply, f"Builder {socket.gethostname()} completed the {step} of {repo}"
    )
