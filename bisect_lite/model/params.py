"""Pure-numpy reader and writer for Paddle's parameter files.

One tensor on disk (little-endian):
    u32 version (0) | u64 lod_level | lod_level x (u64 nbytes, nbytes of offsets)
    | u32 version (0) | i32 desc_len | TensorDesc protobuf | raw data in C order
A combined `.pdiparams` file is such records back to back, in the sorted order of the persistable var names,
with no header; Paddle-Lite refuses a file with trailing data, so it must hold exactly the model's params.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np

from bisect_lite.errors import InputError
from bisect_lite.model.proto import CODE_BY_DTYPE, DTYPE_BY_CODE, framework_pb2


def read_tensor(buf: memoryview | bytes, offset: int = 0, name: str = "?") -> tuple[np.ndarray, int]:
    """Decode one tensor record at `offset`; return the array and the offset just past it."""
    view = memoryview(buf)
    try:
        (version,) = struct.unpack_from("<I", view, offset)
        if version != 0:
            raise InputError(f"tensor {name!r} has unsupported version {version} (corrupt file?)")
        (lod_level,) = struct.unpack_from("<Q", view, offset + 4)
        offset += 12
        if lod_level > 16:
            raise InputError(f"tensor {name!r} has an implausible LoD level {lod_level} (corrupt file?)")
        for _ in range(lod_level):
            (nbytes,) = struct.unpack_from("<Q", view, offset)
            offset += 8 + nbytes
            if offset > len(view):
                raise struct.error("LoD past the end")
        version, desc_len = struct.unpack_from("<Ii", view, offset)
        offset += 8
        if version != 0 or desc_len < 0 or offset + desc_len > len(view):
            raise InputError(f"tensor {name!r} has a corrupt header")
        desc = framework_pb2().VarType.TensorDesc()
        desc.ParseFromString(bytes(view[offset : offset + desc_len]))
        offset += desc_len
    except struct.error:
        raise InputError(f"file ends inside the header of tensor {name!r} (truncated file?)") from None
    except InputError:
        raise
    except Exception as exc:  # protobuf DecodeError and friends
        raise InputError(f"tensor {name!r} has an unreadable description ({exc})") from None
    dtype = DTYPE_BY_CODE.get(desc.data_type)
    if dtype is None:
        raise InputError(f"tensor {name!r} has unsupported data type code {desc.data_type}")
    shape = tuple(int(d) for d in desc.dims)
    if any(d < 0 for d in shape):
        raise InputError(f"tensor {name!r} has negative dims {shape}")
    count = 1
    for d in shape:  # Python ints: corrupt dims must not wrap around in int64
        count *= d
    nbytes = count * dtype.itemsize
    if offset + nbytes > len(view):
        raise InputError(
            f"tensor {name!r} needs {nbytes} bytes but the file has {len(view) - offset} left (truncated?)"
        )
    array = np.frombuffer(view, dtype=dtype.newbyteorder("<"), count=count, offset=offset).reshape(shape)
    return array.astype(dtype, copy=True), offset + nbytes


def tensor_bytes(array: np.ndarray) -> bytes:
    """Encode one tensor record exactly as Paddle writes it (LoD level 0)."""
    array = np.asarray(array)
    code = CODE_BY_DTYPE.get(array.dtype)
    if code is None:
        raise InputError(f"cannot store dtype {array.dtype}")
    desc = framework_pb2().VarType.TensorDesc()
    desc.data_type = code
    desc.dims.extend(array.shape)
    desc_bytes = desc.SerializeToString()
    # reshape keeps 0-d arrays 0-d (np.ascontiguousarray would make them (1,)).
    data = np.require(array, dtype=array.dtype.newbyteorder("<"), requirements="C").tobytes()
    return struct.pack("<IQIi", 0, 0, 0, len(desc_bytes)) + desc_bytes + data


def read_combined(data: bytes, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read a combined params file holding exactly `names` (already in the file's sorted order)."""
    view = memoryview(data)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for name in names:
        if offset >= len(view):
            raise InputError(
                f"file ends after {len(out)} of {len(names)} tensors; {name!r} is missing (truncated file, "
                "or a params file of another model)"
            )
        out[name], offset = read_tensor(view, offset, name)
    if offset != len(view):
        raise InputError(
            f"{len(view) - offset} bytes left after the model's {len(names)} tensors (params file of another model?)"
        )
    return out


def write_combined(params: Mapping[str, np.ndarray]) -> bytes:
    """Encode params sorted by name (byte order), as Paddle and Paddle-Lite expect."""
    return b"".join(tensor_bytes(params[name]) for name in sorted(params, key=lambda n: n.encode()))
