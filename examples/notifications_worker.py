"""An example notifications worker: where the orchestrator's chat lines and e-mails go.

In OpenAperture the Notifications module posts them to HipChat rooms and sends the
e-mails; this one logs each `notifications.hipchat` and `notifications.email` task
(docs/behaviour.md §7.1 and §7.4), so the queues do not fill up while you try the
orchestrator, and you see what would have been sent.

    celery -A examples.notifications_worker worker -Q notifications_hipchat,notifications_email -P threads -n notifications@%h -l INFO

Settings, from the environment or a `.env` file in the working directory:
`CELERY_BROKER_URL` (default amqp://guest:guest@localhost:5672//), `HIPCHAT_QUEUE`
(default notifications_hipchat), `EMAIL_QUEUE` (default notifications_email).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from decouple import AutoConfig

from workflow_orchestrator.worker_api import worker_app

logger = logging.getLogger("examples.notifications_worker")

config = AutoConfig(search_path=os.getcwd())
BROKER_URL = str(config("CELERY_BROKER_URL", default="amqp://guest:guest@localhost:5672//"))
HIPCHAT_QUEUE = str(config("HIPCHAT_QUEUE", default="notifications_hipchat"))
EMAIL_QUEUE = str(config("EMAIL_QUEUE", default="notifications_email"))

app = worker_app("example-notifications", BROKER_URL, queues=[HIPCHAT_QUEUE, EMAIL_QUEUE])


# shared=False: importing this module must not add these tasks to other Celery apps.
@app.task(name="notifications.hipchat", shared=False)
def hipchat(note: dict[str, Any]) -> None:
    """One chat line: `{is_success, prefix, message, room_names}`."""
    mark = "ok  " if note.get("is_success") else "FAIL"
    rooms = note.get("room_names") or "default room"
    logger.info("chat %s %s %s (to %s)", mark, note.get("prefix"), note.get("message"), rooms)


@app.task(name="notifications.email", shared=False)
def email(mail: dict[str, Any]) -> None:
    """The completion e-mail: `{prefix: subject, message: body, notifications.email_addresses}`."""
    to = (mail.get("notifications") or {}).get("email_addresses") or []
    logger.info("e-mail to %s: %s", ", ".join(map(str, to)), mail.get("prefix"))
