"""The precision model: is a tensor's error a kernel bug, or what half precision costs?

A fixed tolerance fails both ways: fp16 rounding accumulates with depth (a healthy fp16 run of PP-OCRv5 det is
off by rel L2 1e-2 at its output), while a kernel that is 5 % off can move a model's output by only a few times
that. So for a half-precision target every tensor gets its own expected error: the error that rounding to fp16
alone makes against the fp32 reference on the same inputs. It is measured with the host's `fp16:range=none`
emulation (bisect_lite/engines/fp16.py: fp32 arithmetic, every activation and weight rounded to fp16's 11-bit
significand, nearest even, but with fp32's exponent range): the expectation models rounding and nothing else.
fp16's range -- values beyond 65504 that become inf or are pinned at ±65504, values below 2^-14 that turn into
subnormals or zeros -- is never part of it: those are findings (bisect_lite/fp16_range.py), whatever this model
says. The expectation is computed alongside the reference dump, batch by batch, and only per-tensor scalars are
kept (`ExpectedError`).

Verdict per float tensor (`PrecisionRule.judge`): beyond precision when

    rel_l2(target)  > K * max(expected rel_l2,  L2_FLOOR)                  or
    max_abs(target) > K * max(expected max_abs, PEAK_FLOOR * absmax(ref))

and within precision otherwise. NaN/inf where the reference is finite, values pinned at ±65504 where the reference
exceeds it, values flushed to zero where the reference's values below 2^-14 matter (`with_range_check`), shape and
dtype differences always fail. The L2 test catches faults spread over a tensor, the peak test faults on a few
elements (a border, a row, a channel) whose L2 share is small.

What K assumes (measured on an NVIDIA H200, layer by layer on the PP-OCRv5 models, ../shared/notes/precision.md):
- `accumulation=fp32` (the default; tensor cores, block-accumulating kernels): real fp16 error / storage-only
  emulation error is at most 4.0 on 5,232 tensor checks once the emulation error is floored at 2^-12 (rel L2) and
  2^-11*absmax (peak), and K = 5 gave no false alarm there (margin 1.25). K = 5 rather than a safer 6 because a
  fault whose effect is 5x the fp16 noise must be caught: with the fault on top of the noise, the target's error is
  then ~5.1x the expectation, and K = 6 misses it (bench_precision: 5-10 % faults at the last op of det). Without the
  floors tiny tensors needed K > 40.
- `accumulation=half` (many mobile OpenCL kernels in half precision): that ratio reaches 13 (p99 over 6 inputs)
  and storage-only emulation is the wrong noise model. Tensors judged after accumulating through the model get
  K * HALF_ACCUMULATION (about 80, the K the notes found clean); tensors of an op run alone on reference inputs
  (isolation, where bug and noise separate best) get the accumulation-aware bound
  K * max(emulation error, min(0.65*sqrt(K_red), ISOLATED_HALF_CAP) * ONE_ROUNDING), K_red the op's reduction
  length: one op accumulating in half was measured at 0.65*sqrt(K_red) roundings (median), at most 31.7 for
  K_red <= 4095, while a 5 % kernel fault is at least 195 roundings.
Tune K with `--precision-factor`; `--accumulation half` selects the second model. Explicit tolerances (--atol,
--rtol, --tol) win over the model; fp32 targets never use it.

`deep_check` judges every tensor of the target's runs (the outputs alone can hide a fault) and measures how quiet
the target is: a runner much quieter than fp16 (an fp32 `cmd:` runner of undeclared precision) has its
expectations scaled down (`quiet_target_scale`, at most to a tenth; the floors stay).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.compare import (
    CompareConfig,
    Comparison,
    Scratch,
    TensorMetrics,
    compare_tensor,
    dot,
    same_shape_metrics,
)
from bisect_lite.fp16_range import range_failure_possible, target_range_failure
from bisect_lite.fsutil import atomic_write_text
from bisect_lite.model import Model, truncate

DEFAULT_FACTOR = 5.0
L2_FLOOR = 2.0**-12  # rel L2: one fp16 storage rounding is ~2.1e-4 (2^-12.2)
PEAK_FLOOR = 2.0**-11  # max abs relative to the reference's max |x|: half an fp16 ulp at the top of the range
PEAK_RATIO = 1.0  # see PrecisionRule.peak_ratio
ONE_ROUNDING = 2.1e-4  # rel L2 of one fp16 rounding of a tensor (measured, notes)
HALF_ACCUMULATION = 80.0 / DEFAULT_FACTOR  # factor on K for accumulated tensors on a half-accumulating device
ISOLATED_HALF_CAP = 31.7 / DEFAULT_FACTOR  # K * this = the largest isolated half-accumulation error measured
ACCUMULATIONS = ("fp32", "half")
PRECISIONS = ("fp16", "fp32", "unknown")
# The engine whose error is the expectation: fp16 rounding alone (11-bit significand, fp32's range and arithmetic).
EMULATION_SPEC = "fp16:range=none"


@dataclass
class ExpectedError:
    """The emulation's error on one tensor, against the reference (scalars only)."""

    rel_l2: float | None  # None: not computable (NaN/inf in the emulation where the reference is finite)
    max_abs: float | None
    ref_absmax: float
    k_red: int = 1  # reduction length of the producing op (isolation under half accumulation)
    isolated: bool = False  # measured on an op (or a few) fed reference values, not accumulated from the inputs
    emulation_nonfinite: int = 0  # NaN/inf elements of the emulation where the reference is finite

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def error_stats(ref: np.ndarray, other: np.ndarray, k_red: int = 1, isolated: bool = False) -> ExpectedError | None:
    """rel L2 and max abs of `other` against `ref` over the elements finite on both sides; None for non-float or
    differently sized tensors (the tolerance rule judges those)."""
    ref, other = np.asarray(ref), np.asarray(other)
    if ref.dtype.kind != "f" or other.dtype.kind != "f" or ref.size != other.size:
        return None
    # float32 throughout (float64 copies of a 6M-element tensor cost more than the run): the difference of two
    # float32 values is exact to 2^-24 relative.
    r = ref.reshape(-1).astype(np.float32, copy=False)
    o = other.reshape(-1).astype(np.float32, copy=False)
    quick = finite_error(r, o)
    if quick is not None:
        rel, max_abs, absmax, _ = quick
        return ExpectedError(rel, max_abs, absmax, k_red, isolated)
    finite_r = np.isfinite(r)
    both = finite_r & np.isfinite(o)
    bad = int(np.count_nonzero(finite_r & ~both))
    if not both.all():
        r, o = r[both], o[both]
    absmax = float(np.abs(r).max()) if r.size else 0.0
    if bad:
        return ExpectedError(None, None, absmax, k_red, isolated, bad)
    if not r.size:
        return ExpectedError(0.0, 0.0, 0.0, k_red, isolated)
    d = o - r
    nr, nd = math.sqrt(dot(r, r)), math.sqrt(dot(d, d))
    rel = nd / nr if nr > 0 else (0.0 if nd == 0 else math.inf)
    return ExpectedError(rel, float(np.abs(d).max()), absmax, k_red, isolated)


