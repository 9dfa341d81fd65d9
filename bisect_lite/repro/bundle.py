"""The repro bundle: a minimal failing model with its inputs, expected and actual outputs, facts and an issue text.

A maintainer with only this directory reproduces the fault with `bisect-lite verify DIR`, or with the plain
Paddle-Lite snippet in ISSUE.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite import __version__
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.fsutil import atomic_dir
from bisect_lite.inputs import save_npz
from bisect_lite.model import Model, write_model_files
from bisect_lite.model.describe import tensor_info
from bisect_lite.model.slicing import with_var_shapes


def export_onnx_note(model_dir: Path, out_file: Path) -> tuple[bool, str]:
    """Write model.onnx when paddle2onnx can convert the repro (it runs in its own child process)."""
    from bisect_lite.engines.onnxruntime import export_onnx

    try:
        export_onnx(model_dir, out_file)
    except RuntimeError as exc:
        return False, f"paddle2onnx could not convert it: {str(exc).strip().splitlines()[-1][:300]}"
    return True, "converted with paddle2onnx (optimize_tool=None)"


def repro_facts(
    found: dict[str, Any],
    entry: dict[str, Any],
    source: Model,
    ref: EngineRunner,
    target: EngineRunner,
    tolerance: dict[str, Any],
) -> dict[str, Any]:
    sub = shaped_model(found)
    culprit = source.ops[entry["index"]]
    cmp = found.get("comparison")

    def info(name: str) -> dict[str, Any]:
        # The shapes the repro's files have (shrunk inputs), not the source model's.
        return tensor_info(sub if name in sub.vars else source, name)

    return {
        "bisect_lite": __version__,
        "status": "crash" if entry.get("status") == "crash" else "mismatch",
        "op": {
            "type": culprit.type,
            "index": culprit.index,
            "attrs": entry["attrs"],
            "inputs": {s: [info(a) for a in args] for s, args in culprit.inputs.items() if args},
            "outputs": {s: [info(a) for a in args] for s, args in culprit.outputs.items() if args},
        },
        "kind": entry["kind"],
        "ops": [{"index": i, "type": source.ops[i].type} for i in found["ops"]],
        "reference": {"engine": ref.spec, "facts": ref.facts()},
        "target": {"engine": target.spec, "facts": target.facts(), **_kernels(target, source, found["ops"])},
        "tolerance": tolerance,
        "metrics": [m.to_dict() for m in cmp.tensors] if cmp else [],
        "diagnosis": entry["diagnosis"],
        "message": found.get("message", ""),
        "failed_while": "loading" if found.get("stage") == "load" else "running",
        "source": {"model": str(source.source), "op_index": culprit.index, "ops": len(source.ops)},
        "inputs": {
            n: {"shape": list(found["inputs"][n].shape), "dtype": str(found["inputs"][n].dtype)} for n in sub.feeds
        },
        "fetches": list(sub.fetches),
        "first_nonfinite": first_nonfinite(found),
    }


def first_nonfinite(found: dict[str, Any]) -> dict[str, Any] | None:
    """Where the target first gives NaN/inf and the reference a finite value, with the repro's inputs of the same
    shape at that index: the values that trigger it (e.g. a sigmoid's input below -88.7), which a maintainer needs
    first. None when there is no such element."""
    expected, actual = found.get("expected") or {}, found.get("actual") or {}
    for name, got in actual.items():
        got, want = np.asarray(got), np.asarray(expected.get(name))
        if got.shape != want.shape or got.dtype.kind != "f":
            continue
        bad = np.argwhere(~np.isfinite(got) & np.isfinite(want))
        if bad.size:
            index = tuple(int(i) for i in bad[0])
            same = {n: np.asarray(v) for n, v in found["inputs"].items() if np.shape(v) == got.shape}
            inputs = {n: _json_float(v[index]) for n, v in same.items() if v.dtype.kind == "f"}
            return {
                "output": name,
                "index": list(index),
                "count": len(bad),
                "target": str(got[index]),
                "reference": float(want[index]),
                "inputs": inputs,
            }
    return None


def _json_float(value: Any) -> float | str:
    """A float, or its name ("nan", "inf") where JSON has no number for it."""
    return float(value) if np.isfinite(value) else str(value)


def _kernels(target: EngineRunner, source: Model, ops: list[int]) -> dict[str, Any]:
    """The kernels that ran the culprit's ops in the whole model (the target's place or a host fallback)."""
    kernels = target.kernels(source, list(ops))
    return {"kernels": kernels} if kernels else {}


def shaped_model(found: dict[str, Any]) -> Model:
    """The repro program recording the shapes its files really have (a model's -1 batch, a shrunk input)."""
    shapes = {n: a.shape for n, a in found["inputs"].items()} | {n: a.shape for n, a in found["expected"].items()}
    return with_var_shapes(found["model"], shapes)


def write_bundle(
    directory: Path,
    found: dict[str, Any],
    entry: dict[str, Any],
    ref: EngineRunner,
    target: EngineRunner,
    source: Model,
    tolerance: dict[str, Any],
) -> Path:
    from bisect_lite.repro.issue import render_issue

    facts = repro_facts(found, entry, source, ref, target, tolerance)
    with atomic_dir(directory) as tmp:
        write_model_files(shaped_model(found), tmp)
        save_npz(tmp / "inputs.npz", found["inputs"])
        save_npz(tmp / "expected.npz", found["expected"])
        files = ["model.pdmodel", "model.pdiparams", "inputs.npz", "expected.npz"]
        if found.get("actual"):
            save_npz(tmp / "actual.npz", found["actual"])
            files.append("actual.npz")
        ok, note = export_onnx_note(tmp, tmp / "model.onnx")
        if ok:
            files.append("model.onnx")
        facts["onnx"] = {"written": ok, "note": note}
        files += ["repro.json", "ISSUE.md"]
        facts["files"] = files
        (tmp / "repro.json").write_text(json.dumps(facts, indent=2, allow_nan=False) + "\n")
        (tmp / "ISSUE.md").write_text(render_issue(facts))
    return directory
