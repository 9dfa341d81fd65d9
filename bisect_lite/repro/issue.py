"""ISSUE.md: a ready-to-file issue for a repro bundle, from its repro.json dict, written for the engine family
that failed.

Maintainers need four things to act: the environment, the op with its attributes and shapes, how wrong the output
is, and a way to reproduce it without bisect-lite -- so the issue leads with a plain-Python snippet that needs only
numpy and the failing engine's own package (paddlelite, paddle, paddle2onnx + onnxruntime), then says how to check
it with bisect-lite from a checkout (no package index serves bisect-lite).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bisect_lite.report.kernels import kernel_lines
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
    ("onnxruntime", "ONNX Runtime"),
    ("paddle", "Paddle Inference"),
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


@dataclass(frozen=True)
class Family:
    """The engine family a repro failed on: who should read the issue and how they reproduce it without us."""

    key: str  # "lite" | "paddle-inference" | "paddle2onnx" | "onnxruntime" | "fp16" | "cmd"
    label: str  # the title's [tag]
    project: str  # where the issue belongs
    needs: str  # what the plain snippet needs installed
    snippet: Callable[[Mapping[str, Any], str | None], str]


def engine_family(repro: Mapping[str, Any]) -> Family:
    """The family of the repro's target engine (a paddle2onnx failure is a converter bug, not an ORT one)."""
    target = repro.get("target") or {}
    spec = str(target.get("engine") or "?")
    name, _, rest = spec.partition(":")
    words = set(rest.split(",")) if rest else set()
    facts = target.get("facts") or {}
    if name == "cmd":
        return Family("cmd", "custom runner", "the owner of the runner program", "numpy + paddlepaddle", _cmd_snippet)
    if name == "fp16":
        return Family(
            "fp16",
            "fp16",
            "the model's author or the fp16 (OpenCL/ARM half precision) backend it targets",
            "numpy + paddlepaddle",
            _fp16_snippet,
        )
    if name == "onnxruntime":
        loading = repro.get("failed_while") == "loading" or "paddle2onnx" in str(repro.get("message") or "")
        converting = loading and repro.get("status") == "crash"
        if converting:
            return Family(
                "paddle2onnx", "paddle2onnx", "PaddlePaddle/Paddle2ONNX", "paddlepaddle + paddle2onnx", _p2o_snippet
            )
        return Family(
            "onnxruntime",
            "ONNX Runtime",
            "PaddlePaddle/Paddle2ONNX (conversion) or microsoft/onnxruntime (kernel)",
            "numpy + paddlepaddle + paddle2onnx + onnxruntime",
            _ort_snippet,
        )
    if name in ("paddle", "paddle-opt"):
        label = "Paddle Inference" + (" (IR optimisation + oneDNN)" if name == "paddle-opt" else "")
        return Family("paddle-inference", label, "PaddlePaddle/Paddle", "numpy + paddlepaddle", _paddle_snippet)
    place = str(facts.get("place") or "")
    if name == "lite" or place:
        place = place or next((w for w in ("opencl", "arm", "x86") if w in words), "arm")
    else:  # an engine name this module does not know: guess the place from it (older repros say "opencl", "arm")
        low = spec.lower()
        place = next((w for w in ("opencl", "arm", "x86", "metal") if w in low), "")
        if not place:
            return Family("other", _label(spec), "the engine's maintainers", "numpy", _cmd_snippet)
    label = {"opencl": "OpenCL", "arm": "ARM", "x86": "x86", "metal": "Metal"}.get(place, place)
    return Family("lite", label, "PaddlePaddle/Paddle-Lite", "numpy + paddlelite", _lite_snippet)