def finite_error(
    r: np.ndarray, o: np.ndarray, absmax: bool = True, scratch: Scratch | None = None
) -> tuple[float, float, float, float] | None:
    """(rel L2, max abs of o - r, max |r|, L2 norm of r) of two flat float32 arrays, in a few passes and one
    temporary; None unless every element of both is finite (finite sums of squares prove it: NaN/inf, or squares
    beyond float32, make them infinite), and then the masked statistics of `error_stats` are needed.
    `absmax=False`: max |r| is not wanted (0.0), two passes fewer."""
    if not r.size:
        return 0.0, 0.0, 0.0, 0.0
    rr = dot(r, r)
    d = np.subtract(o, r, out=None if scratch is None else scratch.get(0, r.size, r.dtype))
    dd = dot(d, d)
    if not (math.isfinite(rr) and math.isfinite(dd)):
        return None
    peak = max(float(r.max()), -float(r.min())) if absmax else 0.0
    max_abs = max(float(d.max()), -float(d.min()))
    nr, nd = math.sqrt(rr), math.sqrt(dd)
    return (nd / nr if nr > 0 else (0.0 if nd == 0 else math.inf)), max_abs, peak, nr


def reduction_length(model: Model, index: int) -> int:
    """How many products one output element of op `index` sums (1 for elementwise ops): conv Cin/groups*kh*kw,
    matmul K, reductions and normalisations the reduced extent. From static shapes; 1 when unknown."""
    op = model.ops[index]
    attrs = model.op_attrs(index)

    def shape(slot: str) -> list[int] | None:
        names = op.inputs.get(slot) or []
        var = model.vars.get(names[0]) if names else None
        return list(var.shape) if var is not None and var.shape is not None else None

    try:
        if op.type in ("conv2d", "depthwise_conv2d", "conv2d_transpose", "conv3d"):
            w = shape("Filter")
            if w is None:
                return 1
            if op.type == "conv2d_transpose":  # filter [Cin, Cout/g, kh, kw]: each output sums Cin/g*kh*kw/strides
                return max(1, int(np.prod(w[2:])) * max(w[0] // max(int(attrs.get("groups", 1) or 1), 1), 1))
            return max(1, int(np.prod(w[1:])))
        if op.type in ("matmul", "matmul_v2", "mul", "fc"):
            x = shape("X")
            if x is None:
                return 1
            trans = attrs.get("trans_x", attrs.get("transpose_X", False))
            return max(1, abs(int(x[-2] if trans and len(x) >= 2 else x[-1])))
        if op.type.startswith("reduce_") or op.type in ("softmax", "layer_norm", "mean", "pool2d"):
            x = shape("X")
            if x is None:
                return 1
            if op.type == "pool2d":
                if attrs.get("global_pooling") or attrs.get("adaptive"):
                    return max(1, abs(int(np.prod(x[2:]))))
                return max(1, int(np.prod(attrs.get("ksize", [1]))))
            if op.type == "softmax":
                return max(1, abs(int(x[int(attrs.get("axis", -1))])))
            if op.type == "layer_norm":
                return max(1, abs(int(np.prod(x[int(attrs.get("begin_norm_axis", 1)) :]))))
            dims = attrs.get("dim") or list(range(len(x)))
            if attrs.get("reduce_all"):
                dims = list(range(len(x)))
            return max(1, abs(int(np.prod([x[d] for d in dims]))))
    except (IndexError, TypeError, ValueError):
        return 1
    return 1


@dataclass(frozen=True)
class PrecisionRule:
    """How a half-precision target's tensors are judged: factor K, the accumulation assumed, who declared it."""

    factor: float = DEFAULT_FACTOR
    accumulation: str = "fp32"
    target_precision: str = "fp16"  # "fp16" or "unknown" (treated as half)
    declared_by: str = "engine"  # "engine" | "--target-precision" | "undeclared"
    peak_ratio: float = PEAK_RATIO  # the max-abs test's factor is K x this (an extreme statistic varies more)
    # < 1 when the target measured clearly quieter than the fp16 emulation (an fp32 runner of undeclared precision):
    # expectations shrink by it, the floors stay (see quiet_target_scale).
    noise_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.factor > 1.0 and math.isfinite(self.factor)):
            raise ValueError(f"--precision-factor must be a number above 1, got {self.factor!r}")
        if self.accumulation not in ACCUMULATIONS:
            raise ValueError(f"--accumulation must be one of {', '.join(ACCUMULATIONS)}, got {self.accumulation!r}")

    def bounds(self, e: ExpectedError) -> tuple[float, float] | None:
        """(rel L2 bound, max abs bound) for a tensor with expectation `e`; None when the emulation made NaN/inf
        there (only a reference beyond fp32's reach does: the element rule judges it)."""
        if e.rel_l2 is None or e.max_abs is None or not math.isfinite(e.rel_l2):
            return None
        k = self.factor
        scale = self.noise_scale
        l2, peak = max(scale * e.rel_l2, L2_FLOOR), max(scale * e.max_abs, PEAK_FLOOR * e.ref_absmax)
        if self.accumulation == "half":
            if e.isolated:
                noise = min(0.65 * math.sqrt(max(e.k_red, 1)), ISOLATED_HALF_CAP) * ONE_ROUNDING
                l2 = max(l2, noise)
                peak = max(peak, noise * e.ref_absmax)
            else:
                k *= HALF_ACCUMULATION
        return k * l2, k * self.peak_ratio * peak

    def describe(self) -> str:
        what = (
            f"beyond precision when a tensor's rel L2 error exceeds {self.factor:g} x max(fp16-rounding error, "
            f"2^-12) or its max abs error exceeds {self.factor:g} x max(rounding max abs, 2^-11 x max|ref|); "
            "fp16 range failures (NaN/inf, values pinned at ±65504, significant values flushed to zero) always fail"
        )
        if self.accumulation == "half":
            what += (
                f"; half accumulation assumed: x{HALF_ACCUMULATION:.3g} more for accumulated tensors, and for ops "
                "run alone at least 0.65*sqrt(K_red) fp16 roundings"
            )
        return what

    def judge(self, metrics: TensorMetrics, e: ExpectedError | None) -> TensorMetrics:
        """`metrics` re-judged by the precision model (a copy); unchanged when the model cannot judge it."""
        if e is None or metrics.rel_l2 is None or metrics.max_abs is None:
            return metrics
        b = self.bounds(e)
        if b is None:
            return metrics
        return within_bounds(metrics, b[0], b[1], e.rel_l2, e.max_abs)

    def judge_comparison(
        self,
        cmp: Comparison,
        expected: Mapping[str, ExpectedError],
        keep: Iterable[str] = (),
        values: tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]] | None = None,
    ) -> Comparison:
        """Every tensor with an expectation re-judged (except the names in `keep`: explicit --tol overrides).
        `values`: (reference, target) arrays by name: their fp16 range failures fail too (`with_range_check`)."""
        kept = set(keep)
        tensors = []
        for m in cmp.tensors:
            judged = m if m.name in kept else self.judge(m, expected.get(m.name))
            if values is not None and m.name in values[0] and m.name in values[1]:
                judged = with_range_check(judged, values[0][m.name], values[1][m.name])
            tensors.append(judged)
        return Comparison(tensors, list(cmp.missing))

    def to_dict(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "accumulation": self.accumulation,
            "target_precision": self.target_precision,
            "declared_by": self.declared_by,
            "l2_floor": L2_FLOOR,
            "peak_floor": PEAK_FLOOR,
            "expected_from": f"`{EMULATION_SPEC}` (fp16 rounding alone: no overflow, no underflow) vs the reference",
            "rule": self.describe(),
        }


