"""A choice among several that is spread over the options but fixed per workflow run.

The original picked build clusters, brokers and connections at random. A transition
redone after a crash must pick the same one (same task id to the same place, same
log lines), so the pick is a hash of the workflow run instead (docs/behaviour.md §4 and §5.1).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def run_key(workflow_id: object, workflow_start_time: object) -> str:
    """What identifies one run of a workflow: its id and when the run started."""
    return f"{workflow_id}|{workflow_start_time}"


def pick(options: Sequence[T], key: str, salt: str = "") -> T:
    """The option `key` (a run key) always gets; distinct keys spread over all options.

    `salt` separates independent choices of one run (the build cluster, the broker, the
    connection), so they are not correlated with each other.
    """
    if not options:
        raise ValueError("nothing to choose from")
    digest = hashlib.sha256(f"{salt}|{key}".encode("utf-8", "surrogatepass")).digest()
    return options[int.from_bytes(digest[:8], "big") % len(options)]
