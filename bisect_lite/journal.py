"""The search journal: one JSON line per finished probe, so an interrupted run resumes without repeating work.

A kill in the middle of a write leaves a torn last line (no newline at the end): it is dropped. Any other damage
(a garbage line, a missing or damaged header, a probe record without its fields) is refused with one line that
says how to start over: a journal that is silently cut short would hide probes, or mix two runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bisect_lite.errors import InputError

JOURNAL = "journal.jsonl"
HEADER_FIELDS = ("model", "ref", "target", "inputs")
VERDICTS = ("pass", "fail", "crash", "skip")


class JournalDamaged(InputError):
    pass


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: list[dict[str, Any]] = []
        self._valid_size: int | None = None  # set when a torn last line must be cut off before the next append
        if path.exists():
            self._read()

    def _damaged(self, what: str) -> JournalDamaged:
        out = self.path.parent
        return JournalDamaged(
            f"{self.path}: {what}; the run cannot be resumed: start over with --force (or a new --out {out})"
        )

    def _read(self) -> None:
        if not self.path.is_file():
            raise self._damaged("not a regular file")
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise self._damaged(f"unreadable ({exc.strerror})") from None
        lines = data.split(b"\n")
        complete, last = lines[:-1], lines[-1]  # `last` is empty when the file ends with a newline
        if last.strip():
            self._valid_size = len(data) - len(last)  # torn by a kill mid-write: dropped
        for number, raw in enumerate(complete, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise self._damaged(f"line {number} is not a journal record") from None
            self.entries.append(self._checked(entry, number))
        if self.entries and self.entries[0].get("type") != "start":
            raise self._damaged("the first record is not the run's header")

    def _checked(self, entry: Any, number: int) -> dict[str, Any]:
        if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
            raise self._damaged(f"line {number} is not a journal record")
        if entry["type"] == "start":
            if self.entries:
                raise self._damaged(f"line {number} is a second header")
            bad = [k for k in HEADER_FIELDS if not isinstance(entry.get(k), str) or not entry[k]]
            if bad:
                raise self._damaged(f"the header lacks {', '.join(bad)}")
        elif entry["type"] == "probe":
            ok = (
                isinstance(entry.get("segment"), int)
                and isinstance(entry.get("cut"), int)
                and entry.get("verdict") in VERDICTS
                and isinstance(entry.get("fetched", []), list)
                and isinstance(entry.get("metrics", []), list)
            )
            if not ok:
                raise self._damaged(f"line {number} is a damaged probe record")
        return entry

    def append(self, entry: dict[str, Any]) -> None:
        self.append_many([entry])

    def append_many(self, entries: list[dict[str, Any]]) -> None:
        """Several records with one write and one fsync (a run observing many cuts records one probe per cut)."""
        text = "".join(json.dumps(entry, allow_nan=False) + "\n" for entry in entries)
        if self._valid_size is not None:
            os.truncate(self.path, self._valid_size)  # the torn line must not glue onto the next record
            self._valid_size = None
        with open(self.path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self.entries.extend(entries)

    def find(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.entries if all(e.get(k) == v for k, v in match.items())]

    def header(self) -> dict[str, Any] | None:
        found = self.find(type="start")
        return found[0] if found else None


def read_header(out_dir: Path) -> dict[str, Any]:
    """The header of the run recorded in `out_dir`, for --resume (refused when absent or damaged)."""
    path = Path(out_dir) / JOURNAL
    if not path.exists():
        raise InputError(f"--resume: {out_dir} holds no journal of an earlier run; start a new run without --resume")
    header = Journal(path).header()
    if header is None:
        raise JournalDamaged(f"{path}: no header (the run was interrupted before it started); start over with --force")
    return header
