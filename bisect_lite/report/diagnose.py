"""Name the fault behind a culprit op from its output arrays and the error-vs-depth curve.

The verdict is a heuristic with its evidence attached, so a person can check it.  Patterns are tried from the
most specific (a crash, fp16 overflow, NaN/inf, fp16 underflow, a permuted copy, a per-channel constant, errors
only on the border, wrong integers) to the most generic (nondeterminism, precision drift vs a kernel bug from the depth
curve, a plain numeric mismatch), and the first that fits wins.  Every pattern needs a real mismatch and a
specific shape of it, so a correct output or unstructured noise falls through to ``numeric_mismatch``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bisect_lite.compare import DEFAULT_TOLERANCE, TensorMetrics, Tolerance
from bisect_lite.fp16_range import FP16_MAX, FP16_MIN_NORMAL, OVERFLOW, PINNED, UNDERFLOW, UNDERFLOW_SHARE, remedy

KINDS = (
    "crash",
    "fp16_overflow",
    "nan_inf",
    "fp16_underflow",
    "layout",
    "constant_per_channel",
    "border",
    "int_mismatch",
    "nondeterministic",
    "precision_accumulation",
    "kernel_bug",
    "numeric_mismatch",
)
CRASH_STATUSES = frozenset({"crash", "timeout"})

UNDERFLOW_ERROR = 2.0**-12  # rel L2 the values below 2^-14 must cost before underflow explains a failure
SUBNORMAL_STEP = 2.0**-24  # the spacing of fp16's subnormals: storing one moves it by at most half of this
LAYOUT_MATCH = 1e-2  # rel L2 under which a permuted target "is" the reference (fp16 rounding is ~5e-4)
CONST_RTOL = 1e-6  # per-channel std (relative to the tensor's scale) under which a channel is constant
REF_VARIES_RTOL = 1e-3  # per-channel std above which a reference channel clearly varies
BORDER_SHARE = 0.8  # share of mismatches on the border that marks a padding fault ...
BORDER_MAX_AREA = 0.5  # ... when the border is less than this share of all elements
MIN_BORDER_MISMATCHES = 4  # fewer mismatches than this are not a pattern
ISOLATED_SMALL = 5e-3  # an op fed reference inputs with error under this is within fp16 rounding
ISOLATED_LARGE = 1e-2  # ... and at or above this the op itself is wrong
JUMP_FACTOR = 10.0  # error growth between neighbouring probes above this is a jump, not drift
# Errors below ~fp16 unit roundoff (4.9e-4) are rounding noise: a step from an exact 0 to 3e-4 must not count as
# an infinite jump, so jump ratios use at least this denominator.
JUMP_FLOOR = 1e-4
LOG_FLOOR = 1e-9  # zero errors are drawn/fitted at this value
_MAX_EXAMPLES = 5
_LAYOUT_SAMPLE = 4096  # positions screened per candidate permutation


@dataclass
class Diagnosis:
    """What kind of fault the culprit shows, one sentence with the numbers, and those numbers (JSON-safe)."""

    kind: str
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "summary": self.summary, "evidence": _jsonable(self.evidence)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Diagnosis:
        return cls(str(data.get("kind", "")), str(data.get("summary", "")), dict(data.get("evidence") or {}))


def diagnose(
    ref: np.ndarray | None,
    target: np.ndarray | None,
    *,
    status: str = "ok",
    metrics: TensorMetrics | None = None,
    depth_errors: Sequence[tuple[int, float]] = (),
    culprit_index: int | None = None,
    isolated_rel_l2: float | None = None,
    nondeterministic: bool = False,
    message: str = "",
    ref_inputs: Mapping[str, np.ndarray] | None = None,
    op: Mapping[str, Any] | None = None,
    fp16_range: Mapping[str, Any] | None = None,
) -> Diagnosis:
    """Classify the culprit's fault.

    ref/target: the culprit's (worst) output on both engines, or None when unavailable.
    depth_errors: (op index, rel_l2) of every probe, passing and failing, in any order.
    isolated_rel_l2: the culprit alone, fed the reference engine's inputs.
    ref_inputs: the culprit's reference input values, if known (lets an overflow inside the op be recognised).
    op: the culprit's type, slots and attributes (`type`, `inputs`, `outputs`, `attrs`), shown beside a crash.
    fp16_range: the culprit's range evidence (fp16_range.op_range: its inputs' max |x|, its accumulator), which
    tells an fp16 overflow inside the op from a NaN/inf bug.
    """
    if status in CRASH_STATUSES:
        return _finish(_crash(status, message, op))
    tol = DEFAULT_TOLERANCE
    if metrics is not None and metrics.atol is not None and metrics.rtol is not None:
        tol = Tolerance(metrics.atol, metrics.rtol)  # judge the pattern with the tolerance the tensor failed
    elif ref is not None and np.asarray(ref).dtype.kind == "f" and np.asarray(ref).size:
        tol = _scaled_tolerance(tol, np.asarray(ref))
    found: Diagnosis | None = None
    if ref is not None and target is not None:
        facts = dict(fp16_range or {})
        if op is not None and not facts.get("op_type"):
            facts["op_type"] = op.get("type")
        found = _array_patterns(np.asarray(ref), np.asarray(target), tol, ref_inputs, facts)
    elif metrics is not None:
        found = _metrics_nonfinite(metrics)
    if found is None and nondeterministic:
        stats = _metric_evidence(metrics)
        if not stats and ref is not None and target is not None:
            stats = _array_stats(np.asarray(ref), np.asarray(target), tol)
        rel = stats.get("rel_l2")
        found = Diagnosis(
            "nondeterministic",
            "The target engine returns different values for the same inputs on repeated runs, so this mismatch"
            + (f" (rel L2 {rel:.3g} in this run)" if isinstance(rel, float) else "")
            + " may be run-to-run noise (e.g. Image2D memory reuse or a race) rather than a fixed kernel error.",
            {"target_nondeterministic": True, **stats},
        )
    depth = _depth_profile(depth_errors, culprit_index)
    if found is None:
        found = _precision_or_bug(depth, isolated_rel_l2, metrics)
    if found is None:
        found = _fallback(ref, target, tol, metrics, depth, isolated_rel_l2)
    return _finish(found)


# ----------------------------------------------------------------------------------------------------
# Patterns


CRASH_MESSAGE_LIMIT = 800


def _crash(status: str, message: str, op: Mapping[str, Any] | None = None) -> Diagnosis:
    from bisect_lite.lite_compat import op_drift

    tail = " ".join(message.strip().splitlines()[-3:]) if message.strip() else ""
    if len(tail) > CRASH_MESSAGE_LIMIT:  # keep the start (Paddle-Lite's reason) and whole words
        tail = tail[:CRASH_MESSAGE_LIMIT].rsplit(" ", 1)[0] + " ..."
    what = "timed out" if status == "timeout" else "crashed"
    summary = f"The target engine {what} on this op" + (f": {tail}" if tail else " (no message).")
    if tail and not summary.endswith("."):
        summary += "."
    evidence: dict[str, Any] = {"status": status, "message_tail": tail}
    # Paddle-Lite engines say where they died (bisect_lite/engines/lite.py crash_details).
    if "while building the program" in message:
        evidence["stage"] = "build (the program was being optimised or loaded: opt or predictor creation)"
    elif "while running the program" in message:
        evidence["stage"] = "run (the predictor was built; it died in Run())"
    if op is not None:
        evidence["op_type"] = op.get("type")
        evidence["op_inputs"] = {k: list(v) for k, v in (op.get("inputs") or {}).items()}
        evidence["op_outputs"] = {k: list(v) for k, v in (op.get("outputs") or {}).items()}
        evidence["op_attrs"] = {k: v for k, v in (op.get("attrs") or {}).items() if not k.startswith("op_")}
        drift = op_drift(str(op.get("type")), op.get("outputs") or {}, op.get("attrs") or {}, op.get("inputs") or {})
        if drift and status == "crash":
            missing, effect = drift
            evidence["schema_drift"] = f"{op.get('type')} has no {missing}"
            summary += (
                f" Known schema drift between Paddle 3.x programs and Paddle-Lite 2.13: this {op.get('type')} has "
                f"no {missing} ({effect}). `bisect-lite lite-compat MODEL -o DIR` writes a copy of the model that "
                "Paddle-Lite loads, checked with real opt."
            )
    return Diagnosis("crash", summary, evidence)


def _array_patterns(
    r: np.ndarray,
    t: np.ndarray,
    tol: Tolerance,
    ref_inputs: Mapping[str, np.ndarray] | None,
    facts: Mapping[str, Any],
) -> Diagnosis | None:
    if r.dtype.kind not in "fiub" or t.dtype.kind not in "fiub" or r.size != t.size or r.size == 0:
        return None  # nothing element-wise to read; the fallback reports shapes/dtypes
    if r.ndim == 0:
        r, t = r.reshape(1), t.reshape(1)
    with np.errstate(all="ignore"):
        r64 = np.asarray(r, dtype=np.float64)
        t64 = np.asarray(t, dtype=np.float64).reshape(r.shape)
        if r.dtype.kind != "f":  # integer/bool reference: exact values, tolerances do not apply
            return _layout(r64, t64, exact=True) or _int_mismatch(r, t.reshape(r.shape))
        bad = _mismatch_mask(r64, t64, tol)
        reach = _reach(r64, ref_inputs, facts)
        found = (_fp16_overflow(r64, t64, bad, reach) or _nan_inf(r64, t64, reach)) if bad.any() else None
        found = found or _fp16_underflow(r64, t64, reach)
        if found is not None or not bad.any():
            return found
        return _layout(r64, t64, exact=False) or _constant_per_channel(r64, t64) or _border(r64, bad, tol)


def _mismatch_mask(r: np.ndarray, t: np.ndarray, tol: Tolerance) -> np.ndarray:
    """compare.py's element rule; equal non-finite values (NaN/NaN, same-sign inf) count as equal here."""
    diff = np.abs(t - r)
    bad = diff > np.maximum(tol.atol, tol.rtol * np.abs(r))
    nonfinite = ~(np.isfinite(r) & np.isfinite(t))
    same = (np.isnan(r) & np.isnan(t)) | (r == t)
    return np.where(nonfinite, ~same, bad)


