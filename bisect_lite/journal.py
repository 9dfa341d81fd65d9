"""The search journal: one JSON line per finished probe, so an interrupted run resumes without repeating work."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.entries.append(json.loads(line))
                except ValueError:
                    break  # a line cut by an interruption: everything before it is valid

    def append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, allow_nan=False)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(entry)

    def find(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.entries if all(e.get(k) == v for k, v in match.items())]

    def header(self) -> dict[str, Any] | None:
        found = self.find(type="start")
        return found[0] if found else None
