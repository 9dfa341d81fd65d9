"""Cut models: backward slices (truncate), standalone sub-models (extract) and cut frontiers.

Every function returns a new Model that Paddle and Paddle-Lite's opt load as is: feed ops first (cols
renumbered), the kept ops in their original order, fetch ops last, and a params dict holding exactly the
persistable vars the kept ops use (Paddle-Lite refuses a params file with extra tensors).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from bisect_lite.errors import InputError
from bisect_lite.model.graph import Model
from bisect_lite.model.proto import FEED_MINIBATCH, FETCH_LIST, framework_pb2


def truncate(model: Model, targets: Sequence[str]) -> Model:
    """The backward slice that computes `targets`, which become the fetches in the given order."""
    if not targets:
        raise InputError("truncate: give at least one tensor to cut at")
    for name in targets:
        _check_tensor(model, name)
    needed = set(targets)
    kept: list[int] = []
    for op in reversed(model.ops):
        if op.writes & needed:
            kept.append(op.index)
            # Persistable vars are leaves: batch_norm writes its running stats in place, and following those
            # writes would drag in unrelated producers.
            needed -= op.writes
            needed |= {n for n in op.reads if not model.is_param(n)}
    feeds = [f for f in model.feeds if f in needed or f in targets]
    missing = needed - set(model.feeds)
    if missing:
        raise InputError(f"truncate: tensors {sorted(missing)} are read but neither produced nor fed")
    return build(model, sorted(kept), feeds, list(dict.fromkeys(targets)))


def extract(model: Model, op_indices: Iterable[int], fetches: Sequence[str] | None = None) -> Model:
    """A standalone model made of the given ops.

    Tensors entering the set from outside become feeds (recorded shape and dtype); parameters stay params;
    the set's data outputs that are used after it (or are model outputs, or are not used at all) become fetches.
    """
    indices = sorted(set(op_indices))
    if not indices:
        raise InputError("extract: no ops given")
    for i in indices:
        if not 0 <= i < len(model.ops):
            raise InputError(f"extract: op {i} does not exist (the model has ops 0..{len(model.ops) - 1})")
    chosen = set(indices)
    produced: set[str] = set()
    feeds: list[str] = []
    for i in indices:
        op = model.ops[i]
        for name in sorted(op.reads):
            if name not in produced and not model.is_param(name) and name not in feeds:
                feeds.append(name)
        produced |= op.writes
    if fetches is None:
        fetches = []
        final_outputs = set(model.fetches)
        for i in indices:
            for name in model.ops[i].data_outputs():
                if model.is_param(name) or name in fetches:
                    continue
                later = [c for c in model.consumers.get(name, []) if c not in chosen and c > i]
                inside_only = model.consumers.get(name) and not later and name not in final_outputs
                if not inside_only:
                    fetches.append(name)
    else:
        for name in fetches:
            if name not in produced:
                raise InputError(f"extract: {name!r} is not produced by ops {indices}")
    if not fetches:
        raise InputError(f"extract: ops {indices} produce no data tensor to fetch")
    return build(model, indices, feeds, list(fetches))


def frontier(model: Model, cut: int) -> list[str]:
    """Tensors a probe at `cut` must fetch: produced at or before op `cut`, and needed after it.

    "Needed after" means read by a later op or fetched by the model. These are exactly the values through which
    ops 0..cut influence the rest; if they all match, nothing before the cut can explain a later mismatch.
    """
    out: list[str] = []
    for index, name in model.data_tensors():
        if index > cut:
            break
        # A tensor rewritten later (in place, or by a control-flow op) counts from its last writer on:
        # truncating at its name computes that final value.
        if model.producers.get(name, index) <= cut < model.last_use.get(name, -1):
            out.append(name)
    return out


def build(model: Model, op_indices: Sequence[int], feeds: Sequence[str], fetches: Sequence[str]) -> Model:
    """Assemble a program from block-0 ops of `model` with new feed and fetch ops."""
    pb = framework_pb2()
    src_block = model.block
    program = pb.ProgramDesc()
    program.version.CopyFrom(model.program.version)
    program.op_version_map.CopyFrom(model.program.op_version_map)
    block = program.blocks.add()
    block.idx = 0
    block.parent_idx = src_block.parent_idx
    # Sub-blocks are kept whole so that block indices in control-flow attrs stay valid.
    for sub in model.program.blocks[1:]:
        program.blocks.add().CopyFrom(sub)

    used: set[str] = set(feeds) | set(fetches)
    for col, name in enumerate(feeds):
        _io_op(block.ops.add(), "feed", "X", ["feed"], "Out", [name], col)
    for i in op_indices:
        op = model.ops[i]
        od = block.ops.add()
        src = src_block.ops[op.desc_index]
        od.type = src.type
        od.inputs.extend(src.inputs)
        od.outputs.extend(src.outputs)
        od.attrs.extend(a for a in src.attrs if a.name != "op_callstack")
        if src.HasField("is_target"):
            od.is_target = src.is_target
        used |= op.reads | op.writes
    for col, name in enumerate(fetches):
        _io_op(block.ops.add(), "fetch", "X", [name], "Out", ["fetch"], col)

    have_feed = have_fetch = False
    for v in src_block.vars:
        if v.type.type == FEED_MINIBATCH:
            have_feed = True
            block.vars.add().CopyFrom(v)
        elif v.type.type == FETCH_LIST:
            have_fetch = True
            block.vars.add().CopyFrom(v)
        elif v.name in used:
            nv = block.vars.add()
            nv.CopyFrom(v)
            if v.name in feeds:
                nv.need_check_feed = True
    if not have_feed:
        _io_var(block.vars.add(), "feed", FEED_MINIBATCH)
    if not have_fetch:
        _io_var(block.vars.add(), "fetch", FETCH_LIST)
    # Params of every kept persistable var of block 0 (sub-block references are part of op.reads).
    params = {n: model.params[n] for n in used if model.is_param(n) and n in model.params}
    return Model(program, params, source=None)


def _check_tensor(model: Model, name: str) -> None:
    var = model.vars.get(name)
    if var is None:
        close = [n for n in model.vars if name in n or n in name][:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise InputError(f"{name!r} is not a tensor of this model{hint}; `bisect-lite ops` lists them")
    if var.persistable:
        raise InputError(f"{name!r} is a parameter, not a computed tensor; cut at an op output instead")
    if name in model.feeds:
        raise InputError(f"{name!r} is a model input; cut at an op output instead")
    if name not in model.producers:
        raise InputError(f"{name!r} is not produced by any op of block 0")


def _io_op(od, kind: str, in_slot: str, ins: list[str], out_slot: str, outs: list[str], col: int) -> None:
    od.type = kind
    v = od.inputs.add()
    v.parameter = in_slot
    v.arguments.extend(ins)
    v = od.outputs.add()
    v.parameter = out_slot
    v.arguments.extend(outs)
    a = od.attrs.add()
    a.name = "col"
    a.type = 0
    a.i = col


def _io_var(vd, name: str, kind: int) -> None:
    vd.name = name
    vd.type.type = kind
    vd.persistable = True


def with_feed_shapes(model: Model, shapes: dict[str, tuple[int, ...]]) -> Model:
    """A copy whose feed vars record new shapes (for shrunk repro inputs).

    Every other computed tensor's recorded dims described the old feed shapes: they become -1 (unknown, re-inferred
    by the engines at run time; a 0, XShape's marker, stays) rather than stay stale; `with_var_shapes` records the
    ones known afterwards.
    """
    for name in shapes:
        if name not in model.feeds:
            raise InputError(f"{name!r} is not a model input")
    computed = {n for op in model.ops for n in op.writes if not model.is_param(n)} - set(shapes)
    unknown = {
        n: tuple(0 if d == 0 else -1 for d in shape)
        for n in computed
        if n in model.vars and (shape := model.vars[n].shape)
    }
    return with_var_shapes(model, {**unknown, **shapes})


def with_var_shapes(model: Model, shapes: dict[str, tuple[int, ...]]) -> Model:
    """A copy whose dense-tensor vars `shapes` names record those dims (e.g. the real shapes of a repro's inputs
    and outputs); parameters keep theirs."""
    program = framework_pb2().ProgramDesc()
    program.CopyFrom(model.program)
    for v in program.blocks[0].vars:
        if v.name in shapes and not v.persistable and v.type.HasField("dense_tensor"):
            dims = v.type.dense_tensor.tensor.dims
            del dims[:]
            dims.extend(int(d) for d in shapes[v.name])
    return Model(program, model.params, source=None)
