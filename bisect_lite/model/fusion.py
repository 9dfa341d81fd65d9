"""What a target's optimiser did to a model: fused groups and kernel placement, read from its optimised program.

Paddle-Lite's opt (protobuf output) keeps the tensor names of what survives: a fused conv+bn+relu writes the
relu's output name, and the conv and bn outputs disappear. So the fused groups follow from names alone: an
original op whose outputs all vanished is fused into the op that reads them (conv+bn+act, conv+conv,
flatten+matmul_v2+add -> fc, the OpenCL conv_elementwise_tree whose residual add becomes the conv's SecondInput,
sigmoid+mul -> swish), or, when nothing reads them, eliminated into the op that read its input (an identity
`scale` before a fetch). An op computed offline into a constant (reshape2 of a weight) joins the first op
that reads the constant. Glue ops (`io_copy`, `layout`, ...) belong to no group, and the names they create
(`x/target_trans`, `x/target_trans/layout_trans`) map back to `x`.

This holds only for a program saved WITHOUT memory reuse: opt's memory_optimize_pass (ARM, OpenCL) renames
tensors so that dead ones share storage, and groups derived from such names are invented. The Lite engine
converts its protobuf view with reuse off; a program whose names were reused is refused here.
Placement comes from the `__@kernel_type_attr@__` record `op/alias/target/precision/layout` on each op.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bisect_lite.model.graph import Model

GLUE_OPS = frozenset({"io_copy", "io_copy_once", "layout", "layout_once", "calib", "calib_once", "feed", "fetch"})
GLUE_SUFFIXES = ("/target_trans", "/layout_trans", "/precision_trans")
KERNEL_ATTR = "__@kernel_type_attr@__"
# lite_api TargetType, PrecisionType and DataLayoutType values (paddle_place.h)
TARGETS = {1: "host", 2: "x86", 3: "cuda", 4: "arm", 5: "opencl", 6: "any", 17: "metal", 18: "nnadapter"}
PRECISIONS = {1: "fp32", 2: "int8", 3: "int32", 4: "any", 5: "fp16", 6: "bool", 7: "int64", 8: "int16"}
LAYOUTS = {1: "NCHW", 2: "any", 3: "NHWC", 4: "ImageDefault", 5: "ImageFolder", 6: "ImageNW"}


class ReusedNames(RuntimeError):
    """The optimised program was saved with memory reuse: tensor names no longer say what was fused."""


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
class Kernel:
    """Paddle-Lite's kernel record `op/alias/target/precision/layout`, decoded."""

    alias: str
    place: str  # "opencl", "arm", "host", "x86", ...
    precision: str
    layout: str

    @classmethod
    def parse(cls, record: str) -> Kernel | None:
        parts = record.split("/")
        if len(parts) < 5 or not all(p.isdigit() for p in parts[-3:]):
            return None
        target, precision, layout = (int(p) for p in parts[-3:])
        return cls(
            "/".join(parts[1:-3]),
            TARGETS.get(target, str(target)),
            PRECISIONS.get(precision, str(precision)),
            LAYOUTS.get(layout, str(layout)),
        )


@dataclass(frozen=True)
class OptimizedOp:
    index: int  # position among the non-glue ops of the optimised program
    type: str
    inputs: tuple[str, ...]  # data inputs (original names, parameters excluded)
    outputs: tuple[str, ...]
    place: str | None  # "opencl", "arm", "host", ... from the kernel record
    kernel: Kernel | None = None
    raw_outputs: tuple[str, ...] = ()  # output names as written in the optimised program (glue suffixes kept)


@dataclass(frozen=True)
class GlueOp:
    type: str  # io_copy, layout, calib
    kernel: Kernel | None
    input: str  # as named in the optimised program
    output: str


@dataclass
class FusedGroup:
    ops: list[int]  # original op indices, ascending
    optimized: OptimizedOp | None = None  # the optimised op that computes the group (None: folded away)
    internal: list[str] = field(default_factory=list)  # tensors the fusion made invisible
    folded: list[int] = field(default_factory=list)  # ops computed offline from weights into its constants

    @property
    def last(self) -> int:
        return self.ops[-1]

    @property
    def kernel_ops(self) -> list[int]:
        """The ops the kernel computes at run time (without the ones folded into its weights)."""
        return [i for i in self.ops if i not in self.folded] or self.ops


def kernel_of(optimized: Model, desc_index: int) -> Kernel | None:
    for attr in optimized.block.ops[desc_index].attrs:
        if attr.name == KERNEL_ATTR:
            return Kernel.parse(attr.s)
    return None


def _data_args(optimized: Model, slots: dict[str, list[str]]) -> list[str]:
    return [a for slot, args in slots.items() if slot != "XShape" for a in args if not optimized.is_param(a)]


def optimized_ops(optimized: Model) -> list[OptimizedOp]:
    """The computing ops of an optimised program, in order, with tensor names mapped back to the original's."""
    out: list[OptimizedOp] = []
    for op in optimized.ops:
        if op.type in GLUE_OPS:
            continue
        kernel = kernel_of(optimized, op.desc_index)
        raw_outputs = tuple(dict.fromkeys(_data_args(optimized, op.outputs)))
        out.append(
            OptimizedOp(
                len(out),
                op.type,
                tuple(dict.fromkeys(base_name(a) for a in _data_args(optimized, op.inputs))),
                tuple(dict.fromkeys(base_name(a) for a in raw_outputs)),
                kernel.place if kernel else None,
                kernel,
                raw_outputs,
            )
        )
    return out


