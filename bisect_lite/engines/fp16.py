"""`fp16`: emulate an fp16 OpenCL GPU on the host by rounding tensors to IEEE half between ops.

Paddle-Lite's OpenCL backend in fp16 mode stores activations (images/buffers) and weights as half floats. This
engine rewrites a copy of the program so that every float32 activation is rounded to fp16 and back right where
it is produced (`cast` fp32->fp16->fp32 after the producing op, or after the feed), rounds every float32 weight
the same way, and runs the result with Paddle Inference in exact mode (IR optimisation and oneDNN off).

What it models:
- storage rounding of every activation between ops (round to nearest even, as the GPU's half conversion does);
- fp16 weights;
- overflow: values above 65504 become +-inf, and inf/NaN propagate downstream as on the GPU; values below fp16's
  smallest normal (2^-14) are stored as subnormals (absolute precision 2^-24), below 2^-25 as zero.
With `subnormals=flush` values below 2^-14 become 0 after each rounding (and in the weights), as on a GPU whose
kernels flush denormals (OpenCL's `-cl-fast-relaxed-math` allows it; Paddle-Lite builds its kernels with it).
With `range=none` it models the rounding alone (the precision model's expectation, bisect_lite/precision.py): every
value is rounded to fp16's 11-bit significand, round to nearest even, but keeps fp32's exponent range, so nothing
overflows, saturates or underflows. The program computes that rounding with Veltkamp's split in fp32 arithmetic,
hi = c - (c - x) with c = 8193 x (8193 = 2^13 + 1): bit-identical to the fp16 cast for every |x| in fp16's normal
range [2^-14, 65504] (tests/test_fp16_range.py checks it on every binade and on exact ties), finer below it, and
finite up to |x| = 4e34 (where 8193 x leaves fp32).
What it does not model:
- half-precision arithmetic and accumulation inside kernels (the ops still compute in fp32 on the CPU, so long
  reductions such as big convolutions, matmuls, softmax or layer_norm sums are more accurate here);
- `-cl-fast-relaxed-math` (approximate exp/div/sqrt, no denormals);
- algorithm differences of GPU kernels (Winograd convolution, fused ops, different reduction orders);
- ops fused by Paddle-Lite's optimiser, whose intermediate results never get rounded on the device.
So a mismatch this engine reproduces is a precision/range problem of fp16 itself; one it does not reproduce points
at a kernel.

Options (spec `fp16:KEY=VALUE,...`):
- `ops=conv2d+matmul_v2`: round only the outputs of these op types (`feed` stands for the model inputs;
  `all`, the default, rounds everything; `none` rounds no activation);
- `skip=softmax+layer_norm`: round everything except the outputs of these op types (combines with `ops`);
- `weights=round|keep`: round float32 weights to fp16 (default) or keep them exact;
- `range=fp16|none`: fp16's range (default) or none (rounding only, see above);
- `subnormals=keep|flush`: keep fp16 subnormals (default) or flush them to zero (with `range=fp16`);
- `threads=N`: CPU math threads.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.engines.paddle_inference import PaddleEngine
from bisect_lite.errors import InputError
from bisect_lite.model import PARAMS_FILE, Model, load_model, save_model
from bisect_lite.model.proto import framework_pb2

FP16, FP32 = 4, 5  # VarType codes of the cast op's in_dtype/out_dtype attrs
SPLIT = 8193.0  # Veltkamp's constant 2^(24 - 11) + 1: splits an fp32 significand into its top 11 bits and the rest
# hard_shrink zeroes |x| <= threshold: the largest float32 below fp16's smallest normal 2^-14 flushes its subnormals.
BELOW_MIN_NORMAL = float(np.nextafter(np.float32(2.0**-14), np.float32(0)))
# Bump when the rewrite changes, so cached prepared models and results are not reused.
REWRITE_VERSION = "1"
_OP_TYPE = re.compile(r"^[A-Za-z0-9_]+$")


def _op_set(engine: str, key: str, value: str | None) -> frozenset[str] | None:
    """Parse a '+'-separated op type list; None means "all"."""
    if value is None or value == "all":
        return None
    if value == "none":
        return frozenset()
    names = value.split("+")
    bad = [n for n in names if not _OP_TYPE.match(n)]
    if bad:
        raise InputError(f"engine {engine}: {key}={value}: bad op type {bad[0]!r} (expected e.g. conv2d+matmul_v2)")
    return frozenset(names)


def round_fp16(array: np.ndarray) -> np.ndarray:
    """fp32 -> fp16 -> fp32: nearest-even rounding, overflow to inf (numpy's conversion matches Paddle's cast)."""
    with np.errstate(over="ignore"):
        return array.astype(np.float16).astype(np.float32)


def flush_subnormals(array: np.ndarray) -> np.ndarray:
    """fp16 rounding, then every value below fp16's smallest normal 2^-14 set to zero."""
    rounded = round_fp16(array)
    return np.where(np.abs(rounded) > BELOW_MIN_NORMAL, rounded, np.float32(0)).astype(np.float32)