def within_bounds(
    metrics: TensorMetrics, bound_l2: float, bound_peak: float, expected_l2: float | None, expected_peak: float | None
) -> TensorMetrics:
    """A copy of `metrics` judged against these bounds. Shape, dtype and NaN/inf verdicts of the element rule stay
    (an overflow or a wrong shape is a finding whatever the precision)."""
    judged = replace(
        metrics,
        judged_by="precision",
        expected_rel_l2=expected_l2,
        expected_max_abs=expected_peak,
        bound_rel_l2=bound_l2,
        bound_max_abs=bound_peak,
    )
    structural = metrics.ref_shape != metrics.target_shape or not metrics.ref_dtype.startswith(("float", "bfloat"))
    if structural or metrics.nonfinite_mismatch or metrics.rel_l2 is None or metrics.max_abs is None:
        return judged
    over = []
    if metrics.rel_l2 > bound_l2:
        noise = f" (fp16 rounding {expected_l2:.3g})" if expected_l2 is not None else ""
        over.append(f"rel L2 {metrics.rel_l2:.3g} > {bound_l2:.3g}{noise}")
    if metrics.max_abs > bound_peak:
        noise = f" (fp16 rounding {expected_peak:.3g})" if expected_peak is not None else ""
        over.append(f"max abs {metrics.max_abs:.3g} > {bound_peak:.3g}{noise}")
    judged.passed = not over
    judged.reason = ("beyond precision: " + "; ".join(over)) if over else ""
    return judged


