"""Every choice among several is a pure function of the workflow run."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from workflow_orchestrator.choice import pick, run_key

OPTIONS = st.lists(st.integers(), min_size=1, max_size=12, unique=True)


@given(OPTIONS, st.text(), st.text())
def test_the_same_run_always_gets_the_same_choice(
    options: list[int], workflow_id: str, started: str
) -> None:
    key = run_key(workflow_id, started)
    first = pick(options, key, salt="build_cluster")
    assert first in options
    assert all(pick(list(options), key, salt="build_cluster") == first for _ in range(3))


@given(st.integers(min_value=1, max_value=8))
def test_many_runs_spread_over_every_choice(count: int) -> None:
    options = [f"cluster-{i}" for i in range(count)]
    runs = [run_key(uuid.UUID(int=i), "2026-01-01T00:00:00Z") for i in range(60 * count)]
    chosen = [pick(options, key) for key in runs]
    assert set(chosen) == set(options)
    # no option takes more than three times its fair share
    assert max(chosen.count(o) for o in options) <= 3 * len(runs) / count


def test_salts_make_independent_choices() -> None:
    options = list(range(10))
    keys = [run_key(i, "t") for i in range(200)]
    same = sum(pick(options, k, salt="broker") == pick(options, k, salt="cluster") for k in keys)
    assert same < 60  # correlated choices would agree on every run


def test_nothing_to_choose_from_is_an_error() -> None:
    try:
        pick([], "key")
    except ValueError as exc:
        assert "nothing to choose" in str(exc)
    else:
        raise AssertionError("pick([]) returned")
