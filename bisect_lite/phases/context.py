"""What every phase of a run shares: the model, the engines, the reference values, the probes so far, one judgement."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bisect_lite.compare import Comparison, TensorMetrics, compare_outputs
from bisect_lite.engines.base import RunResult
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.journal import Journal
from bisect_lite.model import Model, extract, truncate
from bisect_lite.model.fusion import FusedGroup
from bisect_lite.options import RunOptions
from bisect_lite.precision import ExpectedError, PrecisionRule, isolated_expectations
from bisect_lite.reference import ReferenceValues
from bisect_lite.search import ProbeOutcome, Status

Events = Callable[[str, dict[str, Any]], None]
STATUS_WORD = {Status.PASS: "pass", Status.FAIL: "fail", Status.CRASH: "crash", Status.SKIP: "skip"}
WORD_STATUS = {v: k for k, v in STATUS_WORD.items()}


@dataclass
class Probe:
    """One target run on a cut model."""

    segment: int
    cut: int
    fetched: list[str]
    outcome: ProbeOutcome
    comparison: Comparison | None
    seconds: float
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        worst = self.comparison.worst() if self.comparison else None
        return {
            "segment": self.segment,
            "cut": self.cut,
            "fetched": self.fetched,
            "verdict": STATUS_WORD[self.outcome.status],
            "blame": self.outcome.blame,
            "metrics": [m.to_dict() for m in self.comparison.tensors] if self.comparison else [],
            "worst_rel_l2": worst_error(self.comparison),
            "worst_tensor": worst.name if worst else None,
            "seconds": round(self.seconds, 4),
            "message": self.message,
        }

    @classmethod
    def from_journal(cls, entry: dict[str, Any]) -> Probe:
        cmp = (
            Comparison(tensors=[TensorMetrics.from_dict(m) for m in entry["metrics"]]) if entry.get("metrics") else None
        )
        outcome = ProbeOutcome(WORD_STATUS[entry["verdict"]], blame=entry.get("blame"), detail=entry.get("message"))
        return cls(
            entry["segment"], entry["cut"], entry["fetched"], outcome, cmp, entry["seconds"], entry.get("message", "")
        )


def worst_error(cmp: Comparison | None) -> float | str | None:
    """The worst rel L2; "inf" when NaN/Inf appeared where the reference is finite (JSON has no inf)."""
    if cmp is None:
        return None
    worst = 0.0
    for m in cmp.tensors:
        nonfinite = (m.nan_target or 0) > (m.nan_ref or 0) or (m.inf_target or 0) > (m.inf_ref or 0)
        if nonfinite or m.rel_l2 is None or not np.isfinite(m.rel_l2):
            if not m.passed:
                return "inf"
            continue
        worst = max(worst, float(m.rel_l2))
    return "inf" if cmp.missing else worst


@dataclass
class RunContext:
    model: Model
    options: RunOptions
    ref: EngineRunner
    target: EngineRunner
    inputs: dict[str, np.ndarray]
    journal: Journal
    values: ReferenceValues
    events: Events = field(default=lambda kind, data: None)
    probes: list[Probe] = field(default_factory=list)
    groups: list[FusedGroup] | None = None  # the target's fused groups, when it can tell
    notes: list[str] = field(default_factory=list)
    segments: dict[int, Model] = field(default_factory=dict)  # ops start.. of the model, fed with reference values
    # Half-precision targets: the precision model (None: tolerances judge), the expected error of every tensor of
    # the whole model (computed with the reference), and the fp16 emulation that measures it on cut models.
    precision: PrecisionRule | None = None
    expectations: dict[str, ExpectedError] = field(default_factory=dict)
    emulation: EngineRunner | None = None
    search_strategy: str = "binary"  # how phase 3 searched (phases/observe.py): binary, multicut, or both
    search_strategy_reason: str = ""
    observation_runs: dict[int, int] = field(default_factory=dict)  # segment -> runs observing several cuts
    # The first op beyond the judgement as the whole-model runs of a fetch-invariant target observed it (every
    # tensor fetched, phases/confirm.py): the search takes it as an observation and confirms it with a plain probe.
    observed_blame: int | None = None
    # A target of unknown nature (Engine.fetch_invariant None): whether its outputs stayed bit-identical when the
    # second whole-model run fetched every tensor (None: not tested). True lets the search observe several cuts.
    fetch_invariance_shown: bool | None = None
    # When that run changed the outputs: the first run's outputs. One more plain run, after the search, tells
    # non-determinism from values that depend on what is fetched (phases/confirm.py decide_determinism).
    undecided_determinism: dict[str, np.ndarray] | None = None
    # The whole model failed and nothing has shown yet that the target computes anything right: the setup check
    # (phases/confirm.py) runs after the search of segment 0 unless one of its probes passed.
    setup_pending: bool = False

    def segment_model(self, start: int, targets: list[str]) -> Model:
        """The model computing `targets` from op `start` on; tensors made before `start` are fed (reference)."""
        if start == 0:
            return truncate(self.model, targets)
        if start not in self.segments:
            self.segments[start] = extract(self.model, range(start, len(self.model.ops)))
        return truncate(self.segments[start], targets)

    def judge(
        self,
        result: RunResult,
        expected: dict[str, np.ndarray],
        names: list[str],
        model: Model | None = None,
        feeds: dict[str, np.ndarray] | None = None,
    ) -> tuple[ProbeOutcome, Comparison | None]:
        """The one judgement of a target result, used by every phase. FAIL blames the earliest producer of a
        failing tensor (an op index of the whole model). `model`/`feeds`: what the target ran, when it was not fed
        the model's inputs (the precision model then measures the emulation's error on that run)."""
        if not result.ok:
            return ProbeOutcome(Status.CRASH, detail=result.message), None
        assert self.options.compare is not None
        cmp = compare_outputs(expected, result.outputs, self.options.compare, names=names)
        if self.precision is not None:
            cmp = self.precision.judge_comparison(
                cmp,
                self.expected_errors(expected, model, feeds),
                keep=self.options.compare.overrides,
                values=(expected, result.outputs),
            )
        if cmp.passed:
            return ProbeOutcome(Status.PASS), cmp
        producers = self.model.producers
        blame = min((producers.get(n, len(self.model.ops)) for n in cmp.failing), default=None)
        return ProbeOutcome(Status.FAIL, blame=blame), cmp

    def expected_errors(
        self, expected: dict[str, np.ndarray], model: Model | None, feeds: dict[str, np.ndarray] | None
    ) -> dict[str, ExpectedError]:
        """The precision model's expectation for a run: the whole-model dump when the run was fed the model's
        inputs, else the emulation's own error on the same cut model and feeds (isolation, later segments)."""
        if model is None or feeds is None or self.emulation is None:
            return self.expectations
        if all(f in self.inputs and np.shape(feeds[f]) == np.shape(self.inputs[f]) for f in model.feeds):
            return self.expectations  # fed the model's own inputs: the same computation as the dump's
        return isolated_expectations(self.model, model, feeds, expected, self.emulation)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Target runs made inside are counted under `name` (report.json `target_runs_by_phase`)."""
        before = self.target.phase
        self.target.phase = name
        try:
            yield
        finally:
            self.target.phase = before

    def record(self, probe: Probe) -> Probe:
        self.probes.append(probe)
        self.journal.append({"type": "probe", **probe.to_dict()})
        self.events("probe", probe.to_dict())
        return probe