def with_range_check(metrics: TensorMetrics, ref: np.ndarray, target: np.ndarray) -> TensorMetrics:
    """`metrics`, failed when the target's values show an fp16 range failure (fp16_range.target_range_failure):
    the precision model never excuses one."""
    found = target_range_failure(ref, target)
    return metrics if found is None else failed_for(metrics, found[1])


def failed_for(metrics: TensorMetrics, reason: str) -> TensorMetrics:
    """A failing copy of `metrics` with `reason` first (its own reasons kept when it failed already)."""
    reasons = [reason, *([metrics.reason] if metrics.reason and not metrics.passed else [])]
    return replace(metrics, passed=False, reason="; ".join(reasons))


def judge_with_recorded_bounds(cmp: Comparison, recorded: Iterable[Mapping[str, Any]]) -> Comparison:
    """`verify`: a repro judged by the precision model when it was made is judged against the bounds it recorded
    (repro.json metrics); other tensors keep the tolerance verdict."""
    bounds = {
        m["name"]: m
        for m in recorded
        if isinstance(m, Mapping) and m.get("judged_by") == "precision" and m.get("bound_rel_l2") is not None
    }
    if not bounds:
        return cmp
    tensors = []
    for m in cmp.tensors:
        b = bounds.get(m.name)
        if b is None:
            tensors.append(m)
            continue
        number = TensorMetrics.from_dict(b)
        assert number.bound_rel_l2 is not None and number.bound_max_abs is not None
        tensors.append(
            within_bounds(m, number.bound_rel_l2, number.bound_max_abs, number.expected_rel_l2, number.expected_max_abs)
        )
    return Comparison(tensors, list(cmp.missing))


