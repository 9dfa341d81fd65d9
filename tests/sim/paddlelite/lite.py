"""Simulated `paddlelite.lite` (the pybind module of the `paddlelite` wheel) for hosts without Paddle-Lite.

Mirrors lite/api/python/pybind/pybind.cc: class, method and enum names, positional-only arguments (the
bindings declare no py::arg, so keywords and omitted C++ defaults raise TypeError), and fatal errors that
abort the process. It simulates an ARM + OpenCL build: `opt` writes the simulator's own .nb container and
the light predictor executes it on Paddle Inference with fp16 emulation and injectable faults. See
tests/sim/README.md.
"""

from __future__ import annotations

import enum
import os
import traceback
from typing import Any

import numpy as np

from ._sim import executor, model_io, nbformat, opt_core, optimizer
from ._sim import faults as _faults
from ._sim import proto as _proto
from ._sim.log import fatal, version, warn

__all__ = [
    "CLPrecisionType",
    "CLTuneMode",
    "CxxConfig",
    "CxxPredictor",
    "DataLayoutType",
    "LightPredictor",
    "MLUCoreVersion",
    "MobileConfig",
    "Opt",
    "Place",
    "PowerMode",
    "PrecisionType",
    "TargetType",
    "Tensor",
    "create_paddle_predictor",
]


