"""A JSON-ready description of a model: the op table, op-type histogram, feeds, fetches and params size."""

from __future__ import annotations

from collections import Counter
from typing import Any

from bisect_lite.model.graph import Model


def tensor_info(model: Model, name: str) -> dict[str, Any]:
    var = model.vars.get(name)
    return {
        "name": name,
        "shape": list(var.shape) if var and var.shape is not None else None,
        "dtype": var.dtype if var else None,
    }


def describe(model: Model) -> dict[str, Any]:
    ops = []
    for op in model.ops:
        ops.append(
            {
                "index": op.index,
                "type": op.type,
                "inputs": {slot: [tensor_info(model, a) for a in args] for slot, args in op.inputs.items() if args},
                "outputs": {slot: [tensor_info(model, a) for a in args] for slot, args in op.outputs.items() if args},
                "sub_blocks": list(op.sub_blocks),
            }
        )
    return {
        "source": str(model.source) if model.source else None,
        "ops": ops,
        "op_types": dict(Counter(op.type for op in model.ops).most_common()),
        "feeds": [tensor_info(model, n) for n in model.feeds],
        "fetches": [tensor_info(model, n) for n in model.fetches],
        "params": {"count": len(model.params), "bytes": model.params_nbytes()},
        "blocks": len(model.program.blocks),
    }


def format_tensor(info: dict[str, Any]) -> str:
    shape = info["shape"]
    dims = "x".join("?" if d < 0 else str(d) for d in shape) if shape is not None else "-"
    return f"{info['name']}[{dims}]"


def describe_target(original: Model, optimized: Model, engine: str) -> dict[str, Any]:
    """What a target's optimiser made of `original`: its optimised program in order (kernels with their place,
    precision and layout, glue ops marked) and the fused groups as lists of original op indices."""
    from bisect_lite.model.fusion import GLUE_OPS, base_name, fusion_groups, kernel_of, optimized_ops

    groups = fusion_groups(original, optimized)
    group_by_kernel = {g.optimized.index: g for g in groups if g.optimized is not None}
    computing = iter(optimized_ops(optimized))
    program = []
    for op in optimized.ops:
        if op.type in ("feed", "fetch"):
            continue
        kernel = kernel_of(optimized, op.desc_index)
        row: dict[str, Any] = {
            "type": op.type,
            "glue": op.type in GLUE_OPS,
            "kernel": kernel.alias if kernel else None,
            "place": kernel.place if kernel else None,
            "precision": kernel.precision if kernel else None,
            "layout": kernel.layout if kernel else None,
            "inputs": [a for slot, args in op.inputs.items() for a in args if not optimized.is_param(a)],
            "outputs": [a for slot, args in op.outputs.items() if slot != "XShape" for a in args],
        }
        if row["glue"]:
            row["of"] = base_name(row["outputs"][0]) if row["outputs"] else None
        else:
            group = group_by_kernel.get(next(computing).index)
            row["ops"] = group.ops if group else []
        program.append(row)
    ordered = sorted(groups, key=lambda g: g.ops[0])
    return {
        "engine": engine,
        "groups": [g.ops for g in ordered],
        "fused_groups": [
            {
                "ops": g.ops,
                "types": [original.ops[i].type for i in g.ops],
                "into": g.optimized.type if g.optimized else None,
                "place": g.optimized.place if g.optimized else None,
                "hidden_tensors": g.internal,
            }
            for g in ordered
            if len(g.ops) > 1
        ],
        "optimized_ops": program,
        "kernels": sum(not r["glue"] for r in program),
        "glue_ops": sum(r["glue"] for r in program),
        "places": dict(Counter(r["place"] for r in program if not r["glue"]).most_common()),
    }