def render_issue(repro: Mapping[str, Any]) -> str:
    """Render the issue text (first line is the title as a Markdown heading)."""
    op = repro.get("op") or {}
    op_type = str(op.get("type", "?"))
    metrics = list(repro.get("metrics") or [])
    diag = repro.get("diagnosis") or {}
    ref, tgt = repro.get("reference") or {}, repro.get("target") or {}
    family = engine_family(repro)
    ref_label, tgt_label = _label(ref.get("engine")), family.label
    precision = _precision(tgt)
    worst = _worst(metrics)
    crash = diag.get("kind") == "crash" or repro.get("status") == "crash"
    kind = repro.get("kind", "op")
    extra = max(len(repro.get("ops") or []) - 1, 0)
    if kind == "group":
        subject = f"{op_type} (+{extra} fused ops)"
    elif kind == "subgraph" and extra:
        subject = f"{op_type} (+{extra} ops)"
    else:
        subject = op_type

    numbers = [f"rel L2 {_error(worst, 'rel_l2', 2)}"] if worst else []
    if precision:
        numbers.append(precision)
    if family.key == "paddle2onnx":
        what = "cannot be converted to ONNX"
    elif crash:
        what = f"crashes{f' ({precision})' if precision else ''}, works on {ref_label}"
    elif worst and _nonfinite_counts(worst):  # rel L2 skips NaN pairs: it would make a NaN look like noise
        what = f"gives {_nonfinite_counts(worst)} where {ref_label} is finite"
        what += f" ({precision})" if precision else ""
    else:
        what = f"output differs from {ref_label}" + (f" ({', '.join(numbers)})" if numbers else "")
    title = f"[{tgt_label}] {subject} {what} — standalone repro attached"

    out = [f"# {title}", ""]
    out += _summary(repro, op_type, tgt_label, ref_label, precision, worst, crash, family)
    out += _environment(ref, tgt, precision)
    out += kernel_lines(tgt.get("kernels"), "### Kernels")
    out += _op_section(repro, op, op_type)
    if metrics:
        out += ["### Error statistics", "", *_metrics_table(metrics, repro.get("tolerance") or {})]
    out += _diagnosis(diag)
    message = str(repro.get("message") or "").strip()
    if message:  # the engine's own words (a crash's failed check) matter more to maintainers than our summary
        tail = "\n".join(message.splitlines()[-20:]).replace("```", "'''")
        out += ["### Engine log (last lines)", "", "```text", tail, "```", ""]
    out += _steps(repro, precision, family)
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
    family: Family,
) -> list[str]:
    src = repro.get("source") or {}
    index = src.get("op_index", (repro.get("op") or {}).get("index", "?"))
    where = f"op #{index} of {src.get('ops', '?')} in `{src.get('model', '?')}`"
    on = f"{tgt}" + (f" ({precision})" if precision and precision != tgt else "")
    if family.key == "paddle2onnx":
        text = f"paddle2onnx cannot convert `{op_type}` ({where}) to ONNX; {ref} runs it."
    elif crash:
        text = f"`{op_type}` ({where}) crashes on {on}; the same op runs on {ref}."
        # Paddle-Lite engines record where it died (bisect_lite/engines/lite.py crash_details).
        message = str(repro.get("message") or ((repro.get("diagnosis") or {}).get("summary")) or "")
        if "while building the program" in message:
            text += " Paddle-Lite fails while building the program (opt / predictor creation), before any kernel runs."
        elif "while running the program" in message:
            text += " Paddle-Lite builds the program and fails while running it."
    else:
        text = f"`{op_type}` ({where}) gives a different output on {on} than on {ref}"
        if worst:
            tol = repro.get("tolerance") or {}
            nonfinite = _nonfinite(worst)
            finite_only = nonfinite and worst.get("rel_l2") is not None  # the statistics skip non-finite pairs
            text += ": over the finite elements, " if finite_only else ": "
            text += (
                f"rel L2 {_error(worst, 'rel_l2')}, max abs {_error(worst, 'max_abs')}, "
                f"{_pct(worst.get('mismatch_fraction'))} of elements outside atol {_num(tol.get('atol'))} / "
                f"rtol {_num(tol.get('rtol'))}"
            )
            if nonfinite:
                text += f" ({nonfinite})"
        text += "."
        first = repro.get("first_nonfinite")
        if first:
            where = ", ".join(str(i) for i in first["index"])
            text += (
                f" The first of {first['count']} is `{_esc(first['output'])}`[{where}]: {tgt} gives {first['target']}, "
                f"{ref} {_num(first['reference'])}"
            )
            text += "".join(f"; the input `{_esc(n)}` is {_num(v, 6)} there" for n, v in first["inputs"].items()) + "."
    size = "this single op" if repro.get("kind", "op") == "op" else f"these {len(repro.get('ops') or [])} ops"
    text += f" The bundle below reproduces it with {size} and fixed inputs."
    if family.key == "fp16":
        text += (
            " The target is bisect-lite's fp16 emulation (every float tensor rounded to IEEE half at op boundaries, "
            "arithmetic in fp32): the error comes from storing these values in half precision (overflow or "
            "rounding), so any fp16 backend (Paddle-Lite OpenCL, ARM fp16) is expected to show it."
        )
    elif family.key == "cmd":
        text += f" The target is a custom runner program (`{_esc(str((repro.get('target') or {}).get('engine')))}`)."
    return ["### Summary", "", text, "", f"Where to file: {family.project}.", ""]


