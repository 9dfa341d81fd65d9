"""Simulated `opt` optimisation: Paddle-Lite's main fusion passes, kernel placement and io_copy/layout glue.

Modelled on lite/core/optimizer (pass order, pattern conditions, attribute names of fused ops) without
reproducing its code. Every fusion requires its intermediate tensors to be internal to the pattern (one
producer, consumed only inside the pattern, not fetched), which is what Paddle-Lite's pattern matcher
enforces (`ValidateByNodeRole`): cutting a model so that an intermediate becomes a fetch target removes the
fusion.

Each op of the optimised program carries:
  __sim_fused_from        INTS    indices (in the ORIGINAL program's block 0 op list) of the ops it covers;
                                  [] for inserted io_copy/layout glue
  __sim_eliminated        INTS    (only when non-empty) original ops removed by elimination passes and
                                  attributed to this op: an identity scale folded into its producer, a
                                  reshape of a weight computed offline (attributed to its consumers)
  __sim_place             STRING  "opencl" | "arm" | "host" | "x86"
  __@kernel_type_attr@__  STRING  Paddle-Lite's own record of the picked kernel:
                                  op/alias/target/precision/layout
                                  (enum values of lite_api::TargetType/PrecisionType/DataLayoutType)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import proto
from .log import fatal

FUSED_FROM_ATTR = "__sim_fused_from"
PLACE_ATTR = "__sim_place"
ELIMINATED_ATTR = "__sim_eliminated"
KERNEL_ATTR = "__@kernel_type_attr@__"


def names(text: str) -> frozenset[str]:
    """A set of op type names from a whitespace-separated block (keeps the long tables compact)."""
    return frozenset(text.split())


# Op types with an OpenCL kernel (REGISTER_LITE_KERNEL(..., kOpenCL, ...) in lite/kernels/opencl). Anything
# else falls back to the ARM kernel that valid_targets=opencl always includes, with io_copy/layout around it.
OPENCL_KERNELS = names(
    """
abs acos arg_max asin atan batch_norm bilinear_interp bilinear_interp_v2 box_coder clip concat
conv2d conv2d_transpose cos depthwise_conv2d depthwise_conv2d_transpose dropout elementwise_add
elementwise_div elementwise_floordiv elementwise_max elementwise_min elementwise_mod elementwise_mul
elementwise_pow elementwise_sub exp expand fc flatten flatten2 fusion_elementwise_add_activation
fusion_elementwise_div_activation fusion_elementwise_mul_activation
fusion_elementwise_sub_activation gather gelu greater_than grid_sampler hard_sigmoid hard_swish
instance_norm layer_norm leaky_relu log lrn matmul matmul_v2 max mul nearest_interp
nearest_interp_v2 pad2d pixel_shuffle pool2d pow prelu reduce_max reduce_mean relu relu6 reshape
reshape2 rsqrt scale shape shuffle_channel sigmoid sin slice softmax split sqrt square squeeze
squeeze2 swish sync_batch_norm tan tanh transpose transpose2 unsqueeze unsqueeze2 yolo_box
"""
)

# Ops that OpenCLMemoryObjectConfigPass moves to kHost (not kARM) when it sends them to the CPU.
ARM_HOST_OPS = names(
    """
gather flatten2 reshape2 flatten reshape unsqueeze2 unsqueeze squeeze2 squeeze split greater_than
cos sin tan expand shape
"""
)
# CPU-side kernels that are host kernels even in a pure ARM build.
HOST_KERNELS = frozenset(
    {"feed", "fetch", "flatten_contiguous_range", "shape", "fill_constant", "assign_value", "strided_slice"}
)
# Ops whose ARM placement is a Host kernel in 2.13-rc (measured: reshape2, squeeze2, unsqueeze2; the issue and the
# kernel registry add assign and split).
ARM_PLACED_ON_HOST = names("reshape2 squeeze2 unsqueeze2 assign split")

# Kernel records measured on real opt 2.13-rc (`__@kernel_type_attr@__` = op/alias/target/precision/layout).
# OpenCL: the alias per op type (ops not measured keep "image2d") and the kernels that take ImageFolder tensors.
OPENCL_DEF_ALIAS = names(
    """
batch_norm clip elementwise_add elementwise_div elementwise_mul elementwise_sub fusion_elementwise_add_activation
fusion_elementwise_sub_activation fusion_elementwise_mul_activation gelu hard_swish prelu reduce_mean scale softmax
split
"""
)
OPENCL_IMAGEDEFAULT_ALIAS = names(
    "bilinear_interp_v2 concat hard_sigmoid layer_norm leaky_relu nearest_interp_v2 relu sigmoid swish tanh"
)
# Host kernel records other than def/any/any: (precision, layout) codes.
HOST_RECORDS = {"fill_constant": (4, 1), "strided_slice": (1, 1), "split": (1, 1)}
OPENCL_IMAGE_FOLDER = names("fc matmul_v2 softmax")
# OpenCL kernels that are NCHW cl::Buffer kernels in 2.13-rc (measured), and input slots OpenCL kernels declare on
# the host (no io_copy in front of them).
OPENCL_BUFFER_OPS = names("squeeze2 unsqueeze2")
OPENCL_HOST_SLOTS = frozenset({("clip", "Min"), ("clip", "Max")})
# ARM kernels declared with precision kAny (and arg_max's alias "fp32").
ARM_ANY_PRECISION = names("arg_max concat transpose2")

# OpenCLMemoryObjectConfigPass::CorrectArgumentPlace rules for Image2D kernels.
_REDUCE_KEEPDIM = frozenset(
    {
        "arg_max",
        "reduce_max",
        "reduce_min",
        "reduce_mean",
        "reduce_sum",
        "reduce_prob",
        "reduce_all",
        "reduce_any",
    }
)
_NO_PERSISTABLE_X = frozenset(
    {
        "elementwise_floordiv",
        "elementwise_add",
        "elementwise_sub",
        "elementwise_mul",
        "elementwise_div",
        "elementwise_pow",
        "elementwise_mod",
        "reshape2",
        "unsqueeze2",
        "split",
    }
)

# Float ops assumed to have ARM fp16 kernels when opt ran with enable_fp16 (armv8.2 devices).
ARM_FP16_KERNELS = names(
    """
