"""Fault injection: simulated kernel bugs, configured through PADDLELITE_SIM_FAULTS.

PADDLELITE_SIM_FAULTS is either inline JSON (starts with '[' or '{') or the path of a JSON file holding a list
of fault objects (a single object, or {"faults": [...]}, is accepted too). It is read when a predictor is
created. Keys of a fault object:

  op_type      (required) type of the OPTIMISED op whose kernel is buggy: "conv2d" (also fused conv+bn+act),
               "fc", "fusion_elementwise_add_activation", "relu", "arg_max", "io_copy", "layout", ...
  kind         (required) offset | scale | zero_channel | nan | transpose_hw | border | crash | second_run |
               int64_garbage
  place        "opencl" | "arm" | "any" (default "any"); "arm" matches every CPU placement (arm and host)
  when_fused   "fused" (the op covers >1 original op) | "unfused"; omitted: either
  output_slot  output parameter to corrupt (default: the first of Out, Output, Y that the op has)
  output_index index inside that slot (default: every argument of the slot)
  output_var   only the op that writes this var (an original var name)
  match_attrs  {attr: value} that the optimised op's attributes must equal (lists compare element-wise,
               numbers with 1e-6 tolerance)
  precision    "fp16" | "fp32": only when the OpenCL runtime precision is that (OpenCL ops only)
  when_tuned   true | false: only when set_opencl_tune(...) mode is / is not CL_TUNE_NONE
  value        offset: added (default 1.0); scale: factor (default 2.0); border: added (default 1.0)
  channel      zero_channel: channel index (default 0);  axis: zero_channel axis (default 1)
  index        nan: flat element index (default 0)
  mode         transpose_hw: "nhwc_as_nchw" (default: NHWC data read back as NCHW) | "swap_hw" (swaps H and W
               when H == W, else nhwc_as_nchw)
  width        border: border width in elements (default 1)
  effect       second_run: the kind applied from the second run() on (default "offset", with the same
               parameter keys as that kind); from_run: first corrupted run (default 2)
  message      crash: text of the simulated CHECK failure

Semantics: a fault fires for every optimised op that matches all given conditions, after placement (so an op
moved to the CPU by OPENCL_MEMORY_CONFIG_FILE no longer matches place "opencl"). It transforms the op's output
before anything downstream reads it, so the error propagates like a wrong kernel's would. For a fused op the
output is the fused op's output (e.g. the relu output of conv+bn+relu). io_copy/layout faults corrupt only
what the consumers on the other side of that boundary see. A "crash" fault aborts the process (SIGABRT,
after a "[F ...] Check failed" line) when run() executes a model containing a matching op.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KINDS = (
    "offset",
    "scale",
    "zero_channel",
    "nan",
    "transpose_hw",
    "border",
    "crash",
    "second_run",
    "int64_garbage",
)
_KEYS = {
    "op_type",
    "kind",
    "place",
    "when_fused",
    "output_slot",
    "output_index",
    "output_var",
    "match_attrs",
    "precision",
    "when_tuned",
    "value",
    "channel",
    "axis",
    "index",
    "mode",
    "width",
    "effect",
    "from_run",
    "message",
    "comment",
    "name",
}


class FaultConfigError(ValueError):
    pass


@dataclass
class Fault:
    op_type: str
    kind: str
    place: str = "any"
    when_fused: str | None = None
    output_slot: str | None = None
    output_index: int | None = None
    output_var: str | None = None
    match_attrs: dict[str, Any] = field(default_factory=dict)
    precision: str | None = None
    when_tuned: bool | None = None
    params: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)  # the JSON object, for messages

    def describe(self) -> str:
        return json.dumps(self.spec, sort_keys=True)


def _parse_one(obj: Any) -> Fault:
    if not isinstance(obj, dict):
        raise FaultConfigError(f"a fault must be a JSON object, got {obj!r}")
    unknown = set(obj) - _KEYS
    if unknown:
        raise FaultConfigError(f"unknown fault keys {sorted(unknown)} in {obj}")
    for k in ("op_type", "kind"):
        if not isinstance(obj.get(k), str):
            raise FaultConfigError(f"fault needs a string '{k}': {obj}")
    kind = obj["kind"]
    if kind not in KINDS:
        raise FaultConfigError(f"unknown fault kind '{kind}' (one of {', '.join(KINDS)})")
    place = obj.get("place", "any")
    if place not in ("opencl", "arm", "any"):
        raise FaultConfigError(f"fault place must be opencl, arm or any: {obj}")
    wf = obj.get("when_fused")
    if wf not in (None, "fused", "unfused"):
        raise FaultConfigError(f"when_fused must be 'fused' or 'unfused': {obj}")
    prec = obj.get("precision")
    if prec not in (None, "fp16", "fp32"):
        raise FaultConfigError(f"precision must be 'fp16' or 'fp32': {obj}")
    if kind == "second_run" and obj.get("effect", "offset") not in (*KINDS[:6], "int64_garbage"):
        raise FaultConfigError(f"second_run effect must be a data-corrupting kind: {obj}")
    ma = obj.get("match_attrs") or {}
    if not isinstance(ma, dict):
        raise FaultConfigError(f"match_attrs must be an object: {obj}")
    params = {
        k: obj[k]
        for k in ("value", "channel", "axis", "index", "mode", "width", "effect", "from_run", "message")
        if k in obj
    }
    oi = obj.get("output_index")
    return Fault(
        op_type=obj["op_type"],
        kind=kind,
        place=place,
        when_fused=wf,
        output_slot=obj.get("output_slot"),
        output_index=None if oi is None else int(oi),
        output_var=obj.get("output_var"),
        match_attrs=ma,
        precision=prec,
        when_tuned=obj.get("when_tuned"),
        params=params,
        spec=dict(obj),
    )


def parse_faults(text: str) -> list[Fault]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise FaultConfigError(f"PADDLELITE_SIM_FAULTS is not valid JSON: {e}") from e
    if isinstance(data, dict) and "faults" in data:
        data = data["faults"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise FaultConfigError("PADDLELITE_SIM_FAULTS must hold a list of fault objects")
    return [_parse_one(x) for x in data]


def faults_from_env() -> list[Fault]:
    raw = os.environ.get("PADDLELITE_SIM_FAULTS", "").strip()
    if not raw:
        return []
    if raw[0] in "[{":
        return parse_faults(raw)
    try:
        with open(raw, encoding="utf-8") as f:
            return parse_faults(f.read())
    except OSError as e:
        raise FaultConfigError(f"cannot read PADDLELITE_SIM_FAULTS file {raw!r}: {e}") from e


def _attr_equal(have: Any, want: Any) -> bool:
    if isinstance(want, (list, tuple)):
        return (
            isinstance(have, (list, tuple))
            and len(have) == len(want)
            and all(_attr_equal(h, w) for h, w in zip(have, want, strict=True))
        )
    if isinstance(want, bool) or isinstance(have, bool):
        return bool(have) == bool(want) and type(have) is type(want)
    if isinstance(want, (int, float)) and isinstance(have, (int, float)):
        return abs(float(have) - float(want)) <= 1e-6 * max(1.0, abs(float(want)))
    return have == want


def matches(
    f: Fault,
    *,
    op_type: str,
    place: str,
    fused: bool,
    attrs: dict[str, Any],
    outputs: list[str],
    fp16: bool,
    tuned: bool,
) -> bool:
    if f.op_type != op_type:
        return False
    if f.place == "opencl" and place != "opencl":
        return False
    if f.place == "arm" and place not in ("arm", "host"):
        return False
    if (f.when_fused == "fused" and not fused) or (f.when_fused == "unfused" and fused):
        return False
    if f.precision is not None and (place != "opencl" or (f.precision == "fp16") != fp16):
        return False
    if f.when_tuned is not None and bool(f.when_tuned) != tuned:
        return False
    if f.output_var is not None and f.output_var not in outputs:
        return False
    return all(k in attrs and _attr_equal(attrs[k], v) for k, v in f.match_attrs.items())


# ---------------------------------------------------------------- numpy transforms


def _nhwc_as_nchw(x: np.ndarray) -> np.ndarray:
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(x.shape)
    if x.ndim == 3:
        return np.ascontiguousarray(x.transpose(1, 2, 0)).reshape(x.shape)
    return x  # no spatial dims: a layout bug is invisible


def apply(kind: str, params: dict[str, Any], x: np.ndarray, run_index: int) -> np.ndarray:
    """The corrupted version of output `x` at the run_index-th run() (1-based)."""
    x = np.array(x, copy=True)
    isfloat = np.issubdtype(x.dtype, np.floating)
    if kind == "offset":
        v = float(params.get("value", 1.0))
        return (x + (v if isfloat else int(v))).astype(x.dtype)
    if kind == "scale":
        v = float(params.get("value", 2.0))
        return (x * (v if isfloat else int(v))).astype(x.dtype)
    if kind == "zero_channel":
        axis = int(params.get("axis", 1))
        ch = int(params.get("channel", 0))
        if x.ndim == 0:
            return x
        axis = axis if axis < x.ndim else x.ndim - 1
        if ch < x.shape[axis]:
            idx = [slice(None)] * x.ndim
            idx[axis] = ch
            x[tuple(idx)] = 0
        return x
    if kind == "nan":
        if isfloat and x.size:
            x.reshape(-1)[int(params.get("index", 0)) % x.size] = np.nan
        return x
    if kind == "transpose_hw":
        mode = params.get("mode", "nhwc_as_nchw")
        if mode == "swap_hw" and x.ndim >= 3 and x.shape[-1] == x.shape[-2]:
            return np.ascontiguousarray(np.swapaxes(x, -1, -2))
        return _nhwc_as_nchw(x)
    if kind == "border":
        if x.ndim < 2:
            return x
        w = max(1, int(params.get("width", 1)))
        v = float(params.get("value", 1.0))
        mask = np.zeros(x.shape[-2:], dtype=bool)
        mask[:w, :] = mask[-w:, :] = mask[:, :w] = mask[:, -w:] = True
        return np.where(mask, x + (v if isfloat else int(v)), x).astype(x.dtype)
    if kind == "int64_garbage":
        if x.dtype != np.int64:
            return x
        # An int64 result read back as if its 32-bit halves both held the value.
        return (x << 32) | (x & 0xFFFFFFFF)
    if kind == "second_run":
        if run_index >= int(params.get("from_run", 2)):
            return apply(str(params.get("effect", "offset")), params, x, run_index)
        return x
    if kind == "crash":
        return x
    raise FaultConfigError(f"unknown fault kind {kind}")
