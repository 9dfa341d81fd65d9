"""The reference value of every intermediate tensor, computed once and spilled to disk.

The reference engine runs the model truncated so that a batch of tensors are its outputs; batches are sized to
stay under a memory budget, and each batch is written to `DIR/reference/batch-N.npz`. Values are read back lazily
by name, one array at a time straight from its offset in the (uncompressed) batch file: a search on a large model
never holds all activations in memory, and a read costs one copy and no CRC pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from bisect_lite.engines.base import RunResult
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.errors import EngineUnavailable
from bisect_lite.fsutil import atomic_write_text
from bisect_lite.model import Model, truncate
from bisect_lite.npz import NpzReader


def estimated_bytes(model: Model, name: str, batch: int = 1) -> int:
    var = model.vars.get(name)
    if var is None or var.shape is None:
        return 0
    count = 1
    for d in var.shape:
        count *= batch if d < 0 else max(d, 1)
    itemsize = np.dtype(var.dtype).itemsize if var.dtype and var.dtype != "bfloat16" else 2
    return count * itemsize


def plan_batches(model: Model, names: list[str], budget: int) -> list[list[str]]:
    """Group tensors in execution order so that each group's estimated size stays under `budget` bytes."""
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name in names:
        nbytes = estimated_bytes(model, name)
        if current and size + nbytes > budget:
            batches.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    if current:
        batches.append(current)
    return batches


class ReferenceValues:
    """Name -> reference array, backed by the spilled batch files (plus the model inputs)."""

    def __init__(self, directory: Path, inputs: Mapping[str, np.ndarray]) -> None:
        self.directory = directory
        self.inputs = dict(inputs)
        self.index: dict[str, str] = {}
        self.nondeterministic: list[str] = []
        self.unobservable: list[str] = []  # tensors the reference engine cannot return
        self._readers: dict[str, NpzReader] = {}  # batch file -> where its arrays lie
        self.load()

    @property
    def complete(self) -> bool:
        return bool(self.index)

    def __contains__(self, name: str) -> bool:
        return name in self.inputs or name in self.index

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.inputs:
            return self.inputs[name]
        file = self.index[name]
        if file not in self._readers:
            self._readers[file] = NpzReader(self.directory / file)
        return self._readers[file][name]

    def batches(self, skip: Iterable[str] = ()) -> list[list[str]]:
        """The dump's batches (the tensors of each reference run, in order), without `skip`."""
        skipped = set(skip)
        out: dict[str, list[str]] = {}
        for name, file in self.index.items():
            if name not in skipped:
                out.setdefault(file, []).append(name)
        return list(out.values())

    def get_many(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        return {n: self[n] for n in names}

    def compute(
        self, model: Model, runner: EngineRunner, budget: int, on_batch: Callable[[int, int], None] | None = None
    ) -> None:
        """Run the reference on every comparable tensor, twice (a determinism check), and spill to disk.

        A batch the engine cannot fetch (e.g. an output its converter drops) is split until the offending tensors
        are isolated; those are recorded as unobservable and never compared. The full model must run.
        """
        names = [t for _, t in model.data_tensors()]
        pending = plan_batches(model, names, max(budget // 2, 1))
        self.directory.mkdir(parents=True, exist_ok=True)
        index: dict[str, str] = {}
        done = 0
        first_failure = ""
        while pending:
            batch = pending.pop(0)
            cut = truncate(model, batch)
            feeds = {f: self.inputs[f] for f in cut.feeds}
            file = f"batch-{done}.npz"
            first = runner.run(cut, feeds, keep=self.directory / file, load=False)
            _close(first)
            if not first.ok:
                first_failure = first_failure or f"{first.status}: {first.message}"
                if len(batch) > 1:
                    half = len(batch) // 2
                    pending[:0] = [batch[:half], batch[half:]]
                else:
                    self.unobservable.append(batch[0])
                continue
            # Determinism: the same run again, compared bit for bit through the .npy CRCs (no data read).
            second = runner.run(cut, feeds, use_cache=False, keep=self.directory / "second.npz", load=False)
            _close(second)
            if second.ok:
                self.nondeterministic += [n for n in batch if first.digests[n] != second.digests[n]]
            index.update(dict.fromkeys(batch, file))
            done += 1
            if on_batch:
                on_batch(len(index) + len(self.unobservable), len(names))
        if any(f not in index for f in model.fetches):
            raise EngineUnavailable(
                f"the reference engine {runner.spec} failed on the model ({first_failure}){drift_hint(model, runner)}"
            )
        (self.directory / "second.npz").unlink(missing_ok=True)
        flags = {"nondeterministic": self.nondeterministic, "unobservable": self.unobservable}
        atomic_write_text(self.directory / "flags.json", json.dumps(flags))
        atomic_write_text(self.directory / "index.json", json.dumps(index))  # last: marks the dump complete
        self.index = index

    def load(self) -> None:
        """Read the dump's index and flags, when the directory holds a complete dump (an interrupted run's, or
        one linked from the cache)."""
        index_file, flags = self.directory / "index.json", self.directory / "flags.json"
        self.index = json.loads(index_file.read_text()) if index_file.exists() else {}
        if self.index and flags.exists():
            data = json.loads(flags.read_text())
            self.nondeterministic = data["nondeterministic"]
            self.unobservable = data["unobservable"]
        self.close()

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def _close(result: RunResult) -> None:
    if result.stored is not None:
        result.stored.close()


def drift_hint(model: Model, runner: EngineRunner) -> str:
    """For a Paddle-Lite reference: the known Paddle 3.x schema drift that may be why it failed, with the fix."""
    from bisect_lite.lite_compat import find_drift

    drift = find_drift(model) if runner.engine.name == "lite" else []
    if not drift:
        return ""
    return f"; known Paddle 3.x schema drift: {drift[0].describe()}; `bisect-lite lite-compat MODEL -o DIR` repairs it"
