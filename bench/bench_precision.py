"""How well does the judgement tell a kernel bug from half-precision noise? Precision model vs the old fixed tolerance.

Targets carry fp16 noise AND a planted kernel-like fault: the fault is inserted as real ops after one op's output
(scale by 1+s; a few channels, the border, or the last row scaled by 1+s; one NaN; a transposed layout), and the
resulting model runs under the `fp16` emulation, so the fault's output is rounded to half like everything else.
Healthy targets: the fp16 emulation itself, and two "other device" stand-ins whose noise differs from the
emulation's (every op output multiplied by 1 + a*2^-11*z, z ~ N(0,1) per last-dim index, a = 1 and 4): a device
rounding once more inside its kernels, and one with about 4x the emulation's error (the worst ratio a real GPU
showed, notes/precision.md).

Range class: fp16's range, planted at the same depths. After the chosen op's output T the planted model computes
A = T x 2^k and then A x 2^-k: in fp32 the model is unchanged (powers of two are exact) and A is a true tensor of
it, beyond 65504 ("overflow": max |A| in [2, 4) x 65504) or below fp16's smallest normal ("underflow": max |A| in
[2^-16, 2^-15); "deep": in [2^-20, 2^-19); "partial": in [2^-13, 2^-12), so part of its mass stays normal). The
target is the `fp16` emulation of that model: it overflows there, and stores A's small values as subnormals
("kept") or, as `fp16:subnormals=flush` (a GPU flushing denormals), as zeros ("flushed"). Right op: the first
failing tensor in execution order is A; diagnosis: the diagnosis of A names fp16_overflow / fp16_underflow. "old"
is the pre-issue model, whose expectation was the `fp16` emulation of the same model, i.e. the target itself: only
NaN/inf where the reference is finite failed; "old at outputs" is what `compare` judged then.

Per case it judges what `bisect-lite run` judges: the outputs, then (when they pass) every tensor, in execution
order. Detection: some tensor fails. Right op: the first failing tensor in execution order is the planted op's
output (the search converges there: every earlier tensor is the healthy emulation's). "effect": the faulty
output's rel L2 / the healthy fp16 output's rel L2 (how loud the fault is at the output, in units of fp16 noise).
The old rule is atol = rtol = 5e-2, atol x RMS when RMS > 1, judged at the outputs (the old `run` looked no
further), and its right-op check also needs no healthy tensor before the fault to fail it (else the old search
blames a healthy op).

    .venv/bin/python bench/bench_precision.py [--quick] [--factor K] [--models a,b] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bisect_lite.cache import Cache  # noqa: E402
from bisect_lite.compare import FP16_TOLERANCE, CompareConfig, Comparison  # noqa: E402
from bisect_lite.engines.runner import EngineRunner  # noqa: E402
from bisect_lite.fp16_range import FP16_MAX, FP16_MIN_NORMAL, UNDERFLOW_SHARE, value_range  # noqa: E402
from bisect_lite.model import Model, load_model, truncate  # noqa: E402
from bisect_lite.model.proto import framework_pb2  # noqa: E402
from bisect_lite.precision import (  # noqa: E402
    DEFAULT_FACTOR,
    EMULATION_SPEC,
    PEAK_RATIO,
    Expectations,
    ExpectedError,
    PrecisionRule,
    judge_tensor,
)
from bisect_lite.reference import ReferenceValues  # noqa: E402
from bisect_lite.report.diagnose import diagnose  # noqa: E402

FIXTURES = ["mobilenetv3", "resnet", "transformer", "unet", "two_io", "argmax_classifier"]
REAL = ["det", "rec", "cls"]
SIZES = (0.05, 0.10, 0.20)
SIZED_KINDS = ("scale", "channels", "border", "last_row")
# (label, planting, target): the plain `fp16` emulation keeps subnormals, `fp16:subnormals=flush` zeroes them.
RANGE_CASES = (
    ("overflow", "overflow", "fp16"),
    ("underflow, kept", "underflow", "fp16"),
    ("deep, kept", "deep", "fp16"),
    ("underflow, flushed", "underflow", "fp16:subnormals=flush"),
    ("partial, flushed", "partial", "fp16:subnormals=flush"),
)
FP32_DTYPE = 5


def model_path(name: str) -> Path:
    if name in REAL:
        return ROOT.parent / "shared" / "models" / "ppocrv5" / name  # shared/ beside the checkout
    return ROOT / "fixtures" / name


# ---- planting ------------------------------------------------------------------------------------------------
def _var(block: Any, like: str, name: str, shape: Sequence[int], persistable: bool) -> None:
    src = next(v for v in block.vars if v.name == like)
    vd = block.vars.add()
    vd.CopyFrom(src)
    vd.name = name
    vd.persistable = persistable
    vd.type.dense_tensor.tensor.data_type = FP32_DTYPE
    del vd.type.dense_tensor.tensor.dims[:]
    vd.type.dense_tensor.tensor.dims.extend(int(d) for d in shape)


def _attr(op: Any, name: str, value: Any) -> None:
    a = op.attrs.add()
    a.name = name
    if isinstance(value, bool):
        a.type, a.b = 6, value
    elif isinstance(value, int):
        a.type, a.i = 0, value
    elif isinstance(value, float):
        a.type, a.f = 1, value
    else:
        a.type = 3
        a.ints.extend(value)


Edit = tuple[str, "np.ndarray | None", dict[str, Any]]


def insert_after(model: Model, edits: dict[str, Edit | list[Edit]]) -> Model:
    """A copy of `model` where each tensor T in `edits` is written as T@raw and then passed through the given ops
    (elementwise_mul/elementwise_add with a fresh float32 param, or scale/transpose2 with attrs), the last writing T.
    Under the fp16 engine every inserted op's output is rounded to half too."""
    pb = framework_pb2()
    program = pb.ProgramDesc()
    program.CopyFrom(model.program)
    block = program.blocks[0]
    params = dict(model.params)
    new_ops = []
    for od in block.ops:
        new_ops.append(od)
        if od.type in ("feed", "fetch"):
            continue
        for slot in od.outputs:
            for k, name in enumerate(list(slot.arguments)):
                if name not in edits:
                    continue
                chain = edits[name] if isinstance(edits[name], list) else [edits[name]]
                shape = [int(d) for d in next(v for v in block.vars if v.name == name).type.dense_tensor.tensor.dims]
                src = f"{name}@raw0"
                slot.arguments[k] = src
                _var(block, name, src, shape, False)
                for step, (op_type, param, attrs) in enumerate(chain):
                    last = step == len(chain) - 1
                    dst = name if last else f"{name}@raw{step + 1}"
                    if not last:
                        _var(block, name, dst, shape, False)
                    op = pb.OpDesc()
                    op.type = op_type
                    op.inputs.add(parameter="X", arguments=[src])
                    if param is not None:
                        pname = f"{name}@fault{step}"
                        _var(block, name, pname, param.shape, True)
                        params[pname] = param.astype(np.float32)
                        op.inputs.add(parameter="Y", arguments=[pname])
                    if op_type == "transpose2":
                        xshape = f"{name}@xshape{step}"
                        _var(block, name, xshape, [0, *shape], False)
                        op.outputs.add(parameter="XShape", arguments=[xshape])
                    op.outputs.add(parameter="Out", arguments=[dst])
                    for key, value in attrs.items():
                        _attr(op, key, value)
                    new_ops.append(op)
                    src = dst
    del block.ops[:]
    block.ops.extend(new_ops)
    return Model(program, params, source=None)


