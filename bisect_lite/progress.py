"""The live progress display of `run`: the current phase, and the search as step i of about log2 N with an ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    def __init__(self, console: Console, enabled: bool = True) -> None:
        self.enabled = enabled and console.is_terminal
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = None

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
            self.progress.update(self.task, description=f"{data['name']}: {data['detail']}", total=None, completed=0)
        elif kind == "batch":
            self.progress.update(self.task, total=data["total"], completed=data["done"])
        elif kind == "search":
            self.progress.update(
                self.task,
                description=f"bisecting {data['ops']} ops (about {data['expected']} probes)",
                total=max(data["expected"], 1),
                completed=0,
            )
        elif kind == "probe":
            task = self.progress.tasks[0]
            total = max(task.total or 1, task.completed + 1)
            err = data.get("worst_rel_l2")
            what = f"cut {data['cut']}: {data['verdict']}" + (f" (rel L2 {err:.2g})" if err else "")
            self.progress.update(self.task, total=total, advance=1, description=f"bisecting: {what}")
            self.console.log(
                f"probe cut {data['cut']:>4}  {data['verdict']:<5}  "
                + (f"rel L2 {err:.3g}" if err is not None else data.get("message", "")[:80])
            )