def resolve_rule(
    target_precision: str, declared: str | None = None, factor: float | None = None, accumulation: str | None = None
) -> PrecisionRule | None:
    """The rule for a target whose engine states `target_precision`; `declared` (--target-precision) wins.
    None for fp32 targets (fp32 tolerances apply). Raises ValueError on bad values."""
    if declared is not None and declared not in ("fp16", "fp32"):
        raise ValueError(f"--target-precision must be fp16 or fp32, got {declared!r}")
    precision = declared or target_precision
    if precision == "fp32":
        return None
    by = "--target-precision" if declared else ("engine" if precision == "fp16" else "undeclared")
    return PrecisionRule(
        factor=DEFAULT_FACTOR if factor is None else float(factor),
        accumulation=accumulation or "fp32",
        target_precision=precision,
        declared_by=by,
    )


# ---- expectations ------------------------------------------------------------------------------------------------
class Expectations:
    """Tensor name -> ExpectedError of the whole model run from its inputs, saved next to the reference dump."""

    FILE = "precision.json"

    def __init__(self, directory: Path) -> None:
        self.file = directory / self.FILE
        self.errors: dict[str, ExpectedError] = {}
        self.seconds = 0.0
        if self.file.exists():
            data = json.loads(self.file.read_text())
            if data.get("spec") == EMULATION_SPEC:  # expectations of another emulation (an older version) are redone
                self.errors = {k: ExpectedError(**v) for k, v in data["errors"].items()}
                self.seconds = float(data.get("seconds", 0.0))

    @property
    def complete(self) -> bool:
        return bool(self.errors)

    def compute(
        self,
        model: Model,
        values: Any,  # bisect_lite.reference.ReferenceValues (complete)
        emulation: Any,  # EngineRunner of the rounding-only fp16 emulation (EMULATION_SPEC)
        on_batch: Callable[[int, int], None] | None = None,
    ) -> None:
        """Run the emulation on the reference's own batches (same cuts, same memory budget) and keep per-tensor
        error scalars. A batch the emulation cannot run leaves its tensors without expectation (judged by the
        tolerance rule, and the report says how many)."""
        import time

        t0 = time.perf_counter()
        batches: dict[str, list[str]] = {}
        for name, file in values.index.items():
            batches.setdefault(file, []).append(name)
        errors: dict[str, ExpectedError] = {}
        producers = model.producers
        kept = values.directory / "emulation.npz"
        for i, names in enumerate(batches.values()):
            cut = truncate(model, names)
            # Outputs stay in their file and are read one tensor at a time: memory holds one tensor, not a batch.
            result = emulation.run(cut, {f: values[f] for f in cut.feeds}, keep=kept, load=False)
            if result.ok and result.stored is not None:
                with closing(result.stored) as outputs:  # arrays read one at a time, from their offsets
                    for name in names:
                        k_red = reduction_length(model, producers[name]) if name in producers else 1
                        stats = error_stats(values[name], outputs[name], k_red)
                        if stats is not None:
                            errors[name] = stats
            if on_batch:
                on_batch(i + 1, len(batches))
        kept.unlink(missing_ok=True)
        self.errors = errors
        self.seconds = time.perf_counter() - t0
        payload = {
            "spec": EMULATION_SPEC,
            "errors": {k: v.to_dict() for k, v in errors.items()},
            "seconds": round(self.seconds, 3),
        }
        atomic_write_text(self.file, json.dumps(payload))


