"""Run an engine on a model: materialise files, use the cache, isolate the engine, turn failures into verdicts."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.cache import Cache
from bisect_lite.engines.base import Engine, Job, RunResult
from bisect_lite.engines.registry import create_engine
from bisect_lite.engines.worker import Worker, WorkerDied
from bisect_lite.errors import BisectLiteError, EngineUnavailable
from bisect_lite.model import Model, truncate
from bisect_lite.npz import BadNpz, NpzReader

DEFAULT_TIMEOUT = 120.0


MAX_OUTPUT_BYTES = int(os.environ.get("BISECT_LITE_MAX_OUTPUT_BYTES", 4 << 30))


class BadOutputs(Exception):
    pass


def _declared_count(model: Model, name: str) -> int | None:
    var = model.vars.get(name)
    return None if var is None else var.declared_count


def output_bound(model: Model, inputs: Mapping[str, np.ndarray]) -> int:
    """The most bytes a healthy engine can return for `model`: what its fetches declare when every dim is static,
    scaled by how much larger the actual inputs are than declared, with generous slack (wider dtypes, stale
    declared shapes); else the global cap. A 3 GB answer to a 1 MB question is refused before it is read."""
    declared = [_declared_count(model, name) for name in model.fetches]
    if any(c is None for c in declared):
        return MAX_OUTPUT_BYTES
    scale = 1.0
    for name, array in inputs.items():
        count = _declared_count(model, name)
        if count:
            scale = max(scale, array.size / count)
    total = sum(c or 0 for c in declared) * 8  # 8: the widest dtype an engine may return (float64/int64)
    return int(min(MAX_OUTPUT_BYTES, 16 * total * scale + (64 << 20)))


def check_outputs_file(path: Path, fetches: list[str], limit: int | None = None) -> NpzReader:
    """Validate an engine's outputs .npz without loading it; return its reader (CRC-32 of each array in `crcs`).

    Refused: anything but a regular file (a FIFO or /dev/zero would hang or never end), more bytes than `limit`,
    far more members than fetches, compressed or pickled members, and any .npy whose header claims another size
    than the member holds."""
    limit = MAX_OUTPUT_BYTES if limit is None else limit
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadOutputs("not a regular file")
        if st.st_size > limit:
            raise BadOutputs(f"{st.st_size} bytes, more than the {limit} byte cap (BISECT_LITE_MAX_OUTPUT_BYTES)")
        file = os.fdopen(os.dup(fd), "rb")
    finally:
        os.close(fd)
    try:
        reader = NpzReader(path, file=file, wanted=set(fetches), limit=limit)
    except BadNpz as exc:
        raise BadOutputs(str(exc)) from None
    if len(reader) > 2 * len(fetches) + 16:
        reader.close()
        raise BadOutputs(f"{len(reader)} arrays for {len(fetches)} fetches")
    return reader


@dataclass
class Observed:
    """Runs that returned many tensors (`EngineRunner.observe`), left on disk: each batch of names and the reader
    of its file."""

    batches: list[tuple[list[str], NpzReader]] = field(default_factory=list)
    crashed: str = ""  # the first run that failed (its batch is left out)

    def stream(self) -> Iterator[tuple[str, np.ndarray]]:
        """(name, value) in run order, one array read at a time."""
        for names, reader in self.batches:
            for name in names:
                yield name, reader[name]

    def remove(self) -> None:
        for _, reader in self.batches:
            reader.close()
            reader.path.unlink(missing_ok=True)


class EngineRunner:
    """One engine, its worker process (started lazily, restarted after a crash) and the cache."""

    def __init__(
        self,
        engine: Engine | str,
        cache: Cache | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        verbose: bool = False,
        scratch: Path | None = None,
    ) -> None:
        self.engine = create_engine(engine) if isinstance(engine, str) else engine
        reason = self.engine.problem()
        if reason:
            raise EngineUnavailable(f"engine {self.engine.spec} is unavailable: {reason}")
        self.cache = cache or Cache(results=False)
        self._own_cache = cache is None
        self.timeout = timeout
        self.verbose = verbose
        self._scratch_tmp = None if scratch else tempfile.TemporaryDirectory(prefix="bisect-lite-run-")
        # Absolute: engines (cmd: programs, workers) may run in another working directory.
        base = Path(os.path.abspath(scratch if scratch else self._scratch_tmp.name))  # type: ignore[union-attr]
        # Each runner gets its own directory: its worker log must not mix with another engine's.
        self.scratch = base / re.sub(r"[^A-Za-z0-9_.-]+", "_", str(self.engine.spec))[:60]
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.worker: Worker | None = None
        self.runs = 0  # engine executions (cache hits excluded)
        self.phase = "other"  # set by the run job's phases: runs are counted per phase
        self.runs_by_phase: dict[str, int] = {}
        self.cache_hits = 0
        self.engine_seconds = 0.0
        self.peak_rss = 0  # bytes: the highest VmHWM of this engine's worker processes (0: no worker)
        self._key = self.engine.cache_key()
        self._described: tuple[str, dict[str, Any] | None] | None = None  # describe_target of the last model

    @property
    def spec(self) -> str:
        return str(self.engine.spec)

    @property
    def cache_key(self) -> str:
        """What identifies this engine's results (its canonical spec and version)."""
        return self._key

    def facts(self) -> dict:
        return self.engine.facts()

    def run(
        self,
        model: Model,
        inputs: Mapping[str, np.ndarray],
        *,
        use_cache: bool = True,
        keep: Path | None = None,
        load: bool = True,
    ) -> RunResult:
        """Run `model`. `keep` names a path that receives the engine's outputs .npz (saves re-writing it);
        `load=False` leaves the arrays there: result.stored reads them one at a time (close it when done), and
        result.digests holds their CRC-32s."""
        inputs = {name: np.asarray(inputs[name]) for name in model.feeds}
        fetches = list(model.fetches)
        # The key hashes every input (30 ms for PP-OCRv5 det's 640x640 image): only when results may be cached.
        key = self.cache.result_key(model, self._key, inputs, fetches) if self.engine.cache_results else ""
        use_cache = use_cache and self.engine.cache_results
        if use_cache:
            hit = self.cache.get_result(key)
            if hit is not None and all(f in hit for f in fetches) and keep is None:
                self.cache_hits += 1
                return RunResult("ok", hit, 0.0, cached=True)
        job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=self.scratch))
        job = Job(
            model_dir=self.cache.model_dir(model),
            inputs_file=job_dir / "inputs.npz",
            outputs_file=job_dir / "outputs.npz",
            io_file=job_dir / "io.json",
            feeds=list(model.feeds),
            fetches=fetches,
            work_dir=self.cache.prepared_dir(model, self._key),
        )
        np.savez(job.inputs_file, **inputs)
        job.io_file.write_text(json.dumps({"feeds": job.feeds, "fetches": job.fetches}))
        reused = any(job.work_dir.iterdir())  # conversions from an earlier run, which may have been damaged since
        start = time.perf_counter()
        result = self._execute(job)
        if result.status == "crash" and reused:
            # A cached conversion is not trusted with a verdict: convert afresh and run once more.
            self.cache.discard_prepared(model, self._key)
            job.work_dir.mkdir(parents=True, exist_ok=True)
            job.outputs_file.unlink(missing_ok=True)
            result = self._execute(job)
        result.seconds = time.perf_counter() - start
        self.runs += 1
        self.runs_by_phase[self.phase] = self.runs_by_phase.get(self.phase, 0) + 1
        self.engine_seconds += result.seconds
        if result.ok:
            result = self._collect(job, result, load=load or keep is None, limit=output_bound(model, inputs))
            if result.ok and result.outputs and self.engine.cache_results:
                self.cache.put_result(key, result.outputs)
            if result.ok and keep is not None:
                os.replace(job.outputs_file, keep)
                if result.stored is not None:
                    result.stored.path = keep
        shutil.rmtree(job_dir, ignore_errors=True)  # a long search must not fill the disk with job files
        return result

    def observe(self, model: Model, batches: list[list[str]], values: Any, label: str) -> Observed:
        """One run per batch of tensor names (the model truncated to them, fed from `values`: the reference), each
        result left on disk in the scratch directory (not in the result cache: hundreds of MB on a real model), to be
        read one tensor at a time and removed by the caller."""
        observed = Observed()
        for i, names in enumerate(batches):
            sub = truncate(model, names)
            result = self.run(sub, values.get_many(sub.feeds), keep=self.scratch / f"{label}-{i}.npz", load=False)
            if not result.ok or result.stored is None:
                observed.crashed = observed.crashed or f"{result.status}: {result.message}"
                continue
            observed.batches.append((names, result.stored))
        return observed

    def _execute(self, job: Job) -> RunResult:
        if not self.engine.isolated:
            return self.engine.execute(job, self.timeout)
        if self.worker is None:
            self.worker = Worker(str(self.engine.spec), self.scratch / "worker.log", verbose=self.verbose)
        try:
            result = self.worker.run(job, self.timeout)
            self.peak_rss = max(self.peak_rss, self.worker.peak_rss)
            return result
        except WorkerDied as exc:
            raise EngineUnavailable(f"engine {self.engine.spec} cannot start: {exc}") from None

    @staticmethod
    def _collect(job: Job, result: RunResult, load: bool = True, limit: int | None = None) -> RunResult:
        """Check the outputs file holds every fetch; load the arrays, or (load=False) leave them in the file, read
        one at a time through `result.stored`; their CRC-32s (from the zip directory) are enough to compare two
        runs bit for bit without reading the data.

        The file is the engine's word, not ours: it must be a regular file within the byte cap, and every array's
        header must agree with its stored size before anything is allocated (a header may claim 4 TiB)."""
        try:
            reader = check_outputs_file(job.outputs_file, job.fetches, limit)
        except FileNotFoundError:
            return RunResult("crash", seconds=result.seconds, message="engine wrote no outputs file")
        except BadOutputs as exc:
            return RunResult("crash", seconds=result.seconds, message=f"unusable outputs file: {exc}")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
            return RunResult("crash", seconds=result.seconds, message=f"unreadable outputs file ({exc})")
        missing = [f for f in job.fetches if f not in reader]
        if missing:
            reader.close()
            return RunResult(
                "crash",
                seconds=result.seconds,
                message=f"outputs file lacks {len(missing)} of {len(job.fetches)} fetches: " + ", ".join(missing[:5]),
            )
        result.digests = {f: reader.crcs[f] for f in job.fetches}
        if not load:
            result.stored = reader
            return result
        try:
            # Read from their offsets: no CRC pass and no temporary copy (the checks above bound every size).
            result.outputs = {f: reader[f] for f in job.fetches}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            return RunResult("crash", seconds=result.seconds, message=f"unreadable outputs file ({exc})")
        finally:
            reader.close()
        return result

    def optimized_program(self, model: Model) -> Model | None:
        """The program the engine really runs for `model` (after its optimiser), when it can tell."""
        from bisect_lite.model import load_model

        directory = self.engine.optimized_program(
            self.cache.model_dir(model), self.cache.prepared_dir(model, self._key)
        )
        return load_model(directory, with_params=False) if directory else None

    def kernels(self, model: Model, ops: list[int] | None = None) -> dict[str, Any] | None:
        """Which kernel (the target's own place or a host fallback) runs each op, from the optimised program:
        counts for the model and rows for `ops` (report/kernels.py); None when the engine cannot tell."""
        from bisect_lite.model.describe import describe_target
        from bisect_lite.report.kernels import kernel_facts

        place = getattr(self.engine, "place", None)
        if not place:
            return None
        if self._described is None or self._described[0] != model.fingerprint:
            try:
                optimized = self.optimized_program(model)
            except (RuntimeError, OSError, BisectLiteError):  # opt cannot convert it: the verdict says so already
                return None
            described = describe_target(model, optimized, self.spec) if optimized is not None else None
            self._described = (model.fingerprint, described)
        described = self._described[1]
        used = getattr(self.engine, "used_precision", None)
        return kernel_facts(described, place, ops, used) if described else None

    def close(self) -> None:
        self.engine.close()
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self._scratch_tmp is not None:
            self._scratch_tmp.cleanup()
            self._scratch_tmp = None
        if self._own_cache:
            self.cache.close()

    def __enter__(self) -> EngineRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