@dataclass
class _Reach:
    """How far the culprit's true (reference) values reach: its output, its inputs, its accumulator."""

    output: float  # max |x| of the reference output judged here
    input: float  # largest max |x| among the op's float inputs (0: unknown)
    input_name: str | None
    accumulated: float | None  # the |sum| its half-precision accumulator certainly holds (fp16_range.accumulated_max)
    partial_sums: float | None  # a bound of its partial sums (sum |w||x|, sum |x|): reachable, not certain
    op_type: str | None

    def beyond(self) -> list[str]:
        """Which of them leave fp16's range: the inputs (the overflow came in), the output, the accumulator (it
        happened inside), the partial sums bound (it can happen inside)."""
        found = []
        if self.input > FP16_MAX:
            found.append("input")
        if self.output > FP16_MAX:
            found.append("output")
        if self.accumulated is not None and self.accumulated > FP16_MAX:
            found.append("accumulator")
        if self.partial_sums is not None and self.partial_sums > FP16_MAX:
            found.append("partial sums")
        return found

    def where(self) -> str:
        return f" in {self.op_type}" if self.op_type else ""


def _reach(r: np.ndarray, ref_inputs: Mapping[str, np.ndarray] | None, facts: Mapping[str, Any]) -> _Reach:
    peaks = [
        (_max_abs(np.asarray(a, dtype=np.float64)), str(n))
        for n, a in (ref_inputs or {}).items()
        if np.asarray(a).dtype.kind in "fiu"
    ]
    peak_in, name_in = max(peaks, default=(float(facts.get("input_max_abs") or 0.0), facts.get("input")))
    return _Reach(
        _max_abs(r),
        peak_in,
        name_in,
        facts.get("accumulated_max_abs"),
        facts.get("partial_sum_bound"),
        facts.get("op_type"),
    )