def isolated_expectations(
    model: Model, sub: Model, feeds: Mapping[str, np.ndarray], ref_outputs: Mapping[str, np.ndarray], emulation: Any
) -> dict[str, ExpectedError]:
    """Expectations for a small model fed reference values (isolation, windows, delta debugging, shrunk shapes):
    the emulation's own error on it. `model` is the whole model (for reduction lengths by tensor name)."""
    result = emulation.run(sub, dict(feeds))
    if not result.ok:
        return {}
    out: dict[str, ExpectedError] = {}
    for name in sub.fetches:
        index = model.producers.get(name)
        k_red = reduction_length(model, index) if index is not None else 1
        stats = error_stats(ref_outputs[name], result.outputs[name], k_red, isolated=True)
        if stats is not None:
            out[name] = stats
    return out


# ---- explanation -----------------------------------------------------------------------------------------------
def contributors(model: Model, errors: Mapping[str, ExpectedError], top: int = 5) -> list[dict[str, Any]]:
    """The ops whose output's expected (emulated fp16) error rises most above that of their inputs: where the
    accumulated half-precision error comes from."""
    rows = []
    for index, name in model.data_tensors():
        e = errors.get(name)
        if e is None or e.rel_l2 is None or not math.isfinite(e.rel_l2):
            continue
        op = model.ops[index]
        ins = [errors[t].rel_l2 for t in op.reads if t in errors and errors[t].rel_l2 is not None]
        before = max([x for x in ins if x is not None and math.isfinite(x)], default=0.0)
        rows.append(
            {
                "index": index,
                "type": op.type,
                "tensor": name,
                "expected_rel_l2": e.rel_l2,
                "inputs_rel_l2": before,
                "added": e.rel_l2 - before,
            }
        )
    rows.sort(key=lambda r: -r["added"])
    return rows[:top]


def depth_curve(model: Model, errors: Mapping[str, ExpectedError]) -> list[tuple[int, float]]:
    """(op index, worst expected rel L2 among its outputs) along the model: the precision error along depth."""
    out: dict[int, float] = {}
    for index, name in model.data_tensors():
        e = errors.get(name)
        if e is not None and e.rel_l2 is not None and math.isfinite(e.rel_l2):
            out[index] = max(out.get(index, 0.0), e.rel_l2)
    return sorted(out.items())


def how_to_confirm(target_spec: str) -> str:
    if target_spec.startswith("lite:") and "opencl" in target_spec:
        base = ",".join(p for p in target_spec.split(",") if not p.startswith("precision="))
        return (
            f"run the same job with --target {base},precision=fp32: an fp32 OpenCL run that matches the reference "
            "confirms the difference is half-precision rounding"
        )
    if target_spec.startswith("cmd:"):
        return (
            "run your runner in fp32 (and pass --target-precision fp32): if it then matches the reference, the "
            "difference is half-precision rounding"
        )
    if target_spec.split(":")[0] == EMULATION_SPEC.split(":")[0]:
        return "the fp16 emulation has no kernel of its own: its whole difference is fp16 storage rounding"
    return "run the target in fp32: if it then matches the reference, the difference is half-precision rounding"


