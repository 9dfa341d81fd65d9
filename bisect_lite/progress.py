"""The live progress display of `run`: the current phase, and the search as step i of about log2 N with an ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _error(value: Any) -> str:
    """A probe's worst error as text: a number, or "inf" when NaN/Inf appeared."""
    if value is None:
        return ""
    return f"rel L2 {value:.3g}" if isinstance(value, (int, float)) else f"rel L2 {value}"


class RunProgress:
    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.enabled = enabled and console.is_terminal
        self.console = console
        self.progress = Progress(
            # markup=False: descriptions carry engine messages and tensor names, which may hold "[...]".
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task: Any = None

    def __enter__(self) -> RunProgress:
        if self.enabled:
            self.progress.start()
            self.task = self.progress.add_task("starting", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if not self.enabled or self.task is None:
            return
        if kind == "phase":
            # reset, not update: update(total=None) would keep the previous phase's total
            self.progress.reset(self.task, total=None, description=f"{data['name']}: {data['detail']}")
        elif kind == "batch":
            self.progress.update(self.task, total=data["total"], completed=data["done"])
        elif kind == "search":
            what = "placement search over" if data["segment"] == -1 else "bisecting"
            self.progress.reset(
                self.task,
                total=max(data["expected"], 1),
                description=f"{what} {data['ops']} ops (about {data['expected']} probes)",
            )
        elif kind == "probe":
            task = self.progress.tasks[0]
            total = max(task.total or 1, task.completed + 1)
            text = f"cut {data['cut']}: {data['verdict']}"
            self.progress.update(self.task, total=total, advance=1, description=f"bisecting: {text}")
            detail = _error(data.get("worst_rel_l2")) or data.get("message", "")[:80]
            self.console.print(
                f"probe cut {data['cut']:>4}  {data['verdict']:<5}  {detail}", highlight=False, markup=False
            )
