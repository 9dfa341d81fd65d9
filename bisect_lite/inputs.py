"""Model inputs: loaded from an .npz, or generated from the feeds' recorded shapes and dtypes.

The inputs actually used are saved with every result, so any run can be repeated exactly.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from bisect_lite.errors import InputError
from bisect_lite.fsutil import atomic_write_bytes
from bisect_lite.model import Model
from bisect_lite.npz import NpzReader

MAX_INPUT_BYTES = 4 << 30  # generated inputs beyond this are a typo in --shape, not a model to debug on a host
MAX_DIM = (1 << 31) - 1


def check_seed(seed: int) -> int:
    if not 0 <= seed < 2**63:
        raise InputError(f"--seed {seed}: expected an integer between 0 and 2**63 - 1")
    return seed


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`--shape name=1,3,224,224` (repeatable)."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, eq, dims = item.partition("=")
        try:
            if not eq or not name:
                raise ValueError
            shape = tuple(int(d) for d in re.split(r"[,x]", dims))  # 1,3,224,224 or 1x3x224x224
            if not shape or any(d <= 0 or d > MAX_DIM for d in shape):
                raise ValueError
        except ValueError:
            raise InputError(f"--shape {item!r}: expected NAME=D1,D2,... with dims between 1 and {MAX_DIM}") from None
        out[name] = shape
    return out


def parse_int_range(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 10)
    try:
        lo, hi = (int(p) for p in text.split(",", 1))
        if hi <= lo or lo < -(2**63) or hi > 2**63:
            raise ValueError
        return lo, hi
    except ValueError:
        raise InputError(f"--int-range {text!r}: expected LOW,HIGH with LOW < HIGH (HIGH exclusive)") from None


def generate_inputs(
    model: Model,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    int_range: tuple[int, int] = (0, 10),
) -> dict[str, np.ndarray]:
    """Random inputs: floats ~ N(0, 1) (unit scale, like normalised images), ints uniform in int_range."""
    shapes = dict(shapes or {})
    unknown = set(shapes) - set(model.feeds)
    if unknown:
        raise InputError(f"--shape names {sorted(unknown)} are not model inputs ({', '.join(model.feeds)})")
    rng = np.random.default_rng(check_seed(seed))
    out: dict[str, np.ndarray] = {}
    total = 0
    for name in model.feeds:
        var = model.vars[name]
        shape = tuple(shapes.get(name, var.shape or ()))
        declared = var.shape
        if name in shapes and declared is not None and len(declared) != len(shape):
            # A rank the program cannot take fails in every engine run, and would be blamed on the first op.
            raise InputError(
                f"--shape {name}={','.join(map(str, shape))}: the model declares {len(declared)} dims {list(declared)}"
            )
        if any(d < 0 for d in shape):
            if name not in shapes and sum(d < 0 for d in shape) == 1 and shape and shape[0] < 0:
                shape = (1, *shape[1:])  # a dynamic batch dim: use 1
            else:
                raise InputError(f"input {name!r} has dynamic dims {list(var.shape or ())}; give --shape {name}=...")
        try:
            dtype = np.dtype(var.dtype or "float32")
        except TypeError:
            raise InputError(f"input {name!r}: cannot generate values of dtype {var.dtype}") from None
        count = 1
        for d in shape:
            count *= int(d)
        total += count * dtype.itemsize
        if total > MAX_INPUT_BYTES:
            raise InputError(
                f"input {name!r} of shape {list(shape)} would need {total / 2**30:.1f} GiB of inputs (limit "
                f"{MAX_INPUT_BYTES >> 30} GiB); give smaller dims with --shape {name}=..."
            )
        if dtype.kind == "f":
            out[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            out[name] = rng.integers(int_range[0], int_range[1], size=shape).astype(dtype)
        elif dtype.kind == "b":
            out[name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise InputError(f"input {name!r}: cannot generate values of dtype {dtype}")
    return out


def load_inputs(path: Path, model: Model) -> dict[str, np.ndarray]:
    """Read an .npz keyed by feed names; check names, dtypes and ranks against the model."""
    path = Path(path)
    arrays = read_npz(path, "inputs file")
    missing = [n for n in model.feeds if n not in arrays]
    if missing:
        raise InputError(f"{path}: missing inputs {missing} (has {sorted(arrays)}; model inputs: {model.feeds})")
    out: dict[str, np.ndarray] = {}
    for name in model.feeds:
        arr = arrays[name]
        var = model.vars[name]
        if var.shape is not None and len(var.shape) != arr.ndim:
            raise InputError(f"{path}: input {name!r} has shape {arr.shape}, the model expects {list(var.shape)}")
        if var.shape is not None and any(d >= 0 and d != a for d, a in zip(var.shape, arr.shape, strict=True)):
            raise InputError(f"{path}: input {name!r} has shape {arr.shape}, the model expects {list(var.shape)}")
        if var.dtype and np.dtype(var.dtype) != arr.dtype:
            if np.dtype(var.dtype).kind != arr.dtype.kind:
                raise InputError(f"{path}: input {name!r} is {arr.dtype}, the model expects {var.dtype}")
            arr = arr.astype(var.dtype)
        out[name] = arr
    return out


def check_npz(path: Path, *, wanted: Collection[str] | None = None, limit: int = MAX_INPUT_BYTES) -> dict[str, int]:
    """Check every array header of an .npz against its stored size, before anything is allocated: a header may
    claim 4 TiB (bisect_lite.npz.NpzReader). `wanted` limits the check to those names. Returns {name: CRC-32}."""
    reader = NpzReader(path, wanted=wanted, limit=limit)
    reader.close()
    return {n: c for n, c in reader.crcs.items() if wanted is None or n in wanted}


def read_npz(path: Path, what: str = "file", limit: int = MAX_INPUT_BYTES) -> dict[str, np.ndarray]:
    """Load a user's .npz: a regular zip file of plain arrays (no pickles), each no larger than `limit`."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    if not path.is_file():
        raise InputError(f"{path}: {what} is not a regular file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic[:2] != b"PK":
            npy = magic == b"\x93NUM"
            hint = " (an .npy holds one array; save one array per input with numpy.savez)" if npy else ""
            raise InputError(f"{path}: {what} is not an .npz archive{hint}")
        check_npz(path, limit=limit)
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except InputError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, NotImplementedError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    atomic_write_bytes(Path(path), buf.getvalue())


def prepare_inputs(
    model: Model,
    inputs_file: Path | None = None,
    *,
    shapes: Sequence[str] = (),
    seed: int = 0,
    int_range: str | None = None,
) -> dict[str, np.ndarray]:
    """The one entry point commands use: given file, or generated from the feeds."""
    if inputs_file is not None:
        if shapes:
            raise InputError("--shape applies to generated inputs; it cannot be combined with --inputs")
        return load_inputs(inputs_file, model)
    return generate_inputs(model, shapes=parse_shapes(shapes), seed=seed, int_range=parse_int_range(int_range))