def _fp16_overflow(r: np.ndarray, t: np.ndarray, bad: np.ndarray, reach: _Reach) -> Diagnosis | None:
    finite_r = np.isfinite(r)
    inf = np.isinf(t) & finite_r
    nan = np.isnan(t) & finite_r
    pinned = bad & np.isfinite(t) & (np.abs(t) >= PINNED) & (np.abs(t) <= FP16_MAX)
    n_inf, n_nan, n_pinned = (int(np.count_nonzero(m)) for m in (inf, nan, pinned))
    if not (n_inf or n_nan or n_pinned):
        return None
    # The output's own range explains inf/pinned values only where the true value is large; an input or the
    # accumulator beyond 65504 explains them anywhere (the overflow came in, or happened inside the op).
    saturated = inf | pinned
    explained = int(np.count_nonzero(saturated & (np.abs(r) >= PINNED)))
    output_explains = bool(n_inf or n_pinned) and explained >= 0.5 * (n_inf + n_pinned)
    beyond = next((b for b in reach.beyond() if b != "output" or output_explains), None)
    if beyond is None:
        return None
    also = f" (its output reaches {reach.output:.6g})" if reach.output > FP16_MAX and beyond != "output" else ""
    if beyond == "output":
        why = f"the reference reaches |x| = {reach.output:.6g} here"
    elif beyond == "input":
        name = f" {reach.input_name}" if reach.input_name else ""
        why = f"its input{name} already reaches |x| = {reach.input:.6g} in the reference{also}"
    elif beyond == "accumulator":
        why = (
            f"its accumulator holds |sum| = {reach.accumulated:.6g} before storing the result (output max |x| "
            f"{reach.output:.4g}), and Paddle-Lite's OpenCL kernel for it accumulates in half"
        )
    else:
        why = (
            f"its partial sums can reach {reach.partial_sums:.6g} (sum |w||x| over the reference inputs; output "
            f"max |x| {reach.output:.4g}, inputs {reach.input:.4g}) when accumulated in half"
        )
    summary = (
        f"fp16 overflow{reach.where()}: {why}, beyond fp16's maximum 65504; the target makes {n_inf} inf, "
        f"{n_nan} NaN and pins {n_pinned} values at ±65504 ({100 * (n_inf + n_nan + n_pinned) / r.size:.3g}% of "
        f"elements). Fix: {remedy(OVERFLOW)}."
    )
    return Diagnosis(
        "fp16_overflow",
        summary,
        {
            "beyond": beyond,
            "count": n_inf + n_nan + n_pinned,
            "inf_count": n_inf,
            "nan_count": n_nan,
            "pinned_count": n_pinned,
            "fraction": (n_inf + n_nan + n_pinned) / r.size,
            "ref_beyond_fp16_at_overflow": explained,
            "max_abs_ref": reach.output,
            "max_abs_ref_at_overflow": _max_abs(r[saturated]) if saturated.any() else None,
            "max_abs_input": reach.input or None,
            "input": reach.input_name,
            "accumulated_max_abs": reach.accumulated,
            "partial_sum_bound": reach.partial_sums,
            "fp16_max": FP16_MAX,
        },
    )