conv2d depthwise_conv2d conv2d_transpose fc mul matmul matmul_v2 elementwise_add elementwise_sub
elementwise_mul elementwise_div fusion_elementwise_add_activation fusion_elementwise_sub_activation
fusion_elementwise_mul_activation pool2d relu relu6 leaky_relu hard_swish hard_sigmoid sigmoid tanh
swish prelu softmax batch_norm concat scale gelu layer_norm transpose2 reshape2
flatten_contiguous_range
"""
)

CONV_TYPES = ("conv2d", "depthwise_conv2d", "conv2d_transpose")
# lite_api enum values used in kernel type strings.
_TGT = {"host": 1, "x86": 2, "arm": 4, "opencl": 5}
_FP32, _ANY_P, _FP16 = 1, 4, 5
_NCHW, _ANY_L, _IMG, _FOLDER = 1, 2, 4, 5
_LAYOUT_CODE = {"NCHW": _NCHW, "ImageDefault": _IMG, "ImageFolder": _FOLDER}

SIMULATED_TARGETS = ("arm", "opencl", "x86")


@dataclass
class Node:
    desc: Any  # framework_pb2.OpDesc (own copy)
    fused_from: list[int]
    eliminated: list[int] = field(default_factory=list)  # original ops removed by elimination passes
    place: str = ""
    buffer: bool = False  # OpenCL op forced to cl::Buffer by the memory config
    fp16: bool = False  # ARM fp16 kernel (enable_fp16)
    removed: bool = False

    @property
    def type(self) -> str:
        return self.desc.type


@dataclass
class Optimized:
    program: Any  # optimised ProgramDesc (with the attributes above)
    params: dict[str, np.ndarray]  # params of the optimised program (BN folded into conv weights, ...)
    log: list[str] = field(default_factory=list)


def targets_from_valid_places(valid_places: list[tuple[str, str, str]]) -> list[str]:
    out: list[str] = []
    for tgt, _, _ in valid_places:
        if tgt in ("arm", "opencl", "x86") and tgt not in out:
            out.append(tgt)
    return out


class _Graph:
    def __init__(
        self, program: Any, params: dict[str, np.ndarray], targets: list[str], log: list[str]
    ) -> None:
        self.block = program.blocks[0]
        self.vars = proto.var_map(self.block)
        self.params = params
        self.targets = targets
        self.log = log
        self.nodes: list[Node] = []
        for i, op in enumerate(self.block.ops):
            d = proto.pb().OpDesc()
            d.CopyFrom(op)
            self.nodes.append(Node(d, [i]))
        # Vars touched inside sub-blocks are never pattern intermediates.
        self.external: set[str] = set()
        for b in program.blocks[1:]:
            for op in b.ops:
                self.external.update(a for _, a in proto.all_inputs(op))
                self.external.update(a for _, a in proto.all_outputs(op))
        self.reindex()

    # ------------------------------------------------------------ indexing
    def reindex(self) -> None:
        self.nodes = [n for n in self.nodes if not n.removed]
        self.cons: dict[str, list[tuple[Node, str]]] = {}
        self.prods: dict[str, list[Node]] = {}
        for n in self.nodes:
            for slot, a in proto.all_inputs(n.desc):
                self.cons.setdefault(a, []).append((n, slot))
            for _, a in proto.all_outputs(n.desc):
                self.prods.setdefault(a, []).append(n)

    def consumers(self, v: str) -> list[tuple[Node, str]]:
        return self.cons.get(v, [])

    def sole_consumer(self, v: str) -> tuple[Node, str] | None:
        """The only consumer of an intermediate var, if v is a valid pattern intermediate."""
        if v in self.external or self.persistable(v):
            return None
        cs = self.consumers(v)
        if len(cs) != 1 or len(self.prods.get(v, [])) != 1:
            return None
        return cs[0]

    def only_used_by(self, v: str, node: Node) -> bool:
        return v not in self.external and all(n is node for n, _ in self.consumers(v))

    def persistable(self, v: str) -> bool:
        var = self.vars.get(v)
        return bool(var is not None and var.persistable)

    def dims(self, v: str) -> list[int] | None:
        if v in self.params:
            return list(self.params[v].shape)
        return proto.var_dims(self.vars.get(v))

    def merge(self, keep: Node, *gone: Node) -> None:
        for g in gone:
            keep.fused_from.extend(g.fused_from)
            keep.eliminated.extend(g.eliminated)
            g.removed = True
        keep.fused_from.sort()

    # ------------------------------------------------------------ passes
    def reshape_calc_offline(self) -> None:
        """reshape_calc_offline_pass: reshape(2) of a persistable tensor is folded into a new persistable."""
        for n in list(self.nodes):
            if n.removed or n.type not in ("reshape", "reshape2"):
                continue
            d = n.desc
            xs, outs = proto.op_inputs(d, "X"), proto.op_outputs(d, "Out")
            if (
                len(xs) != 1
                or len(outs) != 1
                or xs[0] not in self.params
                or proto.op_inputs(d, "Shape")
                or proto.op_inputs(d, "ShapeTensor")
                or len(self.prods.get(outs[0], [])) != 1
                or outs[0] not in self.vars
            ):
                continue
            x = self.params[xs[0]]
            shape = [int(s) for s in (proto.get_attr(d, "shape", []) or [])]
            dims = [x.shape[i] if s == 0 and i < x.ndim else s for i, s in enumerate(shape)]
            try:
                self.params[outs[0]] = x.reshape(dims).copy()
            except ValueError:
                continue
            self.vars[outs[0]].persistable = True
            n.removed = True
            for c, _ in self.consumers(outs[0]):
                c.eliminated.extend(n.fused_from)
            self.log.append(
                f"reshape_calc_offline_pass: {n.type} {n.fused_from} folded into persistable "
                f"'{outs[0]}' (op no longer in the optimised program)"
            )
        self.reindex()

    @staticmethod
    def _is_identity_scale(d: Any, tol: float) -> bool:
        if proto.op_inputs(d, "ScaleTensor") or proto.get_attr(d, "fuse_relu", False):
            return False
        if proto.get_attr(d, "activation_type", ""):
            return False
        return (
            abs(float(proto.get_attr(d, "scale", 1.0)) - 1.0) <= tol
            and abs(float(proto.get_attr(d, "bias", 0.0))) <= tol
        )

    def remove_scale1(self) -> None:
        """remove_scale1_pass: producer -> x -> scale(1, 0) -> out -> next op; next op reads x instead.

        A fetch is such a next op, so the output name becomes the scale's input var (as in real Lite)."""
        for n in list(self.nodes):
            if n.removed or n.type != "scale" or not self._is_identity_scale(n.desc, 1e-5):
                continue
            ins, outs = proto.all_inputs(n.desc), proto.all_outputs(n.desc)
            if len(ins) != 1 or len(outs) != 1:
                continue
            x, out = ins[0][1], outs[0][1]
            prods = self.prods.get(x, [])
            cons = self.consumers(out)
            if len(prods) != 1 or len(proto.all_outputs(prods[0].desc)) != 1 or len(cons) != 1:
                continue
            nxt = cons[0][0]
            if len({v.parameter for v in nxt.desc.inputs if v.arguments}) != 1:
                return  # the real pass returns here, leaving later scales alone
            proto.rename_input(nxt.desc, out, x)
            prods[0].eliminated.extend(n.fused_from)
            n.removed = True
            self.log.append(f"remove_scale1_pass: scale {n.fused_from} removed, {nxt.type} reads '{x}'")
            self.reindex()

    def identity_scale_eliminate(self) -> None:
        """identity_scale_eliminate_pass: pre_op -> x -> scale(1, 0) -> out becomes pre_op -> out."""
        for n in list(self.nodes):
            if n.removed or n.type != "scale" or not self._is_identity_scale(n.desc, 0.0):
                continue
            xs, outs = proto.op_inputs(n.desc, "X"), proto.op_outputs(n.desc, "Out")
            if len(xs) != 1 or len(outs) != 1:
                continue
            sc = self.sole_consumer(xs[0])
            prods = self.prods.get(xs[0], [])
            if sc is None or sc[0] is not n or len(prods) != 1:
                continue
            pre = prods[0]
            if pre.type in ("conditional_block", "while", "scale", "feed"):
                continue
            for v in pre.desc.outputs:
                args = [outs[0] if a == xs[0] else a for a in v.arguments]
                del v.arguments[:]
                v.arguments.extend(args)
            pre.eliminated.extend(n.fused_from)
            n.removed = True
            self.log.append(f"identity_scale_eliminate_pass: scale {n.fused_from} folded into {pre.type}")
            self.reindex()

    def conv_elementwise(self) -> None:
        for has_bias in (True, False):
            for conv_type in CONV_TYPES:
                for n in list(self.nodes):
                    if not n.removed and n.type == conv_type and self._conv_elementwise(n, has_bias):
                        self.reindex()

    def _conv_elementwise(self, n: Node, has_bias: bool) -> bool:
        d = n.desc
        bias_in = proto.op_inputs(d, "Bias")
        if bool(bias_in) != has_bias:
            return False
        out = proto.op_outputs(d, "Output")
        if len(out) != 1:
            return False
        sc = self.sole_consumer(out[0])
        if sc is None or sc[0].type != "elementwise_add" or sc[1] != "X":
            return False
        add = sc[0]
        ys = proto.op_inputs(add.desc, "Y")
        if len(ys) != 1:
            return False
        y = ys[0]
        if not self.persistable(y) or len(self.consumers(y)) != 1 or y in self.external:
            return False
        if has_bias and not self.only_used_by(bias_in[0], n):
            return False
        ydims = self.dims(y)
        wdims = self.dims(proto.op_inputs(d, "Filter")[0])
        if not ydims or len(ydims) != 1 or not wdims:
            return False
        groups = int(proto.get_attr(d, "groups", 1) or 1)
        cout = wdims[1] * groups if n.type == "conv2d_transpose" else wdims[0]
        if (has_bias and ydims[0] not in (cout, 1)) or (not has_bias and ydims[0] != cout):
            return False
        if has_bias and y in self.params and bias_in[0] in self.params:
            cb = self.params[bias_in[0]].astype(np.float32).reshape(-1)
            yb = np.broadcast_to(self.params[y].astype(np.float32).reshape(-1), cb.shape)
            self.params[y] = (yb + cb).astype(np.float32)
        thr = proto.get_attr(add.desc, "out_threshold")
        if thr is not None:
            proto.set_attr(d, "out_threshold", float(thr), "FLOAT")
        proto.set_input(d, "Bias", [y])
        proto.set_output(d, "Output", proto.op_outputs(add.desc, "Out"))
        self.merge(n, add)
        self.log.append(
            f"lite_conv_elementwise_fuse_pass: {n.type} + elementwise_add -> {n.type} {n.fused_from}"
        )
        return True

    def conv_bn(self) -> None:
        for has_bias in (True, False):
            for conv_type in CONV_TYPES:
                for bn_type in ("batch_norm", "sync_batch_norm"):
                    for n in list(self.nodes):
                        if not n.removed and n.type == conv_type and self._conv_bn(n, bn_type, has_bias):
                            self.reindex()

    def _conv_bn(self, n: Node, bn_type: str, has_bias: bool) -> bool:
        d = n.desc
        bias_in = proto.op_inputs(d, "Bias")
        if bool(bias_in) != has_bias:
            return False
        out = proto.op_outputs(d, "Output")
        if len(out) != 1:
            return False
        sc = self.sole_consumer(out[0])
        if sc is None or sc[0].type != bn_type or sc[1] != "X":
            return False
        bn = sc[0]
        bd = bn.desc
        for slot in ("Scale", "Mean", "Variance"):
            vs = proto.op_inputs(bd, slot)
            if len(vs) != 1 or not self.only_used_by(vs[0], bn):
                return False
        for slot in ("MeanOut", "VarianceOut", "SavedMean", "SavedVariance", "ReserveSpace"):
            for v in proto.op_outputs(bd, slot):
                if not self.only_used_by(v, bn):
                    return False
        if has_bias and not self.only_used_by(bias_in[0], n):
            return False
        wname = proto.op_inputs(d, "Filter")[0]
        scale_n = proto.op_inputs(bd, "Scale")[0]
        wdims, sdims = self.dims(wname), self.dims(scale_n)
        groups = int(proto.get_attr(d, "groups", 1) or 1)
        if wdims and sdims:
            cout = wdims[1] * groups if n.type == "conv2d_transpose" else wdims[0]
            if int(np.prod(sdims)) != cout:
                fatal(
                    f"Check failed: static_cast<size_t>(bn_scale_t->data_size()) == {cout}: The BN bias's "
                    "size "
                    "should be equal to the size of the first dim size of the conv weights",
                    "lite/core/optimizer/mir/fusion/conv_bn_fuser.cc",
                )
        bias_name = proto.op_inputs(bd, "Bias")[0]
        names = [
            wname,
            scale_n,
            bias_name,
            proto.op_inputs(bd, "Mean")[0],
            proto.op_inputs(bd, "Variance")[0],
        ]
        if all(x in self.params for x in names):
            w, s, b, m, var = (self.params[x].astype(np.float32) for x in names)
            eps = float(proto.get_attr(bd, "epsilon", 1e-5))
            alpha = s / np.sqrt(var + eps)
            if n.type == "conv2d_transpose":
                ci, cog = w.shape[0], w.shape[1]
                w = (w.reshape(groups, ci // groups, cog, -1) * alpha.reshape(groups, 1, cog, 1)).reshape(
                    w.shape
                )
            else:
                w = w * alpha.reshape(-1, *([1] * (w.ndim - 1)))
            newb = b - alpha * m
            if has_bias and bias_in[0] in self.params:
                newb = newb + alpha * self.params[bias_in[0]].astype(np.float32).reshape(-1)
            self.params[wname] = w.astype(np.float32)
            self.params[bias_name] = newb.astype(np.float32)
        proto.set_input(d, "Bias", [bias_name])
        proto.set_output(d, "Output", proto.op_outputs(bd, "Y"))
        self.merge(n, bn)
        self.log.append(f"lite_conv_bn_fuse_pass: {n.type} + {bn_type} -> {n.type} {n.fused_from}")
        return True

    def conv_conv(self) -> None:
        """lite_conv_conv_fuse_pass: conv2d -> 1x1 conv2d (groups 1, stride 1, no padding) becomes one conv2d with
        the composed weights."""
        for has_bias0 in (True, False):
            for has_bias1 in (True, False):
                for n in list(self.nodes):
                    if not n.removed and n.type == "conv2d" and self._conv_conv(n, has_bias0, has_bias1):
                        self.reindex()

    def _conv_conv(self, n: Node, has_bias0: bool, has_bias1: bool) -> bool:
        d0 = n.desc
        out = proto.op_outputs(d0, "Output")
        if len(out) != 1 or bool(proto.op_inputs(d0, "Bias")) != has_bias0:
            return False
        sc = self.sole_consumer(out[0])
        if sc is None or sc[0].type != "conv2d" or sc[1] != "Input":
            return False
        nxt = sc[0]
        d1 = nxt.desc
        if bool(proto.op_inputs(d1, "Bias")) != has_bias1:
            return False
        w0n, w1n = proto.op_inputs(d0, "Filter")[0], proto.op_inputs(d1, "Filter")[0]
        w0d, w1d = self.dims(w0n), self.dims(w1n)
        if not w0d or not w1d or len(w0d) != 4 or len(w1d) != 4:
            return False
        g0, g1 = (int(proto.get_attr(d, "groups", 1) or 1) for d in (d0, d1))
        oc0, oc1, ic1 = w0d[0], w1d[0], w1d[1] * g1
        if w1d[2:] != [1, 1] or g0 != 1 or g1 != 1 or oc0 != ic1:
            return False
        if proto.has_attr(d0, "enable_int8") or proto.has_attr(d1, "enable_int8"):
            return False
        # Newer sources also require ic0 * (oc1 - oc0) in (0, oc0 * oc1]; 2.13-rc does not (measured: mobilenetv3
        # fuses 96->40 then 40->128).
        for attr, want in (("strides", 1), ("paddings", 0), ("dilations", 1)):
            for i, v in enumerate(proto.get_attr(d1, attr, []) or []):
                if int(v) != want:
                    fatal(
                        f"Check failed: {attr}1[{i}] == {want} ({int(v)} vs. {want}) {attr}[{i}]: {int(v)} must "
                        f"be {want}",
                        "lite/core/optimizer/mir/fusion/conv_conv_fuser.cc",
                    )
        if w0n in self.params and w1n in self.params:
            w0, w1 = self.params[w0n].astype(np.float32), self.params[w1n].astype(np.float32)
            self.params[w0n] = np.einsum("oc,cikl->oikl", w1.reshape(oc1, oc0), w0).astype(np.float32)
        b0 = proto.op_inputs(d0, "Bias")
        b1 = proto.op_inputs(d1, "Bias")
        if b0 and b0[0] in self.params and w1n in self.params:
            w1 = self.params[w1n].astype(np.float32).reshape(oc1, oc0)
            nb = w1 @ self.params[b0[0]].astype(np.float32).reshape(-1)
            if b1 and b1[0] in self.params:
                nb = nb + self.params[b1[0]].astype(np.float32).reshape(-1)
                self.params[b1[0]] = nb.astype(np.float32)
                proto.set_input(d0, "Bias", b1)
            else:
                self.params[b0[0]] = nb.astype(np.float32)
        elif b1:
            proto.set_input(d0, "Bias", b1)
        proto.set_output(d0, "Output", proto.op_outputs(d1, "Output"))
        self.merge(n, nxt)
        self.log.append(f"lite_conv_conv_fuse_pass: conv2d + conv2d(1x1) -> conv2d {n.fused_from}")
        return True

    def sigmoid_elementmul(self) -> None:
        """lite_sigmoid_elementmul_fuse_pass (ARM/Host places): x * sigmoid(x) -> swish(x, beta=1)."""
        for n in list(self.nodes):
            if n.removed or n.type != "sigmoid":
                continue
            xs, outs = proto.op_inputs(n.desc, "X"), proto.op_outputs(n.desc, "Out")
            if len(xs) != 1 or len(outs) != 1:
                continue
            sc = self.sole_consumer(outs[0])
            if sc is None or sc[0].type != "elementwise_mul":
                continue
            mul = sc[0]
            operands = [a for s, a in proto.all_inputs(mul.desc) if s in ("X", "Y")]
            if sorted(operands) != sorted([xs[0], outs[0]]):
                continue
            d = proto.pb().OpDesc()
            d.type = "swish"
            proto.set_input(d, "X", xs)
            proto.set_output(d, "Out", proto.op_outputs(mul.desc, "Out"))
            proto.set_attr(d, "beta", 1.0, "FLOAT")
            n.desc = d
            self.merge(n, mul)
            self.log.append(f"lite_sigmoid_elementmul_fuse_pass: sigmoid + elementwise_mul -> swish {n.fused_from}")
            self.reindex()

    def flatten_fc(self) -> None:
        """lite_flatten_fc_fuse_pass: flatten_contiguous_range whose output only feeds an fc's Input is folded into
        the fc (which reads the flatten's input; in_num_col_dims is kept)."""
        for n in list(self.nodes):
            if n.removed or n.type != "flatten_contiguous_range":
                continue
            xs, outs = proto.op_inputs(n.desc, "X"), proto.op_outputs(n.desc, "Out")
            if len(xs) != 1 or len(outs) != 1:
                continue
            if any(not self.only_used_by(v, n) for v in proto.op_outputs(n.desc, "XShape")):
                continue
            sc = self.sole_consumer(outs[0])
            if sc is None or sc[0].type != "fc" or sc[1] != "Input":
                continue
            fc = sc[0]
            proto.set_input(fc.desc, "Input", xs)
            self.merge(fc, n)
            self.log.append(f"lite_flatten_fc_fuse_pass: flatten_contiguous_range + fc -> fc {fc.fused_from}")
            self.reindex()

    def conv_elementwise_tree(self) -> None:
        """lite_conv_elementwise_tree_fuse_pass (OpenCL): a 1x1 conv2d whose output is only the Y of an
        elementwise_add (axis -1, no activation but relu) of the same shape takes the add's X as `SecondInput`."""
        for _ in (True, False):  # prelu-alpha / bias variants of the real pass share one matcher here
            for elementwise_type in ("elementwise_add", "fusion_elementwise_add_activation"):
                for n in list(self.nodes):
                    if not n.removed and n.type == "conv2d" and self._conv_tree(n, elementwise_type):
                        self.reindex()

    def _conv_tree(self, n: Node, elementwise_type: str) -> bool:
        d = n.desc
        out = proto.op_outputs(d, "Output")
        if len(out) != 1 or proto.has_attr(d, "fuse_elementwise_op_type"):
            return False
        filt = proto.op_inputs(d, "Filter")
        if len(filt) != 1 or not self.persistable(filt[0]):
            return False
        sc = self.sole_consumer(out[0])
        if sc is None or sc[0].type != elementwise_type or sc[1] != "Y":
            return False
        add = sc[0]
        ad = add.desc
        act = proto.get_attr(ad, "act_type", None) if proto.has_attr(ad, "act_type") else None
        if int(proto.get_attr(ad, "axis", -1)) != -1 or proto.has_attr(ad, "fuse_scale") or act not in (None, "relu"):
            return False
        xs, add_out = proto.op_inputs(ad, "X"), proto.op_outputs(ad, "Out")
        if len(xs) != 1 or len(add_out) != 1:
            return False
        conv_dims, add_dims = proto.var_dims(self.vars.get(out[0])), proto.var_dims(self.vars.get(add_out[0]))
        if conv_dims != add_dims or (self.dims(filt[0]) or [0, 0, 0, 0])[2:] != [1, 1]:
            return False
        proto.set_attr(d, "fuse_elementwise_op_type", elementwise_type, "STRING")
        proto.set_input(d, "SecondInput", xs)
        proto.set_output(d, "Output", add_out)
        self.merge(n, add)
        self.log.append(f"lite_conv_elementwise_tree_fuse_pass: conv2d + {elementwise_type} -> conv2d {n.fused_from}")
        return True

    def conv_activation(self, acts: list[str], has_arm: bool, has_opencl: bool) -> None:
        for conv_type in CONV_TYPES:
            for act in acts:
                if act == "hard_swish" and has_arm and not has_opencl and conv_type == "depthwise_conv2d":
                    continue  # ARM has no depthwise conv + hard_swish kernel
                for n in list(self.nodes):
                    if not n.removed and n.type == conv_type and self._conv_act(n, act):
                        self.reindex()

    def _conv_act(self, n: Node, act_type: str) -> bool:
        d = n.desc
        out = proto.op_outputs(d, "Output")
        if len(out) != 1:
            return False
        sc = self.sole_consumer(out[0])
        if sc is None or sc[0].type != act_type or sc[1] != "X":
            return False
        act = sc[0]
        ad = act.desc
        if act_type == "prelu" and not proto.op_inputs(ad, "Alpha"):
            return False
        proto.set_output(d, "Output", proto.op_outputs(ad, "Out"))
        proto.set_attr(d, "with_act", True)
        proto.set_attr(d, "act_type", act_type)
        thr = proto.get_attr(ad, "out_threshold")
        if thr is not None:
            proto.set_attr(d, "out_threshold", float(thr), "FLOAT")

        def f(name: str, default: float) -> float:
            return float(proto.get_attr(ad, name, default))

        if act_type == "relu":
            proto.set_attr(d, "fuse_relu", True)
        elif act_type == "relu6":
            proto.set_attr(d, "fuse_brelu_threshold", f("threshold", 6.0), "FLOAT")
        elif act_type == "leaky_relu":
            proto.set_attr(d, "leaky_relu_alpha", f("alpha", 0.02), "FLOAT")
        elif act_type == "hard_swish":
            proto.set_attr(d, "hard_swish_threshold", f("threshold", 6.0), "FLOAT")
            proto.set_attr(d, "hard_swish_scale", f("scale", 6.0), "FLOAT")
            proto.set_attr(d, "hard_swish_offset", f("offset", 3.0), "FLOAT")
        elif act_type == "hard_sigmoid":
            proto.set_attr(d, "slope", f("slope", 0.2), "FLOAT")
            proto.set_attr(d, "offset", f("offset", 0.5), "FLOAT")
        elif act_type == "prelu":
            proto.set_attr(d, "prelu_mode", str(proto.get_attr(ad, "mode", "channel")), "STRING")
            proto.set_input(d, "Prelu_alpha", proto.op_inputs(ad, "Alpha"))
        elif act_type == "sigmoid":
            proto.set_attr(d, "fuse_sigmoid", True)
        elif act_type == "tanh":
            proto.set_attr(d, "fuse_tanh", True)
        elif act_type == "swish":
            proto.set_attr(d, "swish_scale", f("beta", 1.0), "FLOAT")
            proto.set_attr(d, "fuse_swish", True)
        elif act_type == "abs":
            proto.set_attr(d, "fuse_abs", True)
        self.merge(n, act)
        self.log.append(f"lite_conv_activation_fuse_pass: {n.type} + {act_type} -> {n.type} {n.fused_from}")
        return True

    def fc(self, mul_types: list[str], act_types: list[str]) -> None:
        for op_type in mul_types:
            for act in act_types:
                for n in list(self.nodes):
                    if not n.removed and n.type == op_type and self._fc(n, act):
                        self.reindex()

    def _fc(self, n: Node, act: str) -> bool:
        d = n.desc
        xs, ws, outs = proto.op_inputs(d, "X"), proto.op_inputs(d, "Y"), proto.op_outputs(d, "Out")
        if len(xs) != 1 or len(ws) != 1 or len(outs) != 1:
            return False
        w = ws[0]
        wd = self.dims(w)
        if not self.persistable(w) or not wd or len(wd) != 2:
            return False
        if n.type in ("matmul", "matmul_v2"):
            tx, ty = ("transpose_X", "transpose_Y") if n.type == "matmul" else ("trans_x", "trans_y")
            alpha = float(proto.get_attr(d, "alpha", 1.0))
            if proto.get_attr(d, tx, False) or proto.get_attr(d, ty, False) or abs(alpha - 1.0) > 1e-8:
                return False
        sc = self.sole_consumer(outs[0])
        if sc is None or sc[0].type != "elementwise_add":
            return False
        add = sc[0]
        other = [a for s, a in proto.all_inputs(add.desc) if a != outs[0] and s in ("X", "Y")]
        if len(other) != 1 or not self.persistable(other[0]):
            return False
        b = other[0]
        yd = self.dims(proto.op_inputs(add.desc, "Y")[0])
        if not yd or len(yd) not in (1, 2):
            return False
        add_out = proto.op_outputs(add.desc, "Out")
        gone = [add]
        final_out = add_out
        act_node = None
        if act:
            sc2 = self.sole_consumer(add_out[0]) if len(add_out) == 1 else None
            if sc2 is None or sc2[0].type != act:
                return False
            act_node = sc2[0]
            gone.append(act_node)
            final_out = proto.op_outputs(act_node.desc, "Out")
        bd = self.dims(b)
        if not bd or (len(bd) == 2 and bd[0] != 1) or bd[-1] != wd[1]:
            return False  # real opt: LOG(WARNING) ... eleminate failed
        fc = proto.pb().OpDesc()
        fc.CopyFrom(d)
        proto.clear_slots(fc)
        fc.type = "fc"
        proto.set_input(fc, "Input", xs)
        proto.set_input(fc, "W", [w])
        proto.set_input(fc, "Bias", [b])
        proto.set_output(fc, "Out", final_out)
        ncd = int(proto.get_attr(d, "x_num_col_dims", 1)) if n.type == "mul" else 1
        proto.set_attr(fc, "in_num_col_dims", ncd, "INT")
        proto.set_attr(fc, "op_type", n.type, "STRING")
        if act:
            proto.set_attr(fc, "activation_type", act, "STRING")
            if act == "relu6" and act_node is not None:
                proto.set_attr(fc, "alpha", float(proto.get_attr(act_node.desc, "threshold", 6.0)), "FLOAT")
        n.desc = fc
        self.merge(n, *gone)
        self.log.append(
            f"lite_fc_fuse_pass: {'+'.join([d.type, 'elementwise_add', *([act] if act else [])])} "
            f"-> fc {n.fused_from}"
        )
        return True

    def elementwise_activation(self, acts: list[str]) -> None:
        for elt in ("elementwise_add", "elementwise_sub", "elementwise_mul"):
            for act in acts:
                for n in list(self.nodes):
                    if not n.removed and n.type == elt and self._elt_act(n, act):
                        self.reindex()

    def _elt_act(self, n: Node, act_type: str) -> bool:
        d = n.desc
        outs = proto.op_outputs(d, "Out")
        if len(outs) != 1 or not proto.op_inputs(d, "X") or not proto.op_inputs(d, "Y"):
            return False
        sc = self.sole_consumer(outs[0])
        if sc is None or sc[0].type != act_type or sc[1] != "X":
            return False
        act = sc[0]
        old = d.type
        d.type = f"fusion_{old}_activation"
        proto.set_attr(d, "act_type", act_type, "STRING")
        proto.set_output(d, "Out", proto.op_outputs(act.desc, "Out"))
        self.merge(n, act)
        self.log.append(
            f"lite_elementwise_activation_fuse_pass: {old} + {act_type} -> {d.type} {n.fused_from}"
        )
        return True


# ---------------------------------------------------------------- memory config


def parse_memory_config(
    text: str,
) -> tuple[list[tuple[str, list[str], list[str]]], list[tuple[str, list[str], list[str]]]]:
    """Split an OPENCL_MEMORY_CONFIG_FILE into (cpu rules, gpu-buffer rules) of (op_type, inputs, outputs)."""
    cpu: list[tuple[str, list[str], list[str]]] = []
    buf: list[tuple[str, list[str], list[str]]] = []
    section: list | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("device:cpu"):
            section = cpu
            continue
        if line.startswith("device:gpu buffer"):
            section = buf
            continue
        if section is None or line.startswith("input shape") or line.startswith("gpu:"):
            continue
        parts = line.split(":")
        ins = [x for x in parts[1].split(",") if x] if len(parts) > 1 else []
        outs = [x for x in parts[2].split(",") if x] if len(parts) > 2 else []
        section.append((parts[0], ins, outs))
    return cpu, buf


def _rule_matches(n: Node, rule: tuple[str, list[str], list[str]]) -> bool:
    op_type, ins, outs = rule
    if n.type != op_type:
        return False
    in_names = {a for _, a in proto.all_inputs(n.desc)}
    out_names = {a for _, a in proto.all_outputs(n.desc)}
    return bool(in_names) and all(x in in_names for x in ins) and all(x in out_names for x in outs)


# ---------------------------------------------------------------- placement


def _image_needs_cpu(g: _Graph, n: Node) -> bool:
    """CorrectArgumentPlace: cases the Image2D kernels cannot take, moved to the CPU."""
    d = n.desc
    t = n.type
    if t in _NO_PERSISTABLE_X and any(g.persistable(x) for x in proto.op_inputs(d, "X")):
        return True
    if t == "slice" and any(g.persistable(x) for x in proto.op_inputs(d, "Input")):
        return True
    for slot, a in proto.all_outputs(d):
        dims = proto.var_dims(g.vars.get(a))
        if slot != "XShape" and dims is not None and len(dims) >= 5:
            return True
    for _, a in proto.all_inputs(d):
        dims = g.dims(a)
        if dims is not None and len(dims) >= 5:
            return True
    fp = proto.pb().VarType
    for x in proto.op_inputs(d, "X"):
        dt = proto.var_dtype(g.vars.get(x))
        if dt is not None and dt not in (fp.FP32, fp.FP16):
            return True
    if t in _REDUCE_KEEPDIM and not any(proto.get_attr(d, k, False) for k in ("keep_dim", "keepdims")):
        return True
    if t == "split" and len(proto.all_outputs(d)) != 2:
        return True
    if t == "gather":
        for x in proto.op_inputs(d, "X"):
            dims = g.dims(x)
            if dims is not None and len(dims) != 2:
                return True
    return False


def _place(g: _Graph, enable_fp16: bool, memory_config: str | None) -> None:
    primary = next((t for t in g.targets if t in SIMULATED_TARGETS), "arm")
    cpu_rules, buf_rules = (
        parse_memory_config(memory_config) if (memory_config and "opencl" in g.targets) else ([], [])
    )
    # Users report that OPENCL_MEMORY_CONFIG_FILE did not always take effect: PADDLELITE_SIM_MEMORY_CONFIG_IGNORED
    # (comma-separated op types) makes the simulator ignore the device:cpu rules of those ops.
    ignored = {x for x in os.environ.get("PADDLELITE_SIM_MEMORY_CONFIG_IGNORED", "").split(",") if x}
    for n in g.nodes:
        t = n.type
        if t in ("feed", "fetch"):
            n.place = "host"
            continue
        if primary == "opencl":
            cpu = t not in ignored and any(_rule_matches(n, r) for r in cpu_rules)
            n.buffer = not cpu and t in OPENCL_KERNELS and any(_rule_matches(n, r) for r in buf_rules)
            # CorrectArgumentPlace's image rules only apply to Image2D kernels; buffer kernels keep the rule
            # about persistable inputs.
            if t in OPENCL_BUFFER_OPS and not n.buffer:
                fits = not (t in _NO_PERSISTABLE_X and any(g.persistable(x) for x in proto.op_inputs(n.desc, "X")))
            else:
                fits = n.buffer or not _image_needs_cpu(g, n)
            if not cpu and t in OPENCL_KERNELS and fits:
                n.place = "opencl"
            else:
                n.place = "host" if (t in ARM_HOST_OPS or t in HOST_KERNELS) else "arm"
                n.buffer = False
        elif primary == "x86":
            n.place = "x86"
        else:
            # "arm" first in valid_targets: ARM kernels win the static kernel pick even if opencl is listed.
            n.place = "host" if t in HOST_KERNELS or t in ARM_PLACED_ON_HOST else "arm"
        n.fp16 = n.place == "arm" and enable_fp16 and t in ARM_FP16_KERNELS


def opencl_layout(n: Node) -> str:
    """The layout an OpenCL kernel reads and writes: NCHW buffer, ImageDefault or ImageFolder image."""
    if n.buffer or n.type in OPENCL_BUFFER_OPS:
        return "NCHW"
    return "ImageFolder" if n.type in OPENCL_IMAGE_FOLDER else "ImageDefault"


def kernel_type(n: Node) -> str:
    t = n.type
    if n.place == "opencl":
        layout = opencl_layout(n)
        if layout == "NCHW":
            return f"{t}/def/5/{_FP32 if n.buffer else _ANY_P}/{_NCHW}"
        alias = "def" if t in OPENCL_DEF_ALIAS else "ImageDefault" if t in OPENCL_IMAGEDEFAULT_ALIAS else "image2d"
        return f"{t}/{alias}/5/{_FP16}/{_LAYOUT_CODE[layout]}"
    if n.place == "host":
        precision, layout = HOST_RECORDS.get(t, (_ANY_P, _ANY_L))
        return f"{t}/def/1/{precision}/{layout}"
    if n.place == "x86":
        return f"{t}/def/2/{_FP32}/{_NCHW}"
    if t in ARM_ANY_PRECISION and not n.fp16:
        return f"{t}/{'fp32' if t == 'arg_max' else 'def'}/4/{_ANY_P}/{_NCHW}"
    return f"{t}/def/4/{_FP16 if n.fp16 else _FP32}/{_NCHW}"


# ---------------------------------------------------------------- io_copy / layout glue


def _insert_glue(g: _Graph) -> list[Node]:
    fp = proto.pb().VarType
    out: list[Node] = []
    loc: dict[str, tuple[str, str]] = {}  # var -> (side "host"|"device", layout "NCHW"|"ImageDefault"|"ImageFolder")
    cache: dict[tuple[str, str, str], str] = {}
    new_vars: list[tuple[str, str]] = []  # (new name, source var)

    def is_float(v: str) -> bool:
        return proto.var_dtype(g.vars.get(v)) in (fp.FP32, fp.FP16)

    def same_layout(v: str, a: str, b: str) -> bool:
        # Measured: ImageDefault and ImageFolder images of a tensor of rank >= 3 are read as they are; only
        # rank <= 2 tensors get an ImageDefault <-> ImageFolder layout op.
        dims = proto.var_dims(g.vars.get(v))
        return a == b or ({a, b} == {"ImageDefault", "ImageFolder"} and (dims is None or len(dims) >= 3))

    def glue(kind: str, src: str, dst: str, kernel: str) -> Node:
        d = proto.pb().OpDesc()
        d.type = kind
        proto.set_input(d, "Input", [src])
        proto.set_output(d, "Out", [dst])
        if kind == "layout":
            proto.set_attr(d, "process_type", 0, "INT")
        n = Node(d, [], place="opencl")
        proto.set_attr(d, KERNEL_ATTR, kernel, "STRING")
        return n

    def layout_op(v: str, cur: str, src: str, dst: str) -> str:
        nxt = f"{cur}/layout_trans"
        alias = f"{src}_to_{dst}"
        out.append(glue("layout", cur, nxt, f"layout/{alias}/5/{_ANY_P}/{_LAYOUT_CODE[dst]}"))
        new_vars.append((nxt, v))
        return nxt

    def convert(v: str, want_side: str, want_layout: str) -> str:
        """v as the reader needs it; every intermediate form is made once and shared (an ImageFolder output read
        by a buffer kernel and by the fetch gets one layout op, then the io_copy reads its output)."""
        key = (v, want_side, want_layout)
        if key in cache:
            return cache[key]
        side, layout = loc[v]
        cur = v
        if side == "device" and want_side == "host":
            src = convert(v, "device", "NCHW")
            cur = f"{v}/target_trans"
            out.append(glue("io_copy", src, cur, f"io_copy/device_to_host/5/{_ANY_P}/{_ANY_L}"))
            new_vars.append((cur, v))
        elif side == "host" and want_side == "device":
            cur = f"{v}/target_trans"
            out.append(glue("io_copy", v, cur, f"io_copy/host_to_device/5/{_ANY_P}/{_ANY_L}"))
            new_vars.append((cur, v))
            cache[(v, "device", "NCHW")] = cur
            if want_layout != "NCHW":
                cur = layout_op(v, cur, "NCHW", want_layout)
        elif side == "device" and not same_layout(v, layout, want_layout):
            cur = layout_op(v, cur, layout, want_layout)
        cache[key] = cur
        return cur

    for n in g.nodes:
        side = "device" if n.place == "opencl" else "host"
        layout = opencl_layout(n) if side == "device" else "NCHW"
        host_args = {a for slot, a in proto.all_inputs(n.desc) if (n.type, slot) in OPENCL_HOST_SLOTS}
        for v in dict.fromkeys(a for _, a in proto.all_inputs(n.desc)):
            if v not in loc or g.persistable(v) or (side == "device" and v in host_args):
                continue
            want = layout if is_float(v) else "NCHW"
            cur_side, cur_layout = loc[v]
            if cur_side != side or (side == "device" and not same_layout(v, cur_layout, want)):
                proto.rename_input(n.desc, v, convert(v, side, want))
        out.append(n)
        for _, v in proto.all_outputs(n.desc):
            loc[v] = (side, layout if side == "device" and is_float(v) else "NCHW")
    for name, src in new_vars:
        if name not in g.vars and src in g.vars:
            g.vars[name] = proto.add_var_like(g.block, g.vars[src], name)
    return out


# ---------------------------------------------------------------- driver


def optimize(
    program: Any,
    params: dict[str, np.ndarray],
    valid_places: list[tuple[str, str, str]],
    enable_fp16: bool = False,
    memory_config: str | None = None,
) -> Optimized:
    """Run the simulated passes on a copy of `program`; `params` is not modified."""
    targets = targets_from_valid_places(valid_places)
    prog = proto.pb().ProgramDesc()
    prog.CopyFrom(program)
    log: list[str] = []
    g = _Graph(prog, {k: v.copy() for k, v in params.items()}, targets, log)
    has_arm = any(t == "arm" for t, _, _ in valid_places)
    has_opencl = "opencl" in targets
    has_x86 = "x86" in targets

    conv_acts = ["relu"]
    if has_arm:
        conv_acts += ["relu6", "leaky_relu", "hard_swish"]
    if has_opencl:
        conv_acts += [
            "relu6",
            "leaky_relu",
            "hard_swish",
            "hard_sigmoid",
            "prelu",
            "sigmoid",
            "tanh",
            "swish",
            "abs",
        ]
    if has_x86:
        conv_acts += ["relu", "relu6", "leaky_relu", "hard_swish"]
    conv_acts = list(dict.fromkeys(conv_acts))
    fc_acts: list[str] = []
    for t, _, _ in valid_places:
        fc_acts.append("relu")
        if t == "arm":
            fc_acts.append("relu6")
    fc_acts = list(dict.fromkeys([*fc_acts, ""]))
    mul_types = ["mul"] + (["matmul", "matmul_v2"] if has_arm else [])
    elt_acts = ["relu"] + ([] if has_arm else ["abs", "tanh"]) + (["relu6", "gelu"] if has_opencl else [])

    if has_opencl:  # measured on 2.13-rc: folded with OpenCL places; on ARM the reshape stays a Host op
        g.reshape_calc_offline()
    if has_opencl:  # remove_scale1_pass binds to OpenCL (and Metal) only
        g.remove_scale1()
    # Same order as RunDefaultOptimizer: conv-elemwise-bn, conv-bn-elemwise, conv-conv, sigmoid-mul, activations,
    # fc, identity scale, flatten-fc, elemwise-act, conv-elemwise-tree.
    g.conv_elementwise()
    if len(prog.blocks) == 1:  # the real optimizer skips conv+bn fusion for multi-block programs
        g.conv_bn()
    g.conv_elementwise()
    g.conv_conv()
    if has_arm:  # lite_sigmoid_elementmul_fuse_pass binds to ARM/Host
        g.sigmoid_elementmul()
    g.conv_activation(conv_acts, has_arm, has_opencl)
    g.fc(mul_types, fc_acts)
    g.identity_scale_eliminate()
    g.flatten_fc()
    g.elementwise_activation(elt_acts)
    if has_opencl:
        g.conv_elementwise_tree()

    _place(g, enable_fp16, memory_config)
    nodes = _insert_glue(g) if any(n.place == "opencl" for n in g.nodes) else g.nodes

    block = prog.blocks[0]
    del block.ops[:]
    for n in nodes:
        d = n.desc
        proto.remove_attr(d, "op_callstack")  # huge and useless here, as in Lite's own cpp::OpDesc
        proto.set_attr(d, FUSED_FROM_ATTR, list(n.fused_from), "INTS")
        if n.eliminated:
            proto.set_attr(d, ELIMINATED_ATTR, sorted(n.eliminated), "INTS")
        proto.set_attr(d, PLACE_ATTR, n.place, "STRING")
        if not proto.has_attr(d, KERNEL_ATTR):
            proto.set_attr(d, KERNEL_ATTR, kernel_type(n), "STRING")
        block.ops.add().CopyFrom(d)

    # Drop vars that no op references any more (fused-away intermediates and folded BN statistics).
    used: set[str] = {"feed", "fetch"}
    for b in prog.blocks:
        for op in b.ops:
            used.update(a for _, a in proto.all_inputs(op))
            used.update(a for _, a in proto.all_outputs(op))
    keep = [v for v in block.vars if v.name in used]
    del block.vars[:]
    for v in keep:
        block.vars.add().CopyFrom(v)
    out_params = {k: v for k, v in g.params.items() if k in used}
    return Optimized(prog, out_params, log)


def describe_valid_places(targets: list[str], enable_fp16: bool) -> list[tuple[str, str, str]]:
    """OptBase::SetValidPlaces: the Place list each valid_targets entry expands to."""
    places: list[tuple[str, str, str]] = []
    for t in targets:
        if t == "arm":
            if enable_fp16:
                places.append(("arm", "fp16", "nchw"))
            places += [
                ("arm", "float", "nchw"),
                ("arm", "int32", "nchw"),
                ("arm", "int64", "nchw"),
                ("arm", "any", "nchw"),
            ]
        elif t == "opencl":
            places += [
                ("opencl", "fp16", "image_default"),
                ("opencl", "float", "nchw"),
                ("opencl", "any", "image_default"),
                ("opencl", "any", "nchw"),
                ("opencl", "int32", "nchw"),
                ("arm", "float", "nchw"),
            ]
        elif t == "x86":
            places += [
                ("x86", "float", "nchw"),
                ("x86", "int64", "nchw"),
                ("x86", "int8", "nchw"),
                ("x86", "any", "nchw"),
            ]
    return places
