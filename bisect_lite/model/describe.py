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