def _nan_inf(r: np.ndarray, t: np.ndarray, reach: _Reach) -> Diagnosis | None:
    finite_r = np.isfinite(r)
    new_nan = np.isnan(t) & finite_r
    new_inf = np.isinf(t) & finite_r
    bad = new_nan | new_inf
    n = int(np.count_nonzero(bad))
    if not n:
        return None
    first = _unravel(int(np.argmax(bad.reshape(-1))), r.shape)
    n_nan, n_inf = int(np.count_nonzero(new_nan)), int(np.count_nonzero(new_inf))
    if not reach.beyond():
        scale = f"max |ref| {reach.output:.4g}, within fp16 range"
    else:  # only where the NaN/inf do not sit at the large values: the range alone does not explain them
        scale = f"max |ref| {reach.output:.4g}, beyond fp16's 65504 elsewhere than at these elements"
    summary = (
        f"The target produces {n_nan} NaN and {n_inf} inf ({100 * n / r.size:.3g}% of elements) where the "
        f"reference is finite ({scale}); first at index {first}."
    )
    return Diagnosis(
        "nan_inf",
        summary,
        {
            "nan_count": n_nan,
            "inf_count": n_inf,
            "fraction": n / r.size,
            "first_index": list(first),
            "ref_at_first": float(r[first]),
            "max_abs_ref": reach.output,
        },
    )


def _fp16_underflow(r: np.ndarray, t: np.ndarray, reach: _Reach) -> Diagnosis | None:
    """Significant reference values below fp16's smallest normal, relatively much further off than the normal
    values (a range effect is absolute, noise and kernel faults are relative), and the error there is what fp16's
    range makes: a flush to zero, or a subnormal's rounding (2^-24 apart) on top of the normal values' noise."""
    both = np.isfinite(r) & np.isfinite(t)
    if not both.all():
        return None
    small = (r != 0) & (np.abs(r) < FP16_MIN_NORMAL)
    norm = float(np.linalg.norm(r))
    if not small.any() or not norm > 0:
        return None
    share = float(np.linalg.norm(r[small])) / norm
    d = t - r
    err, err_small = float(np.linalg.norm(d)) / norm, float(np.linalg.norm(d[small])) / norm
    if share <= UNDERFLOW_SHARE or err_small < UNDERFLOW_ERROR:
        return None
    normal = ~small & (r != 0)
    noise = float(np.linalg.norm(d[normal]) / np.linalg.norm(r[normal])) if normal.any() else 0.0
    if err_small / share < 2 * noise:
        return None  # the small values are no further off than the rest: not the range
    # A kernel 10 % off on tiny values is not an underflow: its error exceeds a subnormal's rounding.
    ranged = small & ((t == 0) | (np.abs(d) <= SUBNORMAL_STEP + 2 * noise * np.abs(r)))
    if float(np.linalg.norm(d[ranged])) / norm < 0.5 * err_small:
        return None
    flushed = int(np.count_nonzero(small & (t == 0)))
    stored = f"flushes {flushed} of those values to zero and " if flushed else ""
    summary = (
        f"fp16 underflow{reach.where()}: {100 * share:.3g}% of the reference's L2 norm lies below fp16's smallest "
        f"normal 2^-14 (max |x| {reach.output:.3g}); the target {stored}keeps them with rel L2 error "
        f"{err_small / share:.3g} (subnormals hold 2^-24 absolute precision, a flushing device none), "
        f"{err:.3g} over the tensor. Fix: {remedy(UNDERFLOW)}."
    )
    return Diagnosis(
        "fp16_underflow",
        summary,
        {
            "share_below_min_normal": share,
            "elements_below_min_normal": int(np.count_nonzero(small)),
            "flushed_to_zero": flushed,
            "rel_l2": err,
            "rel_l2_below_min_normal": err_small / share,
            "max_abs_ref": reach.output,
            "fp16_min_normal": FP16_MIN_NORMAL,
        },
    )


def _axes_label(perm: Sequence[int], ndim: int) -> str:
    if ndim == 4:
        return "".join("NCHW"[i] for i in perm)
    return "(" + ",".join(str(i) for i in perm) + ")"


