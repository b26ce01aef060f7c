"""The module record's workload fits the Manager's column."""

from __future__ import annotations

import uuid


def test_a_workload_is_trimmed_to_the_managers_column() -> None:
    import json

    from workflow_orchestrator.manager import WORKLOAD_MAX_CHARS, fit_workload

    ids = [str(uuid.UUID(int=i)) for i in range(20)]
    kept = fit_workload(ids)
    assert kept == ids[: len(kept)] and 0 < len(kept) < len(ids)
    assert len(json.dumps(kept)) <= WORKLOAD_MAX_CHARS
    assert len(json.dumps(ids[: len(kept) + 1])) > WORKLOAD_MAX_CHARS
    assert fit_workload(ids[:2]) == ids[:2]
