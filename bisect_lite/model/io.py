"""Find, load and save legacy Paddle inference models (the format Paddle-Lite's opt reads)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from bisect_lite.errors import InputError
from bisect_lite.fsutil import atomic_dir, is_inside
from bisect_lite.model.graph import Model
from bisect_lite.model.params import read_combined, read_tensor, write_combined
from bisect_lite.model.proto import DENSE_TENSOR, framework_pb2

MODEL_FILE = "model.pdmodel"
PARAMS_FILE = "model.pdiparams"

PIR_HELP = (
    "is a PIR (.json) program, which Paddle-Lite's opt cannot read. Export the legacy format from Paddle 3.x: "
    "run the export with FLAGS_enable_pir_api=0, or wrap paddle.jit.save / save_inference_model in "
    "`with paddle.pir_utils.DygraphOldIrGuard():`, which writes .pdmodel + .pdiparams"
)


def locate(path: Path, params: Path | None = None) -> tuple[Path, Path | None, str]:
    """Return (program file, params file or dir, layout) where layout is 'combined' or 'separate'."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if not path.is_file() and not path.is_dir():
        raise InputError(f"{path}: not a regular file or directory (a FIFO or device is not a model)")
    if path.is_file():
        if path.suffix == ".json":
            raise InputError(f"{path} {PIR_HELP}")
        if params is None:
            for suffix in (".pdiparams", ".params"):
                if path.with_suffix(suffix).exists():
                    params = path.with_suffix(suffix)
                    break
            else:
                if path.name == "__model__":
                    return path, path.parent, "separate"
                if (path.parent / "params").exists():
                    params = path.parent / "params"
                elif (path.parent / "weights").exists():
                    params = path.parent / "weights"
        if params is not None and not Path(params).exists():
            raise InputError(f"{params}: params file not found")
        return path, params, "combined"
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"{path}: directory is not readable")
    entries = sorted(p.name for p in path.iterdir())
    pdmodels = [e for e in entries if e.endswith(".pdmodel")]
    if params is not None:
        if len(pdmodels) != 1:
            raise InputError(f"{path}: with --params, the directory must hold exactly one .pdmodel, found {pdmodels}")
        return path / pdmodels[0], Path(params), "combined"
    if len(pdmodels) > 1:
        raise InputError(f"{path}: several models ({', '.join(pdmodels)}); pass the .pdmodel file to use")
    if pdmodels:
        model_file = path / pdmodels[0]
        params_file = model_file.with_suffix(".pdiparams")
        if not params_file.exists():
            found = [e for e in entries if e.endswith(".pdiparams")]
            raise InputError(
                f"{path}: {pdmodels[0]} has no params file {params_file.name}"
                + (f" (found {', '.join(found)}; pass it with --params)" if found else "")
            )
        return model_file, params_file, "combined"
    if "__model__" in entries:
        return path / "__model__", path, "separate"
    if "model" in entries:
        for name in ("params", "weights"):
            if name in entries:
                return path / "model", path / name, "combined"
        raise InputError(f"{path}: found `model` but no `params` or `weights` file next to it")
    jsons = [e for e in entries if e.endswith(".json")]
    if jsons:
        raise InputError(f"{path / jsons[0]} {PIR_HELP}")
    shown = ", ".join(entries[:8]) + (" ..." if len(entries) > 8 else "") if entries else "nothing"
    raise InputError(
        f"{path}: no Paddle model found (looked for *.pdmodel + .pdiparams, __model__, model + params); found {shown}"
    )


MAX_ELEMENTS = 1 << 40  # no tensor of a real model comes near this: larger dims are corrupt, not big


MAX_PROGRAM_BYTES = 2 << 30  # protobuf cannot parse a larger message anyway


def read_regular(path: Path, what: str, limit: int | None = None) -> bytes:
    """Read a whole file that must be a regular file (a FIFO or device would hang or never end), refusing one
    larger than `limit` before reading it (a sparse 100 GB file must not be allocated)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: {what} is not a regular file")
        if limit is not None and st.st_size > limit:
            raise InputError(f"{path}: {what} has {st.st_size} bytes, more than the {limit} it can hold (wrong file?)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as exc:
        raise InputError(f"{path}: cannot read {what} ({exc.strerror})") from None
    finally:
        os.close(fd)


def load_model(path: str | Path, params: str | Path | None = None, *, with_params: bool = True) -> Model:
    """Load a legacy inference model from a directory or a program file (never writes anything).

    `with_params=False` reads the program only: enough to inspect an optimiser's output, whose params file
    layout is the optimiser's business."""
    model_file, params_path, layout = locate(Path(path), Path(params) if params else None)
    data = read_regular(model_file, "the program", MAX_PROGRAM_BYTES)
    if data[:1] in (b"{", b"["):
        try:
            json.loads(data)
            raise InputError(f"{model_file} {PIR_HELP}")
        except ValueError:
            pass
    try:
        program = framework_pb2().ProgramDesc()
        program.ParseFromString(data)
    except Exception:
        raise InputError(
            f"{model_file}: not a Paddle program (protobuf parse failed; corrupt or wrong file?)"
        ) from None
    if not program.IsInitialized():  # proto2 required fields: the parser accepts their absence, serialising fails
        missing = ", ".join(program.FindInitializationErrors()[:3])
        raise InputError(f"{model_file}: not a complete Paddle program (missing {missing}; corrupt file?)")
    if not program.blocks:
        raise InputError(f"{model_file}: not a Paddle program (no blocks; corrupt or wrong file?)")
    model = Model(program, {}, source=model_file.parent)
    try:
        names = model.param_names()
        _check_text(program)
        _ = model.ops  # decode now so a malformed program fails here, with the file's name
        _check_vars(model)
    except InputError as exc:
        raise InputError(f"{model_file}: {exc}") from None
    except Exception as exc:
        raise InputError(f"{model_file}: malformed program ({exc})") from None
    if not with_params:
        return model
    if layout == "separate":
        model.params = _read_separate(params_path or model_file.parent, names)
    elif names:
        if params_path is None:
            raise InputError(f"{model_file}: the model has {len(names)} parameters but no params file was found")
        blob = read_regular(Path(params_path), "the params file", _params_bound(model, names))
        try:
            model.params = read_combined(blob, names)
        except InputError as exc:
            raise InputError(f"{params_path}: {exc}") from None
    _check_params(model, params_path or model_file.parent)
    return model