def _layout(r: np.ndarray, t: np.ndarray, *, exact: bool) -> Diagnosis | None:
    """Is the target the reference with its axes permuted (written or read in the wrong layout)?

    Two readings of each axis permutation p: "written" -- the target buffer holds ref.transpose(p) (e.g. NHWC data
    in an NCHW tensor); "read" -- the target is the reference buffer read as if it had shape shape[p] (a glue op
    took NCHW memory for NHWC).  For 4-D tensors that covers NCHW<->NHWC and H/W swaps; for 2-D/3-D transposes.
    """
    nd = r.ndim
    if not 2 <= nd <= 4 or r.size < 4 or not (np.isfinite(r).all() and np.isfinite(t).all()):
        return None
    if float(np.ptp(r)) == 0.0:
        return None  # a constant tensor equals every permutation of itself
    direct = _rel_l2(r, t)
    if (exact and np.array_equal(r, t)) or (not exact and direct < LAYOUT_MATCH):
        return None
    # Screen every permutation on a fixed sample of positions (46 full transposes of a large activation take
    # seconds), then confirm the best on the whole tensor.  Element m of the canonical tensor sits at flat
    # position ravel(m[p], shape[p]) of a buffer laid out in order p -- in the target ("written") or in the
    # reference ("read").
    flat_r, flat_t = r.reshape(-1), t.reshape(-1)
    pos = (
        np.arange(r.size)
        if r.size <= _LAYOUT_SAMPLE
        else np.sort(np.random.default_rng(0).choice(r.size, _LAYOUT_SAMPLE, replace=False))
    )
    m = np.stack(np.unravel_index(pos, r.shape))
    r_at, t_at = flat_r[pos], flat_t[pos]
    screened: list[tuple[float, str, tuple[int, ...]]] = []
    for perm in itertools.permutations(range(nd)):
        moved = [a for a in perm if r.shape[a] != 1]
        if moved == sorted(moved):
            continue  # only size-1 axes move: the same memory order as the direct comparison
        pshape = tuple(r.shape[i] for i in perm)
        src = np.ravel_multi_index(tuple(m[list(perm)]), pshape)
        for mode, want, got in (("written", r_at, flat_t[src]), ("read", flat_r[src], t_at)):
            err = (0.0 if np.array_equal(want, got) else math.inf) if exact else _rel_l2(want, got)
            screened.append((err, mode, perm))
    if not screened:
        return None
    err, mode, perm = min(screened, key=lambda c: c[0])
    if err >= LAYOUT_MATCH:
        return None
    inv = tuple(int(i) for i in np.argsort(perm))
    pshape = tuple(r.shape[i] for i in perm)
    if mode == "written":
        want, got = r, flat_t.reshape(pshape).transpose(inv)  # undo the target's permuted write
    else:
        want, got = r.reshape(pshape).transpose(inv), t  # what a wrong read of the reference buffer gives
    err = (0.0 if np.array_equal(want, got) else math.inf) if exact else _rel_l2(want, got)
    if err >= LAYOUT_MATCH or err >= direct / 10:
        return None
    label, native = _axes_label(perm, nd), _axes_label(range(nd), nd)
    if nd != 4:
        how = (
            f"the target wrote the output transposed (axes {label})"
            if mode == "written"
            else f"the target read the result buffer as if transposed (axes {label})"
        )
    elif mode == "written":
        how = f"the target wrote the output in {label} order into the {native} tensor"
    else:
        how = f"the target read the {native} result buffer as {label}"
    summary = (
        f"Layout mix-up: {how}; after undoing that permutation it matches the reference "
        f"(rel L2 {err:.3g} vs {direct:.3g} compared directly)."
    )
    return Diagnosis(
        "layout",
        summary,
        {
            "permutation": label,
            "axes": list(perm),
            "mode": mode,
            "rel_l2": err,
            "direct_rel_l2": direct,
        },
    )


def _constant_per_channel(r: np.ndarray, t: np.ndarray) -> Diagnosis | None:
    """Target flat over each (n, c) slice's spatial positions while the reference varies: a zero input + bias."""
    if r.ndim < 3 or math.prod(r.shape[2:]) < 2 or not (np.isfinite(r).all() and np.isfinite(t).all()):
        return None
    rows = r.shape[0] * r.shape[1]
    rs, ts = r.reshape(rows, -1), t.reshape(rows, -1)
    r_std, t_std = rs.std(axis=1), ts.std(axis=1)
    scale = max(float(np.abs(rs).max()), float(np.abs(ts).max()), 1e-30)
    if float(t_std.max()) > CONST_RTOL * scale:
        return None
    varies = float(np.mean(r_std > REF_VARIES_RTOL * scale))
    if varies < 0.5:
        return None
    values = ts[: min(rows, r.shape[1]), 0]  # the constant of each channel of the first sample
    all_zero = bool(np.all(ts == 0))
    shown = ", ".join(f"{v:.4g}" for v in values[:4]) + (", ..." if values.size > 4 else "")
    summary = (
        f"The target is constant over the spatial positions of every channel (max per-channel std "
        f"{float(t_std.max()):.3g}) while {100 * varies:.3g}% of reference channels vary (median std "
        f"{float(np.median(r_std)):.3g}); "
        + (
            "the output is all zero: the kernel wrote nothing or got a zero input."
            if all_zero
            else f"channel values [{shown}] look like a bias added to a zero input."
        )
    )
    return Diagnosis(
        "constant_per_channel",
        summary,
        {
            "target_channel_std_max": float(t_std.max()),
            "ref_channel_std_median": float(np.median(r_std)),
            "ref_channel_std_max": float(r_std.max()),
            "ref_varying_channel_fraction": varies,
            "channels": int(r.shape[1]),
            "target_channel_values": [float(v) for v in values[:16]],
            "all_zero": all_zero,
        },
    )


