"""Finding and loading a legacy (ProgramDesc) inference model the way Paddle-Lite's opt does."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import params as P
from . import proto
from .log import fatal

_WHERE = "lite/model_parser/model_parser.cc"

_FORMAT_HELP = (
    "\n Error, Unsupported model format!\n"
    "      1. contents in model directory should be in one of these formats:\n"
    "          (1) __model__ + var1 + var2 + etc.\n"
    "          (2) model + var1 + var2 + etc.\n"
    "          (3) model.pdmodel + model.pdiparams\n"
    "          (4) model + params\n"
    "          (5) model + weights\n"
    "      2. You can also appoint the model and params file in custom format:\n"
    "          eg. |-- set_model_file('custom_model_name')\n"
    "              |-- set_param_file('custom_params_name')'"
)


@dataclass
class LegacyModel:
    program: Any  # framework_pb2.ProgramDesc
    program_bytes: bytes
    params: dict[str, np.ndarray]
    params_bytes: bytes  # combined, sorted: what Paddle Inference loads from a buffer
    source: dict[str, str] = field(default_factory=dict)


def _looks_like_pir_json(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{"


def _find_program(model_dir: str, model_file: str, combined: bool) -> str:
    if not combined:
        for name in ("__model__", "model", "model.pdmodel", "inference.pdmodel"):
            path = os.path.join(model_dir, name)
            if os.path.isfile(path):
                return path
        hint = ""
        if model_dir and os.path.isdir(model_dir) and any(f.endswith(".json") for f in os.listdir(model_dir)):
            hint = (
                "\n[paddlelite-sim] the directory holds a PIR .json program: opt reads only the legacy "
                "ProgramDesc format (export with FLAGS_enable_pir_api=0)"
            )
        fatal(_FORMAT_HELP + hint, _WHERE)
    if not os.path.isfile(model_file):
        fatal(
            f"\nError, the model file '{model_file}' is not existed. Please confirm that you have inputed "
            "correct model file path.",
            _WHERE,
        )
    return model_file


def parse_legacy_program(data: bytes, path: str) -> Any:
    if _looks_like_pir_json(data):
        # The real opt silently fails ParseFromString on JSON and then dies on the empty program.
        fatal(
            f"Check failed: (block_size) 0!>0 while loading '{path}'\n[paddlelite-sim] '{path}' is a PIR "
            ".json program; Paddle-Lite opt reads only the legacy .pdmodel/__model__ ProgramDesc format "
            "(export with FLAGS_enable_pir_api=0)",
            _WHERE,
        )
    try:
        prog = proto.parse_program(data)
    except Exception as e:
        fatal(f"Check failed: failed to parse the ProgramDesc in '{path}': {e}", _WHERE)
    if len(prog.blocks) == 0:
        fatal(f"Check failed: (block_size) 0!>0 while loading '{path}'", _WHERE)
    return prog


def _read_combined(path: str, names: list[str]) -> tuple[dict[str, np.ndarray], bytes]:
    if not os.path.isfile(path):
        fatal(
            f"Check failed: IsFileExists(param_file) Error, the param file '{path}' is not existed. Please "
            "confirm that you have inputed correct param file path.",
            _WHERE,
        )
    with open(path, "rb") as f:
        data = f.read()
    if names and not data:
        fatal(
            "Check failed: reader->length() The model needs weights but the weight file is not existed.",
            _WHERE,
        )
    try:
        return P.read_combined(data, names), data
    except P.ParamsError as e:
        fatal(f"Check failed: {e}", _WHERE)


def load_legacy_model(model_dir: str, model_file: str, param_file: str, verbose: bool = True) -> LegacyModel:
    combined = bool(model_file) and bool(param_file)
    prog_path = _find_program(model_dir, model_file, combined)
    if verbose:
        print(f"Loading topology data from {prog_path}", flush=True)
    with open(prog_path, "rb") as f:
        data = f.read()
    prog = parse_legacy_program(data, prog_path)
    names = P.param_names(prog)
    source = {
        "model_dir": model_dir,
        "model_file": model_file,
        "param_file": param_file,
        "program": prog_path,
    }
    if combined:
        if verbose:
            print(f"Loading params data from {param_file}", flush=True)
        params, pbytes = _read_combined(param_file, names)
        source["params"] = param_file
    else:
        params = {}
        pbytes = b""
        for i, n in enumerate(names):
            single = os.path.join(model_dir, n)
            if os.path.isfile(single):
                with open(single, "rb") as f:
                    try:
                        params[n], _ = P.read_tensor(f.read(), 0)
                    except P.ParamsError as e:
                        fatal(f"Check failed: {e} ({single})", _WHERE)
                continue
            # Like the real loader: the first param without its own file switches to a combined file.
            for cand in ("params", "weights", "model.pdiparams", "inference.pdiparams"):
                path = os.path.join(model_dir, cand)
                if os.path.isfile(path):
                    break
            else:
                fatal(_FORMAT_HELP, _WHERE)
            if i != 0:
                fatal(f"Check failed: mixed per-variable and combined params in '{model_dir}'", _WHERE)
            if verbose:
                print(f"Loading params data from {path}", flush=True)
            params, pbytes = _read_combined(path, names)
            source["params"] = path
            break
        if not pbytes:
            pbytes = P.write_combined(params)
    if verbose:
        print("1. Model is successfully loaded!", flush=True)
    return LegacyModel(prog, data, params, pbytes, source)
