"""Access to Paddle's legacy ProgramDesc protobuf without importing paddle.

The generated module ships inside the paddle wheel; loading it by path costs ~0.05 s instead of the ~1 s
of `import paddle`, which keeps `paddle_lite_opt` fast.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

_PB: ModuleType | None = None


def pb() -> ModuleType:
    """The framework_pb2 module (paddle's own if already imported, else loaded by path)."""
    global _PB
    if _PB is not None:
        return _PB
    mod = sys.modules.get("paddle.base.proto.framework_pb2")
    if mod is None:
        spec = importlib.util.find_spec("paddle")  # does not execute paddle/__init__.py
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("the paddle wheel is needed for its framework.proto (paddle.base.proto)")
        path = os.path.join(next(iter(spec.submodule_search_locations)), "base", "proto", "framework_pb2.py")
        fspec = importlib.util.spec_from_file_location("_paddlelite_sim_framework_pb2", path)
        assert fspec is not None and fspec.loader is not None
        mod = importlib.util.module_from_spec(fspec)
        fspec.loader.exec_module(mod)
    _PB = mod
    return mod


def tensor_field() -> str:
    # Paddle 3.3 renamed lod_tensor -> dense_tensor (same field number), older wheels use lod_tensor.
    names = {f.name for f in pb().VarType.DESCRIPTOR.fields}
    return "dense_tensor" if "dense_tensor" in names else "lod_tensor"


def parse_program(data: bytes) -> Any:
    prog = pb().ProgramDesc()
    prog.ParseFromString(data)
    return prog


# ---------------------------------------------------------------- op helpers


def op_inputs(op: Any, slot: str) -> list[str]:
    for v in op.inputs:
        if v.parameter == slot:
            return list(v.arguments)
    return []


def op_outputs(op: Any, slot: str) -> list[str]:
    for v in op.outputs:
        if v.parameter == slot:
            return list(v.arguments)
    return []


def all_inputs(op: Any) -> list[tuple[str, str]]:
    return [(v.parameter, a) for v in op.inputs for a in v.arguments]


def all_outputs(op: Any) -> list[tuple[str, str]]:
    return [(v.parameter, a) for v in op.outputs for a in v.arguments]


def _set_slot(container: Any, slot: str, args: list[str]) -> None:
    for v in container:
        if v.parameter == slot:
            del v.arguments[:]
            v.arguments.extend(args)
            return
    v = container.add()
    v.parameter = slot
    v.arguments.extend(args)


def set_input(op: Any, slot: str, args: list[str]) -> None:
    _set_slot(op.inputs, slot, args)


def set_output(op: Any, slot: str, args: list[str]) -> None:
    _set_slot(op.outputs, slot, args)


def rename_input(op: Any, old: str, new: str) -> None:
    for v in op.inputs:
        args = [new if a == old else a for a in v.arguments]
        del v.arguments[:]
        v.arguments.extend(args)


def clear_slots(op: Any) -> None:
    del op.inputs[:]
    del op.outputs[:]


_SCALAR_FIELD = {0: "i", 1: "f", 2: "s", 6: "b", 8: "block_idx", 9: "l", 13: "var_name", 15: "float64"}
_LIST_FIELD = {
    3: "ints",
    4: "floats",
    5: "strings",
    7: "bools",
    10: "blocks_idx",
    11: "longs",
    12: "float64s",
    14: "vars_name",
}


def get_attr(op: Any, name: str, default: Any = None) -> Any:
    for a in op.attrs:
        if a.name == name:
            if a.type in _SCALAR_FIELD:
                return getattr(a, _SCALAR_FIELD[a.type])
            if a.type in _LIST_FIELD:
                return list(getattr(a, _LIST_FIELD[a.type]))
            return default
    return default


def has_attr(op: Any, name: str) -> bool:
    return any(a.name == name for a in op.attrs)


def set_attr(op: Any, name: str, value: Any, kind: str | None = None) -> None:
    """Set an attribute; kind is an AttrType name, guessed from the Python value when omitted."""
    for i, a in enumerate(op.attrs):
        if a.name == name:
            del op.attrs[i]
            break
    if kind is None:
        if isinstance(value, bool):
            kind = "BOOLEAN"
        elif isinstance(value, int):
            kind = "INT"
        elif isinstance(value, float):
            kind = "FLOAT"
        elif isinstance(value, str):
            kind = "STRING"
        elif isinstance(value, (list, tuple)) and all(isinstance(x, bool) for x in value) and value:
            kind = "BOOLEANS"
        elif isinstance(value, (list, tuple)) and all(isinstance(x, int) for x in value):
            kind = "INTS"
        elif isinstance(value, (list, tuple)) and all(isinstance(x, float) for x in value):
            kind = "FLOATS"
        elif isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
            kind = "STRINGS"
        else:
            raise TypeError(f"cannot infer the attribute type of {name}={value!r}")
    code = pb().AttrType.Value(kind)
    a = op.attrs.add()
    a.name = name
    a.type = code
    if code in _SCALAR_FIELD:
        setattr(a, _SCALAR_FIELD[code], value)
    elif code in _LIST_FIELD:
        getattr(a, _LIST_FIELD[code]).extend(value)
    else:
        raise TypeError(f"unsupported attribute type {kind}")


def remove_attr(op: Any, name: str) -> None:
    for i, a in enumerate(op.attrs):
        if a.name == name:
            del op.attrs[i]
            return


# ---------------------------------------------------------------- var helpers


def var_map(block: Any) -> dict[str, Any]:
    return {v.name: v for v in block.vars}


def var_dtype(var: Any) -> int | None:
    if var is None or var.type.type != pb().VarType.DENSE_TENSOR:
        return None
    return getattr(var.type, tensor_field()).tensor.data_type


def var_dims(var: Any) -> list[int] | None:
    if var is None or var.type.type != pb().VarType.DENSE_TENSOR:
        return None
    return list(getattr(var.type, tensor_field()).tensor.dims)


def is_param_var(var: Any) -> bool:
    """Persistable data vars: what combined params files hold (Paddle and Paddle-Lite agree)."""
    t = pb().VarType
    return bool(var.persistable) and var.type.type not in (t.FEED_MINIBATCH, t.FETCH_LIST, t.RAW)


def add_var_like(block: Any, src: Any, name: str, dtype: int | None = None) -> Any:
    v = block.vars.add()
    v.CopyFrom(src)
    v.name = name
    v.persistable = False
    if dtype is not None:
        getattr(v.type, tensor_field()).tensor.data_type = dtype
    return v