def _params_bound(model: Model, names: list[str]) -> int | None:
    """The most bytes a combined params file of these tensors can hold, when every declared shape is static."""
    total = 0
    for name in names:
        var = model.vars.get(name)
        count = None if var is None else var.declared_count
        if count is None:
            return None
        total += count * 16  # 16: the widest element (complex128); declared dtypes may be stale
    return total + 4096 * len(names) + (1 << 20)  # tensor headers with LoD and descriptions


def _check_text(program) -> None:
    """Every name in the program must be text: protobuf hands invalid UTF-8 back as bytes (or raises on access),
    which would break later steps far from the file."""

    def text(value: object, what: str) -> None:
        if not isinstance(value, str):
            raise InputError(f"{what} is not valid UTF-8 text (corrupt program?)")

    try:
        for block in program.blocks:
            for var in block.vars:
                text(var.name, "a var name")
            for op in block.ops:
                text(op.type, "an op type")
                for slot in [*op.inputs, *op.outputs]:
                    text(slot.parameter, f"a slot name of op {op.type!r}")
                    for arg in slot.arguments:
                        text(arg, f"an argument of op {op.type!r}")
                for attr in op.attrs:
                    text(attr.name, f"an attribute name of op {op.type!r}")
                    if attr.HasField("s"):
                        text(attr.s, f"attribute {attr.name!r} of op {op.type!r}")
                    for item in attr.strings:
                        text(item, f"attribute {attr.name!r} of op {op.type!r}")
    except UnicodeDecodeError:
        raise InputError("a name is not valid UTF-8 text (corrupt program?)") from None


def _check_vars(model: Model) -> None:
    """Dims and dtypes every later step relies on: bounded sizes, dtypes numpy knows for feeds and params."""
    for var in model.vars.values():
        if var.kind != DENSE_TENSOR or var.shape is None:
            continue
        if any(d < -1 for d in var.shape):
            raise InputError(f"var {var.name!r} has invalid dims {list(var.shape)}")
        known = 1
        for d in var.shape:
            known *= max(d, 1)
        if known > MAX_ELEMENTS:
            raise InputError(f"var {var.name!r} has implausible dims {list(var.shape)} (corrupt program?)")
    for name in [*model.feeds, *(n for n in model.param_names() if model.vars[n].kind == DENSE_TENSOR)]:
        var = model.vars.get(name)
        if var is None:
            raise InputError(f"input {name!r} is fed but not declared")
        if var.dtype is not None:
            try:
                np.dtype(var.dtype)
            except TypeError:
                raise InputError(f"var {name!r} has an unsupported data type ({var.dtype})") from None


def _check_params(model: Model, where: Path) -> None:
    """Each stored tensor must be what the program declares: an engine would fail later with a worse message."""
    for name, array in model.params.items():
        var = model.vars.get(name)
        if var is None or var.shape is None or var.kind != DENSE_TENSOR:
            continue
        declared = tuple(var.shape)
        if len(declared) != array.ndim or any(d >= 0 and d != a for d, a in zip(declared, array.shape, strict=True)):
            raise InputError(
                f"{where}: parameter {name!r} has shape {list(array.shape)}, the program declares {list(declared)}"
            )
        if var.dtype is not None and var.dtype != "bfloat16" and np.dtype(var.dtype) != array.dtype:
            raise InputError(f"{where}: parameter {name!r} is {array.dtype}, the program declares {var.dtype}")


def _read_separate(directory: Path, names: list[str]) -> dict:
    out = {}
    for name in names:
        f = Path(directory) / name
        if not f.exists():
            raise InputError(f"{directory}: parameter file {name!r} is missing")
        blob = read_regular(f, "a parameter file")
        try:
            array, end = read_tensor(blob, 0, name)
        except InputError as exc:
            raise InputError(f"{f}: {exc}") from None
        if end != len(blob):
            raise InputError(f"{f}: {len(blob) - end} unexpected trailing bytes")
        out[name] = array
    return out


def save_model(
    model: Model, out_dir: str | Path, extra_files: dict[str, bytes] | None = None, *, marker: bool = False
) -> Path:
    """Write `model.pdmodel` + `model.pdiparams` into `out_dir`, atomically (temp dir + rename). Callers writing a
    user's path apply fsutil.check_output_dir first; `marker` marks the directory as bisect-lite's output."""
    out_dir = Path(out_dir)
    if model.source is not None and (is_inside(out_dir, model.source) or is_inside(model.source, out_dir)):
        raise InputError(f"{out_dir}: refusing to write into or over the input model's directory {model.source}")
    with atomic_dir(out_dir, marker=marker) as tmp:
        write_model_files(model, tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return out_dir


def write_model_files(model: Model, directory: Path) -> None:
    """Write the two files into an existing (private, temporary) directory."""
    (directory / MODEL_FILE).write_bytes(model.program_bytes())
    (directory / PARAMS_FILE).write_bytes(write_combined(model.params))
