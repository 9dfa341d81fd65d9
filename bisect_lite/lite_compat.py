"""Known schema drift between Paddle 3.x programs and Paddle-Lite 2.13, and a copy of a model that Paddle-Lite loads.

Paddle 3.x writes some ops without slots or attributes that Paddle-Lite 2.13's op definitions still read. Both
cases below were measured with real opt 2.13-rc on programs written by Paddle 3.3.1 (models exported by Paddle
2.6, e.g. PP-OCRv5, have neither):
- `flatten_contiguous_range` without its `XShape` output: opt segfaults in `FlattenContiguousRangeOp::InferType`
  (whenever the flatten is not fused into an fc);
- `relu6` without its `threshold` attribute: opt aborts with `Check failed: ... No attributes called threshold
  found for relu6`.
The repair adds exactly what is missing with Paddle's own meaning (XShape = [0] + the input's shape, an output
nothing reads; threshold = 6.0, Paddle's relu6), so the program computes the same values. `lite_compat` writes the
repaired copy elsewhere (never into the model's directory) and converts it with real opt for every target the
provisioned Paddle-Lite converts, so the user gets a copy that is known to load.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bisect_lite.errors import EngineUnavailable
from bisect_lite.model import Model

ATTR_FLOAT = 1  # framework.proto AttrType FLOAT
RELU6_THRESHOLD = 6.0  # Paddle's relu6


@dataclass(frozen=True)
class Drift:
    op_index: int
    op_type: str
    missing: str  # "output XShape" | "attribute threshold"
    effect: str  # what Paddle-Lite 2.13 does without it

    def describe(self) -> str:
        return f"op {self.op_index} {self.op_type} has no {self.missing} ({self.effect})"


def op_drift(op_type: str, outputs: dict[str, Any], attrs: dict[str, Any]) -> tuple[str, str] | None:
    """(what is missing, what Paddle-Lite does without it) for one op, or None."""
    if op_type == "flatten_contiguous_range" and not outputs.get("XShape"):
        return (
            "output XShape",
            "Paddle-Lite 2.13 reads it in FlattenContiguousRangeOp::InferType and segfaults while optimising",
        )
    if op_type == "relu6" and "threshold" not in attrs:
        return ("attribute threshold", "Paddle-Lite 2.13 aborts: No attributes called threshold found for relu6")
    return None


def find_drift(model: Model) -> list[Drift]:
    found = []
    for op in model.ops:
        hit = op_drift(op.type, op.outputs, model.op_attrs(op.index))
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
    for item in drift:
        op = model.ops[item.op_index]
        desc = block.ops[op.desc_index]
        if item.missing == "output XShape":
            source = next(v for v in block.vars if v.name == op.inputs["X"][0])
            name = _fresh(f"{op.outputs['Out'][0]}.xshape", names)
            var = block.vars.add()
            var.name = name
            var.type.type = source.type.type
            var.type.dense_tensor.tensor.data_type = source.type.dense_tensor.tensor.data_type
            var.type.dense_tensor.tensor.dims.extend([0, *source.type.dense_tensor.tensor.dims])
            desc.outputs.add(parameter="XShape", arguments=[name])
        else:
            desc.attrs.add(name="threshold", type=ATTR_FLOAT, f=RELU6_THRESHOLD)
    return Model(program, model.params, source=None), drift


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