def explain_within(
    model: Model,
    rule: PrecisionRule,
    cmp: Comparison,
    errors: Mapping[str, ExpectedError],
    target_spec: str,
    checked: int,
) -> dict[str, Any]:
    """The report's `precision` section for a run whose every difference is within the precision model."""
    worst = max(
        (m for m in cmp.tensors if m.bound_rel_l2 and m.rel_l2 is not None),
        key=lambda m: m.rel_l2 / m.bound_rel_l2,  # type: ignore[operator]
        default=None,
    )
    parts = []
    if worst is not None:
        parts.append(
            f"the output {worst.name} is off by rel L2 {worst.rel_l2:.3g} (max abs {worst.max_abs:.3g}); fp16 "
            f"rounding alone gives {worst.expected_rel_l2:.3g} there, the bound is {worst.bound_rel_l2:.3g}"
        )
    parts.append(f"all {checked} tensors checked are within {rule.factor:g}x the expected fp16 error")
    top = contributors(model, errors)
    if top:
        parts.append(
            "the error accumulates most at "
            + ", ".join(f"op {r['index']} {r['type']} (+{r['added']:.2g})" for r in top[:3])
        )
    return {
        "summary": "Within half precision: " + "; ".join(parts) + ".",
        "confirm": how_to_confirm(target_spec),
        "contributors": top,
        "tensors_checked": checked,
    }


@dataclass
class DeepCheck:
    """Every tensor of the reference dump judged on one target run per dump batch: a fault whose effect a saturating
    softmax/sigmoid or a normalisation hides at the output still shows inside (notes: 43 % of planted faults were
    visible at the final output, 100 % at the faulted tensor)."""

    failing: list[str] = field(default_factory=list)
    checked: int = 0
    runs: int = 0
    blame: int | None = None  # earliest producer of a tensor beyond precision
    comparison: Comparison | None = None  # the failing batch's, or the last one's
    crashed: str = ""
    depth: list[tuple[int, float]] = field(default_factory=list)  # (op index, worst target rel L2 of its outputs)
    noise_scale: float = 1.0  # quiet_target_scale of the target (1: as loud as fp16 or louder)


QUIET_MIN_SCALE = 0.1  # expectations never shrink below a tenth of the emulation's (the floors still apply)


def quiet_target_scale(ratios: Sequence[float]) -> float:
    """How much quieter than the fp16 emulation the target measured: twice the median of (target rel L2 /
    expected rel L2) over tensors with a clear expectation, clipped to [QUIET_MIN_SCALE, 1]. 1 for any
    half-precision target (the emulation's own ratio is 1, real GPUs 1-4); 0.1 for an fp32 runner, whose
    few-percent kernel faults deep in a model would otherwise hide under the fp16 error expected there. Twice the
    median, so a device computing only part of the model in half is not held to its quiet part."""
    if len(ratios) < 8:
        return 1.0
    return float(min(1.0, max(QUIET_MIN_SCALE, 2.0 * float(np.median(ratios)))))


def fused_away(model: Model, target: Any) -> list[str]:
    """Tensors the target never materialises (internal to its fused groups: fetching them would undo the fusion);
    empty when the target cannot tell. `target`: an EngineRunner."""
    from bisect_lite.errors import InputError
    from bisect_lite.model.fusion import fusion_groups

    try:
        optimized = target.optimized_program(model)
    except (RuntimeError, InputError):
        return []
    return [] if optimized is None else [t for g in fusion_groups(model, optimized) for t in g.internal]


