"""Known schema drift between Paddle 3.x programs and Paddle-Lite 2.13, and a copy of a model that Paddle-Lite loads.

Paddle 3.x writes some ops without slots or attributes that Paddle-Lite 2.13's op definitions still read. Each
rule below was measured with real opt 2.13-rc (x86) on a one-op program written by Paddle 3.3.1 (models exported
by Paddle 2.6, e.g. PP-OCRv5, have none of them):
- `flatten_contiguous_range` without its `XShape` output: opt segfaults in `FlattenContiguousRangeOp::InferType`
  (whenever the flatten is not fused into an fc);
- `relu6` without `threshold`, `swish` without `beta`: opt aborts (`No attributes called ... found`);
- `instance_norm` without `SavedMean`/`SavedVariance` outputs: opt aborts (`Check failed: is_dispensable ||
  is_have_output`);
- `layer_norm` without `Scale`/`Bias` inputs (`F.layer_norm` with no weight): opt segfaults.
The repair adds exactly what is missing with Paddle's own meaning (XShape = [0] + the input's shape and the saved
statistics: outputs nothing reads; threshold 6.0 and beta 1.0, Paddle's defaults; Scale 1 and Bias 0, what no
weight means), so the program computes the same values. `lite_compat` writes the repaired copy elsewhere (never
into the model's directory) and converts it with real opt for every target the provisioned Paddle-Lite converts,
so the user gets a copy that is known to load.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.errors import EngineUnavailable, InputError
from bisect_lite.model import Model

ATTR_FLOAT = 1  # framework.proto AttrType FLOAT
ABORT_ATTR = "Paddle-Lite 2.13 aborts while optimising: No attributes called {} found for {}"
# op type -> (attribute, Paddle's value when the attribute is absent)
MISSING_ATTRS = {"relu6": ("threshold", 6.0), "swish": ("beta", 1.0)}
# op type -> (output slots Paddle-Lite attaches, what it does without them)
MISSING_OUTPUTS = {
    "flatten_contiguous_range": (
        ("XShape",),
        "Paddle-Lite 2.13 reads it in FlattenContiguousRangeOp::InferType and segfaults while optimising",
    ),
    "instance_norm": (
        ("SavedMean", "SavedVariance"),
        "Paddle-Lite 2.13 aborts while optimising: Check failed: is_dispensable || is_have_output",
    ),
}
# op type -> (input slots Paddle-Lite reads, what it does without them)
MISSING_INPUTS = {"layer_norm": (("Scale", "Bias"), "Paddle-Lite 2.13 segfaults while optimising")}


@dataclass(frozen=True)
class Drift:
    op_index: int
    op_type: str
    missing: str  # e.g. "output XShape", "attribute threshold", "inputs Scale, Bias"
    effect: str  # what Paddle-Lite 2.13 does without it

    def describe(self) -> str:
        return f"op {self.op_index} {self.op_type} has no {self.missing} ({self.effect})"


def op_drift(
    op_type: str, outputs: dict[str, Any], attrs: dict[str, Any], inputs: dict[str, Any] | None = None
) -> tuple[str, str] | None:
    """(what is missing, what Paddle-Lite does without it) for one op, or None."""
    if op_type in MISSING_ATTRS and MISSING_ATTRS[op_type][0] not in attrs:
        name = MISSING_ATTRS[op_type][0]
        return (f"attribute {name}", ABORT_ATTR.format(name, op_type))
    if op_type in MISSING_OUTPUTS:
        slots, effect = MISSING_OUTPUTS[op_type]
        absent = [slot for slot in slots if not outputs.get(slot)]
        if absent:
            return (f"output{'s' if len(absent) > 1 else ''} {', '.join(absent)}", effect)
    if op_type in MISSING_INPUTS and inputs is not None:
        slots, effect = MISSING_INPUTS[op_type]
        absent = [slot for slot in slots if not inputs.get(slot)]
        if absent:
            return (f"input{'s' if len(absent) > 1 else ''} {', '.join(absent)}", effect)
    return None


def find_drift(model: Model) -> list[Drift]:
    found = []
    for op in model.ops:
        hit = op_drift(op.type, op.outputs, model.op_attrs(op.index), op.inputs)
        if hit:
            found.append(Drift(op.index, op.type, *hit))
    return found


def repaired(model: Model) -> tuple[Model, list[Drift]]:
    """A copy of `model` with every known drift repaired (the same model when there is none)."""
    from bisect_lite.model.proto import framework_pb2

    drift = find_drift(model)
    if not drift:
        return model, []
    program = framework_pb2().ProgramDesc()
    program.CopyFrom(model.program)
    block = program.blocks[0]
    names = {v.name for v in block.vars}
    params = dict(model.params)

    def add_var(name: str, like: Any, dims: list[int], persistable: bool = False) -> str:
        fresh = _fresh(name, names)
        var = block.vars.add()
        var.name, var.persistable = fresh, persistable
        var.type.type = like.type.type
        var.type.dense_tensor.tensor.data_type = like.type.dense_tensor.tensor.data_type
        var.type.dense_tensor.tensor.dims.extend(dims)
        return fresh

    for item in drift:
        op = model.ops[item.op_index]
        desc = block.ops[op.desc_index]
        x = next(v for v in block.vars if v.name == op.inputs["X"][0])
        x_dims = list(x.type.dense_tensor.tensor.dims)
        if op.type in MISSING_ATTRS:
            name, value = MISSING_ATTRS[op.type]
            desc.attrs.add(name=name, type=ATTR_FLOAT, f=value)
        elif op.type == "flatten_contiguous_range":
            desc.outputs.add(parameter="XShape", arguments=[add_var(f"{op.outputs['Out'][0]}.xshape", x, [0, *x_dims])])
        elif op.type == "instance_norm":
            rows = x_dims[0] * x_dims[1] if len(x_dims) > 1 and min(x_dims[:2]) > 0 else -1
            for slot in ("SavedMean", "SavedVariance"):
                if not op.outputs.get(slot):
                    name = add_var(f"{op.outputs['Y'][0]}.{slot.lower()}", x, [rows])
                    _set_slot(desc.outputs, slot, name)
        elif op.type == "layer_norm":
            axis = int(model.op_attrs(op.index).get("begin_norm_axis", 1))
            normalised = x_dims[axis:]
            if not normalised or min(normalised) <= 0:
                raise InputError(
                    f"op {op.index} layer_norm has no Scale/Bias and normalises dynamic dims {normalised}: "
                    "cannot add them; export the model with a layer_norm weight"
                )
            size = math.prod(normalised)
            dtype = np.float32 if x.type.dense_tensor.tensor.data_type == 5 else np.float64
            for slot, value in (("Scale", 1.0), ("Bias", 0.0)):
                if not op.inputs.get(slot):
                    name = add_var(f"{op.outputs['Y'][0]}.{slot.lower()}", x, [size], persistable=True)
                    params[name] = np.full([size], value, dtype=dtype)
                    _set_slot(desc.inputs, slot, name)
    return Model(program, params, source=None), drift


def _set_slot(slots: Any, parameter: str, name: str) -> None:
    for slot in slots:
        if slot.parameter == parameter:
            slot.arguments.append(name)
            return
    slots.add(parameter=parameter, arguments=[name])


def _fresh(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def check_with_real_opt(model: Model) -> list[str]:
    """Convert `model` with the provisioned real opt for every target it converts; returns those targets.
    OptCrash (a RuntimeError) when opt still fails; EngineUnavailable without a provisioned Paddle-Lite."""
    from bisect_lite.engines.lite import LiteEngine
    from bisect_lite.engines.spec import parse_spec
    from bisect_lite.lite_env import find_lite_env
    from bisect_lite.model import write_model_files

    env = find_lite_env()
    if env is None:
        raise EngineUnavailable("checking the copy needs real Paddle-Lite: run `bisect-lite setup lite` first")
    with tempfile.TemporaryDirectory(prefix="bisect-lite-compat-") as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        write_model_files(model, model_dir)
        for target in env.converts:
            engine = LiteEngine(parse_spec(f"lite:{target}"))
            try:
                engine.convert(model_dir, Path(tmp) / target)
            finally:
                engine.close()
    return list(env.converts)
