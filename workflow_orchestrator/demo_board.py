"""What the demo shows while it runs and at the end: one line per workflow, a summary."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from .demo_system import Inbox, Scenario
from .status_view import (
    failure_text,
    fit,
    outcome_text,
    progress_text,
    seconds_text,
    terminal_width,
)


@dataclass
class Run:
    """One demo workflow and what was seen of it."""

    scenario: Scenario
    workflow_id: str
    started: float
    ended: float | None = None
    view: dict[str, Any] = field(default_factory=dict)
    retried_after: int | None = None  # events in its log when the demo retried it

    def finished(self) -> bool:
        """Ended for good: a scenario the demo retries ends with its retried run."""
        if not self.view.get("finished"):
            return False
        if self.retried_after is not None:
            return self.view["event_count"] > self.retried_after
        return not (self.scenario.retry and self.view.get("state") == "failed")

    @property
    def short(self) -> str:
        return self.workflow_id[:8]


class Board:
    """One line per workflow: redrawn in place on a terminal, changes appended otherwise."""

    def __init__(self, stream: TextIO, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._drawn = 0
        self._keys: dict[int, Any] = {}

    def draw(self, rows: list[tuple[str, Any]]) -> None:
        out = []
        if self.tty:
            if self._drawn:
                out.append(f"\x1b[{self._drawn}A\r")
            width = terminal_width()
            for text, _ in rows:
                out.append("\x1b[K" + fit(text, width) + "\n")
            self._drawn = len(rows)
        else:
            for index, (text, key) in enumerate(rows):
                if self._keys.get(index) != key:
                    self._keys[index] = key
                    out.append(text + "\n")
        self.stream.write("".join(out))
        self.stream.flush()


def board_row(run: Run, now: float) -> tuple[str, Any]:
    view = run.view
    elapsed = (run.ended or now) - run.started
    text = f"  {run.short}  {run.scenario.title:<20} {progress_text(view, elapsed)}"
    return text, (view.get("state"), view.get("current_step"))


def summary_lines(runs: list[Run], inbox: Inbox, total: float) -> tuple[list[str], bool]:
    header = ("workflow", "scenario", "milestones", "result", "duration", "e-mails", "chats")
    rows = []
    all_good = True
    for run in runs:
        state = outcome_text(run.view) if run.view else "pending"
        emails = inbox.emails_for(run.workflow_id)
        good = state == run.scenario.expected and len(emails) == run.scenario.emails
        all_good = all_good and good
        verdict = (
            state
            if state == run.scenario.expected
            else f"{state} (expected {run.scenario.expected})"
        )
        manager = run.view.get("duration") or "-"
        measured = seconds_text((run.ended or time.monotonic()) - run.started)
        sent = ", ".join(str(e.get("prefix", "")).split(" ", 1)[0] for e in emails)
        rows.append(
            (
                run.short,
                run.scenario.title,
                " > ".join(run.scenario.milestones),
                verdict,
                f"{measured} ({manager})",
                f"{len(emails)} {sent}".strip(),
                str(inbox.chats_for(run.workflow_id)),
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  " + "  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    for run in runs:
        if run.view.get("state") == "failed":
            lines.append(
                f"  {run.short} {outcome_text(run.view)} at "
                f"{(run.view['failure'] or {}).get('step')}: {failure_text(run.view)}"
                + ("" if run.scenario.emails else " (no e-mail: no notification settings)")
            )
        if run.retried_after is not None:
            lines.append(
                f"  {run.short} failed at first and was retried, as "
                f"`workflow-orchestrator retry {run.workflow_id}` does"
            )
    done = sum(1 for r in runs if r.finished())
    verdict = (
        f"All {len(runs)} workflows ended as expected in {seconds_text(total)}."
        if all_good
        else f"{done} of {len(runs)} workflows finished in {seconds_text(total)}; "
        "some did not end as expected."
    )
    return [*lines, "", verdict], all_good
