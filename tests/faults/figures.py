"""Print the README's reliability table from the figures the fault suite wrote.

Each scenario appends one JSON line to `wo-fault-figures.jsonl` in the temp dir
(`tests/faults/conftest.py::report`); the last line of each scenario is its figure.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

PATH = Path(tempfile.gettempdir()) / "wo-fault-figures.jsonl"


def main() -> None:
    last: dict[str, dict] = {}
    for line in PATH.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            last[record.pop("scenario")] = record
    print("| scenario | workflows | faults injected | worker restarts | lost |")
    print("|---|---|---|---|---|")
    for name, f in last.items():
        print(
            f"| {name} | {f.get('workflows', '')} | {f.get('faults', '')} | "
            f"{f.get('restarts', '')} | {f.get('lost', '')} |"
        )


if __name__ == "__main__":
    main()