def round_significand(array: np.ndarray) -> np.ndarray:
    """fp32 rounded to fp16's 11-bit significand with fp32's range (no overflow, no underflow): Veltkamp's split in
    float32 arithmetic, the same three operations the `range=none` program runs."""
    x = np.asarray(array, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        c = np.float32(SPLIT) * x
        return c - (c - x)


def fp16_model(
    model: Model,
    ops: frozenset[str] | None = None,
    skip: frozenset[str] = frozenset(),
    weights: bool = True,
    bounded: bool = True,
    flush: bool = False,
) -> tuple[Model, int]:
    """A copy of `model` whose float32 activations (and weights) are rounded to fp16; also the number of rounded
    activation tensors. `bounded=False`: rounded to fp16's significand alone, with fp32's range (`range=none`);
    `flush`: values below 2^-14 then become zero (`subnormals=flush`, a `hard_shrink` after the casts).

    Producers write `<name>@fp32`, then `cast` -> `<name>@fp16` -> `cast` -> `<name>`, so consumers and fetch ops
    read the same names as before. Feeds are rounded in place (`x` -> `x@fp16` -> `x`): the predictor's input
    names come from the feed ops and must stay unchanged. Unbounded, the two casts are Veltkamp's split instead:
    `scale` x 8193 -> `<name>@split`, `elementwise_sub` -> `<name>@low`, `elementwise_sub` -> `<name>`.
    """
    pb = framework_pb2()
    program = pb.ProgramDesc()
    program.CopyFrom(model.program)
    block = program.blocks[0]
    declared = {v.name: v for v in model.block.vars}
    taken = set(declared)
    full_of: dict[str, str] = {}  # name -> `<name>@fp32`, reused when a var is written twice
    half_of: dict[str, str] = {}  # name -> `<name>@fp16`
    split_of: dict[str, str] = {}  # name -> `<name>@split` (8193 x, unbounded rounding)
    low_of: dict[str, str] = {}  # name -> `<name>@low` (8193 x - x)
    kept_of: dict[str, str] = {}  # name -> `<name>@subnormal` (rounded, before flushing)

    def wanted(op_type: str) -> bool:
        return (ops is None or op_type in ops) and op_type not in skip

    def roundable(name: str) -> bool:
        var = model.vars.get(name)
        return var is not None and not var.persistable and var.kind == 7 and var.dtype == "float32"

    def alias(table: dict[str, str], name: str, suffix: str, dtype: int) -> str:
        if name not in table:
            new = f"{name}@{suffix}"
            while new in taken:
                new += "_"
            taken.add(new)
            vd = block.vars.add()
            vd.CopyFrom(declared[name])
            vd.name = new
            vd.need_check_feed = False
            vd.type.dense_tensor.tensor.data_type = dtype
            table[name] = new
        return table[name]

    def cast(src: str, dst: str, in_dtype: int, out_dtype: int) -> Any:
        od = pb.OpDesc()
        od.type = "cast"
        od.inputs.add(parameter="X", arguments=[src])
        od.outputs.add(parameter="Out", arguments=[dst])
        od.attrs.add(name="in_dtype", type=0, i=in_dtype)
        od.attrs.add(name="out_dtype", type=0, i=out_dtype)
        return od

    def subtract(x: str, y: str, dst: str) -> Any:
        od = pb.OpDesc()
        od.type = "elementwise_sub"
        od.inputs.add(parameter="X", arguments=[x])
        od.inputs.add(parameter="Y", arguments=[y])
        od.outputs.add(parameter="Out", arguments=[dst])
        od.attrs.add(name="axis", type=0, i=-1)
        return od

    def rounding(src: str, dst: str) -> list[Any]:
        """The ops that write `dst` = `src` rounded (`src` may equal `dst`: every read comes before the write)."""
        if bounded and flush:
            half, kept = alias(half_of, dst, "fp16", FP16), alias(kept_of, dst, "subnormal", FP32)
            shrink = pb.OpDesc()
            shrink.type = "hard_shrink"
            shrink.inputs.add(parameter="X", arguments=[kept])
            shrink.outputs.add(parameter="Out", arguments=[dst])
            shrink.attrs.add(name="threshold", type=1, f=BELOW_MIN_NORMAL)
            return [cast(src, half, FP32, FP16), cast(half, kept, FP16, FP32), shrink]
        if bounded:
            half = alias(half_of, dst, "fp16", FP16)
            return [cast(src, half, FP32, FP16), cast(half, dst, FP16, FP32)]
        split, low = alias(split_of, dst, "split", FP32), alias(low_of, dst, "low", FP32)
        scale = pb.OpDesc()
        scale.type = "scale"
        scale.inputs.add(parameter="X", arguments=[src])
        scale.outputs.add(parameter="Out", arguments=[split])
        scale.attrs.add(name="scale", type=1, f=SPLIT)
        scale.attrs.add(name="bias", type=1, f=0.0)
        scale.attrs.add(name="bias_after_scale", type=6, b=True)
        return [scale, subtract(split, src, low), subtract(split, low, dst)]

    by_desc = {op.desc_index: op for op in model.ops}
    new_ops: list[Any] = []
    count = 0
    for desc_index, src in enumerate(model.block.ops):
        od = pb.OpDesc()
        od.CopyFrom(src)
        new_ops.append(od)
        if src.type == "feed":
            if wanted("feed"):
                for name in (a for v in src.outputs for a in v.arguments if roundable(a)):
                    new_ops += rounding(name, name)
                    count += 1
            continue
        op = by_desc.get(desc_index)
        # Control-flow ops write their outputs inside sub-blocks too; renaming them would break the sub-block.
        if op is None or op.sub_blocks or not wanted(op.type):
            continue
        for name in op.data_outputs():
            if not roundable(name):
                continue
            full = alias(full_of, name, "fp32", FP32)
            for slot in od.outputs:
                slot.arguments[:] = [full if a == name else a for a in slot.arguments]
            new_ops += rounding(full, name)
            count += 1
    del block.ops[:]
    block.ops.extend(new_ops)
    rounded = round_significand if not bounded else flush_subnormals if flush else round_fp16
    params = {name: rounded(arr) if weights and arr.dtype == np.float32 else arr for name, arr in model.params.items()}
    return Model(program, params, source=None), count


class Fp16Engine(PaddleEngine):
    half_precision = True
    declared_precision = "fp16"
    name = "fp16"
    summary = (
        "OpenCL-fp16 emulation on the host: activations and weights rounded to half between ops, "
        "fp32 arithmetic (Paddle Inference CPU, exact mode)"
    )
    option_help = {
        "ops": "round only the outputs of these op types, '+'-separated (feed = model inputs; all | none)",
        "skip": "round everything except the outputs of these op types, '+'-separated",
        "weights": "round | keep: round float32 weights to fp16 (default round)",
        "threads": "CPU math threads (default 1)",
        "range": "fp16 | none: fp16's range (overflow to inf, subnormals; default) or none: significand rounding "
        "alone with fp32's range (the precision model's expectation)",
        "subnormals": "keep | flush: keep fp16 subnormals (default) or flush them to zero, as fast-math GPU kernels do",
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        # Validate everything here, in the parent, so a bad spec is an input error rather than a crash verdict.
        label = str(spec)
        self.only = _op_set(label, "ops", self.option("ops"))
        skip = self.option("skip")
        if skip == "all":
            raise InputError(f"engine {label}: skip=all is ambiguous; use ops=none to round no activation")
        self.skip = _op_set(label, "skip", skip) or frozenset()
        self.round_weights = self.option("weights", "round", ("round", "keep")) == "round"
        self.bounded = self.option("range", "fp16", ("fp16", "none")) == "fp16"
        self.flush = self.option("subnormals", "keep", ("keep", "flush")) == "flush"
        if self.flush and not self.bounded:
            raise InputError(f"engine {label}: subnormals=flush needs fp16's range (range=fp16)")

    def version(self) -> str:
        return f"{super().version()}, fp16 rewrite {REWRITE_VERSION}"

    def load(self, model_dir: Path, work_dir: Path) -> Any:
        prepared = work_dir / "fp16-model"
        if not (prepared / PARAMS_FILE).exists():  # converted once per (model, spec); save_model is atomic
            rewritten, count = fp16_model(
                load_model(model_dir), self.only, self.skip, self.round_weights, bounded=self.bounded, flush=self.flush
            )
            save_model(rewritten, prepared)
            what = "rounding" if self.bounded else "rounding (significand only, fp32 range)"
            weights = "rounded" if self.round_weights else "kept"
            print(f"fp16: {what} {count} activation tensors, weights {weights}", file=sys.stderr)
        return super().load(prepared, work_dir)