def _border(r: np.ndarray, bad: np.ndarray, tol: Tolerance) -> Diagnosis | None:
    """Mismatches concentrated on the first/last row/column of H and W (the last two axes): a padding bug."""
    if r.ndim < 3 or r.shape[-2] < 3 or r.shape[-1] < 3:
        return None
    n_bad = int(np.count_nonzero(bad))
    if n_bad < MIN_BORDER_MISMATCHES:
        return None
    h, w = r.shape[-2:]
    edge = np.zeros((h, w), dtype=bool)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    area = float(edge.mean())
    mask = np.broadcast_to(edge, r.shape)
    on_edge = int(np.count_nonzero(bad & mask))
    share = on_edge / n_bad
    if share <= BORDER_SHARE or area >= BORDER_MAX_AREA:
        return None
    per_side = {
        "top": int(np.count_nonzero(bad[..., 0, :])),
        "bottom": int(np.count_nonzero(bad[..., -1, :])),
        "left": int(np.count_nonzero(bad[..., :, 0])),
        "right": int(np.count_nonzero(bad[..., :, -1])),
    }
    sides = ", ".join(f"{k} {v}" for k, v in per_side.items() if v)
    summary = (
        f"{100 * share:.3g}% of the {n_bad} mismatching elements lie on the spatial border (first/last row "
        f"or column, {100 * area:.3g}% of elements; {sides}): a padding fault."
    )
    return Diagnosis(
        "border",
        summary,
        {
            "mismatches": n_bad,
            "mismatches_on_border": on_edge,
            "border_share_of_mismatches": share,
            "border_share_of_elements": area,
            "per_side": per_side,
            "height": int(h),
            "width": int(w),
            "atol": tol.atol,
            "rtol": tol.rtol,
        },
    )


def _int_mismatch(r: np.ndarray, t: np.ndarray) -> Diagnosis | None:
    differs = (r != t).reshape(-1)  # native comparison: exact even beyond 2**53
    n = int(np.count_nonzero(differs))
    if not n:
        return None
    idx = np.flatnonzero(differs)[:_MAX_EXAMPLES]
    rf, tf = r.reshape(-1), t.reshape(-1)
    examples = [{"index": list(_unravel(int(i), r.shape)), "ref": rf[i].item(), "target": tf[i].item()} for i in idx]
    rmin, rmax = rf.min().item(), rf.max().item()
    outside = int(np.count_nonzero((tf < rmin) | (tf > rmax))) if t.dtype.kind != "b" else 0
    ex = examples[0]
    summary = (
        f"The {r.dtype} output differs at {100 * n / r.size:.3g}% of elements ({n}/{r.size}); e.g. index "
        f"{tuple(ex['index'])}: reference {ex['ref']}, target {ex['target']}"
        + (f"; {outside} target values lie outside the reference range [{rmin}, {rmax}]." if outside else ".")
    )
    return Diagnosis(
        "int_mismatch",
        summary,
        {
            "mismatches": n,
            "fraction": n / r.size,
            "examples": examples,
            "ref_dtype": str(r.dtype),
            "target_dtype": str(t.dtype),
            "ref_range": [rmin, rmax],
            "target_range": [tf.min().item(), tf.max().item()],
            "outside_ref_range": outside,
        },
    )


def _metrics_nonfinite(m: TensorMetrics) -> Diagnosis | None:
    """Without arrays only the counts are known: more NaN/inf in the target than in the reference."""
    extra_nan, extra_inf = m.nan_target - m.nan_ref, m.inf_target - m.inf_ref
    if extra_nan <= 0 and extra_inf <= 0:
        return None
    summary = (
        f"The target output {m.name!r} has {m.nan_target} NaN and {m.inf_target} inf vs {m.nan_ref} and "
        f"{m.inf_ref} in the reference (arrays not available to tell overflow from a NaN bug)."
    )
    return Diagnosis(
        "nan_inf",
        summary,
        {
            "nan_target": m.nan_target,
            "nan_ref": m.nan_ref,
            "inf_target": m.inf_target,
            "inf_ref": m.inf_ref,
        },
    )


# ----------------------------------------------------------------------------------------------------
# Depth curve: drift or jump


@dataclass
class _Depth:
    points: list[tuple[int, float]]
    positive: int = 0
    slope: float | None = None  # decades of rel_l2 per op (least squares on log10)
    largest_step: float | None = None  # largest error growth per op between neighbouring probes, up to the culprit
    largest_step_at: int | None = None  # op index of the probe after that step
    culprit_jump: float | None = None  # raw error ratio between the probes around the culprit
    before: float | None = None  # error of the probe just before the culprit
    after: float | None = None  # error of the first probe at/after the culprit

    def evidence(self) -> dict[str, Any]:
        return {
            "depth_points": len(self.points),
            "slope_decades_per_op": self.slope,
            "largest_step_per_op": self.largest_step,
            "largest_step_at": self.largest_step_at,
            "culprit_jump": self.culprit_jump,
            "error_before_culprit": self.before,
            "error_at_culprit": self.after,
        }