def glue_ops(optimized: Model) -> list[GlueOp]:
    """The io_copy / layout / calib ops opt inserted between host and device, in program order."""
    out = []
    for op in optimized.ops:
        if op.type in GLUE_OPS and op.type not in ("feed", "fetch"):
            ins = [a for args in op.inputs.values() for a in args]
            outs = [a for args in op.outputs.values() for a in args]
            kernel = kernel_of(optimized, op.desc_index)
            out.append(GlueOp(op.type, kernel, ins[0] if ins else "", outs[0] if outs else ""))
    return out


def check_no_reuse(optimized: Model, original: Model | None = None) -> None:
    """Refuse a program saved with memory reuse: a tensor name written by more ops than in the original program
    (which may itself write a variable twice, e.g. an in-place op)."""
    written = Counter(a for op in optimized_ops(optimized) for a in op.raw_outputs)
    before = Counter(a for op in original.ops for a in op.data_outputs()) if original is not None else Counter()
    shared = sorted(name for name, count in written.items() if count > max(1, before[name]))
    if shared:
        raise ReusedNames(
            f"the optimised program reuses tensor names ({len(shared)}, e.g. {shared[0]!r}: opt's "
            "memory_optimize_pass); convert it without memory reuse to read its fusions"
        )


def fusion_groups(original: Model, optimized: Model) -> list[FusedGroup]:
    """Partition the original ops into the groups the optimiser fused (singletons where nothing fused)."""
    check_no_reuse(optimized, original)
    opt_ops = optimized_ops(optimized)
    visible = {n for op in opt_ops for n in (*op.inputs, *op.outputs)} | set(original.feeds)
    parent = list(range(len(original.ops)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    internal: dict[int, list[str]] = {}
    folded: set[int] = set()
    for op in original.ops:
        outputs = [t for t in op.data_outputs() if not original.is_param(t)]
        if not outputs or any(t in visible for t in outputs):
            continue
        internal.setdefault(op.index, []).extend(outputs)
        if all(original.is_param(t) for t in op.reads):
            folded.add(op.index)
        readers = sorted({c for t in outputs for c in original.consumers.get(t, []) if c != op.index})
        if len(readers) > 1:
            # Read by several surviving ops yet invisible: computed offline into a constant (a reshape of a
            # weight). It belongs to its first reader; the readers stay separate kernels.
            readers = readers[:1]
        elif not readers:
            # Nothing reads it: eliminated into the op that computed its input (an identity scale, a dropout).
            readers = sorted({original.producers[n] for n in op.reads if n in original.producers})[-1:]
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
        groups.append(
            FusedGroup(sorted(ops), producer_of[outs[0]] if outs else None, hidden, sorted(set(ops) & folded))
        )
    return sorted(groups, key=lambda g: g.last)


def cut_positions(groups: list[FusedGroup], start: int = 0) -> list[int]:
    """Op indices (at or after `start`) after which a cut undoes no fusion: the end of a group that lies outside
    every other group's run-time span. A group's ops need not be adjacent (x2paddle models put a conv's batch_norm
    dozens of ops later), and cutting between them would split the kernel; ops folded into weights do not count."""
    spans = [(g.kernel_ops[0], g.kernel_ops[-1]) for g in groups if len(g.kernel_ops) > 1]
    return sorted({g.last for g in groups if g.last >= start and not any(a <= g.last < b for a, b in spans)})


def group_of(groups: list[FusedGroup], op_index: int) -> FusedGroup | None:
    return next((g for g in groups if op_index in g.ops), None)


def format_ops(ops: list[int]) -> str:
    """`3..5` for a run of indices, `1, 57` otherwise."""
    if ops == list(range(ops[0], ops[-1] + 1)):
        return f"{ops[0]}..{ops[-1]}" if len(ops) > 1 else str(ops[0])
    return ", ".join(str(i) for i in ops)


def describe_group(model: Model, group: FusedGroup) -> str:
    types = "+".join(model.ops[i].type for i in group.ops)
    into = f" -> {group.optimized.type}" if group.optimized else ""
    where = f" on {group.optimized.place}" if group.optimized and group.optimized.place else ""
    return f"ops {format_ops(group.ops)} ({types}{into}{where})"


def cpu_placement_config(ops: list[OptimizedOp]) -> str:
    """An OPENCL_MEMORY_CONFIG_FILE that sends these optimised ops to the CPU: a `device:cpu` section with one
    `op_type:inputs:outputs` rule per op. The names must come from a program saved without memory reuse (those
    are the names opt's pass sees); an empty list is refused because an empty file makes opt throw."""
    if not ops:
        raise ValueError("no op to move: an empty OPENCL_MEMORY_CONFIG_FILE makes opt throw")
    rules = [f"{op.type}:{','.join(op.inputs)}:{','.join(op.outputs)}" for op in ops]
    return "device:cpu\n" + "\n".join(rules) + "\n"


def placement_misses(moved: list[OptimizedOp], placed: Model) -> list[str]:
    """Ops that were asked to leave OpenCL yet are still there in the re-optimised program (`type -> output`),
    or that cannot be found in it at all."""
    where = {t: op for op in optimized_ops(placed) for t in op.outputs}
    misses = []
    for op in moved:
        now = next((where[t] for t in op.outputs if t in where), None)
        if now is None or now.place == "opencl":
            misses.append(f"{op.type} -> {op.outputs[0] if op.outputs else '?'}" + (" (gone)" if now is None else ""))
    return misses
