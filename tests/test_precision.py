"""The precision model: half-precision noise is not a bug, a kernel fault under that noise is found at its op.

End to end on the fixtures and the real PP-OCRv5 models (../shared/models/ppocrv5), with the planted-fault `cmd`
engine of tests/engines/faulty_target.py running the model under fp16 storage rounding (a `cmd` target states no
precision, so it is judged as half precision and the report says so).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import FIXTURES, PPOCR, run_cli
from test_run import bisect, faulty  # noqa: F401 (pytest fixture)

from bisect_lite.bisector import RunOptions, precision_rule, run_bisect
from bisect_lite.compare import CompareConfig, Tolerance, compare_outputs
from bisect_lite.engines.registry import create_engine, default_tolerance
from bisect_lite.errors import InputError
from bisect_lite.precision import (
    DEFAULT_FACTOR,
    HALF_ACCUMULATION,
    L2_FLOOR,
    ONE_ROUNDING,
    PEAK_FLOOR,
    ExpectedError,
    PrecisionRule,
    error_stats,
    judge_with_recorded_bounds,
    reduction_length,
    resolve_rule,
)
from bisect_lite.repro.verify import verify_repros

REAL = PPOCR


# ---- the rule ---------------------------------------------------------------------------------------------------
def test_bounds_are_k_times_the_floored_emulation_error():
    rule = PrecisionRule()
    assert rule.bounds(ExpectedError(1e-2, 0.5, 10.0)) == (DEFAULT_FACTOR * 1e-2, DEFAULT_FACTOR * 0.5)
    # Tiny expected errors are floored: 2^-12 rel L2, 2^-11 of the reference's max |x|.
    assert rule.bounds(ExpectedError(0.0, 0.0, 8.0)) == (DEFAULT_FACTOR * L2_FLOOR, DEFAULT_FACTOR * PEAK_FLOOR * 8.0)
    # An emulation that overflowed leaves the tensor to the element rule (an overflow is a finding).
    assert rule.bounds(ExpectedError(None, None, 1e5, emulation_nonfinite=3)) is None
    half = PrecisionRule(accumulation="half")
    assert half.bounds(ExpectedError(1e-2, 0.5, 10.0))[0] == pytest.approx(DEFAULT_FACTOR * HALF_ACCUMULATION * 1e-2)
    # In isolation a half-accumulating op is allowed ~0.65*sqrt(K_red) roundings, capped at the measured maximum.
    small = half.bounds(ExpectedError(0.0, 0.0, 1.0, k_red=9, isolated=True))[0]
    assert small == pytest.approx(DEFAULT_FACTOR * 0.65 * 3 * ONE_ROUNDING)
    large = half.bounds(ExpectedError(0.0, 0.0, 1.0, k_red=4096, isolated=True))[0]
    assert large == pytest.approx(31.7 * ONE_ROUNDING) and large < 0.05 / 5  # far below a 5 % fault
    with pytest.raises(ValueError):
        PrecisionRule(factor=0.5)
    with pytest.raises(ValueError):
        PrecisionRule(accumulation="fp8")


def test_judge_flags_spread_and_local_faults_and_keeps_nan_and_overrides():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((1, 8, 16, 16)).astype(np.float32)
    noisy = (ref.astype(np.float16)).astype(np.float32)  # one fp16 rounding
    expected = {"t": error_stats(ref, noisy)}
    rule = PrecisionRule()
    config = CompareConfig(default=Tolerance(5e-2, 5e-2))

    def verdict(target: np.ndarray, keep: tuple[str, ...] = ()) -> tuple[bool, str]:
        cmp = rule.judge_comparison(compare_outputs({"t": ref}, {"t": target}, config), expected, keep=keep)
        return cmp.tensors[0].passed, cmp.tensors[0].reason

    assert verdict(noisy)[0]
    assert verdict((ref * 1.001).astype(np.float32))[0]  # 2x one rounding: within
    ok, reason = verdict((noisy * 1.02).astype(np.float32))  # 2 %: passes 5e-2 tolerances, beyond precision
    assert not ok and "rel L2" in reason
    assert compare_outputs({"t": ref}, {"t": noisy * 1.02}, config).passed  # the old rule missed it
    last_row = noisy.copy()
    last_row[..., -1, :] *= 1.1  # 1/16 of the elements: small in L2, caught by the peak test
    ok, reason = verdict(last_row)
    assert not ok and "max abs" in reason
    nan = noisy.copy()
    nan[0, 0, 0, 0] = np.nan
    assert not verdict(nan)[0]
    # An explicit --tol for a tensor keeps the tolerance verdict.
    assert verdict((noisy * 1.02).astype(np.float32), keep=("t",))[0]


def test_recorded_bounds_judge_verify():
    ref = np.linspace(-1, 1, 64, dtype=np.float32)
    config = CompareConfig(default=Tolerance(5e-2, 5e-2))
    cmp = PrecisionRule().judge_comparison(
        compare_outputs({"y": ref}, {"y": ref * 1.02}, config), {"y": error_stats(ref, ref * 1.0002)}
    )
    recorded = [m.to_dict() for m in cmp.tensors]
    assert not judge_with_recorded_bounds(compare_outputs({"y": ref}, {"y": ref * 1.03}, config), recorded).passed
    assert judge_with_recorded_bounds(compare_outputs({"y": ref}, {"y": ref * 1.0003}, config), recorded).passed


def test_engines_state_their_precision():
    assert create_engine("paddle").declared_precision == "fp32"
    assert create_engine("fp16").declared_precision == "fp16"
    assert create_engine("onnxruntime").declared_precision == "fp32"
    assert create_engine("cmd:true").declared_precision == "unknown"
    assert create_engine("lite:opencl,adb").declared_precision == "fp16"  # precision=auto is fp16 on phones
    # Here, precision=auto runs what the OpenCL device can: fp32 on PoCL (no cl_khr_fp16).
    here = create_engine("lite:opencl")
    assert here.declared_precision == ("fp16" if here._device().get("opencl_fp16", True) else "fp32")
    assert create_engine("lite:opencl,precision=fp32").declared_precision == "fp32"
    assert create_engine("lite:arm").declared_precision == "fp32"
    assert resolve_rule("unknown").declared_by == "undeclared"
    assert resolve_rule("fp16").declared_by == "engine"
    assert resolve_rule("unknown", "fp32") is None  # --target-precision fp32: tolerances, fp32 ones
    assert default_tolerance("cmd:true", "fp32") == Tolerance(1e-4, 1e-4)
    assert default_tolerance("cmd:true") == Tolerance(5e-2, 5e-2)
    assert precision_rule(RunOptions(explicit_tolerance=True), "fp16") is None
    with pytest.raises(InputError):
        precision_rule(RunOptions(precision_factor=1.0), "fp16")


def test_reduction_lengths_from_static_shapes():
    from bisect_lite.model import load_model

    model = load_model(FIXTURES / "transformer")
    lengths = [(op.type, reduction_length(model, op.index)) for op in model.ops]
    # q/k/v projections sum 32 features, QK^T a head's 8, softmax and attn.V the 16 tokens, the FFN down 128.
    assert [x for x in lengths if x[1] > 1] == [
        ("layer_norm", 32),
        *[("matmul_v2", 32)] * 3,
        ("matmul_v2", 8),
        ("softmax", 16),
        ("matmul_v2", 16),
        ("matmul_v2", 32),
        ("layer_norm", 32),
        ("matmul_v2", 32),
        ("matmul_v2", 128),
    ]
    assert ("gelu", 1) in lengths


# ---- end to end ---------------------------------------------------------------------------------------------------
def test_healthy_fp16_on_real_det_is_precision_not_a_bug(tmp_path, capsys):
    """The old fixed tolerance invented a culprit here (a conv failing 1 element of 990,720)."""
    out = tmp_path / "out"
    det = REAL / "det"
    code, stdout, _ = run_cli(
        [
            "run",
            str(det),
            "--ref",
            "paddle",
            "--target",
            "fp16",
            "--inputs",
            str(det / "inputs.npz"),
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, stdout
    assert "PRECISION" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "precision" and report["culprits"] == []
    prec = report["precision"]
    assert prec["model"] == "precision" and prec["factor"] == DEFAULT_FACTOR and prec["declared_by"] == "engine"
    assert prec["tensors_checked"] >= 370  # every tensor of the 375-op model, not only the output
    assert "Within half precision" in prec["summary"] and "rel L2" in prec["summary"]
    assert "fp16 storage rounding" in prec["confirm"]
    assert len(prec["contributors"]) >= 3 and all(c["added"] > 0 for c in prec["contributors"])
    assert len(prec["depth"]) >= 300
    assert not (out / "repro").exists() and not list(out.rglob("ISSUE.md"))
    md = (out / "report.md").read_text()
    assert "precision" in md.lower()


def test_fault_under_fp16_noise_found_on_a_fixture(faulty, tmp_path):  # noqa: F811
    # 5 % on a hard_swish deep in MobileNetV3, on a target that also rounds everything to fp16.
    target = faulty({"kind": "fp16"}, {"kind": "scale", "tensor": "hard_swish_4.tmp_0", "factor": 1.05})
    report = bisect("mobilenetv3", target, tmp_path)
    assert report["verdict"] == "mismatch"
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"], culprit["kind"]) == (54, "hard_swish", "op")
    assert culprit["diagnosis"]["kind"] == "kernel_bug"
    assert culprit["diagnosis"]["evidence"]["isolated_x_expected"] > 10
    assert report["precision"]["declared_by"] == "undeclared"
    assert any("does not state its precision: treated as half precision" in n for n in report["notes"])
    metrics = report["full_model"]["comparison"]["tensors"][0]
    assert metrics["judged_by"] == "precision" and metrics["rel_l2"] > metrics["bound_rel_l2"]
    # The repro keeps failing on the faulty target, and a healthy fp16 build passes it (bounds recorded).
    repro = tmp_path / "out" / "repro"
    assert [r.status for r in verify_repros([repro], target=target)] == ["failing"]
    assert [r.status for r in verify_repros([repro], target="fp16")] == ["fixed"]


def test_fault_hidden_at_a_saturated_output_found_inside_real_cls(faulty, tmp_path):  # noqa: F811
    """cls ends in a softmax at p = 0.9999999: a 5 % conv fault barely moves the output; every tensor is judged."""
    cls = REAL / "cls"
    target = faulty({"kind": "fp16"}, {"kind": "scale", "tensor": "conv2d_16.tmp_0", "factor": 1.05})
    options = RunOptions(ref="paddle", target=target, out=tmp_path / "out", inputs=cls / "inputs.npz", minimise=False)
    report = run_bisect(cls, options)
    assert report["verdict"] == "mismatch"
    assert report["full_model"]["comparison"]["passed"]  # the output alone is within precision
    assert report["full_model"]["every_tensor"]["beyond_precision"][0] == "conv2d_16.tmp_0"
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"]) == (162, "conv2d")
    assert culprit["diagnosis"]["kind"] == "kernel_bug"
    # The second whole-model run fetched every tensor with bit-identical outputs (the cmd: target is shown
    # fetch-invariant): its judgement points at the op, and one plain probe of the cut holding it confirms it.
    assert report["full_model"]["every_tensor"]["fetch_invariance"] == "bit-identical outputs"
    runs = report["target_runs_by_phase"]
    assert runs["confirm"] == 2 and runs["search"] == 1, runs


def test_fault_hidden_at_a_saturated_output_on_a_nondeterministic_target(faulty, tmp_path):  # noqa: F811
    """The same hidden fault on a target whose output also carries run-to-run noise: the every-tensor run's outputs
    differ from the first run's, so the search probes plain cuts, pointed by the every-tensor judgement (two plain
    probes confirm it); localisation stays within the binary search's bound, and a plain run after the search
    shows the target non-deterministic."""
    cls = REAL / "cls"
    target = faulty(
        {"kind": "fp16"},
        {"kind": "scale", "tensor": "conv2d_16.tmp_0", "factor": 1.05},
        {"kind": "noise", "tensor": "save_infer_model/scale_0.tmp_0", "amplitude": 1e-7},
    )
    options = RunOptions(ref="paddle", target=target, out=tmp_path / "out", inputs=cls / "inputs.npz", minimise=False)
    report = run_bisect(cls, options)
    assert report["full_model"]["every_tensor"]["fetch_invariance"] == "changed outputs"
    assert report["search_strategy"] == "binary"
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"]) == (162, "conv2d")
    runs = report["target_runs_by_phase"]
    assert runs["confirm"] == 2 and runs["search"] == 2, runs
    assert report["target_nondeterministic"] is True and runs["determinism"] == 1, runs


def test_explicit_atol_wins_over_the_precision_model(tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        [
            "run",
            str(FIXTURES / "transformer"),
            "--ref",
            "paddle",
            "--target",
            "fp16",
            "--atol",
            "1e-5",
            "--rtol",
            "1e-5",
            "--out",
            str(out),
            "--no-minimise",
        ],
        capsys,
    )
    report = json.loads((out / "report.json").read_text())
    assert report["precision"] == {"model": "tolerance", "why": "explicit --atol/--rtol"}
    assert code == 1 and report["verdict"] == "mismatch", stdout  # fp16 noise fails a 1e-5 tolerance
    assert report["tolerance"]["atol"] == 1e-5
    tensors = report["full_model"]["comparison"]["tensors"]
    assert all(t["judged_by"] == "tolerance" for t in tensors)


def test_bad_precision_options_are_usage_errors(tmp_path, capsys):
    for args in (["--target-precision", "fp8"], ["--accumulation", "quarter"], ["--precision-factor", "0.5"]):
        code, _, err = run_cli(
            ["run", str(FIXTURES / "transformer"), "--target", "fp16", "--out", str(tmp_path / "o"), *args], capsys
        )
        assert code == 2 and err.startswith("error:") and len(err.strip().splitlines()) == 1, err
    assert not math.isnan(DEFAULT_FACTOR)


def test_quiet_fp32_runner_of_undeclared_precision_is_held_to_less_than_fp16_noise(
    faulty,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """A cmd: runner that computes in fp32 but does not say so: a 1.5 % fault deep in the model is below the fp16
    error expected there, yet the target has no fp16 noise. The every-tensor check sees how quiet it is."""
    import bisect_lite.precision as precision

    target = faulty({"kind": "scale", "tensor": "hard_swish_7.tmp_0", "factor": 1.015})
    report = bisect("mobilenetv3", target, tmp_path / "a", minimise=False)
    assert report["verdict"] == "mismatch"
    assert report["precision"]["noise_scale"] == pytest.approx(0.1)
    assert any("much quieter than fp16" in n for n in report["notes"])
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"]) == (84, "hard_swish")
    # Held to the fp16 noise it does not have, the same fault passes as precision.
    monkeypatch.setattr(precision, "quiet_target_scale", lambda ratios: 1.0)
    assert bisect("mobilenetv3", target, tmp_path / "b", minimise=False)["verdict"] == "precision"


# ---- compare judges as run does ----------------------------------------------------------------------------------
def test_compare_judges_half_precision_targets_by_the_precision_model(faulty, capsys):  # noqa: F811
    det = REAL / "det"
    args = ["compare", str(det), "--inputs", str(det / "inputs.npz"), "--ref", "paddle", "--json"]
    # Healthy fp16 on det: the fixed tolerance failed 503 output elements; the precision model calls it noise.
    code, stdout, _ = run_cli([*args, "--target", "fp16"], capsys)
    report = json.loads(stdout)
    assert (code, report["verdict"]) == (0, "precision"), report["comparison"]
    [metrics] = report["comparison"]["tensors"]
    assert metrics["judged_by"] == "precision" and metrics["rel_l2"] <= metrics["bound_rel_l2"]
    # As `run` judges it: every tensor within the rounding-only expectation, nothing beyond fp16's range.
    assert report["every_tensor"]["checked"] >= 370 and report["every_tensor"]["beyond_precision"] == []
    assert report["fp16_range"] == []
    # A 5 % conv fault under the same fp16 noise, hidden at cls's saturated softmax output: compare judges every
    # tensor as run does (test_fault_hidden_at_a_saturated_output_found_inside_real_cls), so it is a mismatch too.
    cls = REAL / "cls"
    target = faulty({"kind": "fp16"}, {"kind": "scale", "tensor": "conv2d_16.tmp_0", "factor": 1.05})
    cls_args = ["compare", str(cls), "--inputs", str(cls / "inputs.npz"), "--ref", "paddle", "--json"]
    code, stdout, _ = run_cli([*cls_args, "--target", target], capsys)
    report = json.loads(stdout)
    assert (code, report["verdict"]) == (1, "mismatch"), report["comparison"]
    assert report["comparison"]["passed"]  # the output alone is within precision
    assert report["every_tensor"]["beyond_precision"][0] == "conv2d_16.tmp_0"
    # Its diagnosis is of the whole-model values (no isolation): not a range failure.
    assert (report["diagnosis"]["op"], report["diagnosis"]["kind"]) == (162, "numeric_mismatch")
    assert report["precision"]["declared_by"] == "undeclared"
    # Explicit tolerances judge instead of the model.
    code, stdout, _ = run_cli([*args, "--target", "fp16", "--atol", "1e-2", "--rtol", "1e-2"], capsys)
    report = json.loads(stdout)
    assert "precision" not in report and report["comparison"]["tensors"][0]["judged_by"] == "tolerance"
