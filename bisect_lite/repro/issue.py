"""ISSUE.md: a ready-to-file Paddle-Lite GitHub issue for a repro bundle, from its repro.json dict.

Maintainers need four things to act: the environment, the op with its attributes and shapes, how wrong the output
is, and a way to reproduce it without bisect-lite -- so the issue carries a plain-Python snippet that uses only
numpy and paddlelite's documented Python API (Opt, MobileConfig, create_paddle_predictor, CLPrecisionType).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from bisect_lite.report.markdown import visible_attrs

_ENGINE_LABELS = (  # substring of the engine name (lower case) -> how Paddle-Lite people call it
    ("opencl", "OpenCL"),
    ("arm", "ARM"),
    ("paddle_inference", "Paddle Inference"),
    ("paddle-inference", "Paddle Inference"),
    ("inference", "Paddle Inference"),
    ("fp16", "fp16 emulation"),
    ("x86", "x86"),
    ("metal", "Metal"),
)
FILE_NOTES = {
    "model.pdmodel": "the failing op as a standalone Paddle program",
    "model.pdiparams": "its weights (combined parameters)",
    "inputs.npz": "the op's input values (the reference engine's intermediates from the full model)",
    "expected.npz": "the reference engine's outputs for those inputs",
    "target.npz": "the target engine's outputs (what this issue reports)",
    "actual.npz": "the target engine's outputs (what this issue reports)",
    "repro.json": "machine-readable description (used by `bisect-lite verify`)",
    "ISSUE.md": "this text",
    "model.onnx": "the same op as ONNX, for a cross-check with another runtime",
}
_MAX_VALUE = 100


def render_issue(repro: Mapping[str, Any]) -> str:
    """Render the issue text (first line is the title as a Markdown heading)."""
    op = repro.get("op") or {}
    op_type = str(op.get("type", "?"))
    metrics = list(repro.get("metrics") or [])
    diag = repro.get("diagnosis") or {}
    ref, tgt = repro.get("reference") or {}, repro.get("target") or {}
    ref_label, tgt_label = _label(ref.get("engine")), _label(tgt.get("engine"))
    precision = _precision(tgt)
    worst = _worst(metrics)
    crash = diag.get("kind") == "crash"
    kind = repro.get("kind", "op")
    extra = max(len(repro.get("ops") or []) - 1, 0)
    subject = op_type if kind not in ("subgraph", "group") else f"{op_type} (+{extra} fused ops)"

    numbers = [f"rel L2 {_num(worst.get('rel_l2'), 2)}"] if worst and worst.get("rel_l2") is not None else []
    if precision:
        numbers.append(precision)
    if crash:
        what = f"crashes{f' ({precision})' if precision else ''}, works on {ref_label}"
    else:
        what = f"output differs from {ref_label}" + (f" ({', '.join(numbers)})" if numbers else "")
    title = f"[{tgt_label}] {subject} {what} — standalone repro attached"

    out = [f"# {title}", ""]
    out += _summary(repro, op_type, tgt_label, ref_label, precision, worst, crash)
    out += _environment(ref, tgt, precision)
    out += _op_section(repro, op, op_type)
    if metrics:
        out += ["### Error statistics", "", *_metrics_table(metrics, repro.get("tolerance") or {})]
    out += _diagnosis(diag)
    message = str(repro.get("message") or "").strip()
    if message:  # the engine's own words (a crash's failed check) matter more to maintainers than our summary
        tail = "\n".join(message.splitlines()[-20:]).replace("```", "'''")
        out += ["### Engine log (last lines)", "", "```text", tail, "```", ""]
    out += _steps(repro, precision)
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------
# Sections


def _summary(
    repro: Mapping[str, Any],
    op_type: str,
    tgt: str,
    ref: str,
    precision: str | None,
    worst: Mapping[str, Any] | None,
    crash: bool,
) -> list[str]:
    src = repro.get("source") or {}
    index = src.get("op_index", (repro.get("op") or {}).get("index", "?"))
    where = f"op #{index} of {src.get('ops', '?')} in `{src.get('model', '?')}`"
    on = f"{tgt}" + (f" ({precision})" if precision else "")
    if crash:
        text = f"`{op_type}` ({where}) crashes on {on}; the same op runs on {ref}."
    else:
        text = f"`{op_type}` ({where}) gives a different output on {on} than on {ref}"
        if worst:
            tol = repro.get("tolerance") or {}
            text += (
                f": rel L2 {_num(worst.get('rel_l2'))}, max abs {_num(worst.get('max_abs'))}, "
                f"{_pct(worst.get('mismatch_fraction'))} of elements outside atol {_num(tol.get('atol'))} / "
                f"rtol {_num(tol.get('rtol'))}"
            )
        text += "."
    size = "this single op" if repro.get("kind", "op") == "op" else f"these {len(repro.get('ops') or [])} ops"
    return ["### Summary", "", text + f" The bundle below reproduces it with {size} and fixed inputs.", ""]


def _environment(ref: Mapping[str, Any], tgt: Mapping[str, Any], precision: str | None) -> list[str]:
    rf, tf = dict(ref.get("facts") or {}), dict(tgt.get("facts") or {})
    keys = sorted(set(rf) | set(tf), key=lambda k: (not any(w in k for w in ("version", "device", "gpu")), k))
    out = ["### Environment", "", "| | reference | target |", "|---|---|---|"]
    out.append(f"| engine | `{_esc(str(ref.get('engine', '?')))}` | `{_esc(str(tgt.get('engine', '?')))}` |")
    if precision and not any("precision" in k for k in keys):
        out.append(f"| precision | fp32 | {precision} |")
    for k in keys:
        out.append(f"| {_esc(k)} | {_esc(_value(rf.get(k, '—')))} | {_esc(_value(tf.get(k, '—')))} |")
    out.append("")
    return out


def _op_section(repro: Mapping[str, Any], op: Mapping[str, Any], op_type: str) -> list[str]:
    out = ["### The op", ""]
    ops = list(repro.get("ops") or [])
    if repro.get("kind") in ("subgraph", "group") and ops:
        chain = " → ".join(f"`{o.get('type', '?')}` (#{o.get('index', '?')})" for o in ops)
        what = "A group the target fuses into one kernel" if repro.get("kind") == "group" else "A subgraph"
        out += [f"{what}: {chain}. The attributes below are of `{op_type}`.", ""]
    attrs = visible_attrs(op.get("attrs") or {})
    if attrs:
        out += ["| attribute | value |", "|---|---|"]
        out += [f"| {_esc(k)} | `{_esc(_value(v))}` |" for k, v in attrs.items()]
        out.append("")
    rows = []
    for side in ("inputs", "outputs"):
        for slot, items in (op.get(side) or {}).items():
            for item in items if isinstance(items, Sequence) and not isinstance(items, str) else [items]:
                item = item if isinstance(item, Mapping) else {"name": item}
                shape = item.get("shape")
                rows.append(
                    f"| {side[:-1]} | {_esc(str(slot))} | `{_esc(str(item.get('name', '?')))}` "
                    f"| {_shape(shape)} | {_esc(str(item.get('dtype', '?')))} |"
                )
    if rows:
        out += ["| | slot | name | shape | dtype |", "|---|---|---|---|---|", *rows, ""]
    return out


def _metrics_table(metrics: Sequence[Mapping[str, Any]], tol: Mapping[str, Any]) -> list[str]:
    out = [
        f"Tolerance: atol {_num(tol.get('atol'))}, rtol {_num(tol.get('rtol'))} "
        "(an element fails if |target-ref| > max(atol, rtol·|ref|)).",
        "",
        "| output | shape | result | rel L2 | max abs | max rel | mean abs | cosine | outside tol | NaN t/r "
        "| inf t/r | min atol | min rtol |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in metrics:
        out.append(
            f"| `{_esc(str(m.get('name', '?')))}` | {_shape(m.get('ref_shape'))} | "
            f"{'pass' if m.get('passed') else '**FAIL**'} | {_num(m.get('rel_l2'))} | {_num(m.get('max_abs'))} | "
            f"{_num(m.get('max_rel'))} | {_num(m.get('mean_abs'))} | {_num(m.get('cosine'), 6)} | "
            f"{_pct(m.get('mismatch_fraction'))} | {m.get('nan_target', 0)}/{m.get('nan_ref', 0)} | "
            f"{m.get('inf_target', 0)}/{m.get('inf_ref', 0)} | {_num(m.get('min_atol'))} | {_num(m.get('min_rtol'))} |"
        )
    reasons = [f"`{m.get('name')}`: {m.get('reason')}" for m in metrics if m.get("reason")]
    out += ["", *[f"- {_esc(r)}" for r in reasons], ""] if reasons else [""]
    return out


def _diagnosis(diag: Mapping[str, Any]) -> list[str]:
    if not diag:
        return []
    out = ["### Diagnosis (automatic)", "", f"**`{diag.get('kind', '?')}`** — {diag.get('summary', '')}", ""]
    evidence = diag.get("evidence") or {}
    if evidence:
        out += ["<details><summary>evidence</summary>", "", "| | |", "|---|---|"]
        out += [f"| {_esc(str(k))} | {_esc(_value(v))} |" for k, v in evidence.items()]
        out += ["", "</details>", ""]
    return out


def _steps(repro: Mapping[str, Any], precision: str | None) -> list[str]:
    files = [str(f) for f in repro.get("files") or []]
    # Bold step labels instead of a numbered list: a fenced block at column 0 would break the list anyway.
    out = [
        "### Steps to reproduce",
        "",
        "**1. With bisect-lite**, inside the unpacked bundle:",
        "",
        "```sh",
        "pip install bisect-lite",
        "bisect-lite verify .",
        "```",
        "",
        "**2. With Paddle-Lite's Python API only** (numpy + paddlelite; run it where the paddlelite package can "
        "use OpenCL, e.g. an ARM Linux board with a GPU driver), inside the bundle:",
        "",
        "```python",
        python_snippet(precision),
        "```",
        "",
        "**3. Files in the bundle:**",
        "",
    ]
    onnx = repro.get("onnx") or {}
    for f in files:
        note = FILE_NOTES.get(f, "")
        out.append(f"- `{f}`" + (f" — {note}" if note else ""))
    if onnx and not onnx.get("written") and onnx.get("note"):
        out.append(f"- (no ONNX export: {_one_line(str(onnx['note']))})")
    inputs = repro.get("inputs") or {}
    if inputs:
        shown = ", ".join(f"`{n}` {_shape(v.get('shape'))} {v.get('dtype', '')}".rstrip() for n, v in inputs.items())
        out += ["", f"Inputs: {shown}."]
    out.append("")
    return out


def python_snippet(precision: str | None = "fp16") -> str:
    """The standalone check: convert with Opt for opencl,arm, run with MobileConfig, compare with expected.npz."""
    cl_precision = "CL_PRECISION_FP32" if precision == "fp32" else "CL_PRECISION_FP16"
    return f"""\
