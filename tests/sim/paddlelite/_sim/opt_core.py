"""Shared by Opt and CxxPredictor: optimise a loaded legacy model and write .nb / protobuf outputs."""

from __future__ import annotations

import os
from typing import Any

from . import nbformat, optimizer
from . import params as P
from .log import version, warn
from .model_io import LegacyModel


def read_memory_config() -> str | None:
    """OPENCL_MEMORY_CONFIG_FILE is read at optimisation time (as opencl_memory_object_config_pass does)."""
    path = os.environ.get("OPENCL_MEMORY_CONFIG_FILE", "")
    if not path:
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        warn(
            f"Missing the opencl memory configuration file {path}",
            "lite/core/optimizer/mir/opencl_memory_object_config_pass.cc",
        )
        return None


def build_nb(
    model: LegacyModel,
    valid_places: list[tuple[str, str, str]],
    enable_fp16: bool,
    passes_internal: list[str],
    model_type: str,
) -> tuple[nbformat.NbModel, optimizer.Optimized]:
    mem = read_memory_config()
    # ARM fp16 kernels only exist if an arm/fp16 place was created (enable_fp16 before set_valid_places).
    enable_fp16 = enable_fp16 and any(p[0] == "arm" and p[1] == "fp16" for p in valid_places)
    opt = optimizer.optimize(model.program, model.params, valid_places, enable_fp16, mem)
    meta: dict[str, Any] = {
        "format": "paddlelite-sim-nb",
        "format_version": nbformat.FORMAT_VERSION,
        "opt_version": version(),
        "valid_targets": optimizer.targets_from_valid_places(valid_places),
        "valid_places": ["/".join(p) for p in valid_places],
        "enable_fp16": bool(enable_fp16),
        "model_type": model_type,
        "opencl_memory_config": mem,
        "passes_internal": list(passes_internal),
        "source": model.source,
        "opt_log": opt.log,
    }
    nb = nbformat.NbModel(
        meta,
        model.program.SerializeToString(),
        model.params_bytes,
        opt.program.SerializeToString(),
        P.write_combined(opt.params),
    )
    return nb, opt


def write_naive_buffer(out_name: str, nb: nbformat.NbModel) -> str:
    path = out_name + ".nb"  # SaveModelNaive always appends ".nb"
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as f:
        f.write(nbformat.dump(nb))
    return path


def write_protobuf(out_dir: str, opt: optimizer.Optimized) -> str:
    """SaveModelPb(combined=true): <dir>/model (optimised ProgramDesc) + <dir>/params (persistables)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "model"), "wb") as f:
        f.write(opt.program.SerializeToString())
    with open(os.path.join(out_dir, "params"), "wb") as f:
        f.write(P.write_combined(opt.params))
    return out_dir