def _depth_profile(depth_errors: Sequence[tuple[int, float]], culprit: int | None) -> _Depth:
    merged: dict[int, float] = {}
    for i, e in depth_errors:
        if e is None or not math.isfinite(float(e)) or float(e) < 0:
            continue
        merged[int(i)] = max(float(e), merged.get(int(i), 0.0))  # a recheck may repeat a cut: keep the worse
    pts = sorted(merged.items())
    d = _Depth(pts, positive=sum(1 for _, e in pts if e > 0))
    if not pts:
        return d
    xs = np.array([i for i, _ in pts], dtype=np.float64)
    ys = np.log10(np.maximum([e for _, e in pts], LOG_FLOOR))
    if len(pts) >= 2 and np.ptp(xs) > 0:
        d.slope = float(np.polyfit(xs, ys, 1)[0])
    floor = [max(e, JUMP_FLOOR) for _, e in pts]
    # (ratio, ops spanned, op index after): the inputs (before op 0) are exact, so the first probe steps from there.
    # Bisection probes can be far apart; growth is compared per op so x50 over 30 ops is drift, not a jump.
    steps = [(floor[0] / JUMP_FLOOR, pts[0][0] + 1, pts[0][0])]
    steps += [(floor[k + 1] / floor[k], pts[k + 1][0] - pts[k][0], pts[k + 1][0]) for k in range(len(pts) - 1)]
    if culprit is not None:
        k = next((k for k, (i, _) in enumerate(pts) if i >= culprit), None)
        if k is not None:
            d.culprit_jump = steps[k][0]
            d.after = pts[k][1]
            d.before = pts[k - 1][1] if k > 0 else 0.0
            steps = steps[: k + 1]  # "near the culprit": growth up to it, not later faults
    d.largest_step, d.largest_step_at = max((ratio ** (1.0 / max(span, 1)), at) for ratio, span, at in steps)
    return d


def _precision_or_bug(depth: _Depth, isolated: float | None, metrics: TensorMetrics | None = None) -> Diagnosis | None:
    iso = isolated if isolated is not None and math.isfinite(isolated) else None
    ev = {k: v for k, v in {**depth.evidence(), "isolated_rel_l2": iso}.items() if v is not None}
    if not depth.points:
        ev.pop("depth_points", None)
    judged = _precision_judgement(metrics) if iso is not None else None
    if judged is not None:
        # The precision model measured what half precision costs this op alone: judge against that, not a constant.
        expected, bound = judged
        ev.update({"isolated_expected_rel_l2": expected, "isolated_bound_rel_l2": bound})
        ev["isolated_x_expected"] = iso / max(expected, 2.0**-12)
        within = bool(metrics is not None and metrics.passed)
        jump = depth.culprit_jump if depth.culprit_jump is not None else depth.largest_step
        if within:
            summary = (
                f"Precision accumulation, not a kernel bug: the op alone on reference inputs is off by rel L2 "
                f"{iso:.3g}, within {bound:.3g} (its fp16 rounding alone gives {expected:.3g}); the error builds up "
                "upstream" + (f" (largest step x{depth.largest_step:.3g}/op)" if depth.largest_step else "") + "."
            )
            return Diagnosis("precision_accumulation", summary, ev)
        parts = [
            f"the op alone on reference inputs is off by rel L2 {iso:.3g}, x{ev['isolated_x_expected']:.3g} the "
            f"{expected:.3g} that fp16 rounding gives it (bound {bound:.3g})"
        ]
        if iso <= bound and metrics is not None and metrics.max_abs is not None and metrics.bound_max_abs:
            parts[0] += (
                f", and its max abs error {metrics.max_abs:.3g} exceeds the {metrics.bound_max_abs:.3g} half "
                "precision allows (a fault on a few elements)"
            )
        if jump is not None and jump > JUMP_FACTOR:
            before = depth.before if depth.culprit_jump is not None else None
            parts.append(
                f"the error jumps x{jump:.3g} at this op"
                + (f" (rel L2 {before:.3g} -> {depth.after:.3g})" if before is not None else "")
            )
        return Diagnosis("kernel_bug", "Kernel bug: " + " and ".join(parts) + ".", {**ev, "jump_factor": jump})
    gradual = (
        depth.positive >= 3
        and depth.slope is not None
        and depth.slope > 0
        and depth.largest_step is not None
        and depth.largest_step <= JUMP_FACTOR
    )
    if gradual and iso is not None and iso < ISOLATED_SMALL:
        summary = (
            f"Precision drift, not a kernel bug: the error grows smoothly with depth ({depth.slope:.3g} "
            f"decades/op over {len(depth.points)} probes, largest step x{depth.largest_step:.3g}/op "
            f"<= x{JUMP_FACTOR:g}) and the op alone on reference inputs is off by only rel L2 {iso:.3g} "
            f"(fp16 rounding scale)."
        )
        return Diagnosis("precision_accumulation", summary, ev)
    jump = depth.culprit_jump if depth.culprit_jump is not None else depth.largest_step
    if (iso is not None and iso >= ISOLATED_LARGE) or (jump is not None and jump > JUMP_FACTOR):
        parts = []
        if jump is not None and jump > JUMP_FACTOR:
            before = depth.before if depth.culprit_jump is not None else None
            parts.append(
                f"the error jumps x{jump:.3g} at this op"
                + (f" (rel L2 {before:.3g} -> {depth.after:.3g})" if before is not None else "")
            )
        if iso is not None:
            parts.append(
                f"the op alone on reference inputs is off by rel L2 {iso:.3g}"
                + (" (so the op amplifies upstream error)" if iso < ISOLATED_SMALL else "")
            )
        summary = "Kernel bug: " + " and ".join(parts) + "."
        return Diagnosis("kernel_bug", summary, {**ev, "jump_factor": jump})
    return None


