"""~/.netrc never takes part in the Manager's calls (real HTTP to the emulator).

requests adds a `.netrc` entry's Basic credentials to any call that has no `auth` of its
own, replacing an `Authorization` header set by hand: a `default` entry (common on
operators' machines, for package mirrors) would replace every call's bearer token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CLIENT_ID, CLIENT_SECRET
from workflow_orchestrator.emulator import ManagerEmulator
from workflow_orchestrator.manager import ManagerClient, TokenSource

TOKEN_KEY = "POST /oauth/token"


@pytest.fixture
def netrc_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A netrc file whose `default` entry matches every host (requests reads $NETRC)."""
    path = tmp_path / "netrc"
    path.write_text("default login someone password netrc-password-77\n")
    path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(path))


@pytest.mark.parametrize("body", ["json", "form"])
def test_a_netrc_default_entry_does_not_replace_the_bearer_token(
    manager_emulator: ManagerEmulator, netrc_default: None, body: str
) -> None:
    wid = manager_emulator.add_workflow({})
    tokens = TokenSource(manager_emulator.token_url, CLIENT_ID, CLIENT_SECRET, body=body)
    with ManagerClient(manager_emulator.url, tokens, connect_timeout=1, read_timeout=5) as client:
        assert client.get_workflow(wid)["id"] == wid
        client.save_workflow(wid, {"current_step": "build"})
    counters = manager_emulator.counters()
    assert counters[TOKEN_KEY] == 1
    assert counters["GET /workflows/{id}"] == 1
