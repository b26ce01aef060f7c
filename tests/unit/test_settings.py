import re
from pathlib import Path

import pytest

from workflow_orchestrator.errors import SettingsError
from workflow_orchestrator.settings import REQUIRED, SETTINGS_DOC, load_settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"
SECRET = "do-not-print-me"
GOOD = {
    "EXCHANGE_ID": "1",
    "BROKER_ID": "2",
    "MANAGER_URL": "http://manager.local:4000/",
    "OAUTH_LOGIN_URL": "https://auth.local/oauth/token",
    "OAUTH_CLIENT_ID": "orchestrator",
    "OAUTH_CLIENT_SECRET": SECRET,
}


def reader(values: dict[str, str]):
    from decouple import UndefinedValueError

    def config(name: str, default: object = None, **_: object) -> object:
        if name in values:
            return values[name]
        if default is None:
            raise UndefinedValueError(name)
        return default

    return config


def test_readme_table_is_the_settings_table() -> None:
    text = README.read_text()
    table = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", text, re.S
    )
    assert table and table.group(1) == settings_table()


def test_defaults_and_derived_values() -> None:
    s = load_settings(reader(GOOD))
    assert s.manager_url == "http://manager.local:4000"
    assert s.queue_name == "workflow_orchestration"
    assert s.error_queue_name == "workflow_orchestration_error"
    assert s.ui_url == s.manager_url
    assert s.celery_broker_url == "amqp://guest:guest@localhost:5672//"
    assert s.schedule_poll_seconds == 600 and s.out_of_order_timeout == 300
    assert SECRET not in repr(s)
    assert s.describe()["OAUTH_CLIENT_SECRET"] == "***"
    assert "guest:***@" in s.describe()["CELERY_BROKER_URL"]


@pytest.mark.parametrize("name", [n for n, (d, _) in SETTINGS_DOC.items() if d is REQUIRED])
def test_missing_required_setting_is_named(name: str) -> None:
    values = {k: v for k, v in GOOD.items() if k != name}
    with pytest.raises(SettingsError) as caught:
        load_settings(reader(values))
    assert caught.value.name == name and "required" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("MANAGER_URL", "manager.local", "http(s) URL"),
        ("MANAGER_READ_TIMEOUT", "soon", "cannot be read as float"),
        ("MANAGER_CONNECT_TIMEOUT", "0", "must be positive"),
        ("OAUTH_BODY", "xml", "must be one of json, form"),
        ("EXTRA_MILESTONES", "smoke=tester.smoke", "name=task@queue"),
        ("LOCK_URL", "memcached://x", "redis://"),
        ("LOG_FORMAT", "yaml", "text, json"),
    ],
)
def test_malformed_setting_is_named_without_the_secret(name: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(reader({**GOOD, name: value}))
    assert caught.value.name == name and words in str(caught.value)
    assert SECRET not in str(caught.value)


def test_extra_milestones() -> None:
    s = load_settings(
        reader({**GOOD, "EXTRA_MILESTONES": "smoke=tester.smoke@smoke, lint=l.run@lint"})
    )
    assert [(m.name, m.task, m.queue) for m in s.extra_milestones] == [
        ("smoke", "tester.smoke", "smoke"),
        ("lint", "l.run", "lint"),
    ]


def test_to_env_round_trips_through_load_settings() -> None:
    original = load_settings(
        reader({**GOOD, "EXTRA_MILESTONES": "smoke=tester.smoke@smoke", "MAX_RETRIES": "7"})
    )
    assert load_settings(reader(original.to_env())) == original
