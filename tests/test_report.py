"""Diagnosis patterns, the error-vs-depth plot, report.md and ISSUE.md."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from bisect_lite.compare import CompareConfig, Comparison, compare_tensor
from bisect_lite.report import Diagnosis, diagnose, plot_error_vs_depth, render_report
from bisect_lite.repro.bundle import first_nonfinite
from bisect_lite.repro.issue import python_snippet, render_issue

CFG = CompareConfig()


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def nchw(shape: tuple[int, ...] = (1, 4, 8, 8), seed: int = 0) -> np.ndarray:
    return rng(seed).standard_normal(shape).astype(np.float32)


def fp16(a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return a.astype(np.float16)


def noisy(ref: np.ndarray, rel: float = 5e-2, seed: int = 1) -> np.ndarray:
    """Unstructured error everywhere: fails the default tolerance but shows no pattern."""
    return (ref + rel * rng(seed).standard_normal(ref.shape).astype(np.float32)).astype(np.float32)


def kind(ref: np.ndarray | None, target: np.ndarray | None, **kw) -> str:
    d = diagnose(ref, target, **kw)
    json.dumps(d.to_dict(), allow_nan=False)  # evidence must always be JSON-safe
    return d.kind


# ----------------------------------------------------------------------------------------------------
# diagnose


def test_crash_carries_message_tail():
    msg = "loading model\n[F 1/1 lite/kernels/opencl/conv_image_compute.cc:88] Check failed: image width <= 16384"
    d = diagnose(None, None, status="crash", message=msg)
    assert d.kind == "crash" and "image width <= 16384" in d.summary
    assert diagnose(None, None, status="timeout").kind == "crash"
    ref = nchw()
    assert kind(ref, ref.copy(), status="ok", message=msg) != "crash"


def test_fp16_overflow_inf_and_pinned():
    ref = np.linspace(-1.2e5, 1.2e5, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    d = diagnose(ref, fp16(ref))  # fp16 cast overflows to +-inf
    assert d.kind == "fp16_overflow"
    assert d.evidence["inf_count"] > 0 and d.evidence["max_abs_ref"] == pytest.approx(1.2e5)
    pinned = np.clip(ref, -65504, 65504).astype(np.float16)  # a kernel that saturates
    d = diagnose(ref, pinned)
    assert d.kind == "fp16_overflow" and d.evidence["pinned_count"] > 0 and d.evidence["inf_count"] == 0


def test_fp16_overflow_inside_the_op_via_inputs():
    # Output in range, but the op's input is not (e.g. a softmax/normalisation of huge logits): inf in the target.
    ref = nchw((1, 2, 4, 4))
    tgt = fp16(ref)
    tgt[0, 0, 0, :2] = np.inf
    big_input = {"X": np.full((1, 2, 4, 4), 1e6, dtype=np.float32)}
    assert kind(ref, tgt, ref_inputs=big_input) == "fp16_overflow"
    # Near miss: same inf with in-range inputs is a NaN/inf bug, not overflow.
    assert kind(ref, tgt, ref_inputs={"X": ref}) == "nan_inf"


def test_fp16_overflow_near_misses():
    ref = nchw((1, 2, 4, 4))
    tgt = fp16(ref).astype(np.float32)
    ref[0, 0, 0, 0] = tgt[0, 0, 0, 0] = 65504.0  # a legitimate max-fp16 value that matches
    assert kind(ref, tgt) != "fp16_overflow"
    tgt2 = tgt.copy()
    tgt2[0, 1, 1, 1] = np.inf  # inf where the reference is small: not explained by overflow
    assert kind(ref, tgt2) == "nan_inf"


def test_nan_inf():
    ref = nchw()
    tgt = fp16(ref)
    tgt[0, 1, 2, 3] = np.nan
    tgt[0, 2, 5, 5] = -np.inf
    d = diagnose(ref, tgt)
    assert d.kind == "nan_inf" and d.evidence["nan_count"] == 1 and d.evidence["inf_count"] == 1
    assert d.evidence["first_index"] == [0, 1, 2, 3]
    # Near miss: NaN in both at the same place is the reference's problem, not a target fault.
    ref2 = ref.copy()
    ref2[0, 1, 2, 3] = np.nan
    tgt2 = fp16(ref2)
    assert kind(ref2, tgt2) != "nan_inf"


def test_nan_inf_from_metrics_only():
    ref = nchw()
    tgt = ref.copy()
    tgt[0, 0, 0, 0] = np.nan
    m = compare_tensor("y", ref, tgt, CFG)
    assert kind(None, None, metrics=m) == "nan_inf"
    assert kind(None, None, metrics=compare_tensor("y", ref, noisy(ref), CFG)) == "numeric_mismatch"


@pytest.mark.parametrize(
    ("make", "perm", "mode"),
    [
        (lambda r: r.transpose(0, 2, 3, 1).reshape(r.shape), "NHWC", "written"),  # NHWC data in an NCHW tensor
        (lambda r: r.reshape(1, 6, 7, 5).transpose(0, 3, 1, 2), "NHWC", "read"),  # NCHW memory read as NHWC
        (lambda r: r.transpose(0, 1, 3, 2).reshape(r.shape), "NCWH", "written"),  # H and W swapped
        (lambda r: r.transpose(0, 2, 3, 1), "NHWC", "written"),  # returned with an NHWC shape
    ],
)
def test_layout(make, perm, mode):
    ref = nchw((1, 5, 6, 7))
    d = diagnose(ref, fp16(make(ref)))
    assert d.kind == "layout"
    assert d.evidence["permutation"] == perm and d.evidence["mode"] == mode
    assert d.evidence["rel_l2"] < 1e-2 < d.evidence["direct_rel_l2"]


def test_layout_2d_and_3d_transpose():
    ref2 = nchw((6, 9))
    assert kind(ref2, ref2.T.reshape(ref2.shape).copy()) == "layout"
    ref3 = nchw((2, 5, 7))
    assert kind(ref3, ref3.transpose(0, 2, 1).reshape(ref3.shape).copy()) == "layout"


def test_layout_near_misses():
    ref = nchw((1, 5, 6, 7))
    assert kind(ref, fp16(ref)) != "layout"  # correct output
    shuffled = rng(3).permutation(ref.reshape(-1)).reshape(ref.shape)  # same values, no axis structure
    assert kind(ref, shuffled) != "layout"
    assert kind(ref, noisy(ref)) != "layout"


def test_constant_per_channel_is_bias():
    ref = nchw((1, 4, 6, 6))
    bias = np.array([0.1, -0.2, 0.3, 0.5], dtype=np.float32)
    tgt = np.broadcast_to(bias[None, :, None, None], ref.shape).astype(np.float16)
    d = diagnose(ref, tgt)
    assert d.kind == "constant_per_channel"
    assert d.evidence["target_channel_std_max"] == 0.0 and d.evidence["ref_channel_std_median"] > 0.5
    assert d.evidence["target_channel_values"][:4] == pytest.approx(bias, rel=1e-3)
    assert not d.evidence["all_zero"]


def test_constant_per_channel_near_misses():
    bias = np.array([0.1, -0.2, 0.3, 0.5], dtype=np.float32)
    const_ref = np.broadcast_to(bias[None, :, None, None], (1, 4, 6, 6)).astype(np.float32)
    assert kind(const_ref, const_ref + 0.05) != "constant_per_channel"  # the reference is constant too
    ref = nchw((1, 4, 6, 6))
    assert kind(ref, noisy(ref)) != "constant_per_channel"


def test_border_padding_fault():
    ref = nchw((1, 3, 10, 10))
    tgt = fp16(ref).astype(np.float32)
    tgt[..., 0, :] = 0.0  # top row and left column computed with wrong padding
    tgt[..., :, 0] = 0.0
    d = diagnose(ref, tgt)
    assert d.kind == "border"
    assert d.evidence["border_share_of_mismatches"] == 1.0 and d.evidence["border_share_of_elements"] < 0.5
    sides = d.evidence["per_side"]
    assert sides["top"] == sides["left"] == 30 and sides["bottom"] == sides["right"] == 3  # only the corners


def test_border_near_misses():
    ref = nchw((1, 3, 10, 10))
    tgt = ref.copy()
    flat = rng(5).choice(ref.size, size=60, replace=False)  # as many errors, scattered
    tgt.reshape(-1)[flat] += 1.0
    assert kind(ref, tgt) != "border"
    small = nchw((1, 3, 4, 4))  # the border is 75% of a 4x4 map: no conclusion possible
    t2 = small.copy()
    t2[..., 0, :] += 1.0
    assert kind(small, t2) != "border"


def test_int_mismatch_argmax_garbage():
    ref = rng(2).integers(0, 10, size=(2, 8)).astype(np.int64)
    tgt = ref.copy()
    tgt[0, :3] = 4611686018427387904  # int64 read from fp16 bits
    d = diagnose(ref, tgt)
    assert d.kind == "int_mismatch"
    assert d.evidence["mismatches"] == 3 and d.evidence["outside_ref_range"] == 3
    assert d.evidence["examples"][0]["target"] == 4611686018427387904
    assert kind(ref, ref.copy()) != "int_mismatch"
    assert kind(ref.astype(bool), ~ref.astype(bool)) == "int_mismatch"


def test_nondeterministic_flag():
    ref = nchw()
    assert kind(ref, noisy(ref), nondeterministic=True) == "nondeterministic"
    assert kind(ref, noisy(ref)) != "nondeterministic"


def gradual(n: int = 40, step: int = 3) -> list[tuple[int, float]]:
    return [(i, 2e-4 * 1.12**i) for i in range(0, n, step)]  # x1.12 per op: smooth fp16 drift


def jumpy(culprit: int = 20) -> list[tuple[int, float]]:
    return [(i, 3e-4 if i < culprit else 0.3) for i in (0, 5, 10, 15, 18, 19, 20, 25, 30)]


def test_precision_accumulation():
    ref = nchw()
    d = diagnose(ref, noisy(ref, 1e-1), depth_errors=gradual(), culprit_index=21, isolated_rel_l2=1e-3)
    assert d.kind == "precision_accumulation"
    assert d.evidence["slope_decades_per_op"] > 0 and d.evidence["largest_step_per_op"] <= 10
    assert d.evidence["isolated_rel_l2"] == 1e-3


def test_precision_accumulation_near_misses():
    ref = nchw()
    tgt = noisy(ref, 1e-1)
    # The op alone is clearly wrong: a bug even though the curve is smooth.
    assert kind(ref, tgt, depth_errors=gradual(), culprit_index=21, isolated_rel_l2=5e-2) == "kernel_bug"
    # A jump at the culprit is not drift.
    assert kind(ref, tgt, depth_errors=jumpy(), culprit_index=20, isolated_rel_l2=1e-3) != "precision_accumulation"
    # Too few probes to see a trend.
    assert kind(ref, tgt, depth_errors=[(3, 1e-3), (7, 2e-2)], isolated_rel_l2=1e-3) != "precision_accumulation"


def test_kernel_bug_jump():
    ref = nchw()
    d = diagnose(ref, noisy(ref, 0.3), depth_errors=jumpy(), culprit_index=20, isolated_rel_l2=0.25)
    assert d.kind == "kernel_bug"
    assert d.evidence["culprit_jump"] == pytest.approx(1000.0) and d.evidence["isolated_rel_l2"] == 0.25
    # Jump alone (isolated error not measured) is enough.
    assert kind(ref, noisy(ref, 0.3), depth_errors=jumpy(), culprit_index=20) == "kernel_bug"
    # Near miss: smooth growth and a small isolated error.
    assert kind(ref, noisy(ref), depth_errors=gradual(), culprit_index=21, isolated_rel_l2=1e-3) != "kernel_bug"


def test_numeric_mismatch_fallback_and_correct_output():
    ref = nchw()
    tgt = noisy(ref)
    m = compare_tensor("y", ref, tgt, CFG)
    d = diagnose(ref, tgt, metrics=m)
    assert d.kind == "numeric_mismatch"
    assert d.evidence["rel_l2"] == pytest.approx(m.rel_l2) and "rel L2" in d.summary
    # A correct (fp16-rounded) output shows no fault pattern at all.
    assert kind(ref, fp16(ref)) == "numeric_mismatch"
    assert kind(None, None) == "numeric_mismatch"
    shape = diagnose(ref, ref.reshape(-1)[:10])
    assert shape.kind == "numeric_mismatch" and shape.evidence["target_shape"] == [10]


def test_diagnosis_round_trip():
    d = diagnose(nchw(), fp16(nchw()), isolated_rel_l2=math.inf)
    again = Diagnosis.from_dict(json.loads(json.dumps(d.to_dict(), allow_nan=False)))
    assert again.kind == d.kind and again.summary == d.summary


# ----------------------------------------------------------------------------------------------------
# plot


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def probe_dicts() -> list[dict]:
    return [
        {"segment": 0, "cut": 29, "verdict": "fail", "worst_rel_l2": 0.4},
        {"segment": 0, "cut": 14, "verdict": "pass", "worst_rel_l2": 3e-4},
        {"segment": 0, "cut": 21, "verdict": "crash", "worst_rel_l2": None},
        {"segment": 0, "cut": 22, "verdict": "skip", "worst_rel_l2": None},
        {"segment": 0, "cut": 18, "verdict": "fail", "worst_rel_l2": "inf"},
        {"segment": 0, "cut": 16, "verdict": "pass", "worst_rel_l2": 0.0},
        {"segment": 0, "cut": 17, "verdict": "fail", "worst_rel_l2": 0.2},
        {"segment": 18, "cut": 25, "verdict": "pass", "worst_rel_l2": 1e-3},
    ]


def test_plot_writes_png(tmp_path: Path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "sub" / "error_vs_depth.png"
    got = plot_error_vs_depth(probe_dicts(), [17], 30, out, "mobilenet: OpenCL fp16 vs ARM", tolerance=1e-2)
    assert got == out and out.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in out.parent.iterdir()] == ["error_vs_depth.png"]  # no temp file left behind
    empty = plot_error_vs_depth([], [], 0, tmp_path / "empty.png", "nothing")
    assert empty is not None and empty.read_bytes()[:8] == PNG_MAGIC


def test_plot_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "p.png"
    assert plot_error_vs_depth(probe_dicts(), [17], 30, out, "t") is None
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------
# report.md


def comparison(ref: np.ndarray, tgt: np.ndarray, name: str = "softmax_0.tmp_0") -> dict:
    return Comparison([compare_tensor(name, ref, tgt, CFG)]).to_dict()


def report_dict(verdict: str) -> dict:
    ref = nchw((1, 10))
    bad = noisy(ref, 0.3)
    probes = [
        {
            "segment": 0,
            "cut": 15,
            "fetched": ["conv2d_7.tmp_0"],
            "verdict": "pass",
            "blame": None,
            "metrics": [compare_tensor("conv2d_7.tmp_0", ref, ref, CFG).to_dict()],
            "worst_rel_l2": 0.0,
            "seconds": 1.2,
            "message": "",
        },
        {
            "segment": 0,
            "cut": 23,
            "fetched": ["conv2d_11.tmp_0"],
            "verdict": "fail",
            "blame": 12,
            "metrics": [compare_tensor("conv2d_11.tmp_0", ref, bad, CFG).to_dict()],
            "worst_rel_l2": 0.31,
            "seconds": 1.4,
            "message": "",
        },
        {
            "segment": 0,
            "cut": 12,
            "fetched": ["conv2d_6.tmp_0"],
            "verdict": "fail",
            "blame": 12,
            "metrics": [compare_tensor("conv2d_6.tmp_0", ref, bad, CFG).to_dict()],
            "worst_rel_l2": 0.29,
            "seconds": 1.1,
            "message": "",
        },
        {
            "segment": 0,
            "cut": 11,
            "fetched": ["relu_5.tmp_0"],
            "verdict": "pass",
            "blame": None,
            "metrics": [compare_tensor("relu_5.tmp_0", ref, ref, CFG).to_dict()],
            "worst_rel_l2": 2e-4,
            "seconds": 1.0,
            "message": "",
        },
    ]
    diag = diagnose(
        ref, bad, depth_errors=[(15, 0.0), (23, 0.31), (12, 0.29), (11, 2e-4)], culprit_index=12, isolated_rel_l2=0.27
    ).to_dict()
    culprit = {
        "index": 12,
        "type": "conv2d",
        "inputs": {"Input": ["relu_5.tmp_0"], "Filter": ["conv2d_6.w_0"]},
        "outputs": {"Output": ["conv2d_6.tmp_0"]},
        "attrs": {"strides": [1, 1], "paddings": [1, 1], "groups": 1, "op_callstack": ["  File x.py"], "op_role": 0},
        "kind": "op",
        "ops": [12],
        "diagnosis": diag,
        "repro": "out/repro/op012_conv2d",
        "isolated": comparison(ref, bad, "conv2d_6.tmp_0"),
        "notes": ["cut preserves the fused kernel"],
    }
    report = {
        "tool": "bisect-lite 0.1.0",
        "model": "models/mobilenet_v1",
        "ops": 30,
        "reference": {"engine": "arm", "facts": {"version": "2.13rc0", "device": "Pixel 7"}},
        "target": {"engine": "opencl", "facts": {"precision": "fp16", "gpu": "Mali-G710"}},
        "inputs": "random normal, seed 0 (inputs.npz)",
        "tolerance": {"atol": 0.01, "rtol": 0.01},
        "verdict": verdict,
        "target_nondeterministic": False,
        "reference_nondeterministic": False,
        "full_model": {"comparison": comparison(ref, bad)},
        "culprits": [culprit],
        "probes": probes,
        "target_runs": 6,
        "reference_runs": 6,
        "expected_probes": 5,
        "seconds": 12.5,
        "engine_seconds": 9.8,
        "notes": ["fusion differs between arm and opencl: conv2d+relu fused on opencl"],
    }
    if verdict == "match":
        report.update(
            culprits=[],
            probes=[],
            target_runs=1,
            reference_runs=1,
            full_model={"comparison": comparison(ref, ref)},
            notes=[],
        )
    if verdict == "crash":
        culprit["diagnosis"] = diagnose(None, None, status="crash", message="Check failed: image2d width").to_dict()
        culprit["isolated"] = None
        report["full_model"] = {"comparison": None}
        probes[1].update(verdict="crash", worst_rel_l2=None, metrics=[], message="SIGSEGV in conv2d")
    return report


def test_render_report_mismatch():
    md = render_report(report_dict("mismatch"), "error_vs_depth.png")
    assert "**Verdict: mismatch**" in md and "op #12 `conv2d`" in md
    assert "kernel_bug" in md and "culprit_jump" in md
    assert "bisect-lite verify out/repro/op012_conv2d" in md
    assert "![" in md and "(error_vs_depth.png)" in md
    assert "Target engine runs: 6" in md and "about 5" in md
    assert "9.8 s in the engines of 12.5 s" in md
    assert "strides=" in md and "op_callstack" not in md
    # probe log rows: cut, op type known at the culprit, verdict, error
    assert re.search(r"\| 3 \| 0 \| 12 \| conv2d \| \*\*fail\*\* \| 12 \| conv2d_6.tmp_0 \| 0.29 \|", md)
    assert "fusion differs" in md and "cut preserves the fused kernel" in md


def test_render_report_match_and_no_plot():
    md = render_report(report_dict("match"), None)
    assert "**Verdict: match**" in md and "nothing to bisect" in md
    assert "No probes were run" in md and "Culprit" not in md
    assert "all outputs pass" in md


def test_render_report_crash_and_missing_matplotlib():
    md = render_report(report_dict("crash"), None)
    assert "**Verdict: crash**" in md and "`crash`" in md and "image2d width" in md
    assert "matplotlib is not installed" in md
    assert "**crash**" in md and "SIGSEGV in conv2d" in md
    assert "No comparison: the target crashed" in md


def test_render_report_mismatch_without_culprit():
    report = report_dict("mismatch")
    report["culprits"] = []
    md = render_report(report, "p.png")
    assert "no culprit op was isolated" in md and "No culprit op could be pinned down" in md


# ----------------------------------------------------------------------------------------------------
# ISSUE.md


def repro_dict() -> dict:
    ref = nchw((1, 8, 16, 16))
    bad = noisy(ref, 0.31)
    m = compare_tensor("conv2d_6.tmp_0", ref, bad, CFG)
    return {
        "op": {
            "type": "conv2d",
            "index": 12,
            "attrs": {
                "strides": [1, 1],
                "paddings": [1, 1],
                "dilations": [2, 2],
                "groups": 8,
                "data_format": "NCHW",
                "op_callstack": ["File a.py"],
                "op_role": 0,
                "op_role_var": [],
                "op_namescope": "/",
                "op_device": "",
            },
            "inputs": {
                "Input": [{"name": "relu_5.tmp_0", "shape": [1, 8, 16, 16], "dtype": "float32"}],
                "Filter": [{"name": "conv2d_6.w_0", "shape": [8, 1, 3, 3], "dtype": "float32"}],
            },
            "outputs": {"Output": [{"name": "conv2d_6.tmp_0", "shape": [1, 8, 16, 16], "dtype": "float32"}]},
        },
        "kind": "op",
        "ops": [{"index": 12, "type": "conv2d"}],
        "reference": {"engine": "arm", "facts": {"paddlelite_version": "2.13rc0", "device": "Pixel 7"}},
        "target": {
            "engine": "opencl",
            "facts": {"paddlelite_version": "2.13rc0", "opencl_precision": "fp16", "gpu": "Mali-G710"},
        },
        "tolerance": {"atol": 0.01, "rtol": 0.01},
        "metrics": [m.to_dict()],
        "diagnosis": diagnose(ref, bad, isolated_rel_l2=0.3).to_dict(),
        "source": {"model": "models/mobilenet_v1", "op_index": 12, "ops": 30},
        "inputs": {"relu_5.tmp_0": {"shape": [1, 8, 16, 16], "dtype": "float32"}},
        "files": ["model.pdmodel", "model.pdiparams", "inputs.npz", "expected.npz", "repro.json", "ISSUE.md"],
        "onnx": {"written": False, "note": "paddle2onnx not installed"},
    }


def test_render_issue():
    repro = repro_dict()
    text = render_issue(repro)
    title = text.splitlines()[0]
    assert title.startswith("# [OpenCL] conv2d output differs from ARM (rel L2 0.") and "fp16)" in title
    assert "standalone repro attached" in title
    assert "dilations" in text and "[2, 2]" in text and "groups" in text
    for hidden in ("op_callstack", "op_role", "op_namescope", "op_device"):
        assert hidden not in text
    assert "[8, 1, 3, 3]" in text and "Mali-G710" in text and "2.13rc0" in text
    assert "kernel_bug" in text
    assert "pip install bisect-lite" not in text and "pip install -e ." in text and "bisect-lite verify ." in text
    # The plain snippet (nothing of ours) comes before the bisect-lite way.
    assert text.index("```python") < text.index("bisect-lite verify .")
    assert "Where to file: PaddlePaddle/Paddle-Lite" in text
    assert "`model.pdiparams`" in text and "paddle2onnx not installed" in text
    blocks = re.findall(r"```python\n(.*?)\n```", text, flags=re.S)
    assert len(blocks) == 1
    snippet = blocks[0]
    compile(snippet, "ISSUE.md snippet", "exec")
    for api in (
        "Opt()",
        'set_valid_places("opencl,arm")',
        "MobileConfig()",
        "create_paddle_predictor(config)",
        "CLPrecisionType.CL_PRECISION_FP16",
        'np.load("inputs.npz")',
        'np.load("expected.npz")',
        "np.abs(",
    ):
        assert api in snippet
    assert "from paddlelite.lite import Opt, MobileConfig, create_paddle_predictor, CLPrecisionType" in snippet


def test_render_issue_crash_and_fp32():
    repro = repro_dict()
    repro["diagnosis"] = diagnose(None, None, status="crash", message="Check failed: image2d width").to_dict()
    repro["target"]["facts"]["opencl_precision"] = "fp32"
    repro["message"] = "loading\n[F lite/kernels/opencl/conv_image_compute.cc:88] Check failed: image2d width"
    text = render_issue(repro)
    assert "conv_image_compute.cc:88] Check failed" in text
    assert text.startswith("# [OpenCL] conv2d crashes (fp32), works on ARM")
    assert "CL_PRECISION_FP32" in text
    assert "CL_PRECISION_FP32" in python_snippet("fp32") and "CL_PRECISION_FP16" in python_snippet(None)
    arm = python_snippet(None, "arm")
    assert 'set_valid_places("arm")' in arm and "CLPrecisionType" not in arm
    compile(arm, "arm snippet", "exec")


def test_render_issue_names_nan_in_the_title_and_the_input_that_triggers_it():
    """A few NaN elements barely move rel L2 (the statistics skip non-finite pairs): the title must say NaN, and the
    summary give the input value at the first one (det's sigmoid: an input below -88.72 -> NaN on OpenCL)."""
    x = np.array([[[[-89.98, -1.0, 0.0, 3.0]]]], np.float32)
    want = (1 / (1 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    got = want.copy()
    got[0, 0, 0, 0] = np.nan
    found = {"inputs": {"elementwise_add_116": x}, "expected": {"out": want}, "actual": {"out": got}}
    first = first_nonfinite(found)
    assert first == {
        "output": "out",
        "index": [0, 0, 0, 0],
        "count": 1,
        "target": "nan",
        "reference": pytest.approx(float(want[0, 0, 0, 0])),
        "inputs": {"elementwise_add_116": pytest.approx(-89.98)},
    }
    assert first_nonfinite({**found, "actual": {"out": want}}) is None
    repro = repro_dict()
    repro["target"]["facts"]["opencl_precision"] = "fp32"
    repro["metrics"] = [compare_tensor("out", want, got, CFG).to_dict()]
    repro["first_nonfinite"] = first
    text = render_issue(repro)
    assert text.startswith("# [OpenCL] conv2d gives 1 NaN where ARM is finite (fp32)"), text.splitlines()[0]
    assert "over the finite elements, rel L2" in text and "(1 NaN in the target where the reference is finite)" in text
    assert "`out`[0, 0, 0, 0]: OpenCL gives nan" in text and "`elementwise_add_116` is -89.98 there" in text
    json.dumps(first, allow_nan=False)  # repro.json is written without NaN


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)\n```", text, flags=re.S)


@pytest.mark.parametrize(
    ("engine", "message", "status", "tag", "needs", "where"),
    [
        ("lite:arm,adb", "", "mismatch", "[ARM]", 'set_valid_places("arm")', "Paddle-Lite"),
        ("lite:x86", "", "mismatch", "[x86]", 'set_valid_places("x86")', "Paddle-Lite"),
        (
            "paddle-opt:threads=2",
            "",
            "mismatch",
            "[Paddle Inference (IR optimisation + oneDNN)]",
            "run_paddle(optimised=True)",
            "PaddlePaddle/Paddle",
        ),
        ("onnxruntime", "", "mismatch", "[ONNX Runtime]", "ort.InferenceSession", "onnxruntime"),
        (
            "onnxruntime",
            "engine error: RuntimeError: paddle2onnx cannot convert /x: Unsupported op",
            "crash",
            "[paddle2onnx] conv2d cannot be converted to ONNX",
            "paddle2onnx.export",
            "Paddle2ONNX",
        ),
        ("fp16:ops=conv2d", "", "mismatch", "[fp16]", "astype(np.float16)", "fp16"),
        (
            "cmd:./run.sh {model_dir} {inputs} {outputs}",
            "",
            "mismatch",
            "[custom runner]",
            "./run.sh {model_dir}",
            "owner of the runner",
        ),
    ],
)
def test_issue_is_written_for_the_engine_family(engine, message, status, tag, needs, where):
    repro = repro_dict()
    repro["target"] = {"engine": engine, "facts": {"engine": engine, "version": "1.0"}}
    repro["reference"] = {"engine": "paddle", "facts": {"engine": "paddle", "version": "paddlepaddle 3.0"}}
    repro["status"] = status
    repro["message"] = message
    if status == "crash":
        repro["diagnosis"] = diagnose(None, None, status="crash", message=message).to_dict()
    text = render_issue(repro)
    title = text.splitlines()[0]
    assert title.startswith(f"# {tag}"), title
    assert "OpenCL" not in title
    if where != "fp16":  # the fp16 issue names Paddle-Lite OpenCL as one backend that would fail the same way
        assert ("Paddle-Lite" in text) == (where == "Paddle-Lite")
    [snippet] = _python_blocks(text)
    compile(snippet, "snippet", "exec")
    assert needs in snippet
    assert "paddlelite" not in snippet or where == "Paddle-Lite"
    assert where in text.split("Where to file:")[1].splitlines()[0]
    # The environment table names each engine once.
    assert sum(1 for line in text.splitlines() if line.startswith("| engine |")) == 1
    assert text.count(f"`{engine}`") <= 2


def test_issue_prints_infinite_errors_as_inf():
    ref = np.ones((4, 4), np.float32)
    bad = np.full((4, 4), np.inf, np.float32)
    m = compare_tensor("x", ref, bad, CFG)
    assert m.rel_l2 is None or not np.isfinite(m.rel_l2)  # what made the summary print a dash
    repro = repro_dict()
    repro["metrics"] = [m.to_dict()]
    text = render_issue(repro)
    summary = text.split("### Summary")[1].split("###")[0]
    assert "rel L2 inf" in summary and "max abs inf" in summary and "—" not in summary.split("in `")[1]
    assert "16 inf in the target" in summary and "finite elements" not in summary
    assert text.splitlines()[0].startswith("# [OpenCL] conv2d gives 16 inf where ARM is finite")


def test_fused_group_is_named_as_a_group():
    report = report_dict("mismatch")
    report["culprits"][0].update(kind="group", ops=[10, 11, 12])
    assert "Blamed as a fused group" in render_report(report, None)
    repro = repro_dict()
    repro.update(
        kind="group",
        ops=[{"index": 10, "type": "conv2d"}, {"index": 11, "type": "batch_norm"}, {"index": 12, "type": "relu"}],
    )
    issue = render_issue(repro)
    assert "(+2 fused ops)" in issue.splitlines()[0]
    assert "fuses into one kernel" in issue and "these 3 ops" in issue


def test_subgraph_text_follows_what_delta_debugging_did():
    report = report_dict("mismatch")
    report["culprits"][0].update(kind="subgraph", ops=[10, 11, 12], ddmin={"one_minimal": False, "budget": 40})
    md = render_report(report, None)
    assert "stopped at its budget of 40 runs" in md and "could not be split further" not in md
    report["culprits"][0]["ddmin"] = {"one_minimal": True, "calls": 7, "budget": 40}
    md = render_report(report, None)
    assert "delta debugging finished (7 runs)" in md and "budget" not in md


def test_report_lists_duplicates_warnings_and_infinite_errors():
    report = report_dict("mismatch")
    report["culprits"][0]["duplicates"] = [{"index": 30, "ops": [30]}, {"index": 41, "ops": [41]}]
    report["warnings"] = ["the reference's outputs hold NaN/Inf (2 NaN): both engines agree on them"]
    inf = compare_tensor("t", np.ones(8, np.float32), np.full(8, np.inf, np.float32), CFG)
    report["full_model"]["comparison"]["tensors"] = [inf.to_dict()]
    md = render_report(report, None)
    assert "also at ops 30 (op #30)" in md and "also at ops 41 (op #41)" in md
    assert "> **Warning:** the reference's outputs hold NaN/Inf" in md
    row = next(line for line in md.splitlines() if line.startswith("| `t` |"))
    assert "| inf |" in row and "—" not in row.split("|")[3:6]
