"""Access to Paddle's ProgramDesc protobuf schema without importing paddle.

`import paddle` costs about a second and 300 MB; the generated `framework_pb2` module inside the wheel
parses a model in milliseconds. We load that one file by path. If paddle is already imported we reuse its
module so that message classes agree.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from types import ModuleType

import numpy as np

from bisect_lite.errors import EngineUnavailable


@cache
def framework_pb2() -> ModuleType:
    if "paddle.base.proto.framework_pb2" in sys.modules:
        return sys.modules["paddle.base.proto.framework_pb2"]
    spec = importlib.util.find_spec("paddle")
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(
            "paddlepaddle is not installed: bisect-lite reads models with the protobuf schema shipped in its wheel "
            "(pip install paddlepaddle)"
        )
    for root in spec.submodule_search_locations:
        for rel in ("base/proto/framework_pb2.py", "fluid/proto/framework_pb2.py"):
            path = f"{root}/{rel}"
            try:
                file_spec = importlib.util.spec_from_file_location("_bisect_lite_framework_pb2", path)
                if file_spec is None or file_spec.loader is None:
                    continue
                module = importlib.util.module_from_spec(file_spec)
                file_spec.loader.exec_module(module)
                return module
            except FileNotFoundError:
                continue
    raise EngineUnavailable(f"the installed paddle at {spec.submodule_search_locations} has no framework_pb2 module")


# VarType.Type numbers (framework.proto); stable across Paddle versions.
DTYPE_BY_CODE: dict[int, np.dtype] = {
    0: np.dtype(np.bool_),
    1: np.dtype(np.int16),
    2: np.dtype(np.int32),
    3: np.dtype(np.int64),
    4: np.dtype(np.float16),
    5: np.dtype(np.float32),
    6: np.dtype(np.float64),
    20: np.dtype(np.uint8),
    21: np.dtype(np.int8),
    22: np.dtype(np.uint16),  # bfloat16: numpy has no such type, kept as raw 16-bit words
    23: np.dtype(np.complex64),
    24: np.dtype(np.complex128),
    36: np.dtype(np.uint16),
    37: np.dtype(np.uint32),
    38: np.dtype(np.uint64),
}
CODE_BY_DTYPE: dict[np.dtype, int] = {dt: code for code, dt in DTYPE_BY_CODE.items() if code not in (22, 36)} | {
    np.dtype(np.uint16): 36
}
DTYPE_NAMES: dict[int, str] = {code: str(dt) for code, dt in DTYPE_BY_CODE.items()} | {22: "bfloat16"}

# VarType.Type numbers of var kinds.
DENSE_TENSOR = 7
FEED_MINIBATCH = 9
FETCH_LIST = 10
RAW = 17