class _PyEnum(enum.Enum):
    """pybind11 py::enum_ look-alike: not an int, but int()/index() work; str() is 'Type.NAME'."""

    def __int__(self) -> int:
        return int(self.value)

    def __index__(self) -> int:
        return int(self.value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class TargetType(_PyEnum):
    Unk = 0
    Host = 1
    X86 = 2
    CUDA = 3
    ARM = 4
    OpenCL = 5
    Any = 6
    FPGA = 7
    NPU = 8
    XPU = 9
    BM = 10
    MLU = 11
    RKNPU = 12
    APU = 13
    HUAWEI_ASCEND_NPU = 14
    IMAGINATION_NNA = 15
    INTEL_FPGA = 16
    Metal = 17
    NNAdapter = 18


class PrecisionType(_PyEnum):
    Unk = 0
    FP32 = 1
    INT8 = 2
    INT32 = 3
    Any = 4
    FP16 = 5
    BOOL = 6
    INT64 = 7
    INT16 = 8
    UINT8 = 9
    FP64 = 10


class DataLayoutType(_PyEnum):
    Unk = 0
    NCHW = 1
    Any = 2
    NHWC = 3
    ImageDefault = 4
    ImageFolder = 5
    ImageNW = 6
    MetalTexture2DArray = 7
    MetalTexture2D = 8


class PowerMode(_PyEnum):
    LITE_POWER_HIGH = 0
    LITE_POWER_LOW = 1
    LITE_POWER_FULL = 2
    LITE_POWER_NO_BIND = 3
    LITE_POWER_RAND_HIGH = 4
    LITE_POWER_RAND_LOW = 5


class CLTuneMode(_PyEnum):
    CL_TUNE_NONE = 0
    CL_TUNE_RAPID = 1
    CL_TUNE_NORMAL = 2
    CL_TUNE_EXHAUSTIVE = 3


class CLPrecisionType(_PyEnum):
    CL_PRECISION_AUTO = 0
    CL_PRECISION_FP32 = 1
    CL_PRECISION_FP16 = 2


class MLUCoreVersion(_PyEnum):
    LITE_MLU_220 = 0
    LITE_MLU_270 = 1


def _want(value: Any, typ: type, fn: str) -> None:
    # pybind11 rejects ints for enums and other mismatched types with TypeError.
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise TypeError(f"{fn}(): incompatible function arguments. Invoked with: {value!r}")


class Place:
    def __init__(
        self,
        target: TargetType,
        percision: PrecisionType = PrecisionType.FP32,
        layout: DataLayoutType = DataLayoutType.NCHW,
        device: int = 0,
    ) -> None:
        _want(target, TargetType, "Place.__init__")
        _want(percision, PrecisionType, "Place.__init__")
        _want(layout, DataLayoutType, "Place.__init__")
        self._target, self._precision, self._layout, self._device = target, percision, layout, device

    def is_valid(self) -> bool:
        return (
            self._target != TargetType.Unk
            and self._precision != PrecisionType.Unk
            and self._layout != DataLayoutType.Unk
        )

    def __repr__(self) -> str:
        return f"Place({self._target.name}, {self._precision.name}, {self._layout.name})"


_PREC_OF = {
    np.dtype(np.float32): PrecisionType.FP32,
    np.dtype(np.float64): PrecisionType.FP64,
    np.dtype(np.float16): PrecisionType.FP16,
    np.dtype(np.bool_): PrecisionType.BOOL,
    np.dtype(np.uint8): PrecisionType.UINT8,
    np.dtype(np.int8): PrecisionType.INT8,
    np.dtype(np.int16): PrecisionType.INT16,
    np.dtype(np.int32): PrecisionType.INT32,
    np.dtype(np.int64): PrecisionType.INT64,
}
_FROM_NUMPY_OK = (np.float32, np.int32, np.int64, np.float64, np.int8, np.int16, np.uint8, np.bool_)


class _Slot:
    """The lite::Tensor living in the predictor's scope; Tensor objects are handles onto it."""

    def __init__(self) -> None:
        self.data: np.ndarray | None = None
        self.shape: list[int] = []
        self.lod: list[list[int]] = []


class Tensor:
    def __init__(self, slot: _Slot | None = None) -> None:
        self._slot = slot if slot is not None else _Slot()

    def resize(self, shape: list[int], /) -> None:
        self._slot.shape = [int(x) for x in shape]
        if self._slot.data is not None and int(np.prod(self._slot.shape)) != self._slot.data.size:
            self._slot.data = None

    def shape(self) -> list[int]:
        return list(self._slot.data.shape) if self._slot.data is not None else list(self._slot.shape)

    def target(self) -> TargetType:
        return TargetType.Host

    def precision(self) -> PrecisionType:
        if self._slot.data is None:
            return PrecisionType.FP32  # lite::Tensor's default precision
        return _PREC_OF.get(self._slot.data.dtype, PrecisionType.Unk)

    def lod(self) -> list[list[int]]:
        return [list(x) for x in self._slot.lod]

    def set_lod(self, lod: list[list[int]], /) -> None:
        self._slot.lod = [[int(y) for y in x] for x in lod]

    def from_numpy(self, array: Any, place: TargetType = TargetType.Host) -> None:
        arr = np.asarray(array)
        if not any(arr.dtype == np.dtype(t) for t in _FROM_NUMPY_OK):
            fatal(
                "Input object type error or incompatible array data type. tensor.from_numpy(numpy.array, "
                "PrecisionType) supports numpy array input in  bool, float32, float64, int8, int16, int32, "
                "int64 "
                "or uint8, please check your input or input array data type.",
                "lite/api/python/pybind/tensor_py.h",
            )
        self._slot.data = np.array(arr, copy=True, order="C")
        self._slot.shape = list(arr.shape)

    def numpy(self) -> np.ndarray:
        if self._slot.data is None:
            return np.empty(self._slot.shape, dtype=np.float32)
        return np.array(self._slot.data, copy=True)

    # Legacy list accessors of the bindings (set_float_data / float_data, ...).
    def _set_list(self, data: list, dtype: type, _type: TargetType = TargetType.Host) -> None:
        arr = np.asarray(data, dtype=dtype)
        shape = self._slot.shape or [arr.size]
        self._slot.data = arr.reshape(shape)

    def _get_list(self, dtype: type) -> list:
        if self._slot.data is None:
            return [dtype(0)] * int(np.prod(self._slot.shape or [0]))
        return self._slot.data.astype(dtype).reshape(-1).tolist()

    def set_float_data(self, data: list[float], type: TargetType = TargetType.Host) -> None:
        self._set_list(data, np.float32, type)

    def float_data(self) -> list[float]:
        return self._get_list(np.float32)

    def set_int32_data(self, data: list[int], type: TargetType = TargetType.Host) -> None:
        self._set_list(data, np.int32, type)

    def int32_data(self) -> list[int]:
        return self._get_list(np.int32)

    def set_int8_data(self, data: list[int], type: TargetType = TargetType.Host) -> None:
        self._set_list(data, np.int8, type)

    def int8_data(self) -> list[int]:
        return self._get_list(np.int8)

    def set_uint8_data(self, data: list[int], type: TargetType = TargetType.Host) -> None:
        self._set_list(data, np.uint8, type)

    def uint8_data(self) -> list[int]:
        return self._get_list(np.uint8)


# ====================================================================== opt

_TARGET_REPR = {"arm": "kARM", "opencl": "kOpenCL", "x86": "kX86"}
_KNOWN_TARGETS = (
    "arm",
    "opencl",
    "x86",
    "arm_metal",
    "x86_metal",
    "x86_opencl",
    "npu",
    "xpu",
    "mlu",
    "rknpu",
    "apu",
    "imagination_nna",
    "intel_fpga",
    "rockchip_npu",
    "mediatek_apu",
    "huawei_kirin_npu",
    "huawei_ascend_npu",
    "amlogic_npu",
    "bm",
    "metal",
    "host",
)
_ARM_OPS = frozenset(
    optimizer.OPENCL_KERNELS
    | optimizer.HOST_KERNELS
    | optimizer.names(
        """
arg_min assign batch_norm cast concat cumsum elementwise_floordiv fill_constant fill_any_like
gather_nd hard_sigmoid layer_norm lookup_table lookup_table_v2 mish range reduce_all reduce_any
reduce_min reduce_prod reduce_sum silu softplus stack top_k top_k_v2 unstack where
flatten_contiguous_range
"""
    )
)


class Opt:
    def __init__(self) -> None:
        self._model_dir = ""
        self._model_file = ""
        self._param_file = ""
        self._model_set_dir = ""
        self._targets: list[str] = []
        self._places: list[tuple[str, str, str]] = []
        self._enable_fp16 = False
        self._model_type = "naive_buffer"
        self._out = ""
        self._passes: list[str] = []
        self._record = False

    # -- setters (all positional-only: the bindings declare no py::arg)
    def set_model_dir(self, model_dir: str, /) -> None:
        self._model_dir = model_dir

    def set_modelset_dir(self, model_set_dir: str, /) -> None:
        self._model_set_dir = model_set_dir

    def set_model_file(self, model_file: str, /) -> None:
        self._model_file = model_file

    def set_param_file(self, param_file: str, /) -> None:
        self._param_file = param_file

    def enable_fp16(self) -> None:
        # Only affects a later set_valid_places(), exactly like OptBase::EnableFloat16.
        self._enable_fp16 = True

    def set_valid_places(self, valid_places: str, /) -> None:
        _want(valid_places, str, "set_valid_places")
        targets: list[str] = []
        for t in valid_places.split(","):
            t = t.strip()
            if not t:
                continue
            if t not in _KNOWN_TARGETS:
                fatal(
                    f"Wrong target '{t}' found, please check the command flag 'valid_targets'",
                    "lite/api/tools/opt_base.cc",
                )
            if t not in optimizer.SIMULATED_TARGETS:
                fatal(
                    f"[paddlelite-sim] target '{t}' is not simulated (only arm, opencl, x86)",
                    "lite/api/tools/opt_base.cc",
                )
            targets.append(t)
        if not targets:
            fatal(
                "Check failed: !valid_places_.empty() At least one target should be set, should set the "
                "command "
                "argument 'valid_targets'",
                "lite/api/tools/opt_base.cc",
            )
        self._targets = targets
        self._places = optimizer.describe_valid_places(targets, self._enable_fp16)

    def set_optimize_out(self, optimize_out: str, /) -> None:
        self._out = optimize_out

    def set_model_type(self, model_type: str, /) -> None:
        if model_type not in ("protobuf", "naive_buffer"):
            fatal(f"Unsupported Model type :{model_type}", "lite/api/tools/opt_base.cc")
        self._model_type = model_type

    def set_quant_model(self, quant_model: bool, /) -> None:
        if quant_model:
            warn(
                "[paddlelite-sim] post-quant-dynamic is not simulated; the model stays float",
                "lite/api/tools/opt_base.cc",
            )

    def set_quant_type(self, quant_type: str, /) -> None:
        if quant_type not in ("QUANT_INT8", "QUANT_INT16"):
            fatal(f"Unsupported quant type: {quant_type}", "lite/api/tools/opt_base.cc")

    def set_sparse_model(self, sparse_model: bool, /) -> None:
        pass

    def set_sparse_threshold(self, sparse_threshold: float, /) -> None:
        if not 0.0 <= sparse_threshold <= 1.0:
            fatal("Please set sparse_threshold between 0.0 and 1.0.", "lite/api/tools/opt_base.cc")

    def record_model_info(self, record_strip_info: bool = True, /) -> None:
        self._record = record_strip_info

    def set_passes_internal(self, passes_internal: list[str], /) -> None:
        # Real opt only appends these to its default pass list; the simulator just records them.
        self._passes = list(passes_internal)

    def version(self) -> str:
        return version()

    # -- actions
    def run(self) -> None:
        if self._model_set_dir:
            fatal(
                "[paddlelite-sim] set_modelset_dir / --model_set is not simulated",
                "lite/api/tools/opt_base.cc",
            )
        if not self._places:
            fatal("Check failed: !valid_places.empty() valid_place should be set", "lite/api/cxx_api.cc")
        model = model_io.load_legacy_model(self._model_dir, self._model_file, self._param_file)
        self._check_supported(model.program, print_ops_info=False)
        nb, opt = opt_core.build_nb(model, self._places, self._enable_fp16, self._passes, self._model_type)
        if self._model_type == "protobuf":
            path = opt_core.write_protobuf(self._out, opt)
        else:
            path = opt_core.write_naive_buffer(self._out, nb)
        print(f"2. Model is optimized and saved into {path} successfully", flush=True)

    def run_optimize(
        self,
        model_dir: str,
        model_file: str,
        param_file: str,
        model_type: str,
        valid_places: str,
        optimized_out: str,
        /,
    ) -> None:
        self.set_model_dir(model_dir)
        self.set_model_file(model_file)
        self.set_param_file(param_file)
        self.set_model_type(model_type)
        self.set_valid_places(valid_places)
        self.set_optimize_out(optimized_out)
        self.run()

    def help(self) -> None:
        print(f"opt version:{version()}\n[paddlelite-sim] see tests/sim/README.md", flush=True)
        raise SystemExit(1)  # OptBase::PrintHelpInfo exits with 1

    def executablebin_help(self) -> None:
        print(
            f"paddlelite opt version:{version()}\nAt least one argument should be inputed. Valid arguments "
            "are "
            "listed below:\n  Arguments of model optimization:\n        `--model_dir=<model_param_dir>`\n"
            "        `--model_file=<model_path>`\n        `--param_file=<param_path>`\n"
            "        `--optimize_out_type=(protobuf|naive_buffer)`\n"
            "        `--optimize_out=<output_optimize_model_dir>`\n"
            "        `--valid_targets=(arm|opencl|x86)`\n"
            "        `--enable_fp16=(true|false)`\n"
            "        `--print_model_ops=true  --model_dir=<model_param_dir> "
            "--valid_targets=(arm|opencl|x86)`\n",
            flush=True,
        )

    def _supported(self, targets: list[str]) -> dict[str, set[str]]:
        table: dict[str, set[str]] = {}
        for t in targets:
            ops = optimizer.OPENCL_KERNELS if t == "opencl" else _ARM_OPS
            for op in ops:
                table.setdefault(op, set()).add(_TARGET_REPR[t])
            if t == "opencl":  # valid_targets=opencl also registers the ARM kernels as fallback
                for op in _ARM_OPS:
                    table.setdefault(op, set()).add("kARM")
        for op in optimizer.HOST_KERNELS:
            table.setdefault(op, set()).add("kHost")
        return table

    def _print_table(
        self, ops: list[str], targets: list[str], table: dict[str, set[str]] | None = None
    ) -> None:
        table = table if table is not None else self._supported(self._targets or ["arm"])
        width = max([len("OP_name")] + [len(o) for o in ops])
        print("OP_name".rjust(width) + "".join(t.rjust(len(t) + 2) for t in targets))
        for op in ops:
            have = table.get(op, set())
            print(op.rjust(width) + "".join(("Y" if t in have else " ").rjust(len(t) + 2) for t in targets))

    def print_supported_ops(self) -> None:
        targets = sorted({_TARGET_REPR[t] for t in (self._targets or [])})
        print("Supported OPs on '" + "".join(" " + t for t in targets) + "': ", flush=True)
        cols = sorted(set(targets) | {"kHost", "kUnk"})
        self._print_table(sorted(self._supported(self._targets or ["arm"])), cols)

    def print_all_ops(self) -> None:
        table = self._supported(["arm", "opencl", "x86"])
        self._print_table(sorted(table), ["kARM", "kOpenCL", "kX86", "kHost"], table)

    def print_all_ops_in_md_dormat(self) -> None:
        ops = sorted(self._supported(["arm", "opencl", "x86"]))
        print("| OP_name | ARM | OpenCL | Host | x86 |\n|-:|-| -| -| -| ")
        table = self._supported(["arm", "opencl", "x86"])
        for op in ops:
            have = table[op]
            print(
                "| "
                + op
                + " "
                + "".join("| Y " if t in have else "|   " for t in ("kARM", "kOpenCL", "kHost", "kX86"))
                + "|"
            )

    def display_kernels_info(self) -> None:
        print("[paddlelite-sim] kernel registry: see print_all_ops()", flush=True)

    def _check_supported(self, program: Any, print_ops_info: bool) -> None:
        table = self._supported(self._targets or ["arm"])
        ops = sorted({op.type for b in program.blocks for op in b.ops})
        unsupported = [o for o in ops if o not in table and o not in ("feed", "fetch")]
        if print_ops_info:
            print("OPs in the input model include:", flush=True)
            self._print_table(ops, sorted({_TARGET_REPR[p[0]] for p in self._places} or {"kARM"}))
        if unsupported:
            fatal(
                f"Error: This model is not supported, because {len(unsupported)} ops are not supported on "
                f"'{','.join(self._targets)}'. These unsupported ops are: '{', '.join(unsupported)}'.",
                "lite/api/tools/opt_base.cc",
            )
        if print_ops_info:
            print("Paddle-Lite supports this model!", flush=True)

    def check_if_model_supported(self, print_ops_info: bool = True, /) -> None:
        combined = bool(self._model_file) and bool(self._param_file)
        path = model_io._find_program(self._model_dir, self._model_file, combined)
        with open(path, "rb") as f:
            prog = model_io.parse_legacy_program(f.read(), path)
        self._check_supported(prog, print_ops_info)

    def visualize_optimized_nb_model(self, model_path: str, output_path: str, /) -> list[str]:
        nb = _load_nb_file(model_path)
        prog = _proto.parse_program(nb.optimized_program)
        names = []
        for bi, block in enumerate(prog.blocks):
            lines = ["digraph G {"]
            vars_: set[str] = set()
            for op in block.ops:
                vars_.update(a for _, a in _proto.all_inputs(op))
                vars_.update(a for _, a in _proto.all_outputs(op))
            for v in sorted(vars_):
                lines.append(f'   "{v}" [style="filled" fillcolor="gray" shape="record"];')
            for k, op in enumerate(block.ops):
                lines.append(f'   "{k}" [label="{op.type}" style="filled" fillcolor="yellow"];')
                lines += [f'   "{a}" -> "{k}";' for _, a in _proto.all_inputs(op)]
                lines += [f'   "{k}" -> "{a}";' for _, a in _proto.all_outputs(op)]
            lines.append("}")
            name = f"Block_{bi}"
            os.makedirs(output_path or ".", exist_ok=True)
            with open(os.path.join(output_path, name + ".dot"), "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            names.append(name)
        return names


# ====================================================================== predictors


def _load_nb_file(path: str) -> nbformat.NbModel:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        fatal(
            f"Check failed: fp: Unable to open file: {path}", "lite/model_parser/naive_buffer/naive_buffer.cc"
        )
    return _parse_nb(data)


def _parse_nb(data: bytes) -> nbformat.NbModel:
    try:
        return nbformat.load(data)
    except nbformat.NbFormatError:
        fatal(
            "The model format cannot be recognized. Please make sure you use the correct interface and "
            "model file.",
            "lite/model_parser/model_parser.cc",
        )


class _ThreadsMixin:
    """set_threads/threads/set_power_mode/power_mode: bound for CxxConfig always, for MobileConfig only in ARM
    builds (#ifdef LITE_WITH_ARM). The simulator is an ARM build unless PADDLELITE_SIM_ARM_BUILD=0."""

    _threads: int
    _power_mode: PowerMode

    def set_threads(self, threads: int, /) -> None:
        _want(threads, int, "set_threads")
        self._threads = threads

    def threads(self) -> int:
        return self._threads

    def set_power_mode(self, mode: PowerMode, /) -> None:
        _want(mode, PowerMode, "set_power_mode")
        self._power_mode = mode

    def power_mode(self) -> PowerMode:
        return self._power_mode


class _ConfigBase:
    def __init__(self) -> None:
        self._threads = 1
        self._power_mode = PowerMode.LITE_POWER_NO_BIND
        self._cl_precision = CLPrecisionType.CL_PRECISION_AUTO
        self._cl_tune = (CLTuneMode.CL_TUNE_NONE, "", "", 4)
        self._cl_binary = ("", "")
        self._model_dir = ""

    def set_opencl_binary_path_name(self, path: str, name: str, /) -> None:
        _want(path, str, "set_opencl_binary_path_name")
        _want(name, str, "set_opencl_binary_path_name")
        self._cl_binary = (path, name)

    def set_opencl_tune(self, tune_mode: CLTuneMode, path: str, name: str, lws_repeats: int, /) -> None:
        # No default for lws_repeats in the bindings: all four arguments are required, positionally.
        _want(tune_mode, CLTuneMode, "set_opencl_tune")
        _want(path, str, "set_opencl_tune")
        _want(name, str, "set_opencl_tune")
        _want(lws_repeats, int, "set_opencl_tune")
        self._cl_tune = (tune_mode, path, name, lws_repeats)

    def set_opencl_precision(self, p: CLPrecisionType, /) -> None:
        _want(p, CLPrecisionType, "set_opencl_precision")
        self._cl_precision = p

    def set_model_dir(self, model_dir: str, /) -> None:
        self._model_dir = model_dir

    def model_dir(self) -> str:
        return self._model_dir

    def set_metal_use_mps(self, flag: bool = True) -> None:
        pass

    def set_metal_use_memory_reuse(self, flag: bool, /) -> None:
        pass

    def set_metal_lib_path(self, path: str, /) -> None:
        pass


_ARM_BUILD = os.environ.get("PADDLELITE_SIM_ARM_BUILD", "1") != "0"


class MobileConfig(*((_ThreadsMixin,) if _ARM_BUILD else ()), _ConfigBase):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self._file = ""
        self._buffer: bytes | None = None

    def set_model_from_file(self, x: str, /) -> None:
        _want(x, str, "set_model_from_file")
        self._file = x
        self._buffer = None

    def set_model_from_buffer(self, x: bytes | str, /) -> None:
        if isinstance(x, str):
            x = x.encode("utf-8", "surrogateescape")
        _want(x, bytes, "set_model_from_buffer")
        self._buffer = bytes(x)

    def is_model_from_memory(self) -> bool:
        return self._buffer is not None

    def set_model_buffer(self, *args: Any) -> None:
        fatal(
            "[paddlelite-sim] MobileConfig.set_model_buffer (pre-2.7 naive buffer) is not simulated",
            "lite/api/paddle_api.cc",
        )


class CxxConfig(_ThreadsMixin, _ConfigBase):
    def __init__(self) -> None:
        super().__init__()
        self._model_file = ""
        self._param_file = ""
        self._places: list[Place] = []
        self._passes: list[str] = []
        self._discarded: list[str] = []

    def model_dir(self) -> str:
        return self._model_dir

    def set_model_file(self, x: str, /) -> None:
        self._model_file = x

    def model_file(self) -> str:
        return self._model_file

    def set_param_file(self, x: str, /) -> None:
        self._param_file = x

    def param_file(self) -> str:
        return self._param_file

    def set_valid_places(self, x: list[Place], /) -> None:
        for p in x:
            _want(p, Place, "set_valid_places")
        self._places = list(x)

    def set_passes_internal(self, x: list[str], /) -> None:
        self._passes = list(x)

    def add_discarded_pass(self, x: str, /) -> None:
        self._discarded.append(x)

    def is_model_from_memory(self) -> bool:
        return False

    def set_model_buffer(self, *args: Any) -> None:
        fatal("[paddlelite-sim] CxxConfig.set_model_buffer is not simulated", "lite/api/paddle_api.cc")


class LightPredictor:
    """LightPredictorImpl: runs an optimised (.nb) model."""

    def __init__(self) -> None:
        self._ready = False

    def _init_from_nb(self, nb: nbformat.NbModel, cfg: _ConfigBase) -> None:
        opt_v, rt_v = str(nb.meta.get("opt_version", "")), version()
        if opt_v != rt_v:
            warn(
                "\nwarning: the version of opt that transformed this model is not consistent with current "
                f"Paddle-Lite version.\n      version of opt:{opt_v}\n"
                f"      version of current Paddle-Lite:{rt_v}",
                "lite/model_parser/model_parser.cc",
            )
            # Kernel keys recorded by another version's opt are not found by this runtime (issue reports
            # show "Check failed: it != kernels.end()" right after the warning).
            fatal(
                "Check failed: it != kernels.end(): \n[paddlelite-sim] the .nb was produced by opt "
                f"{opt_v} but the runtime is {rt_v}",
                "lite/core/program.cc",
            )
        self._nb = nb
        targets = list(nb.meta.get("valid_targets", []))
        self._opencl = "opencl" in targets
        prec = cfg._cl_precision
        fp16_device = os.environ.get("PADDLELITE_SIM_CL_FP16", "1") != "0"  # cl_khr_fp16 reported by the GPU
        self._cl_fp16 = self._opencl and (
            prec == CLPrecisionType.CL_PRECISION_FP16
            or (prec == CLPrecisionType.CL_PRECISION_AUTO and fp16_device)
        )
        tuned = cfg._cl_tune[0] != CLTuneMode.CL_TUNE_NONE
        try:
            flist = _faults.faults_from_env()
        except _faults.FaultConfigError as e:
            raise ValueError(f"[paddlelite-sim] bad PADDLELITE_SIM_FAULTS: {e}") from e
        self._plan = executor.build_plan(
            nb.original_program, nb.optimized_program, cl_fp16=self._cl_fp16, tuned=tuned, faults=flist
        )
        self._inputs = {n: _Slot() for n in self._plan.input_names}
        self._outputs = {n: _Slot() for n in self._plan.output_names}
        self._runs = 0
        self._cfg = cfg
        if self._opencl:
            self._touch_opencl_files(cfg)
        self._ready = True

    @staticmethod
    def _touch_opencl_files(cfg: _ConfigBase) -> None:
        # The real runtime writes the compiled-kernel binary and the tuned-LWS file; only their existence is
        # simulated (a stale file is silently reused, as on a device).
        path, name = cfg._cl_binary
        if path and name and os.path.isdir(path) and not os.path.exists(os.path.join(path, name)):
            with open(os.path.join(path, name), "wb") as f:
                f.write(b"paddlelite-sim opencl binary cache\n")
        mode, tpath, tname, _ = cfg._cl_tune
        if mode != CLTuneMode.CL_TUNE_NONE and tpath and tname and os.path.isdir(tpath):
            fp = os.path.join(tpath, tname)
            if not os.path.exists(fp):
                with open(fp, "wb") as f:
                    f.write(b"paddlelite-sim tuned lws\n")

    def get_input(self, i: int, /) -> Tensor:
        names = self._plan.input_names
        if not 0 <= i < len(names):
            fatal(
                f"Check failed: input_names_.size() > offset The network has {len(names)} inputs, the offset "
                "should be less than this.",
                "lite/api/light_api.cc",
            )
        return Tensor(self._inputs[names[i]])

    def get_output(self, i: int, /) -> Tensor:
        names = self._plan.output_names
        if not 0 <= i < len(names):
            fatal(
                f"Check failed: output_names_.size() > offset The network has {len(names)} outputs, the "
                "offset "
                "should be less than this.",
                "lite/api/light_api.cc",
            )
        return Tensor(self._outputs[names[i]])

    def get_input_names(self) -> list[str]:
        return list(self._plan.input_names)

    def get_output_names(self) -> list[str]:
        # Fetch inputs of the optimised program: "<var>/target_trans" when an io_copy feeds the fetch
        # (OpenCL).
        return list(self._plan.output_names)

    def get_input_by_name(self, name: str, /) -> Tensor | None:
        if name not in self._inputs:
            warn(
                f"Model do not have input named with: [{name}], model's inputs include:\n"
                + "\n".join(f"[{n}]" for n in self._plan.input_names),
                "lite/api/light_api.cc",
            )
            return None
        return Tensor(self._inputs[name])

    def get_output_by_name(self, name: str, /) -> Tensor | None:
        if name not in self._outputs:
            warn(
                f"Model do not have output named with: [{name}], model's outputs include:\n"
                + "\n".join(f"[{n}]" for n in self._plan.output_names),
                "lite/api/light_api.cc",
            )
            return None
        return Tensor(self._outputs[name])

    def get_version(self) -> str:
        return version()

    def run(self) -> None:
        for f, g in self._plan.crash:
            cl = g.place == "opencl"
            msg = f.params.get("message") or ("kernel launch failed" if cl else "invalid kernel state")
            check = "status == CL_SUCCESS" if cl else "param.output->numel() > 0"
            fatal(
                f"Check failed: {check}: {msg}\n[paddlelite-sim] crash fault {f.describe()} on "
                f"{g.type} #{g.index} ({g.place}, original ops {g.fused_from})",
                f"lite/kernels/{'opencl' if cl else 'arm'}/{g.type}_compute.cc",
            )
        feeds: dict[str, np.ndarray] = {}
        for name, var in zip(self._plan.input_names, self._plan.feed_vars, strict=True):
            slot = self._inputs[name]
            if slot.data is None:
                fatal(
                    f"Check failed: input tensor '{name}' has no data (call from_numpy or set_*_data first)",
                    "lite/kernels/host/feed_compute.cc",
                )
            feeds[var] = slot.data
        self._runs += 1
        try:
            outs = executor.run_plan(self._plan, self._nb.original_params, feeds, self._runs)
        except Exception:
            fatal(
                "Check failed: kernel execution failed\n[paddlelite-sim] Paddle Inference error while "
                "executing the simulated model:\n" + traceback.format_exc(),
                "lite/core/program.cc",
            )
        for name, arr in zip(self._plan.output_names, outs, strict=True):
            self._outputs[name].data = arr
            self._outputs[name].shape = list(arr.shape)


class CxxPredictor(LightPredictor):
    """CxxPaddleApiImpl: optimises a legacy model in-process (like opt), then runs it like the light API."""

    def _init_from_config(self, cfg: CxxConfig) -> None:
        _MAP = {TargetType.ARM: "arm", TargetType.OpenCL: "opencl", TargetType.X86: "x86"}
        places = [
            (_MAP[p._target], p._precision.name.lower(), p._layout.name.lower())
            for p in cfg._places
            if p._target in _MAP
        ]
        if not places:
            fatal(
                "Check failed: !valid_places.empty() valid_places should be set (ARM, OpenCL or X86 for the "
                "simulator)",
                "lite/api/cxx_api.cc",
            )
        fp16 = any(p[0] == "arm" and p[1] == "fp16" for p in places)
        model = model_io.load_legacy_model(cfg._model_dir, cfg._model_file, cfg._param_file, verbose=False)
        nb, opt = opt_core.build_nb(model, places, fp16, cfg._passes, "naive_buffer")
        self._opt_result = opt
        self._init_from_nb(nb, cfg)

    def save_optimized_model(self, output_dir: str, /) -> None:
        opt_core.write_naive_buffer(output_dir, self._nb)

    def save_optimized_pb_model(self, output_dir: str, /) -> None:
        opt_core.write_protobuf(output_dir, self._opt_result)


def create_paddle_predictor(config: MobileConfig | CxxConfig, /) -> LightPredictor:
    if isinstance(config, MobileConfig):
        nb = _parse_nb(config._buffer) if config._buffer is not None else _load_nb_file(config._file)
        pred = LightPredictor()
        pred._init_from_nb(nb, config)
        return pred
    if isinstance(config, CxxConfig):
        cp = CxxPredictor()
        cp._init_from_config(config)
        return cp
    raise TypeError(
        "create_paddle_predictor(): incompatible function arguments. The following argument types are "
        "supported:\n    1. (arg0: paddlelite.lite.CxxConfig) -> paddlelite.lite.CxxPredictor\n"
        "    2. (arg0: paddlelite.lite.MobileConfig) -> paddlelite.lite.LightPredictor"
    )
