"""Pure-numpy reader/writer of Paddle's LoDTensor serialisation (combined .pdiparams and per-var files)."""

from __future__ import annotations

import struct

import numpy as np

from . import proto

# VarType data_type code -> numpy dtype (BF16 kept as raw uint16).
_NP = {
    0: np.bool_,
    1: np.int16,
    2: np.int32,
    3: np.int64,
    4: np.float16,
    5: np.float32,
    6: np.float64,
    20: np.uint8,
    21: np.int8,
    22: np.uint16,
    36: np.uint16,
    37: np.uint32,
    38: np.uint64,
}
_CODE = {np.dtype(v): k for k, v in _NP.items() if k not in (22, 36)}
_CODE[np.dtype(np.uint16)] = 36


class ParamsError(ValueError):
    pass


def np_dtype(code: int) -> np.dtype:
    return np.dtype(_NP[code])


def dtype_code(dtype: np.dtype) -> int:
    return _CODE[np.dtype(dtype)]


def read_tensor(buf: bytes | memoryview, pos: int) -> tuple[np.ndarray, int]:
    mv = memoryview(buf)
    try:
        (ver,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        if ver != 0:
            raise ParamsError(f"tensor version {ver} != 0")
        (lod_level,) = struct.unpack_from("<Q", mv, pos)
        pos += 8
        for _ in range(lod_level):
            (nbytes,) = struct.unpack_from("<Q", mv, pos)
            pos += 8 + nbytes
        (ver2,) = struct.unpack_from("<I", mv, pos)
        pos += 4
        if ver2 != 0:
            raise ParamsError(f"tensor desc version {ver2} != 0")
        (desc_len,) = struct.unpack_from("<i", mv, pos)
        pos += 4
        desc = proto.pb().VarType.TensorDesc()
        desc.ParseFromString(bytes(mv[pos : pos + desc_len]))
        pos += desc_len
    except struct.error as e:
        raise ParamsError(f"truncated params data: {e}") from e
    dtype = np_dtype(desc.data_type)
    shape = tuple(int(d) for d in desc.dims)
    count = int(np.prod(shape)) if shape else 1
    nbytes = count * dtype.itemsize
    if pos + nbytes > len(mv):
        raise ParamsError("truncated params data")
    arr = np.frombuffer(mv[pos : pos + nbytes], dtype=dtype).reshape(shape).copy()
    return arr, pos + nbytes


def write_tensor(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    desc = proto.pb().VarType.TensorDesc()
    desc.data_type = dtype_code(arr.dtype)
    desc.dims.extend(int(d) for d in arr.shape)
    d = desc.SerializeToString()
    # tobytes() keeps 0-d arrays 0-d (np.ascontiguousarray would make them shape (1,)).
    return struct.pack("<IQ", 0, 0) + struct.pack("<Ii", 0, len(d)) + d + arr.tobytes(order="C")


def param_names(program: object) -> list[str]:
    """Block-0 persistable vars in the order combined files store them (sorted by name, byte order)."""
    block = program.blocks[0]  # type: ignore[attr-defined]
    return sorted((v.name for v in block.vars if proto.is_param_var(v)), key=lambda s: s.encode())


def read_combined(data: bytes, names: list[str]) -> dict[str, np.ndarray]:
    """Read exactly `names` (already sorted); extra trailing data is an error, as in Paddle-Lite."""
    out: dict[str, np.ndarray] = {}
    pos = 0
    for n in names:
        if pos >= len(data):
            raise ParamsError(f"params data ends before '{n}'")
        out[n], pos = read_tensor(data, pos)
    if pos != len(data):
        raise ParamsError(
            "You are not allowed to load partial data via LoadCombinedParamsPb, use LoadParam instead."
        )
    return out


def write_combined(params: dict[str, np.ndarray]) -> bytes:
    return b"".join(write_tensor(params[n]) for n in sorted(params, key=lambda s: s.encode()))
