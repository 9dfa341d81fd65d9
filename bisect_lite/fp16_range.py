"""fp16's range: overflow above 65504 and underflow below 2^-14 are findings, never precision noise.

Half precision costs two different things. Rounding to an 11-bit significand is noise, and the precision model
(bisect_lite/precision.py) expects it. Range is not: a value beyond 65504 becomes inf (or is pinned at ±65504 by a
saturating kernel) and poisons everything after it; a value below fp16's smallest normal 2^-14 loses precision as a
subnormal, or becomes 0 on a device that flushes subnormals (OpenCL's `-cl-fast-relaxed-math`). On a phone that is
a wrong or NaN result, whatever any tolerance says.

This module
- predicts range failures from the fp32 reference alone (`predict`): every tensor whose values exceed 65504, every
  op whose accumulator does (`accumulated_max`), and every tensor whose significant values lie below 2^-14
  (`UNDERFLOW_SHARE`): `bisect-lite ops MODEL --fp16-range`, and the `fp16_range` list of `run` and `compare` for a
  half-precision target;
- finds them in a target's values (`target_range_failure`): values pinned at ±65504 where the reference exceeds it,
  or flushed to zero where the reference's values below 2^-14 carry significant mass (inf/NaN where the reference is
  finite fail by compare.py's element rule already);
- gathers the evidence the diagnosis reads for one op (`op_range`): its inputs' and output's range, and what its
  accumulator holds.

Accumulators, from Paddle-Lite's OpenCL kernels (lite/backends/opencl/cl_kernel/image/*.cl, 2.13): `reduce_*`
(reduce_kernel.cl), windowed average `pool2d` (pool_avg) and `layer_norm` (its sums of x and x^2) accumulate in
CL_DTYPE, i.e. half in fp16 mode, so the sum they hold before dividing is a certain intermediate: it is reached in
any summation order and overflows when it exceeds 65504 even if the output does not. Global average pooling
accumulates in float there (pool_avg_global: "skip issue for half 2048"), so it is not one. Convolutions and matmuls
accumulate partial sums whose size depends on the summation order: their bound sum |w||x| is evidence for the
diagnosis of an op that overflowed inside, never a prediction (it exceeds the real partial sums by far).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from bisect_lite.model import Model

FP16_MAX = 65504.0
FP16_MIN_NORMAL = 2.0**-14
PINNED = FP16_MAX * 0.999  # a target value this close to fp16's max was clamped (saturated), not computed
# Significant underflow: the values below 2^-14 carry more than this share of the tensor's L2 norm, i.e. flushing
# them to zero moves the tensor by more than 1 % rel L2, ~50 fp16 roundings (one is 2.1e-4). Healthy PP-OCRv5
# det/rec/cls reach at most 9.7e-4 (det), a margin of 10.
UNDERFLOW_SHARE = 1e-2
OVERFLOW, UNDERFLOW = "overflow", "underflow"
REDUCTIONS = frozenset({"reduce_sum", "reduce_mean", "mean"})
MATMULS = frozenset({"matmul", "matmul_v2", "mul"})
CONVS = frozenset({"conv2d", "depthwise_conv2d", "conv2d_transpose"})
_CHUNK = 1 << 20  # elements per pass of the statistics (bounded temporaries on large activations)


def value_range(array: np.ndarray, screen: float = 0.0) -> tuple[float, float]:
    """(max |x| over the finite elements, share of the L2 norm carried by the nonzero elements below 2^-14).
    `screen`: a share that provably stays below it (too few elements for that much mass below 2^-14, the usual case)
    is returned as 0.0 without being measured (it saves a masked pass over every activation of a model)."""
    a = np.asarray(array)
    if a.dtype.kind != "f" or not a.size:
        return 0.0, 0.0
    flat = a.reshape(-1)
    peak = total = small = 0.0
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, flat.size, _CHUNK):
            x = flat[start : start + _CHUNK]
            square = float(np.dot(x, x))  # BLAS in the array's own precision: ample for a share, 30x a float64 copy
            if not math.isfinite(square):  # NaN/inf in the chunk (or squares beyond float32): over finite elements
                x = x[np.isfinite(x)].astype(np.float64)
                if not x.size:
                    continue
                square = float(np.dot(x, x))
            peak = max(peak, float(np.max(x)), -float(np.min(x)))
            total += square
            if x.size * FP16_MIN_NORMAL**2 > (screen**2) * square:
                tiny = x[np.abs(x) < FP16_MIN_NORMAL].astype(np.float64)
                small += float(np.dot(tiny, tiny))
    return peak, (math.sqrt(small / total) if total > 0 else 0.0)


@dataclass
class RangeFinding:
    """A tensor (or an op's accumulator) whose reference values fp16 cannot hold."""

    tensor: str
    op: int | None  # bisect-lite's op index of the producer; None for a model input
    op_type: str  # "feed" for a model input
    kind: str  # OVERFLOW | UNDERFLOW
    max_abs: float  # the reference's max |x| of the tensor
    share_below_min_normal: float  # share of its L2 norm below 2^-14
    where: str = "values"  # "values": the tensor itself; "accumulator": the sum the op holds before storing it
    accumulated_max_abs: float | None = None  # largest |sum| in the op's accumulator (where == "accumulator")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def location(self) -> str:
        """Where fp16 cannot hold it: the tensor's values, or the op's accumulator with its largest |sum|."""
        if self.accumulated_max_abs is None:
            return self.where
        return f"accumulator, |sum| {self.accumulated_max_abs:.3g}"

    def describe(self) -> str:
        who = "model input" if self.op is None else f"op {self.op} {self.op_type}"
        if self.kind == UNDERFLOW:
            return (
                f"{self.tensor} ({who}): {100 * self.share_below_min_normal:.3g}% of its L2 norm lies below fp16's "
                f"smallest normal 2^-14 (max |x| {self.max_abs:.4g})"
            )
        if self.where == "accumulator":
            return (
                f"{self.tensor} ({who}): its accumulator reaches |sum| {self.accumulated_max_abs:.6g} before storing "
                f"(output max |x| {self.max_abs:.4g}), beyond fp16's 65504"
            )
        return f"{self.tensor} ({who}): max |x| {self.max_abs:.6g}, beyond fp16's 65504"


Reader = Callable[[str], "np.ndarray | None"]


def reader(values: Any) -> Reader:
    """A Reader over ReferenceValues (or any mapping of name -> array)."""

    def read(name: str) -> np.ndarray | None:
        try:
            return values[name]
        except KeyError:
            return None

    return read


def predict(model: Model, read: Reader, names: Iterable[str] | None = None) -> list[RangeFinding]:
    """Every range finding of the model on one fp32 reference: model inputs, then each op's outputs in execution
    order. `read(name)`: the reference value of a tensor, or None when unknown (see `reader`).
    `names`: the tensors to check (default: every data tensor)."""
    wanted = set(names) if names is not None else None
    findings: list[RangeFinding] = []
    order: list[tuple[int | None, str]] = [(None, f) for f in model.feeds]
    order += [(i, t) for i, t in model.data_tensors()]
    for index, name in order:
        if wanted is not None and name not in wanted:
            continue
        value = read(name)
        if value is None or np.asarray(value).dtype.kind != "f":
            continue
        peak, share = value_range(value, screen=UNDERFLOW_SHARE)
        op_type = "feed" if index is None else model.ops[index].type
        if peak > FP16_MAX:
            findings.append(RangeFinding(name, index, op_type, OVERFLOW, peak, share))
        elif index is not None and main_output(model.ops[index]) == name:
            held = accumulated_max(model, index, read)
            if held is not None and held > FP16_MAX:
                findings.append(RangeFinding(name, index, op_type, OVERFLOW, peak, share, "accumulator", held))
        if share > UNDERFLOW_SHARE:
            findings.append(RangeFinding(name, index, op_type, UNDERFLOW, peak, share))
    return findings


def model_range(
    model: Model, feeds: Mapping[str, np.ndarray], ref: str = "paddle", budget: int = 1 << 30, cache: bool = True
) -> list[RangeFinding]:
    """`predict` on one fp32 reference run of every tensor (the `run` job's reference dump, in a temporary
    directory): `bisect-lite ops MODEL --fp16-range`."""
    import tempfile
    from pathlib import Path

    from bisect_lite.cache import Cache
    from bisect_lite.engines.runner import EngineRunner
    from bisect_lite.reference import ReferenceValues

    store = Cache(results=cache)
    try:
        with EngineRunner(ref, store) as runner, tempfile.TemporaryDirectory(prefix="bisect-lite-range-") as tmp:
            values = ReferenceValues(Path(tmp) / "reference", feeds)
            values.compute(model, runner, budget)
            try:
                return predict(model, reader(values))
            finally:
                values.close()
    finally:
        store.close()


def summary_line(findings: list[RangeFinding]) -> str:
    """One line for a report or a terminal."""
    if not findings:
        return (
            "fp16 range: the reference stays within fp16's range (nothing beyond 65504, no significant mass below "
            "2^-14)"
        )
    kinds = {k: sum(1 for f in findings if f.kind == k) for k in (OVERFLOW, UNDERFLOW)}
    counted = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
    return f"fp16 range: {counted}; first: {findings[0].describe()}"


# ---- one op ------------------------------------------------------------------------------------------------------
def main_output(op: Any) -> str | None:
    """The output an op computes (layer_norm's Y rather than its Mean, ...)."""
    for slot in ("Out", "Y", "Output"):
        if op.outputs.get(slot):
            return op.outputs[slot][0]
    outputs = op.data_outputs()
    return outputs[0] if outputs else None


def _attr_dims(attrs: Mapping[str, Any], ndim: int) -> tuple[int, ...]:
    if attrs.get("reduce_all") or not attrs.get("dim"):
        return tuple(range(ndim))
    return tuple(sorted({int(d) % ndim for d in attrs["dim"]}))


def _input(model: Model, index: int, slot: str, read: Reader) -> np.ndarray | None:
    names = model.ops[index].inputs.get(slot) or []
    if not names:
        return None
    value = model.params.get(names[0])
    if value is None:
        value = read(names[0])
    return None if value is None else np.asarray(value)


def _float_input(model: Model, index: int, slot: str, read: Reader) -> np.ndarray | None:
    """Op `index`'s `slot` input when it is a non-empty float tensor (only those can leave fp16's range)."""
    x = _input(model, index, slot, read)
    return x if x is not None and x.dtype.kind == "f" and x.size else None


def _reduced_dims(op_type: str, attrs: dict, x: np.ndarray) -> tuple[int, ...]:
    return _attr_dims(attrs, x.ndim) if op_type != "mean" else tuple(range(x.ndim))


def accumulated_max(model: Model, index: int, read: Reader) -> float | None:
    """The largest |sum| op `index` holds in a half-precision accumulator before dividing or storing (see the
    module docstring); None for ops without one."""
    op = model.ops[index]
    attrs = model.op_attrs(index)
    try:
        if op.type in REDUCTIONS:
            x = _float_input(model, index, "X", read)
            if x is None:
                return None
            return float(np.abs(x.sum(axis=_reduced_dims(op.type, attrs, x), dtype=np.float64)).max())
        if op.type == "layer_norm":
            x = _float_input(model, index, "X", read)
            if x is None:
                return None
            begin = int(attrs.get("begin_norm_axis", 1))
            rows = x.reshape(int(np.prod(x.shape[:begin])), -1).astype(np.float64)
            return float(max(np.abs(rows.sum(axis=1)).max(), np.einsum("ij,ij->i", rows, rows).max()))
        if op.type == "pool2d" and attrs.get("pooling_type") == "avg":
            x = _input(model, index, "X", read)
            out = read(op.outputs.get("Out", [""])[0])
            global_pool = attrs.get("global_pooling") or (
                attrs.get("adaptive") and list(attrs.get("ksize") or []) == [1, 1]
            )
            if x is None or out is None or global_pool:
                return None  # global average pooling accumulates in float on OpenCL
            window = int(np.prod(attrs.get("ksize") or [1]))
            return float(np.abs(np.asarray(out, dtype=np.float64)).max()) * window
    except (ValueError, IndexError, TypeError):
        return None
    return None


def partial_sum_bound(model: Model, index: int, read: Reader) -> float | None:
    """An upper bound of every partial sum op `index` forms: sum |x| for reductions, sum over the inputs of
    |w| times the input channel's max |x| for convolutions, max of |X| @ |Y| for matmuls. None when unknown."""
    op = model.ops[index]
    attrs = model.op_attrs(index)
    try:
        if op.type in REDUCTIONS:
            x = _float_input(model, index, "X", read)
            if x is None:
                return None
            return float(np.abs(x).sum(axis=_reduced_dims(op.type, attrs, x), dtype=np.float64).max())
        if op.type in CONVS:
            x, w = _input(model, index, "Input", read), _input(model, index, "Filter", read)
            if x is None or w is None or x.ndim != 4 or w.ndim != 4:
                return None
            groups = max(int(attrs.get("groups", 1) or 1), 1)
            channel_max = np.abs(x.astype(np.float64)).max(axis=(0, 2, 3))
            weights = np.abs(w.astype(np.float64)).sum(axis=(2, 3))  # [oc, ic/g] (conv2d_transpose: [ic, oc/g])
            if op.type == "conv2d_transpose":
                per = weights.shape[0] // groups
                sums = [channel_max[g * per : (g + 1) * per] @ weights[g * per : (g + 1) * per] for g in range(groups)]
                return float(max(float(np.max(s)) for s in sums))
            per_group = weights.shape[0] // groups
            icg = weights.shape[1]
            bound = [
                float(weights[o] @ channel_max[(o // per_group) * icg : (o // per_group + 1) * icg])
                for o in range(weights.shape[0])
            ]
            return max(bound)
        if op.type in MATMULS:
            x, y = _input(model, index, "X", read), _input(model, index, "Y", read)
            if x is None or y is None:
                return None
            xa, ya = np.abs(x.astype(np.float64)), np.abs(y.astype(np.float64))
            if op.type == "mul":
                xa = xa.reshape(int(np.prod(xa.shape[: int(attrs.get("x_num_col_dims", 1))])), -1)
                ya = ya.reshape(int(np.prod(ya.shape[: int(attrs.get("y_num_col_dims", 1))])), -1)
            else:
                if attrs.get("trans_x", attrs.get("transpose_X", False)):
                    xa = np.swapaxes(xa, -1, -2)
                if attrs.get("trans_y", attrs.get("transpose_Y", False)):
                    ya = np.swapaxes(ya, -1, -2)
            return float(np.max(np.matmul(xa, ya)))
    except (ValueError, IndexError, TypeError):
        return None
    return None


def op_range(model: Model, index: int, read: Reader) -> dict[str, Any]:
    """What the diagnosis needs to tell an fp16 range failure of op `index` from a kernel bug: the largest input
    and output |x|, the share of the output below 2^-14, and the op's accumulator (certain and bound)."""
    op = model.ops[index]
    inputs = [(n, read(n)) for n in dict.fromkeys(a for args in op.inputs.values() for a in args)]
    peaks = [(value_range(v)[0], n) for n, v in inputs if v is not None and np.asarray(v).dtype.kind == "f"]
    peak_in, name_in = max(peaks, default=(0.0, None))
    outputs = [read(n) for n in op.data_outputs()]
    stats = [value_range(v) for v in outputs if v is not None]
    return {
        "op": index,
        "op_type": op.type,
        "input_max_abs": peak_in,
        "input": name_in,
        "output_max_abs": max((s[0] for s in stats), default=None),
        "output_share_below_min_normal": max((s[1] for s in stats), default=None),
        "accumulated_max_abs": accumulated_max(model, index, read),
        "partial_sum_bound": partial_sum_bound(model, index, read),
    }


# ---- a target's values -----------------------------------------------------------------------------------------
def range_failure_possible(size: int, ref_norm: float) -> bool:
    """Whether `target_range_failure` could find anything in a tensor of `size` finite elements whose reference has
    L2 norm `ref_norm` (computed by the judgement already): pinned values need |ref| > 65504 somewhere, and the L2
    norm bounds max |ref| (compared with PINNED, 0.1 % under 65504: a float32 norm may round below the true max);
    flushed subnormals need zeros carrying UNDERFLOW_SHARE of the norm, and even `size` of them just below 2^-14
    could not (half the share: the norms' summation orders differ)."""
    if not math.isfinite(ref_norm) or ref_norm > PINNED:
        return True
    return math.sqrt(size) * FP16_MIN_NORMAL > 0.5 * UNDERFLOW_SHARE * ref_norm


def target_range_failure(ref: np.ndarray, target: np.ndarray) -> tuple[str, str] | None:
    """(kind, reason) when the target's values show fp16's range where the reference does not: values pinned at
    ±65504 where the reference exceeds 65504 (a saturating kernel), or zeros where the reference's values below 2^-14
    carry more than UNDERFLOW_SHARE of its L2 norm (flushed subnormals). None otherwise, and for other dtypes or
    sizes. inf/NaN are judged by compare.py's element rule."""
    r, t = np.asarray(ref), np.asarray(target)
    if r.dtype.kind != "f" or t.dtype.kind != "f" or r.size != t.size or not r.size:
        return None
    r, t = r.reshape(-1), t.reshape(-1)
    with np.errstate(invalid="ignore", over="ignore"):
        top = max(abs(float(np.max(t))), abs(float(np.min(t))))
        if not top < PINNED:  # NaN too: the element rule judges those, pinned values may sit beside them
            pinned = int(np.count_nonzero((np.abs(t) >= PINNED) & (np.abs(t) <= FP16_MAX) & (np.abs(r) > FP16_MAX)))
            if pinned:
                return OVERFLOW, (
                    f"fp16 overflow: {pinned} elements pinned at ±65504 where the reference exceeds 65504 "
                    f"(max |ref| {float(np.nanmax(np.abs(r))):.6g})"
                )
        zeros = t.size - int(np.count_nonzero(t))
        if not zeros:
            return None
        norm = math.sqrt(float(np.dot(r, r)))  # BLAS in the array's precision (a float64 copy costs 10x)
        if not math.isfinite(norm):
            norm = float(np.linalg.norm(r[np.isfinite(r)].astype(np.float64)))
        if not norm > 0 or math.sqrt(zeros) * FP16_MIN_NORMAL <= UNDERFLOW_SHARE * norm:
            return None  # even if every zero were a flushed value just below 2^-14, too little mass
        flushed = (t == 0) & (r != 0) & (np.abs(r) < FP16_MIN_NORMAL)
        lost = r[flushed].astype(np.float64)
        share = float(np.linalg.norm(lost)) / norm
    if share > UNDERFLOW_SHARE:
        return UNDERFLOW, (
            f"fp16 underflow: {lost.size} elements flushed to zero where the reference is below 2^-14 but nonzero, "
            f"{100 * share:.3g}% of its L2 norm"
        )
    return None


def remedy(kind: str) -> str:
    """What a user can do about a range failure on Paddle-Lite."""
    scale = "stay within 65504" if kind == OVERFLOW else "stay above 2^-14"
    return (
        "run that op or the model in fp32 on OpenCL (`lite:opencl,precision=fp32`), keep the op on the CPU "
        f"(`bisect-lite run --strategy placement` tries that), or rescale the model so that its values {scale} "
        "(e.g. fold a scale factor into the weights around the op)"
    )