def _precision_judgement(metrics: TensorMetrics | None) -> tuple[float, float] | None:
    """(expected rel L2, bound) when the precision model judged this tensor."""
    if metrics is None or metrics.judged_by != "precision":
        return None
    if metrics.expected_rel_l2 is None or metrics.bound_rel_l2 is None:
        return None
    return float(metrics.expected_rel_l2), float(metrics.bound_rel_l2)


# ----------------------------------------------------------------------------------------------------
# Fallback and helpers


def _fallback(
    ref: np.ndarray | None,
    target: np.ndarray | None,
    tol: Tolerance,
    metrics: TensorMetrics | None,
    depth: _Depth,
    isolated: float | None,
) -> Diagnosis:
    ev: dict[str, Any] = _metric_evidence(metrics)
    if not ev and ref is not None and target is not None:
        ev = _array_stats(np.asarray(ref), np.asarray(target), tol)
    if ref is not None and target is not None and np.shape(ref) != np.shape(target):
        ev["ref_shape"], ev["target_shape"] = list(np.shape(ref)), list(np.shape(target))
    if depth.points:
        ev.update(depth.evidence())
    if isolated is not None:
        ev["isolated_rel_l2"] = isolated
    rel, frac = ev.get("rel_l2"), ev.get("mismatch_fraction")
    nums = []
    if isinstance(rel, float):
        nums.append(f"rel L2 {rel:.3g}")
    if isinstance(ev.get("max_abs"), float):
        nums.append(f"max abs {ev['max_abs']:.3g}")
    if isinstance(frac, float):
        nums.append(f"{100 * frac:.3g}% of elements over tolerance")
    shape = f", shapes {tuple(ev['ref_shape'])} vs {tuple(ev['target_shape'])}" if "ref_shape" in ev else ""
    what = f" ({', '.join(nums)}{shape})" if nums or shape else ""
    summary = f"The output differs{what} without a recognised fault pattern."
    return Diagnosis("numeric_mismatch", summary, ev)


def _metric_evidence(m: TensorMetrics | None) -> dict[str, Any]:
    if m is None:
        return {}
    keys = ("rel_l2", "max_abs", "max_rel", "mean_abs", "cosine", "mismatch_fraction", "min_atol", "min_rtol")
    return {"tensor": m.name, **{k: getattr(m, k) for k in keys if getattr(m, k) is not None}}


def _array_stats(r: np.ndarray, t: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    if r.size != t.size or r.size == 0 or r.dtype.kind not in "fiub" or t.dtype.kind not in "fiub":
        return {}
    with np.errstate(all="ignore"):
        r64 = np.asarray(r, dtype=np.float64)
        t64 = np.asarray(t, dtype=np.float64).reshape(r.shape)
        ok = np.isfinite(r64) & np.isfinite(t64)
        out: dict[str, Any] = {"mismatch_fraction": float(_mismatch_mask(r64, t64, tol).mean())}
        if ok.any():
            out["rel_l2"] = _rel_l2(r64[ok], t64[ok])
            out["max_abs"] = float(np.max(np.abs(t64[ok] - r64[ok])))
    return out


def _scaled_tolerance(tol: Tolerance, ref: np.ndarray) -> Tolerance:
    """As compare.py (scale_atol): atol times the reference RMS when that exceeds 1 (fp16 error scales with |x|)."""
    flat = np.asarray(ref, dtype=np.float64).reshape(-1)
    flat = flat[np.isfinite(flat)]
    rms = float(np.sqrt(np.dot(flat, flat) / flat.size)) if flat.size else 0.0
    return Tolerance(tol.atol * rms, tol.rtol) if rms > 1.0 else tol


def _rel_l2(r: np.ndarray, t: np.ndarray) -> float:
    nr = float(np.linalg.norm(r.reshape(-1)))
    nd = float(np.linalg.norm((t - r).reshape(-1)))
    return nd / nr if nr > 0 else (0.0 if nd == 0 else math.inf)


def _max_abs(a: np.ndarray) -> float:
    """Largest |x| including inf, ignoring NaN; 0 for an empty/all-NaN array."""
    a = np.abs(a[~np.isnan(a)]) if a.dtype.kind == "f" else np.abs(a)
    return float(a.max()) if a.size else 0.0


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN/inf as "nan"/"inf"/"-inf" like compare.py's to_dict."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _finish(d: Diagnosis) -> Diagnosis:
    d.evidence = _jsonable(d.evidence)
    return d
