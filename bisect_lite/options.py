"""What a `run` is asked to do: the options of `bisect-lite run`, shared by the job and its phases."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bisect_lite.compare import CompareConfig
from bisect_lite.engines.runner import DEFAULT_TIMEOUT


@dataclass
class RunOptions:
    ref: str = "paddle"
    target: str = "fp16"
    inputs: Path | None = None
    shapes: Sequence[str] = ()
    seed: int = 0
    int_range: str | None = None
    out: Path = Path("bisect-out")
    find_all: bool = False
    compare: CompareConfig | None = None  # None: tolerances suited to the target's precision
    timeout: float = DEFAULT_TIMEOUT
    max_memory: int = 1 << 30
    cache: bool = True
    resume: bool = False
    minimise: bool = True
    verbose: bool = False
    max_culprits: int = 8
    params: Path | None = None
    force: bool = False  # replace the output of an earlier run in `out`
    # "bisect": cut the graph; "placement": keep it whole and move OpenCL ops back to the CPU (Paddle-Lite only)
    strategy: str = "bisect"
    # "auto": several cuts per target run when the target's values do not depend on what it fetches
    # (phases/observe.py), "multicut" forces it (e.g. a cmd: runner known to be so), "binary" never
    search: str = "auto"
    # The precision model (bisect_lite.precision) judges half-precision targets unless tolerances were given.
    explicit_tolerance: bool = False  # --atol/--rtol given: the tolerance rule judges every tensor
    target_precision: str | None = None  # --target-precision fp16|fp32 (None: what the engine states)
    precision_factor: float | None = None  # --precision-factor K (None: precision.DEFAULT_FACTOR)
    accumulation: str | None = None  # --accumulation fp32|half (None: fp32)
    engines_note: str | None = None  # which default engines `run` chose and why (registry.resolve_engines)
