"""The app `create_app` builds: celeryconfig.py's settings and the Settings' own."""

from __future__ import annotations

import celeryconfig
from workflow_orchestrator.factory import create_app, module_settings
from workflow_orchestrator.settings import Settings

SETTINGS = Settings(
    exchange_id="1",
    broker_id="1",
    manager_url="http://manager.invalid",
    oauth_login_url="http://manager.invalid/oauth/token",
    oauth_client_id="orchestrator",
    oauth_client_secret="never-used",
    queue_name="wo_factory_queue",
)


def test_every_setting_of_celeryconfig_is_in_the_app_and_nothing_else_of_the_module() -> None:
    taken = module_settings("celeryconfig")
    assert taken["task_acks_late"] is True
    assert taken["broker_transport_options"] == celeryconfig.broker_transport_options
    assert "_DEFAULTS" not in taken  # the module's own helpers are not settings
    app = create_app(SETTINGS)
    for name, value in taken.items():
        assert app.conf[name] == value, name
    assert app.conf.task_default_queue == "wo_factory_queue"  # the Settings come after


def test_a_setting_read_falls_through_plain_dicts_only() -> None:
    """No module wrapper in the lookup chain: a setting only the defaults hold is found
    without a failed getattr on the way."""
    app = create_app(SETTINGS)
    assert app.conf.task_default_priority is None  # a default, read through the chain
    assert [type(m) for m in app.conf.maps] == [dict] * len(app.conf.maps)
