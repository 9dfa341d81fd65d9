"""Model inputs: loaded from an .npz, or generated from the feeds' recorded shapes and dtypes.

The inputs actually used are saved with every result, so any run can be repeated exactly.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bisect_lite.errors import InputError
from bisect_lite.fsutil import atomic_write_bytes
from bisect_lite.model import Model


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """`--shape name=1,3,224,224` (repeatable)."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, eq, dims = item.partition("=")
        try:
            if not eq or not name:
                raise ValueError
            shape = tuple(int(d) for d in re.split(r"[,x]", dims))  # 1,3,224,224 or 1x3x224x224
            if not shape or any(d <= 0 for d in shape):
                raise ValueError
        except ValueError:
            raise InputError(f"--shape {item!r}: expected NAME=D1,D2,... with positive dims") from None
        out[name] = shape
    return out


def parse_int_range(text: str | None) -> tuple[int, int]:
    if not text:
        return (0, 10)
    try:
        lo, hi = (int(p) for p in text.split(",", 1))
        if hi <= lo:
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
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for name in model.feeds:
        var = model.vars[name]
        shape = tuple(shapes.get(name, var.shape or ()))
        if any(d < 0 for d in shape):
            if name not in shapes and sum(d < 0 for d in shape) == 1 and shape and shape[0] < 0:
                shape = (1, *shape[1:])  # a dynamic batch dim: use 1
            else:
                raise InputError(f"input {name!r} has dynamic dims {list(var.shape or ())}; give --shape {name}=...")
        dtype = np.dtype(var.dtype or "float32")
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
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise InputError(f"{path}: inputs file not found") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    if not isinstance(arrays, dict):
        raise InputError(f"{path}: expected an .npz with one array per input")
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
