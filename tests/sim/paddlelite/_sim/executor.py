"""Executing a simulated .nb: the ORIGINAL legacy program on Paddle Inference (exact CPU mode), rewritten for
fp16 storage emulation and cut into segments around injected faults.

fp16 emulation (OpenCL with precision AUTO/FP16, ARM ops picked as fp16 kernels): every FP32 tensor that the
device would hold in half precision is passed through cast(fp32->fp16->fp32) ops inserted into the program
(round-to-nearest-even, overflow to inf above 65504):
  * outputs of half-precision ops, unless internal to a fused group (a fused kernel never stores them);
  * host/fp32 tensors read by a half-precision op (the layout op converts them into a half image);
  * persistable float inputs of half-precision ops (weights are uploaded as half), except batch_norm
    statistics (Lite folds them in fp32).
Faults are applied with numpy between segments: the program is cut right after the faulty op, the segment's
boundary tensors are fetched, corrupted, and fed to the next segment, so corruption propagates downstream.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import faults as F
from . import proto
from .optimizer import ELIMINATED_ATTR, FUSED_FROM_ATTR, KERNEL_ATTR, PLACE_ATTR

_GLUE = ("io_copy", "io_copy_once", "layout", "layout_once")
_NO_WEIGHT_ROUNDING = ("batch_norm", "sync_batch_norm")
_PREDICTORS: OrderedDict[str, Any] = OrderedDict()  # LRU: a bisection creates many distinct programs
_MAX_PREDICTORS = 64


@dataclass
class Group:
    """One op of the optimised program (a kernel), as the runtime sees it."""

    index: int  # position in the optimised block 0
    type: str
    place: str
    half: bool
    fused_from: list[int]
    outputs: list[str]
    desc: Any


@dataclass
class Segment:
    ops: list[Any]
    inputs: list[str]
    outputs: list[str]
    faults_after: list[tuple[str, list[F.Fault]]]
    program_bytes: bytes = b""


@dataclass
class ExecPlan:
    input_names: list[str]  # as the runtime reports them (feed order)
    output_names: list[str]  # fetch inputs of the optimised program (may carry /target_trans)
    feed_vars: list[str]  # original var fed for each input
    fetch_views: list[str]  # exec var holding each output
    segments: list[Segment]
    crash: list[tuple[F.Fault, Group]]
    fired: list[tuple[F.Fault, str]] = field(default_factory=list)  # (fault, op description) for messages


def _principal_outputs(desc: Any, f: F.Fault) -> list[str]:
    if f.output_slot:
        args = proto.op_outputs(desc, f.output_slot)
    else:
        args = []
        for slot in ("Out", "Output", "Y"):
            args = proto.op_outputs(desc, slot)
            if args:
                break
        if not args:
            outs = proto.all_outputs(desc)
            args = [outs[0][1]] if outs else []
    if f.output_index is not None:
        args = args[f.output_index : f.output_index + 1]
    return args


def _attrs(desc: Any) -> dict[str, Any]:
    return {a.name: proto.get_attr(desc, a.name) for a in desc.attrs}


def _sub_block_inputs(program: Any, op: Any) -> set[str]:
    """Vars an op with sub-blocks (while/conditional_block) reads from the outer scope."""
    names: set[str] = set()
    for a in op.attrs:
        idxs = (
            [a.block_idx]
            if a.type == proto.pb().AttrType.BLOCK
            else (list(a.blocks_idx) if a.type == proto.pb().AttrType.BLOCKS else [])
        )
        for bi in idxs:
            if 0 < bi < len(program.blocks):
                produced: set[str] = set()
                for sop in program.blocks[bi].ops:
                    names.update(x for _, x in proto.all_inputs(sop) if x not in produced)
                    produced.update(x for _, x in proto.all_outputs(sop))
                    names.update(_sub_block_inputs(program, sop))
    return names


def build_plan(
    original_program: bytes, optimized_program: bytes, *, cl_fp16: bool, tuned: bool, faults: list[F.Fault]
) -> ExecPlan:
    pb = proto.pb()
    P = proto.parse_program(original_program)
    OPT = proto.parse_program(optimized_program)
    pblock, oblock = P.blocks[0], OPT.blocks[0]
    pvars = proto.var_map(pblock)
    FP32 = pb.VarType.FP32

    # ---- kernels of the optimised program
    groups: list[Group] = []
    group_of: dict[int, Group] = {}
    glue_src: dict[
        str, tuple[str, list[Group]]
    ] = {}  # glue output var -> (original var, glue ops on the way)
    inputs_o, outputs_o = [], []
    for k, op in enumerate(oblock.ops):
        place = str(proto.get_attr(op, PLACE_ATTR, "arm"))
        kern = str(proto.get_attr(op, KERNEL_ATTR, ""))
        half = (place == "opencl" and cl_fp16) or (place == "arm" and kern.split("/")[3:4] == ["5"])
        g = Group(
            k,
            op.type,
            place,
            half,
            list(proto.get_attr(op, FUSED_FROM_ATTR, []) or []),
            [a for _, a in proto.all_outputs(op)],
            op,
        )
        groups.append(g)
        if op.type in _GLUE:
            src_in = proto.op_inputs(op, "Input")[0]
            base, chain = glue_src.get(src_in, (src_in, []))
            glue_src[proto.op_outputs(op, "Out")[0]] = (base, [*chain, g])
            continue
        for i in g.fused_from:
            group_of[i] = g
        for i in proto.get_attr(op, ELIMINATED_ATTR, []) or []:
            group_of.setdefault(i, g)  # eliminated ops run (in the original program) as part of g
        if op.type == "feed":
            inputs_o.append((int(proto.get_attr(op, "col", 0)), proto.op_outputs(op, "Out")[0]))
        elif op.type == "fetch":
            outputs_o.append((int(proto.get_attr(op, "col", 0)), proto.op_inputs(op, "X")[0], g))
    inputs_o.sort()
    outputs_o.sort(key=lambda t: t[0])

    # ---- faults per kernel
    point_faults: dict[str, list[F.Fault]] = {}  # original var -> faults of its producing kernel
    glue_faults: dict[int, list[F.Fault]] = {}  # glue op index -> faults
    crash: list[tuple[F.Fault, Group]] = []
    fired: list[tuple[F.Fault, str]] = []
    for g in groups:
        if g.type in ("feed", "fetch"):
            continue
        attrs = _attrs(g.desc)
        for f in faults:
            if not F.matches(
                f,
                op_type=g.type,
                place=g.place,
                fused=len(g.fused_from) > 1,
                attrs=attrs,
                outputs=g.outputs,
                fp16=g.half,
                tuned=tuned,
            ):
                continue
            fired.append((f, f"{g.type} #{g.index} on {g.place} covering original ops {g.fused_from}"))
            if f.kind == "crash":
                crash.append((f, g))
            elif g.type in _GLUE:
                glue_faults.setdefault(g.index, []).append(f)
            else:
                for v in _principal_outputs(g.desc, f):
                    point_faults.setdefault(v, []).append(f)

    # ---- original program facts
    ops = list(pblock.ops)
    producer: dict[str, int] = {}
    feed_of_col: dict[int, str] = {}
    for i, op in enumerate(ops):
        if op.type == "feed":
            feed_of_col[int(proto.get_attr(op, "col", 0))] = proto.op_outputs(op, "Out")[0]
        for _, a in proto.all_outputs(op):
            producer.setdefault(a, i)

    def half_of(i: int) -> bool:
        g = group_of.get(i)
        return bool(g and g.half)

    def internal(i: int, v: str) -> bool:
        g = group_of.get(i)
        return bool(g and v not in g.outputs)

    def same_group(i: int, v: str) -> bool:
        # v flows between two ops of one fused kernel: never materialised on the device.
        gp, gi = group_of.get(producer.get(v, -1)), group_of.get(i)
        return gp is not None and gp is gi and v not in gp.outputs

    def is_fp32(v: str) -> bool:
        return proto.var_dtype(pvars.get(v)) == FP32

    # Which consumers read a var through which glue chain (from the optimised program's renamed inputs).
    consumer_glue: dict[tuple[int, str], list[Group]] = {}
    fetch_glue: dict[int, list[Group]] = {}
    for g in groups:
        if g.type in _GLUE:
            continue
        for _, a in proto.all_inputs(g.desc):
            if a not in glue_src:
                continue
            src, chain = glue_src[a]
            if g.type == "fetch":
                fetch_glue[int(proto.get_attr(g.desc, "col", 0))] = chain
                continue
            for i in g.fused_from:
                if src in (x for _, x in proto.all_inputs(ops[i])):
                    consumer_glue[(i, src)] = chain

    # ---- views: what each consumer reads
    extra_vars: dict[str, tuple[str, int | None]] = {}  # new var -> (template var, dtype override)
    view_ops: dict[int, list[tuple[Any, list[tuple[str, list[F.Fault]]]]]] = {}  # after op i (-1: start)
    view_name: dict[tuple[str, bool, tuple[int, ...]], str] = {}

    def make_cast(src: str, dst: str, fin: int, fout: int) -> Any:
        d = pb.OpDesc()
        d.type = "cast"
        proto.set_input(d, "X", [src])
        proto.set_output(d, "Out", [dst])
        proto.set_attr(d, "in_dtype", fin, "INT")
        proto.set_attr(d, "out_dtype", fout, "INT")
        return d

    def view(v: str, rounded: bool, chain: list[Group]) -> str:
        gidx = tuple(g.index for g in chain if g.index in glue_faults)
        if not rounded and not gidx:
            return v
        key = (v, rounded, gidx)
        if key in view_name:
            return view_name[key]
        p = producer.get(v, -1)
        if pvars.get(v) is not None and pvars[v].persistable:
            p = -1
        if p >= 0 and ops[p].type == "feed":
            p = -1
        slot = view_ops.setdefault(p, [])
        base = v
        if rounded:
            rk = (v, True, ())
            if rk not in view_name:
                h, r = f"{v}__sim_fp16", f"{v}__sim_r"
                slot.append((make_cast(v, h, FP32, pb.VarType.FP16), []))
                slot.append((make_cast(h, r, pb.VarType.FP16, FP32), []))
                extra_vars[h] = (v, pb.VarType.FP16)
                extra_vars[r] = (v, None)
                view_name[rk] = r
            base = view_name[rk]
        if gidx:
            name = f"{v}__sim_g{'_'.join(map(str, gidx))}{'r' if rounded else ''}"
            d = pb.OpDesc()
            d.type = "assign"
            proto.set_input(d, "X", [base])
            proto.set_output(d, "Out", [name])
            fl = [f for gi in gidx for f in glue_faults[gi]]
            slot.append((d, [(name, fl)]))
            extra_vars[name] = (v, None)
            base = name
        view_name[key] = base
        return base

    exec_ops: list[tuple[Any, list[tuple[str, list[F.Fault]]]]] = []
    body: list[tuple[int, Any]] = []
    for i, op in enumerate(ops):
        if op.type in ("feed", "fetch"):
            continue
        d = pb.OpDesc()
        d.CopyFrom(op)
        gi_half = half_of(i)
        seen: set[str] = set()
        for _, v in proto.all_inputs(op):
            if v in seen:
                continue
            seen.add(v)
            var = pvars.get(v)
            if var is not None and var.persistable:
                rounded = gi_half and is_fp32(v) and op.type not in _NO_WEIGHT_ROUNDING
                chain: list[Group] = []
            elif same_group(i, v):
                rounded, chain = False, []
            else:
                p = producer.get(v, -1)
                p_half = p >= 0 and half_of(p) and not internal(p, v)
                rounded = is_fp32(v) and (p_half or gi_half)
                chain = consumer_glue.get((i, v), [])
            nv = view(v, rounded, chain)
            if nv != v:
                proto.rename_input(d, v, nv)
        body.append((i, d))

    fetch_views: list[str] = []
    output_names: list[str] = []
    for col, oname, _g in outputs_o:
        src = glue_src.get(oname, (oname, []))[0]
        p = producer.get(src, -1)
        rounded = is_fp32(src) and p >= 0 and half_of(p) and not internal(p, src)
        fetch_views.append(view(src, rounded, fetch_glue.get(col, [])))
        output_names.append(oname)

    exec_ops.extend(view_ops.get(-1, []))
    for i, d in body:
        after = [
            (v, point_faults[v])
            for _, v in proto.all_outputs(d)
            if v in point_faults and producer.get(v) == i
        ]
        exec_ops.append((d, after))
        exec_ops.extend(view_ops.get(i, []))

    # ---- segments
    cut: list[list[tuple[Any, list]]] = [[]]
    for item in exec_ops:
        cut[-1].append(item)
        if item[1]:
            cut.append([])
    persistable = {v.name for v in pblock.vars if v.persistable}
    seg_reads: list[set[str]] = []
    seg_writes: list[set[str]] = []
    for part in cut:
        reads: set[str] = set()
        writes: set[str] = set()
        for d, _ in part:
            for _, a in proto.all_inputs(d):
                if a not in writes and a not in persistable:
                    reads.add(a)
            for a in _sub_block_inputs(P, d):
                if a not in writes and a not in persistable:
                    reads.add(a)
            writes.update(a for _, a in proto.all_outputs(d))
        seg_reads.append(reads)
        seg_writes.append(writes)
    final_needed = set(fetch_views)
    segments: list[Segment] = []
    for k, part in enumerate(cut):
        if not part:
            continue
        later: set[str] = set().union(*seg_reads[k + 1 :]) if k + 1 < len(cut) else set()
        fault_vars = [v for _, fl in part for v, _ in fl]
        outs = sorted((seg_writes[k] & (later | final_needed)) | set(fault_vars))
        seg = Segment([d for d, _ in part], sorted(seg_reads[k]), outs, [x for _, fl in part for x in fl])
        seg.program_bytes = _segment_program(P, seg, extra_vars)
        segments.append(seg)

    input_names = [n for _, n in inputs_o]
    feed_vars = [feed_of_col.get(c, n) for c, n in inputs_o]
    return ExecPlan(input_names, output_names, feed_vars, fetch_views, segments, crash, fired)


def _segment_program(P: Any, seg: Segment, extra_vars: dict[str, tuple[str, int | None]]) -> bytes:
    pb = proto.pb()
    prog = pb.ProgramDesc()
    prog.CopyFrom(P)
    block = prog.blocks[0]
    vmap = proto.var_map(block)
    for name, (tmpl, dtype) in extra_vars.items():
        if name not in vmap and tmpl in vmap:
            vmap[name] = proto.add_var_like(block, vmap[tmpl], name, dtype)
    del block.ops[:]
    for col, v in enumerate(seg.inputs):
        d = block.ops.add()
        d.type = "feed"
        proto.set_input(d, "X", ["feed"])
        proto.set_output(d, "Out", [v])
        proto.set_attr(d, "col", col, "INT")
    for d in seg.ops:
        block.ops.add().CopyFrom(d)
    for col, v in enumerate(seg.outputs):
        d = block.ops.add()
        d.type = "fetch"
        proto.set_input(d, "X", [v])
        proto.set_output(d, "Out", ["fetch"])
        proto.set_attr(d, "col", col, "INT")
    return prog.SerializeToString()


def _predictor(program: bytes, params: bytes) -> Any:
    key = hashlib.sha1(program).hexdigest() + hashlib.sha1(params).hexdigest()
    pred = _PREDICTORS.get(key)
    if pred is not None:
        _PREDICTORS.move_to_end(key)
    else:
        os.environ.setdefault("GLOG_minloglevel", "2")
        from paddle import inference  # imported lazily: opt and the API objects do not need paddle

        cfg = inference.Config()
        cfg.set_model_buffer(program, len(program), params, len(params))
        cfg.switch_ir_optim(False)  # exact mode: bit-identical to dygraph, no fusion of its own
        if hasattr(cfg, "disable_onednn"):
            cfg.disable_onednn()
        elif hasattr(cfg, "disable_mkldnn"):
            cfg.disable_mkldnn()
        cfg.disable_glog_info()
        pred = inference.create_predictor(cfg)
        _PREDICTORS[key] = pred
        while len(_PREDICTORS) > _MAX_PREDICTORS:
            _PREDICTORS.popitem(last=False)
    return pred


def run_plan(plan: ExecPlan, params: bytes, feeds: dict[str, np.ndarray], run_index: int) -> list[np.ndarray]:
    values: dict[str, np.ndarray] = dict(feeds)
    for seg in plan.segments:
        pred = _predictor(seg.program_bytes, params)
        for name in seg.inputs:
            pred.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(values[name]))
        pred.run()
        for name in seg.outputs:
            values[name] = pred.get_output_handle(name).copy_to_cpu()
        for v, fl in seg.faults_after:
            for f in fl:
                values[v] = F.apply(f.kind, f.params, values[v], run_index)
    return [np.array(values[v], copy=True) for v in plan.fetch_views]