def fault_edit(kind: str, size: float, shape: tuple[int, ...]) -> tuple[str, np.ndarray | None, dict[str, Any]] | None:
    """The op that plants one kernel-like fault on a tensor of `shape`; None when it does not apply."""
    rank = len(shape)
    if kind == "scale":
        return "scale", None, {"scale": 1.0 + size, "bias": 0.0, "bias_after_scale": True}
    if kind == "channels":
        if rank < 2 or shape[1] < 4:
            return None
        mask = np.ones([1, shape[1], *([1] * (rank - 2))], np.float32)
        mask[0, [0, shape[1] // 2, shape[1] - 1]] = 1.0 + size  # three channels
        return "elementwise_mul", mask, {"axis": -1}
    if kind == "border":
        if rank < 3 or shape[-1] < 4 or shape[-2] < 4:
            return None
        mask = np.ones([1] * (rank - 2) + list(shape[-2:]), np.float32)
        mask[..., 0, :] = mask[..., -1, :] = mask[..., :, 0] = mask[..., :, -1] = 1.0 + size
        return "elementwise_mul", mask, {"axis": -1}
    if kind == "last_row":
        if rank < 2 or shape[-2] < 2:
            return None
        mask = np.ones([1] * (rank - 2) + [shape[-2], 1], np.float32)
        mask[..., -1, :] = 1.0 + size
        return "elementwise_mul", mask, {"axis": -1}
    if kind == "nan":
        mask = np.zeros([1] * (rank - 1) + [shape[-1]], np.float32)
        mask[..., shape[-1] // 2] = np.nan
        return "elementwise_add", mask, {"axis": -1}  # one NaN per row of the last dim
    if kind == "transpose":
        if rank < 2 or shape[-1] != shape[-2] or shape[-1] < 2:
            return None
        axes = [*list(range(rank - 2)), rank - 1, rank - 2]
        return "transpose2", None, {"axis": axes}
    raise ValueError(kind)


# Ops that only move, select or clamp values: a device adds no rounding there (fp16 in, the same fp16 out).
EXACT_OPS = frozenset(
    [
        "reshape2",
        "reshape",
        "transpose2",
        "transpose",
        "flatten_contiguous_range",
        "flatten",
        "squeeze2",
        "unsqueeze2",
        "concat",
        "split",
        "slice",
        "strided_slice",
        "gather",
        "relu",
        "relu6",
        "pool2d_max",
        "max_pool2d_with_index",
        "nearest_interp_v2",
        "nearest_interp",
        "shape",
        "fill_constant",
        "cast",
        "assign",
        "arg_max",
    ]
)


def rerounding_edits(model: Model, values: ReferenceValues, offset: float) -> dict[str, list[Edit]]:
    """Every computed float output gets one more, independent, element-wise rounding at the scale of the tensor:
    y = (x + c) - c with c = offset * RMS(x), both steps rounded to half by the fp16 engine, so each element moves
    by up to half an fp16 ulp of c (as when a kernel accumulates a sum whose running total is ~c in half).
    offset 0.75 adds about 0.7 of a storage rounding per op, offset 3 about 2.7. Ops in EXACT_OPS (and max
    pooling) add nothing on a device and are left alone."""
    edits: dict[str, list[Edit]] = {}
    for index, name in model.data_tensors():
        op = model.ops[index]
        pooling = model.op_attrs(index).get("pooling_type") if op.type == "pool2d" else None
        if name not in values.index or op.type in EXACT_OPS or pooling == "max":
            continue
        arr = values[name]
        if arr.dtype != np.float32 or not arr.size:
            continue
        rms = float(np.sqrt(np.mean(np.square(arr, dtype=np.float64))))
        if not (rms > 0 and math.isfinite(rms)):
            continue
        c = offset * rms
        edits[name] = [
            ("scale", None, {"scale": 1.0, "bias": c, "bias_after_scale": True}),
            ("scale", None, {"scale": 1.0, "bias": -c, "bias_after_scale": True}),
        ]
    return edits


# ---- judging -------------------------------------------------------------------------------------------------
PEAK_RATIO_OVERRIDE = [PEAK_RATIO]  # --peak-ratio
NEW_CONFIG = CompareConfig(default=FP16_TOLERANCE)  # only for tensors the precision model cannot judge


def old_rule_fails(ref: np.ndarray, target: np.ndarray) -> bool:
    """The old fixed tolerance, elementwise: |d| > atol*max(RMS, 1) and |d| > rtol*|r| (5e-2 both), or NaN/inf in
    the target where the reference is finite, or a shape/dtype-kind difference."""
    if ref.shape != target.shape or ref.dtype.kind != target.dtype.kind:
        return True
    if ref.dtype.kind != "f":
        return not np.array_equal(ref, target)
    r, t = ref.astype(np.float32, copy=False), target.astype(np.float32, copy=False)
    finite = np.isfinite(r)
    if np.any(finite & ~np.isfinite(t)):
        return True
    rms = float(np.sqrt(np.mean(np.square(r[finite], dtype=np.float64)))) if finite.any() else 0.0
    d = np.abs(t - r)
    atol = FP16_TOLERANCE.atol * max(rms, 1.0)
    return bool(np.any((d > atol) & (d > FP16_TOLERANCE.rtol * np.abs(r)) & finite))


class Judge:
    """Reference values, expectations, and the two rules on one model. `emu`: the `fp16` target emulation; `expect`:
    the precision model's expectation engine (fp16 rounding alone)."""

    def __init__(
        self, name: str, work: Path, ref: EngineRunner, emu: EngineRunner, expect: EngineRunner, factor: float
    ) -> None:
        self.name = name
        self.work = work / name
        self.model = load_model(model_path(name))
        with np.load(model_path(name) / "inputs.npz") as data:
            self.inputs = {k: data[k] for k in data.files}
        self.values = ReferenceValues(work / name / "reference", self.inputs)
        t0 = time.perf_counter()
        self.values.compute(self.model, ref, 1 << 29)
        exp = Expectations(work / name / "reference")
        exp.compute(self.model, self.values, expect)
        self.setup_seconds = time.perf_counter() - t0
        self.expected = exp.errors
        self.rule = PrecisionRule(
            factor=factor, target_precision="unknown", declared_by="undeclared", peak_ratio=PEAK_RATIO_OVERRIDE[0]
        )
        self.order = [t for _, t in self.model.data_tensors() if t in self.values.index]
        self.position = {t: i for i, t in enumerate(self.order)}
        self.producer = self.model.producers
        self.emu = emu
        # Healthy tensors the old rule already fails (the old search would stop at the first of them).
        self.out_noise = 0.0
        self.healthy_run = self.judge_all(self.model, self.order)
        self.old_healthy_fail = [t for t in self.order if t in self.healthy_run[1]]
        for f in self.model.fetches:
            e = self.expected.get(f)
            if e is not None and e.rel_l2 is not None:
                self.out_noise = max(self.out_noise, e.rel_l2)

    def judge_all(
        self, model: Model, names: list[str], stop: bool = False, target: EngineRunner | None = None
    ) -> tuple[Comparison, set[str]]:
        """`names` (tensors of the original model) of `model` run under fp16, batched as the reference was: the
        precision model's comparison (the run's own judge_tensor) and the set of names the old rule fails.
        `stop`: stop after the first batch with a tensor beyond precision."""
        files: dict[str, list[str]] = defaultdict(list)
        for n in names:
            files[self.values.index[n]].append(n)
        new, old_fail = Comparison(), set()
        kept = self.work / "target.npz"
        for batch in files.values():
            runner = target or self.emu
            res = runner.run(truncate(model, batch), {f: self.inputs[f] for f in model.feeds}, keep=kept, load=False)
            if not res.ok:
                raise RuntimeError(f"{self.name}: fp16 run failed: {res.message[-300:]}")
            with np.load(kept) as outputs:
                for n in batch:
                    ref, tgt = self.values[n], outputs[n]
                    new.tensors.append(judge_tensor(self.rule, n, ref, tgt, self.expected, NEW_CONFIG))
                    if old_rule_fails(ref, tgt):
                        old_fail.add(n)
            if stop and not new.passed:
                break
        return new, old_fail

    def case(self, planted: Model, tensor: str) -> dict[str, Any]:
        """Judge a faulty target: outputs + the planted tensor first, every later tensor only if needed."""
        first = [tensor, *[f for f in self.model.fetches if f != tensor]]
        new, old_fail = self.judge_all(planted, first)
        by_new = {m.name: m for m in new.tensors}
        fetches = [f for f in self.model.fetches if f in by_new]
        if any(by_new[f].nonfinite_mismatch for f in fetches):
            effect = math.inf
        else:
            effect = max((by_new[f].rel_l2 or 0.0) for f in fetches) / max(self.out_noise, 1e-12)
        planted_new = not by_new[tensor].passed
        out_new = any(not by_new[f].passed for f in fetches)
        detect_new, right_new = planted_new or out_new, planted_new
        if not detect_new:  # the run would judge every tensor: does any later one fail?
            later = [t for t in self.order if self.position[t] > self.position[tensor] and t not in first]
            if later:
                detect_new = not self.judge_all(planted, later, stop=True)[0].passed
        out_old = any(f in old_fail for f in fetches)
        before = [t for t in self.old_healthy_fail if self.position.get(t, 1 << 30) < self.position[tensor]]
        right_old = out_old and not before and tensor in old_fail
        return {
            "effect": effect,
            "new": detect_new,
            "new_right": right_new,
            "old": out_old,
            "old_right": right_old,
            "planted_rel_l2": by_new[tensor].rel_l2,
            "planted_bound": by_new[tensor].bound_rel_l2,
        }

    def range_case(
        self, planted: Model, tensor: str, inner: str, scale: float, kind: str, target: EngineRunner
    ) -> dict[str, Any]:
        """Judge a model whose tensor `inner` = `tensor` x `scale` leaves fp16's range (see the docstring)."""
        names = [inner, tensor, *[f for f in self.model.fetches if f != tensor]]
        kept = self.work / "target.npz"
        res = target.run(truncate(planted, names), {f: self.inputs[f] for f in planted.feeds}, keep=kept, load=False)
        if not res.ok:
            raise RuntimeError(f"{self.name}: fp16 run failed: {res.message[-300:]}")
        e = self.expected[tensor]
        scaled = ExpectedError(e.rel_l2, None if e.max_abs is None else e.max_abs * scale, e.ref_absmax * scale)
        expected = {**self.expected, inner: scaled}  # rounding commutes with a power-of-two scale
        with np.load(kept) as outputs:
            got = {n: outputs[n] for n in names}
        refs = {n: self.values[n] for n in names[1:]}
        refs[inner] = (refs[tensor].astype(np.float64) * scale).astype(np.float32)
        judged = {n: judge_tensor(self.rule, n, refs[n], got[n], expected, NEW_CONFIG) for n in names}
        nonfinite = {n: bool(np.any(np.isfinite(refs[n]) & ~np.isfinite(got[n]))) for n in names}
        detect = any(not m.passed for m in judged.values())
        if not detect:  # the run would judge every later tensor
            later = [t for t in self.order if self.position[t] > self.position[tensor] and t not in names]
            detect = bool(later) and not self.judge_all(planted, later, stop=True, target=target)[0].passed
        facts = {"op_type": "scale", "input_max_abs": float(np.abs(refs[tensor]).max())}
        found = diagnose(refs[inner], got[inner], metrics=judged[inner], fp16_range=facts).kind
        fetches = [f for f in self.model.fetches if f in judged]
        return {
            "new": detect,
            "new_right": not judged[inner].passed,
            "new_diagnosis": found,
            "new_diagnosis_right": found == ("fp16_overflow" if kind == "overflow" else "fp16_underflow"),
            "predicted": float(np.abs(refs[inner]).max()) > FP16_MAX or value_range(refs[inner])[1] > UNDERFLOW_SHARE,
            "new_at_outputs": any(not judged[f].passed for f in fetches),
            "old": any(nonfinite.values()),  # the whole target run, NaN/inf alone; no later tensor goes further
            "old_right": nonfinite[inner],
            "old_at_outputs": any(nonfinite[f] for f in fetches),
            "planted_rel_l2": judged[inner].rel_l2,
        }

    def healthy(self, planted: Model | None) -> dict[str, Any]:
        new, old_fail = self.judge_all(planted, self.order) if planted is not None else self.healthy_run
        ratios = [
            m.rel_l2 / max(m.expected_rel_l2, 2.0**-12)
            for m in new.tensors
            if m.rel_l2 is not None and m.expected_rel_l2 is not None
        ]
        return {
            "new_false_alarm": not new.passed,
            "new_failing": new.failing[:5],
            "old_false_alarm": any(f in old_fail for f in self.model.fetches),
            "old_failing_tensors": len(old_fail),
            "worst_ratio": max(ratios, default=0.0),
        }

    def close(self) -> None:
        self.values.close()


def pick_ops(judge: Judge, count: int) -> list[str]:
    """`count` planted tensors spread evenly over depth: float outputs of rank >= 2 (first output of each op)."""
    cands = []
    for index, name in judge.model.data_tensors():
        if name not in judge.values.index or name in judge.model.fetches:
            continue
        if judge.model.ops[index].data_outputs()[0] != name:
            continue
        arr = judge.values[name]
        if arr.dtype == np.float32 and arr.ndim >= 2 and arr.size >= 16 and float(np.abs(arr).max()) > 0:
            cands.append(name)
    if len(cands) <= count:
        return cands
    return [cands[round(i * (len(cands) - 1) / (count - 1))] for i in range(count)] if count > 1 else cands[:1]


def range_scale(values: np.ndarray, kind: str) -> float:
    """The power of two that takes `values` beyond fp16's range (see the docstring)."""
    peak = float(np.abs(values).max())
    if kind == "overflow":
        return 2.0 ** math.ceil(math.log2(2 * FP16_MAX / peak))
    top = {"underflow": FP16_MIN_NORMAL / 2, "deep": FP16_MIN_NORMAL / 32, "partial": FP16_MIN_NORMAL * 4}[kind]
    return 2.0 ** math.floor(math.log2(top / peak))


def range_edit(scale: float) -> list[Edit]:
    return [
        ("scale", None, {"scale": float(scale), "bias": 0.0, "bias_after_scale": True}),
        ("scale", None, {"scale": float(1.0 / scale), "bias": 0.0, "bias_after_scale": True}),
    ]


# ---- the benchmark -------------------------------------------------------------------------------------------
def run(
    models: list[str],
    ops_per_model: Callable[[str], int],
    factor: float,
    kinds: Sequence[str],
    with_range: bool = True,
) -> dict:
    cache = Cache(results=False)
    rows: list[dict[str, Any]] = []
    healthy: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    ranged: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp,
        EngineRunner("paddle", cache) as ref,
        EngineRunner("fp16", cache) as emu,
        EngineRunner(EMULATION_SPEC, cache) as expect,
        EngineRunner("fp16:subnormals=flush", cache) as flushing,
    ):
        targets = {"fp16": emu, "fp16:subnormals=flush": flushing}
        for name in models:
            t0 = time.perf_counter()
            judge = Judge(name, Path(tmp), ref, emu, expect, factor)
            for label, offset in (("fp16", 0.0), ("fp16 + rounding x0.7", 0.75), ("fp16 + rounding x2.7", 3.0)):
                edits = rerounding_edits(judge.model, judge.values, offset) if offset else None
                planted = insert_after(judge.model, edits) if edits else None
                healthy.append({"model": name, "target": label, **judge.healthy(planted)})
            for tensor in pick_ops(judge, ops_per_model(name)):
                shape = tuple(judge.values[tensor].shape)
                for kind in kinds:
                    for size in SIZES if kind in SIZED_KINDS else (None,):
                        edit = fault_edit(kind, size or 0.0, shape)
                        if edit is None:
                            continue
                        planted = insert_after(judge.model, {tensor: edit})
                        res = judge.case(planted, tensor)
                        rows.append(
                            {
                                "model": name,
                                "op": judge.producer[tensor],
                                "op_type": judge.model.ops[judge.producer[tensor]].type,
                                "kind": kind,
                                "size": size,
                                **res,
                            }
                        )
                for label, kind, spec in RANGE_CASES if with_range else ():
                    scale = range_scale(judge.values[tensor], kind)
                    planted = insert_after(judge.model, {tensor: range_edit(scale)})
                    res = judge.range_case(planted, tensor, f"{tensor}@raw1", scale, kind, targets[spec])
                    ranged.append(
                        {
                            "model": name,
                            "op": judge.producer[tensor],
                            "op_type": judge.model.ops[judge.producer[tensor]].type,
                            "kind": label,
                            **res,
                        }
                    )
            judge.close()
            timing[name] = time.perf_counter() - t0
            print(
                f"  {name}: {sum(1 for r in rows if r['model'] == name)} fault cases, {timing[name]:.0f} s",
                file=sys.stderr,
            )
    cache.close()
    return {"factor": factor, "cases": rows, "healthy": healthy, "range": ranged, "seconds": timing}


def pct(num: int, den: int) -> str:
    return f"{100.0 * num / den:5.1f}% ({num}/{den})" if den else "     -"


def summarise(result: dict) -> str:
    rows, healthy = result["cases"], result["healthy"]
    lines = [f"precision model K = {result['factor']:g} vs old fixed tolerance (atol = rtol = 5e-2, atol x RMS)", ""]
    lines.append(f"{'fault':<18} {'cases':>5}  {'detected: old':>20} {'new':>20}   {'right op: old':>20} {'new':>20}")

    def line(label: str, sel: list[dict]) -> str:
        n = len(sel)
        return (
            f"{label:<18} {n:>5}  {pct(sum(r['old'] for r in sel), n):>20} {pct(sum(r['new'] for r in sel), n):>20}"
            f"   {pct(sum(r['old_right'] for r in sel), n):>20} {pct(sum(r['new_right'] for r in sel), n):>20}"
        )

    for kind in dict.fromkeys(r["kind"] for r in rows):
        for size in dict.fromkeys(r["size"] for r in rows if r["kind"] == kind):
            label = kind + (f" {round(size * 100)}%" if size else "")
            lines.append(line(label, [r for r in rows if r["kind"] == kind and r["size"] == size]))
    lines.append(line("all faults", rows))
    lines.append("")
    for lo, hi in ((0, 1), (1, 5), (5, math.inf)):
        sel = [r for r in rows if lo <= r["effect"] < hi or (hi == math.inf and r["effect"] == math.inf)]
        lines.append(line(f"effect {lo}-{hi if hi < math.inf else 'inf'}x", sel))
    for name in dict.fromkeys(r["model"] for r in rows):
        lines.append(line(f"model {name}", [r for r in rows if r["model"] == name]))
    lines.append("")
    missed = [r for r in rows if r["effect"] >= 5 and not r["new_right"]]
    lines.append(f"faults with effect >= 5x fp16 noise at the output not found at the right op: {len(missed)}")
    for r in missed[:10]:
        lines.append(f"  {r['model']} op {r['op']} {r['op_type']} {r['kind']} {r['size']}: effect {r['effect']:.3g}")
    lines.append("")
    lines.append(f"{'healthy target':<28} {'false alarm: old':>16} {'new':>6}  worst error / emulation error")
    for h in healthy:
        lines.append(
            f"{h['model'] + ' ' + h['target']:<28} {h['old_false_alarm']!s:>16} {h['new_false_alarm']!s:>6}"
            f"  {h['worst_ratio']:.2f}" + (f"  ({', '.join(h['new_failing'])})" if h["new_failing"] else "")
        )
    ranged = result.get("range") or []
    if ranged:
        lines.append("")
        lines.append(
            f"{'fp16 range':<20} {'cases':>5}  {'detected: old':>20} {'new':>20}   {'at outputs: old':>20} "
            f"{'new':>20}   {'right op: old':>20} {'new':>20}   {'diagnosis named':>20} {'predicted':>20}"
        )
        for kind in [*dict.fromkeys(r["kind"] for r in ranged), None]:
            sel = [r for r in ranged if kind is None or r["kind"] == kind]
            n = len(sel)
            cells = [
                pct(sum(r[k] for r in sel), n)
                for k in ("old", "new", "old_at_outputs", "new_at_outputs", "old_right", "new_right")
            ]
            named, predicted = (pct(sum(r[k] for r in sel), n) for k in ("new_diagnosis_right", "predicted"))
            lines.append(
                f"{kind or 'all range faults':<20} {n:>5}  {cells[0]:>20} {cells[1]:>20}   {cells[2]:>20} "
                f"{cells[3]:>20}   {cells[4]:>20} {cells[5]:>20}   {named:>20} {predicted:>20}"
            )
        wrong = [r for r in ranged if not (r["new_right"] and r["new_diagnosis_right"])]
        for r in wrong[:10]:
            lines.append(
                f"  {r['model']} op {r['op']} {r['op_type']} {r['kind']}: right op {r['new_right']}, diagnosis "
                f"{r['new_diagnosis']}, rel L2 {r['planted_rel_l2']}"
            )
        lines.append("")
    old_fa = sum(h["old_false_alarm"] for h in healthy)
    new_fa = sum(h["new_false_alarm"] for h in healthy)
    lines.append(f"false alarms on healthy runs: old {old_fa}/{len(healthy)}, new {new_fa}/{len(healthy)}")
    lines.append("time per model: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds"].items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer ops per model and fault kinds (about 2 minutes)")
    ap.add_argument("--factor", type=float, default=DEFAULT_FACTOR, help="K of the precision model")
    ap.add_argument("--models", default=",".join(FIXTURES + REAL), help="comma-separated fixtures / det,rec,cls")
    ap.add_argument("--json", type=Path, help="write every case here")
    ap.add_argument("--peak-ratio", type=float, default=PEAK_RATIO, help="the max-abs test's factor / K")
    ap.add_argument("--no-range", action="store_true", help="leave out the fp16 range class")
    ap.add_argument("--kinds", help="comma-separated kernel-like fault kinds (default: all, or --quick's)")
    ap.add_argument("--ops", type=int, help="planted ops per model (default 6 on PP-OCRv5, 8 on fixtures)")
    args = ap.parse_args()
    PEAK_RATIO_OVERRIDE[0] = args.peak_ratio
    models = [m for m in args.models.split(",") if m]
    if args.quick:
        kinds = ("scale", "channels", "last_row", "nan")
        per = lambda name: 2 if name in REAL else 3  # noqa: E731
    else:
        kinds = ("scale", "channels", "border", "last_row", "nan", "transpose")
        per = lambda name: 6 if name in REAL else 8  # noqa: E731
    if args.kinds is not None:
        kinds = tuple(k for k in args.kinds.split(",") if k)
    if args.ops is not None:
        per = lambda name: args.ops  # noqa: E731
    result = run(models, per, args.factor, kinds, with_range=not args.no_range)
    print(summarise(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
