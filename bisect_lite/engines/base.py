"""The engine interface.

An engine takes a saved model (a directory with `model.pdmodel` + `model.pdiparams`) and input arrays, and returns
the fetch targets keyed by tensor name, or a verdict (`crash`, `timeout`).

Methods split by where they run:
- parent process: construction (validates the spec), `unavailable_reason`, `version`, `cache_key`, `execute`;
- worker process (see worker.py): `load` (convert/prepare once per model) and `infer` (run many times).
Heavy imports (paddle, onnxruntime) belong in the worker-side methods only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from bisect_lite.engines.spec import EngineSpec
from bisect_lite.errors import InputError
from bisect_lite.npz import NpzReader


@dataclass
class Job:
    """One run: files the engine reads and the file it must write."""

    model_dir: Path
    inputs_file: Path  # .npz, one array per feed
    outputs_file: Path  # .npz to write, one array per fetch
    io_file: Path  # JSON {"feeds": [...], "fetches": [...]}
    feeds: list[str]
    fetches: list[str]
    work_dir: Path  # private scratch space of this engine (prepared artefacts live below it)


@dataclass
class RunResult:
    status: str  # "ok" | "crash" | "timeout"
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""  # for crash/timeout: exit code or signal and the tail of stderr
    info: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    digests: dict[str, int] = field(default_factory=dict)  # CRC-32 of each output's .npy bytes
    stored: NpzReader | None = None  # outputs left in their file (EngineRunner.run with load=False)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Engine:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    words: ClassVar[dict[str, str]] = {}  # accepted bare words -> help
    option_help: ClassVar[dict[str, str]] = {}  # accepted KEY=VALUE options -> help
    isolated: ClassVar[bool] = True  # run in a worker process (False: `execute` isolates by itself)
    # Reuse results across runs. Off for engines whose results depend on state outside the spec and version
    # (a rebuilt device runtime, a user's program): a stale result there would hide or invent a fault.
    cache_results: ClassVar[bool] = True
    # The values of a tensor do not depend on which other tensors a run fetches, so one run may observe several
    # cut points (phases/observe.py). None for programs of unknown nature (cmd:): the second whole-model run
    # tests it (phases/confirm.py), and `--search multicut`/`binary` overrides. The multi-cut search confirms its
    # answer with a plain probe either way.
    fetch_invariant: ClassVar[bool | None] = False

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        for word in spec.words:
            if word not in self.words:
                raise InputError(self._unknown("word", word, self.words))
        for key, _ in spec.options:
            if key not in self.option_help:
                raise InputError(self._unknown("option", key, self.option_help))

    def _unknown(self, what: str, got: str, accepted: dict[str, str]) -> str:
        ok = ", ".join(sorted(accepted)) or "none"
        return f"engine {self.name!r}: unknown {what} {got!r} (accepted: {ok})"

    def option(self, key: str, default: str | None = None, choices: tuple[str, ...] | None = None) -> str | None:
        value = self.spec.option(key, default)
        if choices is not None and value not in choices:
            raise InputError(f"engine {self.spec}: {key}={value} is not one of {', '.join(choices)}")
        return value

    def int_option(self, key: str, default: int, minimum: int | None = None) -> int:
        """An integer option, checked when the spec is parsed (constructors call this, never a worker)."""
        value = self.spec.option(key)
        try:
            number = default if value is None else int(value)
        except ValueError:
            raise InputError(f"engine {self.spec}: {key}={value} is not an integer") from None
        if minimum is not None and number < minimum:
            raise InputError(f"engine {self.spec}: {key}={value} must be at least {minimum}")
        return number

    # ---- parent side ----------------------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this engine cannot run here (None when it can). Must be cheap: no heavy imports."""
        return None

    @property
    def half_precision(self) -> bool:
        """Whether results may carry fp16 rounding: True unless the engine states fp32 (unknown counts as half)."""
        return True

    @property
    def declared_precision(self) -> str:
        """The precision the engine states it computes in: "fp32", "fp16" or "unknown" (a user's program).

        Engines that set ``half_precision = False`` compute in fp32; the fp16 emulation and Paddle-Lite's OpenCL
        backend override this. "unknown" is judged as half precision (see bisect_lite.precision)."""
        return "unknown" if self.half_precision else "fp32"

    def problem(self) -> str | None:
        """Why this configured engine cannot run (None when it can); may look at its options."""
        return self.unavailable_reason()

    def version(self) -> str:
        return "unknown"

    def cache_key(self) -> str:
        """What identifies results: the canonical spec and the engine's version."""
        return f"{self.spec}|{self.version()}"

    def facts(self) -> dict[str, Any]:
        """Facts recorded with results and repros (versions, device)."""
        return {"engine": str(self.spec), "version": self.version()}

    def optimized_program(self, model_dir: Path, work_dir: Path) -> Path | None:
        """Directory of the program the target really runs after its own optimiser (fusions, glue ops), in a
        format `bisect_lite.model.load_model` reads; None when the engine has no such view."""
        return None

    def close(self) -> None:
        """Release what `execute` keeps between runs (worker processes, device sessions)."""

    def execute(self, job: Job, timeout: float) -> RunResult:
        """Run a job without a worker (only for engines with isolated = False)."""
        raise NotImplementedError

    # ---- worker side ----------------------------------------------------------------------------------
    def load(self, model_dir: Path, work_dir: Path) -> Any:
        raise NotImplementedError

    def infer(self, loaded: Any, inputs: dict[str, np.ndarray], fetches: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def package_version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
