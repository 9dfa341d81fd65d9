"""OpenCL kernel caches that survive across probes, so that compiling kernels is not every run's cost.

A cold runner process compiles each OpenCL program it uses (19-25 s for PP-OCRv5 det on PoCL). Two caches keep
that out of all but the first run of a kernel:
- PoCL's (`POCL_CACHE_DIR`), which PoCL keys by program source or binary, build options and device: safe to
  share between models, libraries and bisect-lite processes.
- Paddle-Lite's binary cache (`set_opencl_binary_path_name`), which Paddle-Lite keys only by the file name it is
  given. bisect-lite names the file by the `.nb`'s sha256 (model, cut and opt), the library's sha256 (a fixed
  library never loads a broken one's kernels), the precision and the device. The runner gets a private directory
  per run holding a hard link to the cached file; a file it writes is moved into the cache only after a clean run,
  so a run killed mid-write never leaves a torn binary, and a crash on a cached binary drops it (the caller runs
  once more without it).
Both live under the bisect-lite cache root (`$BISECT_LITE_CACHE/kernels`), never in the user's ~/.cache/pocl.

Seconds saved: when the same `.nb` runs first cold (it compiled programs) and then warm, the difference of their
wall times is that `.nb`'s compile time; divided by the programs it used, a cost per program (remembered in the
cache for later processes). Every run that compiled nothing saved the programs it used (PoCL moves each one's
`last_accessed` stamp) times that cost.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bisect_lite.fsutil import atomic_write_text

BINARY_CACHE_LIMIT = 1 << 30  # bytes of Paddle-Lite binaries kept; the least recently used go first
COSTS = "compile-costs.json"  # measured compile seconds per program, per library and device


def kernel_cache_root() -> Path:
    from bisect_lite.cache import default_root

    return default_root() / "kernels"


@dataclass
class KernelRun:
    """One runner process's use of the caches."""

    name: str  # the binary's file name in the cache
    private: Path  # the directory --cl-cache points into
    had_binary: bool
    stamps: dict[str, float]  # PoCL program -> last_accessed mtime before the run

    @property
    def cl_cache(self) -> Path:
        return self.private / self.name


@dataclass
class RunRecord:
    nb: str
    wall: float
    used: int  # PoCL programs the run used
    compiled: int  # of which new


class KernelCache:
    """The caches of one engine (one library on one device), and what they saved."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.key = key  # library sha256 + device: whose compile costs these are
        self.pocl = root / "pocl"
        self.binaries = root / "paddle-lite"
        self.records: list[RunRecord] = []
        self.binary_hits = 0
        self._cost: float | None = None  # seconds per program, measured in this process

    def env(self) -> dict[str, str]:
        self.pocl.mkdir(parents=True, exist_ok=True)
        return {"POCL_CACHE_DIR": str(self.pocl)}

    def _programs(self) -> dict[str, float]:
        stamps: dict[str, float] = {}
        with contextlib.suppress(OSError):
            for first in os.scandir(self.pocl):
                if not first.is_dir():
                    continue
                for program in os.scandir(first.path):
                    with contextlib.suppress(OSError):
                        stamps[program.path] = os.stat(os.path.join(program.path, "last_accessed")).st_mtime
        return stamps

    def begin(self, name: str) -> KernelRun:
        self.binaries.mkdir(parents=True, exist_ok=True)
        private = Path(tempfile.mkdtemp(prefix=".run-", dir=self.binaries))
        cached = self.binaries / name
        had = False
        with contextlib.suppress(OSError):
            os.link(cached, private / name)
            os.utime(cached)  # recently used: pruned last
            had = True
        return KernelRun(name, private, had, self._programs())

    def end(self, run: KernelRun, ok: bool, nb_sha: str, wall: float) -> None:
        """After the runner exited: keep a binary written by a clean run, count what the run used and compiled."""
        try:
            written = run.cl_cache
            if ok and not run.had_binary and written.exists():
                os.replace(written, self.binaries / run.name)
                self._prune()
        finally:
            shutil.rmtree(run.private, ignore_errors=True)
        if not ok:
            return
        self.binary_hits += run.had_binary
        after = self._programs()
        used = sum(1 for path, stamp in after.items() if run.stamps.get(path) != stamp)  # moved or new
        compiled = sum(1 for path in after if path not in run.stamps)
        record = RunRecord(nb_sha, wall, used, compiled)
        cold = next((r for r in self.records if r.nb == nb_sha and r.compiled), None)
        if cold is not None and not compiled and cold.used:
            self._cost = max(cold.wall - wall, 0.0) / cold.used
            self._save_cost(self._cost)
        self.records.append(record)

    def drop(self, run: KernelRun) -> None:
        """The run crashed on a cached binary: never load that file again."""
        (self.binaries / run.name).unlink(missing_ok=True)

    def _prune(self) -> None:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.binaries.glob("*.bin")]
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= BINARY_CACHE_LIMIT:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _costs(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / COSTS).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_cost(self, cost: float) -> None:
        with contextlib.suppress(OSError):
            atomic_write_text(self.root / COSTS, json.dumps({**self._costs(), self.key: cost}, indent=1) + "\n")

    def cost_per_program(self) -> float | None:
        if self._cost is not None:
            return self._cost
        value = self._costs().get(self.key)
        return float(value) if isinstance(value, int | float) else None

    def facts(self) -> dict[str, Any]:
        warm = [r for r in self.records if not r.compiled]
        cold = [r for r in self.records if r.compiled]
        cost = self.cost_per_program()
        facts: dict[str, Any] = {
            "kernel_cache": str(self.root),
            "kernel_cache_runs_compiling": len(cold),
            "kernel_cache_runs_warm": len(warm),
            "kernel_programs_compiled": sum(r.compiled for r in cold),
            "kernel_binary_cache_hits": self.binary_hits,
            "kernel_compile_seconds_per_program": None if cost is None else round(cost, 3),
            "kernel_compile_seconds_saved": None if cost is None else round(sum(r.used for r in warm) * cost, 1),
        }
        return facts
