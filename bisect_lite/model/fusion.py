"""What a target's optimiser did to a model: fused groups and kernel placement, read from its optimised program.

Paddle-Lite's opt (protobuf output) keeps the tensor names of what survives: a fused conv+bn+relu writes the
relu's output name, and the conv and bn outputs disappear. So the fused groups follow from names alone: an
original op whose outputs all vanished is fused with the ops that read them. Glue ops (`io_copy`, `layout`, ...)
are ignored, and the names they create (`x/target_trans`, `x/target_trans/layout_trans`) map back to `x`.
Placement comes from the `__@kernel_type_attr@__` record `op/alias/target/precision/layout` on each op.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bisect_lite.model.graph import Model

GLUE_OPS = frozenset({"io_copy", "io_copy_once", "layout", "layout_once", "calib", "calib_once", "feed", "fetch"})
GLUE_SUFFIXES = ("/target_trans", "/layout_trans", "/precision_trans")
KERNEL_ATTR = "__@kernel_type_attr@__"
# lite_api TargetType values (paddle_place.h)
TARGETS = {1: "host", 2: "x86", 3: "cuda", 4: "arm", 5: "opencl", 6: "any", 17: "metal", 18: "nnadapter"}


def base_name(name: str) -> str:
    """`x/target_trans/layout_trans` -> `x`: the original tensor behind a glue op's output."""
    changed = True
    while changed:
        changed = False
        for suffix in GLUE_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                changed = True
    return name


@dataclass(frozen=True)
class OptimizedOp:
    index: int  # position among the non-glue ops of the optimised program
    type: str
    inputs: tuple[str, ...]  # data inputs (original names, parameters excluded)
    outputs: tuple[str, ...]
    place: str | None  # "opencl", "arm", "host", ... from the kernel record


@dataclass
class FusedGroup:
    ops: list[int]  # original op indices, ascending
    optimized: OptimizedOp | None = None  # the optimised op that computes the group (None: folded away)
    internal: list[str] = field(default_factory=list)  # tensors the fusion made invisible

    @property
    def last(self) -> int:
        return self.ops[-1]


def optimized_ops(optimized: Model) -> list[OptimizedOp]:
    out: list[OptimizedOp] = []
    block = optimized.block
    for op in optimized.ops:
        if op.type in GLUE_OPS:
            continue
        attrs = {a.name: a for a in block.ops[op.desc_index].attrs}
        place = None
        if KERNEL_ATTR in attrs:
            parts = attrs[KERNEL_ATTR].s.split("/")
            if len(parts) >= 3 and parts[2].isdigit():
                place = TARGETS.get(int(parts[2]), parts[2])
        inputs = tuple(
            dict.fromkeys(base_name(a) for args in op.inputs.values() for a in args if not optimized.is_param(a))
        )
        outputs = tuple(
            dict.fromkeys(base_name(a) for args in op.outputs.values() for a in args if not optimized.is_param(a))
        )
        out.append(OptimizedOp(len(out), op.type, inputs, outputs, place))
    return out


def fusion_groups(original: Model, optimized: Model) -> list[FusedGroup]:
    """Partition the original ops into the groups the optimiser fused (singletons where nothing fused)."""
    opt_ops = optimized_ops(optimized)
    visible = {n for op in opt_ops for n in (*op.inputs, *op.outputs)} | set(original.feeds)
    parent = list(range(len(original.ops)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    internal: dict[int, list[str]] = {}
    for op in original.ops:
        outputs = [t for t in op.data_outputs() if not original.is_param(t)]
        if not outputs or any(t in visible for t in outputs):
            continue
        # Every output vanished: fused into its readers, or (nothing reads it) eliminated into its producer.
        internal.setdefault(op.index, []).extend(outputs)
        readers = {c for t in outputs for c in original.consumers.get(t, []) if c != op.index}
        if not readers:
            readers = {original.producers[n] for n in op.reads if n in original.producers}
        for r in readers:
            parent[find(op.index)] = find(r)
    members: dict[int, list[int]] = {}
    for op in original.ops:
        members.setdefault(find(op.index), []).append(op.index)
    producer_of = {t: op for op in opt_ops for t in op.outputs}
    groups = []
    for ops in members.values():
        outs = [t for i in ops for t in original.ops[i].data_outputs() if t in producer_of]
        hidden = [t for i in ops for t in internal.get(i, [])]
        groups.append(FusedGroup(sorted(ops), producer_of[outs[0]] if outs else None, hidden))
    return sorted(groups, key=lambda g: g.last)


def group_of(groups: list[FusedGroup], op_index: int) -> FusedGroup | None:
    return next((g for g in groups if op_index in g.ops), None)


def describe_group(model: Model, group: FusedGroup) -> str:
    types = "+".join(model.ops[i].type for i in group.ops)
    into = f" -> {group.optimized.type}" if group.optimized else ""
    where = f" on {group.optimized.place}" if group.optimized and group.optimized.place else ""
    return f"ops {group.ops[0]}..{group.last} ({types}{into}{where})"
