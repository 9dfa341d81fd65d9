"""Find, load and save legacy Paddle inference models (the format Paddle-Lite's opt reads)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bisect_lite.errors import InputError
from bisect_lite.fsutil import atomic_dir, is_inside
from bisect_lite.model.graph import Model
from bisect_lite.model.params import read_combined, read_tensor, write_combined
from bisect_lite.model.proto import framework_pb2

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


def load_model(path: str | Path, params: str | Path | None = None, *, with_params: bool = True) -> Model:
    """Load a legacy inference model from a directory or a program file (never writes anything).

    `with_params=False` reads the program only: enough to inspect an optimiser's output, whose params file
    layout is the optimiser's business."""
    model_file, params_path, layout = locate(Path(path), Path(params) if params else None)
    try:
        data = model_file.read_bytes()
    except OSError as exc:
        raise InputError(f"{model_file}: cannot read ({exc.strerror})") from None
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
    if not program.blocks:
        raise InputError(f"{model_file}: not a Paddle program (no blocks; corrupt or wrong file?)")
    model = Model(program, {}, source=model_file.parent)
    try:
        names = model.param_names()
        _ = model.ops  # decode now so a malformed program fails here, with the file's name
    except Exception as exc:
        raise InputError(f"{model_file}: malformed program ({exc})") from None
    if not with_params:
        return model
    if layout == "separate":
        model.params = _read_separate(params_path or model_file.parent, names)
    elif names:
        if params_path is None:
            raise InputError(f"{model_file}: the model has {len(names)} parameters but no params file was found")
        try:
            blob = Path(params_path).read_bytes()
        except OSError as exc:
            raise InputError(f"{params_path}: cannot read ({exc.strerror})") from None
        try:
            model.params = read_combined(blob, names)
        except InputError as exc:
            raise InputError(f"{params_path}: {exc}") from None
    return model


def _read_separate(directory: Path, names: list[str]) -> dict:
    out = {}
    for name in names:
        f = Path(directory) / name
        try:
            blob = f.read_bytes()
        except OSError:
            raise InputError(f"{directory}: parameter file {name!r} is missing") from None
        array, end = read_tensor(blob, 0, name)
        if end != len(blob):
            raise InputError(f"{f}: {len(blob) - end} unexpected trailing bytes")
        out[name] = array
    return out


def save_model(model: Model, out_dir: str | Path, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write `model.pdmodel` + `model.pdiparams` into `out_dir`, atomically (temp dir + rename)."""
    out_dir = Path(out_dir)
    if model.source is not None and is_inside(out_dir, model.source):
        raise InputError(f"{out_dir}: refusing to write into the input model's directory {model.source}")
    with atomic_dir(out_dir) as tmp:
        write_model_files(model, tmp)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return out_dir


def write_model_files(model: Model, directory: Path) -> None:
    """Write the two files into an existing (private, temporary) directory."""
    (directory / MODEL_FILE).write_bytes(model.program_bytes())
    (directory / PARAMS_FILE).write_bytes(write_combined(model.params))
