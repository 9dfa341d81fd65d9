"""Generate a long chain of cheap ops (default 5,000) as a legacy-format Paddle model, for cost benchmarks.

Each block is scale -> elementwise_add (a parameter) -> tanh -> scale, on a [1, 8, 16, 16] float32 tensor (or
--shape): the values stay in a sane range at any depth, every op has one input and one output (the frontier of
every cut is one tensor), and the whole model's activations are ~40 MB. Deterministic for a given --ops and --seed.
Usage: python bench/gen_chain.py OUT_DIR [--ops 5000] [--seed 0] [--shape C,H,W]
(writes OUT_DIR/model.pdmodel, model.pdiparams and inputs.npz)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build(out: Path, ops: int, seed: int, shape: tuple[int, int, int] = (8, 16, 16)) -> None:
    os.environ["FLAGS_enable_pir_api"] = "0"  # noqa: SIM112 (paddle flag names are case-sensitive)
    import numpy as np
    import paddle

    paddle.enable_static()
    rng = np.random.default_rng(seed)
    program = paddle.static.Program()
    block = program.global_block()
    shape = [1, *shape]
    # Functional APIs raise in legacy static mode (paddle 3.x): ops are appended directly, as fixtures/generate.py
    with paddle.static.program_guard(program, paddle.static.Program()):
        x = paddle.static.data("x", shape, "float32")
    scope, place = paddle.static.Scope(), paddle.CPUPlace()
    h = x

    def append(op_type: str, inputs: dict, attrs: dict, index: int):
        y = block.create_var(name=f"{op_type}_{index}.tmp_0", dtype="float32", shape=shape)
        block.append_op(type=op_type, inputs=inputs, outputs={"Out": [y]}, attrs=attrs)
        return y

    for i in range(ops // 4):
        bias = block.create_parameter(name=f"bias_{i}", shape=shape[1:], dtype="float32")
        scope.var(bias.name).get_tensor().set((0.1 * rng.standard_normal(shape[1:])).astype("float32"), place)
        h = append("scale", {"X": [h]}, {"scale": 1.3, "bias": 0.0, "bias_after_scale": True}, 2 * i)
        h = append("elementwise_add", {"X": [h], "Y": [bias]}, {"axis": 1}, i)
        h = append("tanh", {"X": [h]}, {}, i)
        h = append("scale", {"X": [h]}, {"scale": 1.0, "bias": 0.05, "bias_after_scale": True}, 2 * i + 1)
    exe = paddle.static.Executor(place)
    out.mkdir(parents=True, exist_ok=True)
    with paddle.static.scope_guard(scope):
        paddle.static.save_inference_model(str(out / "model"), [x], [h], exe, program=program)
    np.savez(out / "inputs.npz", x=rng.standard_normal(shape).astype("float32"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", default="8,16,16", help="C,H,W of every tensor (batch 1)")
    args = parser.parse_args()
    c, h, w = (int(d) for d in args.shape.split(","))
    build(args.out, args.ops, args.seed, (c, h, w))
    print(f"wrote {args.out} ({args.ops} ops)", file=sys.stderr)


if __name__ == "__main__":
    main()