from pathlib import Path

import numpy as np
from paddlelite.lite import Opt, MobileConfig, create_paddle_predictor, CLPrecisionType

# Convert the one-op model for OpenCL with ARM fallback (writes repro_opencl.nb).
opt = Opt()
opt.set_model_file("model.pdmodel")
if Path("model.pdiparams").exists():
    opt.set_param_file("model.pdiparams")
opt.set_valid_places("opencl,arm")
opt.set_model_type("naive_buffer")
opt.set_optimize_out("repro_opencl")
opt.run()

config = MobileConfig()
config.set_model_from_file("repro_opencl.nb")
config.set_opencl_precision(CLPrecisionType.{cl_precision})
predictor = create_paddle_predictor(config)

inputs = np.load("inputs.npz")
expected = np.load("expected.npz")
for i, name in enumerate(predictor.get_input_names()):
    key = name if name in inputs.files else inputs.files[i]
    predictor.get_input(i).from_numpy(np.ascontiguousarray(inputs[key]))
predictor.run()
for i, name in enumerate(predictor.get_output_names()):
    got = predictor.get_output(i).numpy().astype(np.float64)
    key = name if name in expected.files else expected.files[i]
    want = expected[key].astype(np.float64)
    diff = np.abs(got.reshape(want.shape) - want).max()
    print(f"{{name}}: max |target - expected| = {{diff:.6g}} (max |expected| = {{np.abs(want).max():.6g}})")"""


# ----------------------------------------------------------------------------------------------------
# Helpers


def _label(engine: Any) -> str:
    name = str(engine or "?")
    low = name.lower()
    return next((label for key, label in _ENGINE_LABELS if key in low), name)


def _precision(target: Mapping[str, Any]) -> str | None:
    """fp16/fp32 from a target fact whose key mentions precision, else from the engine name."""
    facts = target.get("facts") or {}
    for key, value in facts.items():
        if "precision" in str(key).lower():
            text = str(value).lower()
            if "16" in text:
                return "fp16"
            if "32" in text:
                return "fp32"
    engine = str(target.get("engine", "")).lower()
    if "fp16" in engine or "half" in engine:
        return "fp16"
    if "fp32" in engine:
        return "fp32"
    return None


def _worst(metrics: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    if not metrics:
        return None
    failing = [m for m in metrics if not m.get("passed")] or list(metrics)
    return max(failing, key=lambda m: _as_float(m.get("rel_l2")))


def _as_float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.inf  # an uncomputable error ranks as the worst
    return math.inf if math.isnan(f) else f


def _shape(shape: Any) -> str:
    if isinstance(shape, Sequence) and not isinstance(shape, str):
        return "[" + ", ".join(str(d) for d in shape) + "]"
    return "?" if shape is None else str(shape)


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "0" if v == 0 else (f"{v:.{digits}g}" if math.isfinite(v) else str(v))
    return str(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.3g}%" if isinstance(v, (int, float)) and not isinstance(v, bool) else _num(v)


def _value(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return _num(v, 6)
    if isinstance(v, (Mapping, list, tuple)):
        text = json.dumps(v, default=str)
        return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 1] + "…"
    return _one_line(str(v))


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