def _environment(ref: Mapping[str, Any], tgt: Mapping[str, Any], precision: str | None) -> list[str]:
    # The engine gets its own row; the facts repeat it under the same key.
    rf = {k: v for k, v in (ref.get("facts") or {}).items() if k != "engine"}
    tf = {k: v for k, v in (tgt.get("facts") or {}).items() if k != "engine"}
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
            f"{'pass' if m.get('passed') else '**FAIL**'} | {_error(m, 'rel_l2')} | {_error(m, 'max_abs')} | "
            f"{_error(m, 'max_rel')} | {_error(m, 'mean_abs')} | {_num(m.get('cosine'), 6)} | "
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


def _steps(repro: Mapping[str, Any], precision: str | None, family: Family) -> list[str]:
    files = [str(f) for f in repro.get("files") or []]
    # Bold step labels instead of a numbered list: a fenced block at column 0 would break the list anyway.
    out = [
        "### Steps to reproduce",
        "",
        f"**1. Without bisect-lite** ({family.needs}), inside the unpacked bundle:",
        "",
        "```python",
        family.snippet(repro, precision),
        "```",
        "",
        *_native_steps(repro),
        "**2. With bisect-lite** (no package index serves it; install it from a checkout of bisect-lite: "
        "`pip install -e .`), inside the unpacked bundle:",
        "",
        "```sh",
        "bisect-lite verify .",
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


_COMPARE_TAIL = """\
expected = np.load("expected.npz")
for i, name in enumerate(expected.files):
    want = expected[name].astype(np.float64)
    got = outputs[name] if name in outputs else list(outputs.values())[i]  # engines may rename outputs
    got = np.asarray(got).astype(np.float64).reshape(want.shape)
    diff = np.abs(got - want)
    print(f"{name}: max |target - expected| = {np.nanmax(diff) if diff.size else 0:.6g}, "
          f"non-finite in target: {int((~np.isfinite(got)).sum())} "
          f"(max |expected| = {np.abs(want).max() if want.size else 0:.6g})")"""

_PADDLE_RUN = """\
def run_paddle(optimised: bool) -> dict:
    config = pi.Config("model.pdmodel", "model.pdiparams" if Path("model.pdiparams").exists() else "")
    config.disable_gpu()
    config.switch_ir_optim(optimised)
    if optimised:
        config.enable_onednn()
    else:
        config.disable_onednn()
    predictor = pi.create_predictor(config)
    inputs = np.load("inputs.npz")
    for name in predictor.get_input_names():
        predictor.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(inputs[name]))
    predictor.run()
    return {n: predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names()}"""


def python_snippet(precision: str | None = "fp16", place: str = "opencl") -> str:
    """The standalone Paddle-Lite check: convert with Opt, run with MobileConfig, compare with expected.npz."""
    cl_precision = "CL_PRECISION_FP32" if precision == "fp32" else "CL_PRECISION_FP16"
    valid = {"opencl": "opencl,arm"}.get(place, place)
    opencl = place == "opencl"
    imports = "Opt, MobileConfig, create_paddle_predictor" + (", CLPrecisionType" if opencl else "")
    precision_line = f"config.set_opencl_precision(CLPrecisionType.{cl_precision})\n" if opencl else ""
    return f"""\
from pathlib import Path

import numpy as np
from paddlelite.lite import {imports}

# Convert the repro model for {valid} (writes repro_{place}.nb).
opt = Opt()
opt.set_model_file("model.pdmodel")
if Path("model.pdiparams").exists():
    opt.set_param_file("model.pdiparams")
opt.set_valid_places("{valid}")
opt.set_model_type("naive_buffer")
opt.set_optimize_out("repro_{place}")
opt.run()

config = MobileConfig()
config.set_model_from_file("repro_{place}.nb")
{precision_line}predictor = create_paddle_predictor(config)

inputs = np.load("inputs.npz")
for i, name in enumerate(predictor.get_input_names()):
    key = name if name in inputs.files else inputs.files[i]
    predictor.get_input(i).from_numpy(np.ascontiguousarray(inputs[key]))
predictor.run()
outputs = {{name: predictor.get_output(i).numpy() for i, name in enumerate(predictor.get_output_names())}}
{_COMPARE_TAIL}"""


# The native runner's input directory (runners/android/README.md) from the bundle's inputs.npz.
_RUNNER_INPUTS = (
    "python -c \"import numpy as np, pathlib; d = np.load('inputs.npz'); p = pathlib.Path('in'); "
    "p.mkdir(exist_ok=True); (p / 'names.txt').write_text(''.join(n + chr(10) for n in d.files)); "
    "[np.save(p / f'{i}.npy', d[n]) for i, n in enumerate(d.files)]\""
)


def _native_steps(repro: Mapping[str, Any]) -> list[str]:
    """For a target that ran Paddle-Lite's library through the native runner here (QEMU or this machine's OpenCL):
    the same run without bisect-lite's Python, with opt's valid targets and the library named in the facts."""
    facts = (repro.get("target") or {}).get("facts") or {}
    if facts.get("transport") not in ("local", "qemu"):
        return []
    launcher = "qemu-aarch64 -L /usr/aarch64-linux-gnu " if facts.get("transport") == "qemu" else ""
    library = facts.get("library") or "libpaddle_light_api_shared.so"
    precision = facts.get("precision_used") or "fp32"
    return [
        f"**1b. On the same kernels through Paddle-Lite's C++ light API** (bisect-lite's runner, "
        f"`runners/android/bisect_lite_runner.cc`, built against `{_esc(str(library))}`"
        f"{', under QEMU' if launcher else ''}):",
        "",
        "```sh",
        "paddle_lite_opt --model_file=model.pdmodel --param_file=model.pdiparams "
        f"--valid_targets={facts.get('valid_targets', 'arm')} --optimize_out=repro",
        _RUNNER_INPUTS,
        f"{launcher}./bisect_lite_runner --model repro.nb --inputs in --outputs out --precision {precision}",
        "```",
        "",
    ]


def _lite_snippet(repro: Mapping[str, Any], precision: str | None) -> str:
    family = engine_family(repro)
    place = {"OpenCL": "opencl", "ARM": "arm", "x86": "x86"}.get(family.label, "opencl")
    return python_snippet(precision, place)


def _paddle_snippet(repro: Mapping[str, Any], precision: str | None) -> str:
    optimised = str((repro.get("target") or {}).get("engine", "")).startswith("paddle-opt")
    return f"""\
from pathlib import Path

import numpy as np
import paddle.inference as pi

{_PADDLE_RUN}

# The failing configuration: IR optimisation {"and oneDNN on" if optimised else "and oneDNN off"}.
outputs = run_paddle(optimised={optimised})
{_COMPARE_TAIL}"""


def _p2o_snippet(repro: Mapping[str, Any], precision: str | None) -> str:
    return """\
from pathlib import Path

import paddle2onnx

# Fails: this is the conversion error the issue reports.
onnx_bytes = paddle2onnx.export(
    "model.pdmodel",
    "model.pdiparams" if Path("model.pdiparams").exists() and Path("model.pdiparams").stat().st_size else "",
    save_file=None,
    opset_version=11,
    auto_upgrade_opset=True,
    enable_onnx_checker=True,
    optimize_tool="None",
)
print("converted:", len(onnx_bytes or b""), "bytes")"""


def _ort_snippet(repro: Mapping[str, Any], precision: str | None) -> str:
    return f"""\
from pathlib import Path

import numpy as np
import onnxruntime as ort
import paddle2onnx

onnx_bytes = paddle2onnx.export(
    "model.pdmodel",
    "model.pdiparams" if Path("model.pdiparams").exists() and Path("model.pdiparams").stat().st_size else "",
    save_file=None,
    opset_version=11,
    auto_upgrade_opset=True,
    optimize_tool="None",
)
session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
inputs = np.load("inputs.npz")
feed = {{i.name: np.ascontiguousarray(inputs[i.name]) for i in session.get_inputs()}}
# paddle2onnx names outputs after the Paddle fetch targets or fetch_name_N, in fetch order.
names = list(np.load("expected.npz").files)
values = session.run(None, feed)
outputs = {{o.name if o.name in names else names[i]: v for i, (o, v) in enumerate(zip(session.get_outputs(), values))}}
{_COMPARE_TAIL}"""


def _fp16_snippet(repro: Mapping[str, Any], precision: str | None) -> str:
    return f"""\
from pathlib import Path

import numpy as np
import paddle.inference as pi

{_PADDLE_RUN}

# The fp32 reference values, and what storing them in IEEE half precision does to them.
outputs = run_paddle(optimised=False)
inputs = np.load("inputs.npz")
for name in inputs.files:
    x = inputs[name]
    if x.dtype.kind == "f":
        print(f"input {{name}}: max |x| = {{np.abs(x).max():.6g}}, values beyond fp16 (65504): "
              f"{{int((np.abs(x) > 65504).sum())}}")
for name, want in outputs.items():
    half = want.astype(np.float16).astype(np.float64) if want.dtype.kind == "f" else want
    print(f"{{name}}: max |fp32| = {{np.abs(want).max():.6g}}, inf after fp16 storage: "
          f"{{int(np.isinf(half).sum())}}, max |fp16 - fp32| = {{np.nanmax(np.abs(half - want)):.6g}}")"""


def _cmd_snippet(repro: Mapping[str, Any], precision: str | None) -> str:
    template = str((repro.get("target") or {}).get("engine", "")).removeprefix("cmd:").replace("`", "'")
    return f"""\
# The target is a custom runner program; bisect-lite ran it as (placeholders filled with this bundle's files):
#   {template.replace(chr(10), " ")}
# Reference values: Paddle Inference in exact mode (the same as expected.npz).
from pathlib import Path

import numpy as np
import paddle.inference as pi

{_PADDLE_RUN}

outputs = run_paddle(optimised=False)
{_COMPARE_TAIL}"""


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


def _error(metrics: Mapping[str, Any] | None, key: str, digits: int = 3) -> str:
    """An error statistic; "inf" when it could not be computed because the target has NaN/Inf where the
    reference is finite (the statistics skip non-finite pairs), never a dash for an infinite error."""
    value = (metrics or {}).get(key)
    if value is None:
        return "inf" if metrics and _nonfinite(metrics) else "n/a"
    return _num(value, digits)


def _nonfinite(metrics: Mapping[str, Any]) -> str:
    """ "N NaN, M inf in the target where the reference is finite" or ""."""
    counts = _nonfinite_counts(metrics)
    return f"{counts} in the target where the reference is finite" if counts else ""


def _nonfinite_counts(metrics: Mapping[str, Any]) -> str:
    """ "N NaN, M inf" (more in the target than in the reference) or ""."""
    parts = []
    for what in ("nan", "inf"):
        extra = int(metrics.get(f"{what}_target") or 0) - int(metrics.get(f"{what}_ref") or 0)
        if extra > 0:
            parts.append(f"{extra} {'NaN' if what == 'nan' else 'inf'}")
    return ", ".join(parts)


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
