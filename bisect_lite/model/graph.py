"""A read-only view of a legacy Paddle inference program (block 0) plus its parameters.

Op indices count the ops of block 0 in execution order, without the `feed` and `fetch` ops: index 0 is the
first op that computes something. Ops that own sub-blocks (control flow) are single ops here; everything their
sub-blocks read from block 0 counts as their input, so a cut never lands inside them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.model.proto import DENSE_TENSOR, DTYPE_NAMES, FEED_MINIBATCH, FETCH_LIST, RAW, framework_pb2

# Outputs that hold no comparable inference data: shape carriers with no memory, training statistics.
NON_DATA_SLOTS = {"XShape"}
NON_DATA_SLOTS_BY_OP = {
    "batch_norm": {"MeanOut", "VarianceOut", "SavedMean", "SavedVariance", "ReserveSpace"},
    "sync_batch_norm": {"MeanOut", "VarianceOut", "SavedMean", "SavedVariance", "ReserveSpace"},
    "dropout": {"Mask"},
}


def decode_attr(attr: Any) -> Any:
    """Turn an OpDesc.Attr into a plain Python value (by its declared type)."""
    t = attr.type
    if t == 0:
        return attr.i
    if t == 1:
        return attr.f
    if t == 2:
        return attr.s
    if t == 3:
        return list(attr.ints)
    if t == 4:
        return list(attr.floats)
    if t == 5:
        return list(attr.strings)
    if t == 6:
        return attr.b
    if t == 7:
        return list(attr.bools)
    if t == 8:
        return {"block": attr.block_idx}
    if t == 9:
        return attr.l
    if t == 10:
        return {"blocks": list(attr.blocks_idx)}
    if t == 11:
        return list(attr.longs)
    if t == 12:
        return list(attr.float64s)
    if t == 13:
        return {"var": attr.var_name}
    if t == 14:
        return {"vars": list(attr.vars_name)}
    if t == 15:
        return attr.float64
    if t in (16, 17):
        scalars = [attr.scalar] if t == 16 else list(attr.scalars)
        values = [
            {1: s.b, 2: s.i, 3: s.r}.get(s.type, complex(s.c.r, s.c.i))
            for s in scalars  # type: ignore[arg-type]
        ]
        return values[0] if t == 16 else values
    return None


@dataclass(frozen=True)
class Var:
    name: str
    shape: tuple[int, ...] | None  # None for non-tensor vars
    dtype: str | None
    persistable: bool
    kind: int  # VarType.Type of the var itself (DENSE_TENSOR = 7, ...)

    @property
    def declared_count(self) -> int | None:
        """Elements the declared shape holds; None when it is not static (no shape, or a -1 dim)."""
        if self.shape is None or any(d < 0 for d in self.shape):
            return None
        return math.prod(self.shape)


@dataclass(frozen=True)
class Op:
    index: int  # position among the computing ops of block 0
    desc_index: int  # position in block 0 including feed/fetch ops
    type: str
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]
    sub_blocks: tuple[int, ...] = ()
    # Everything read/written from block 0, including through sub-blocks (control flow).
    reads: frozenset[str] = field(default_factory=frozenset)
    writes: frozenset[str] = field(default_factory=frozenset)

    def data_outputs(self) -> list[str]:
        """Output tensors that carry comparable data (no XShape, no training statistics)."""
        skip = NON_DATA_SLOTS | NON_DATA_SLOTS_BY_OP.get(self.type, set())
        names: list[str] = []
        for slot, args in self.outputs.items():
            if slot not in skip:
                names.extend(a for a in args if a not in names)
        return names


class Model:
    """A legacy inference program with its parameters. Treat as immutable: transformations build new models."""

    def __init__(self, program: Any, params: dict[str, np.ndarray], source: Path | None = None) -> None:
        self.program = program
        self.params = params
        self.source = source

    # ---- construction helpers -------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, program_bytes: bytes, params: dict[str, np.ndarray], source: Path | None = None) -> Model:
        program = framework_pb2().ProgramDesc()
        program.ParseFromString(program_bytes)
        return cls(program, params, source)

    def program_bytes(self) -> bytes:
        return self.program.SerializeToString(deterministic=True)

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of program and params: the key of every cache entry derived from this model."""
        h = hashlib.sha256(self.program_bytes())
        for name in sorted(self.params):
            arr = self.params[name]
            h.update(name.encode() + str(arr.dtype).encode() + str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:20]

    # ---- graph view -----------------------------------------------------------------------------------
    @property
    def block(self) -> Any:
        return self.program.blocks[0]

    @cached_property
    def vars(self) -> dict[str, Var]:
        out: dict[str, Var] = {}
        for v in self.block.vars:
            shape = dtype = None
            if v.type.type == 7 or v.type.HasField("dense_tensor"):
                tensor = v.type.dense_tensor.tensor
                shape = tuple(int(d) for d in tensor.dims)
                dtype = DTYPE_NAMES.get(tensor.data_type, f"code{tensor.data_type}")
            out[v.name] = Var(v.name, shape, dtype, bool(v.persistable), int(v.type.type))
        return out

    def _block_refs(self, block_idx: int, seen: set[int]) -> tuple[set[str], set[str], set[int]]:
        """Var names read and written by a sub-block (recursively) and the block indices involved."""
        reads: set[str] = set()
        writes: set[str] = set()
        seen.add(block_idx)
        for op in self.program.blocks[block_idx].ops:
            for var in op.inputs:
                reads.update(var.arguments)
            for var in op.outputs:
                writes.update(var.arguments)
            for attr in op.attrs:
                for idx in _sub_block_ids(attr):
                    if idx not in seen:
                        r, w, _ = self._block_refs(idx, seen)
                        reads |= r
                        writes |= w
        return reads, writes, seen

    @cached_property
    def ops(self) -> list[Op]:
        ops: list[Op] = []
        names0 = {v.name for v in self.block.vars}
        for desc_index, od in enumerate(self.block.ops):
            if od.type in ("feed", "fetch"):
                continue
            inputs = {v.parameter: list(v.arguments) for v in od.inputs}
            outputs = {v.parameter: list(v.arguments) for v in od.outputs}
            reads = {a for args in inputs.values() for a in args}
            writes = {a for args in outputs.values() for a in args}
            subs: list[int] = []
            for attr in od.attrs:
                subs.extend(_sub_block_ids(attr))
            if subs:
                seen: set[int] = set()
                for idx in subs:
                    r, w, _ = self._block_refs(idx, seen)
                    # Only names that live in block 0 connect the op to the rest of the graph.
                    reads |= r & names0
                    writes |= w & names0
                # A branch that may not run leaves its outputs' earlier values in place: they are inputs too.
                reads |= {w for w in writes if w in self.vars and self.vars[w].kind == DENSE_TENSOR}
            ops.append(
                Op(len(ops), desc_index, od.type, inputs, outputs, tuple(subs), frozenset(reads), frozenset(writes))
            )
        return ops

    def op_attrs(self, index: int) -> dict[str, Any]:
        """Decoded attributes of op `index`, without the bulky `op_callstack`."""
        od = self.block.ops[self.ops[index].desc_index]
        return {a.name: decode_attr(a) for a in od.attrs if a.name != "op_callstack"}

    def _io_ops(self, kind: str) -> list[tuple[int, str]]:
        found = []
        for od in self.block.ops:
            if od.type != kind:
                continue
            col = next((a.i for a in od.attrs if a.name == "col"), 0)
            slot = od.outputs if kind == "feed" else od.inputs
            name = next(iter(a for v in slot for a in v.arguments), None)
            if name is not None:
                found.append((col, name))
        return sorted(found)

    @cached_property
    def feeds(self) -> list[str]:
        return [name for _, name in self._io_ops("feed")]

    @cached_property
    def fetches(self) -> list[str]:
        return [name for _, name in self._io_ops("fetch")]

    @cached_property
    def producers(self) -> dict[str, int]:
        """Last op (index) writing each non-persistable var before it is read at the end of the program."""
        out: dict[str, int] = {}
        for op in self.ops:
            for name in op.writes:
                if not self.is_param(name):
                    out[name] = op.index
        return out

    @cached_property
    def consumers(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for op in self.ops:
            for name in sorted(op.reads):
                out.setdefault(name, []).append(op.index)
        return out

    @cached_property
    def last_use(self) -> dict[str, int]:
        """The last op index reading each var (fetched vars count as read after the last op)."""
        out = {name: idx[-1] for name, idx in self.consumers.items()}
        for name in self.fetches:
            out[name] = len(self.ops)
        return out

    def is_param(self, name: str) -> bool:
        var = self.vars.get(name)
        return bool(var and var.persistable)

    def param_names(self) -> list[str]:
        """Persistable vars of block 0 that belong in the params file, in file order."""
        names = [
            v.name for v in self.block.vars if v.persistable and v.type.type not in (FEED_MINIBATCH, FETCH_LIST, RAW)
        ]
        return sorted(names, key=lambda n: n.encode())

    def data_tensors(self) -> Iterator[tuple[int, str]]:
        """(producer index, name) of every comparable intermediate tensor, in execution order."""
        seen: set[str] = set()
        for op in self.ops:
            for name in op.data_outputs():
                if name not in seen and not self.is_param(name) and self.vars.get(name, _NO_VAR).kind == 7:
                    seen.add(name)
                    yield op.index, name

    def params_nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.params.values())

    def __repr__(self) -> str:
        return f"Model({len(self.ops)} ops, feeds={self.feeds}, fetches={self.fetches})"


_NO_VAR = Var("", None, None, False, -1)


def _sub_block_ids(attr: Any) -> list[int]:
    if attr.type == 8:
        return [attr.block_idx]
    if attr.type == 10:
        return list(attr.blocks_idx)
    return []