def deep_check(
    model: Model,
    values: Any,  # ReferenceValues (complete)
    observed: Iterable[tuple[str, np.ndarray]],
    rule: PrecisionRule,
    expectations: Mapping[str, ExpectedError],
    config: CompareConfig,
) -> DeepCheck:
    """Judge every tensor a target run returned (`observed`: (name, the target's value), streamed, so one tensor is
    held at a time): measure how quiet the target is against the emulation (`quiet_target_scale`), then judge every
    tensor with the rule so scaled. The caller runs the target (bisect_lite.phases.confirm) and fills `runs`."""
    check = DeepCheck()
    producers = model.producers
    # name -> (quick statistics or None, the metrics to judge: quick ones, or the full comparison)
    stats: dict[str, tuple[ExpectedError | None, TensorMetrics]] = {}
    ranged: dict[str, str] = {}  # name -> the fp16 range failure of the target there (fails whatever the bounds)
    order: list[str] = []
    scratch = Scratch()
    for name, out in observed:
        ref = values[name]
        fast = fast_stats(name, ref, out, expectations, config, scratch)
        if fast is not None:
            stats[name] = (fast[0], quick_metrics(name, fast[0], ref, out))
        else:
            stats[name] = (None, compare_tensor(name, ref, out, config))
        if name not in config.overrides and (fast is None or fast[1]):
            range_failure = target_range_failure(ref, out)
            if range_failure is not None:
                ranged[name] = range_failure[1]
        order.append(name)
    ratios = [
        s.rel_l2 / e.rel_l2
        for n, (s, _) in stats.items()
        if s is not None
        and s.rel_l2 is not None
        and (e := expectations.get(n)) is not None
        and e.rel_l2 is not None
        and math.isfinite(e.rel_l2)
        and e.rel_l2 > 2 * L2_FLOOR
    ]
    check.noise_scale = quiet_target_scale(ratios)
    rule = replace(rule, noise_scale=check.noise_scale)
    cmp = Comparison()
    for name in order:
        quick, metrics = stats[name]
        overridden = quick is None and name in config.overrides  # --tol: the tolerance verdict stands
        judged = metrics if overridden else rule.judge(metrics, expectations.get(name))
        cmp.tensors.append(failed_for(judged, ranged[name]) if name in ranged else judged)
    check.checked = len(order)
    check.comparison = cmp
    for m in cmp.tensors:
        if m.rel_l2 is not None and math.isfinite(m.rel_l2) and m.name in producers:
            check.depth.append((producers[m.name], m.rel_l2))
    if not cmp.passed:
        check.failing = cmp.failing
        check.blame = min(producers.get(n, len(model.ops)) for n in cmp.failing)
    return check


def fast_stats(
    name: str,
    ref: np.ndarray,
    target: np.ndarray,
    expectations: Mapping[str, ExpectedError],
    config: CompareConfig,
    scratch: Scratch | None = None,
) -> tuple[ExpectedError, bool] | None:
    """rel L2 and max abs of a float tensor the precision rule can judge from them alone (20x cheaper than the
    element rule's statistics), and whether the tensor may show an fp16 range failure at all (its reference's norm
    tells: `range_failure_possible`); None when it needs the full comparison (no expectation, a --tol override,
    other dtypes or shapes, NaN/inf on either side)."""
    e = expectations.get(name)
    if e is None or name in config.overrides or e.rel_l2 is None:
        return None
    if ref.dtype.kind != "f" or target.dtype.kind != "f" or ref.shape != target.shape:
        return None
    r, t = (a.reshape(-1).astype(np.float32, copy=False) for a in (ref, target))
    # the rule reads the expectation's max |ref|, not this one's
    quick = finite_error(r, t, absmax=False, scratch=scratch)
    if quick is None:
        return None
    rel, max_abs, _, ref_norm = quick
    return ExpectedError(rel, max_abs, 0.0), range_failure_possible(r.size, ref_norm)


def judge_tensor(
    rule: PrecisionRule,
    name: str,
    ref: np.ndarray,
    target: np.ndarray,
    expectations: Mapping[str, ExpectedError],
    config: CompareConfig,
) -> TensorMetrics:
    """One tensor judged as the every-tensor check judges it (`fast_stats` when they suffice, else the full
    comparison); bench_precision uses it."""
    fast = fast_stats(name, ref, target, expectations, config)
    if fast is None:
        full = compare_tensor(name, ref, target, config)
        if name in config.overrides:
            return full
        return with_range_check(rule.judge(full, expectations.get(name)), ref, target)
    judged = rule.judge(quick_metrics(name, fast[0], ref, target), expectations.get(name))
    return with_range_check(judged, ref, target) if fast[1] else judged


def quick_metrics(name: str, quick: ExpectedError, ref: np.ndarray, target: np.ndarray) -> TensorMetrics:
    """TensorMetrics holding only what the precision rule reads (from `fast_stats`)."""
    return same_shape_metrics(name, ref, target, rel_l2=quick.rel_l2, max_abs=quick.max_abs)
