"""An example deployer worker: the builder's counterpart for the deploy milestones.

It consumes `deployer.deploy` requests (the `deploy` and `deploy_ecs` milestones, queue
`deployer`) and `deployer.deploy_oa` requests (the `deploy_oa` milestone, queue
`deploy_oa`), pretends to deploy to the request's `etcd_token` cluster, and reports back
with `workflow_orchestrator.worker_api` (docs/behaviour.md §4 and §8): success, or
failure when the request's `deployment_repo` contains `undeployable`.

Run it next to the orchestrator and the example builder (from the repository root),
with a node name of its own (`-n`): workers on one host must not share one.

    celery -A examples.deployer_worker worker -Q deployer,deploy_oa -P threads -n deployer@%h -l INFO

Settings, from the environment or a `.env` file in the working directory:
`CELERY_BROKER_URL` (default amqp://guest:guest@localhost:5672//), `DEPLOYER_QUEUE`
(default deployer), `DEPLOY_OA_QUEUE` (default deploy_oa), `DEPLOY_SECONDS` (how long a
"deploy" takes, default 0), `HIPCHAT_TASK` / `HIPCHAT_QUEUE` (where failure chat
notifications go, defaults notifications.hipchat / notifications_hipchat).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from decouple import AutoConfig

from workflow_orchestrator.worker_api import step_completed, step_failed, worker_app

logger = logging.getLogger("examples.deployer_worker")

config = AutoConfig(search_path=os.getcwd())
BROKER_URL = str(config("CELERY_BROKER_URL", default="amqp://guest:guest@localhost:5672//"))
DEPLOYER_QUEUE = str(config("DEPLOYER_QUEUE", default="deployer"))
DEPLOY_OA_QUEUE = str(config("DEPLOY_OA_QUEUE", default="deploy_oa"))
DEPLOY_SECONDS = float(config("DEPLOY_SECONDS", default="0"))
HIPCHAT_TASK = str(config("HIPCHAT_TASK", default="notifications.hipchat"))
HIPCHAT_QUEUE = str(config("HIPCHAT_QUEUE", default="notifications_hipchat"))

app = worker_app("example-deployer", BROKER_URL, queues=[DEPLOYER_QUEUE, DEPLOY_OA_QUEUE])


def deploy_request(request: dict[str, Any]) -> str:
    """Deploy the request's repository to its cluster, then report the outcome."""
    repo = request.get("deployment_repo") or ""
    step = request.get("current_step")
    cluster = request.get("etcd_token") or "ECS"
    logger.info("deploying %s (%s) to %s for workflow %s", repo, step, cluster, request.get("id"))
    time.sleep(DEPLOY_SECONDS)

    if "undeployable" in repo:
        return step_failed(
            app,
            request,
            f"Deployment of {repo} to {cluster} failed on deployer {socket.gethostname()}",
            reason="the cluster refused the units",
            hipchat_task=HIPCHAT_TASK,
            hipchat_queue=HIPCHAT_QUEUE,
        )
    return step_completed(
        app,
        request,
        f"Deployer {socket.gethostname()} completed the {step} of {repo} to {cluster}",
    )


# shared=False: importing this module must not add these tasks to other Celery apps.
@app.task(name="deployer.deploy", shared=False)
def deploy(request: dict[str, Any]) -> str:
    """`deploy` and `deploy_ecs` requests."""
    return deploy_request(request)


@app.task(name="deployer.deploy_oa", shared=False)
def deploy_oa(request: dict[str, Any]) -> str:
    """`deploy_oa` requests."""
    return deploy_request(request)
