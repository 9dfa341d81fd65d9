"""fp16's range is never noise: rounding-only expectations, range findings, one verdict in `compare` and `run`.

Models built with Paddle at test time: an underflow model (a tensor scaled into fp16's subnormal range and scaled
back, so storing it in half changes the output), a model with exactly two tensors beyond 65504, and the issue's
squeezenet-like classifier (tests/sim/zoo.py) fed inputs scaled by 40000. Plus the bundled fp16_overflow fixture
and healthy PP-OCRv5 rec/cls (det: tests/test_precision.py).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, ppocr_model, predict, run_cli

from bisect_lite.bisector import RunOptions, run_bisect
from bisect_lite.compare import TensorMetrics
from bisect_lite.engines.fp16 import round_fp16, round_significand
from bisect_lite.fp16_range import (
    FP16_MAX,
    OVERFLOW,
    UNDERFLOW,
    UNDERFLOW_SHARE,
    RangeFinding,
    model_range,
    range_failure_possible,
    target_range_failure,
    value_range,
)
from bisect_lite.model import load_model
from bisect_lite.precision import EMULATION_SPEC, PrecisionRule, with_range_check
from bisect_lite.report import diagnose, render_report

RNG = np.random.default_rng(0)


# ---- the models ---------------------------------------------------------------------------------------------------
def _save(paddle, directory: Path, build, shape: list[int]) -> Path:
    paddle.seed(0)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", shape, "float32")
        y = build(paddle, x)
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    paddle.static.save_inference_model(str(directory / "model"), [x], [y], exe, program=main)
    np.savez(directory / "inputs.npz", x=RNG.standard_normal(shape).astype(np.float32))
    return directory


def _underflow(paddle, x):
    """conv -> x 1e-6 (fp16 subnormals) -> relu -> x 1e6 -> conv: half precision quantises the small tensor."""
    h = paddle.nn.Conv2D(4, 8, 3, padding=1)(x)
    h = paddle.nn.functional.relu(paddle.scale(h, 1e-6))
    return paddle.nn.Conv2D(8, 4, 1)(paddle.scale(h, 1e6))


def _two_overflows(paddle, x):
    """Two tensors beyond 65504 (x 2e5), each scaled straight back: every other tensor is in range."""
    h = paddle.nn.Conv2D(4, 8, 3, padding=1)(x)
    h = paddle.nn.functional.relu(paddle.scale(paddle.scale(h, 2e5), 5e-6))
    h = paddle.nn.Conv2D(8, 8, 1)(h)
    return paddle.scale(paddle.scale(h, 2e5), 5e-6)


@pytest.fixture(scope="module")
def built(paddle, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("range-models")
    models = {}
    for name, build in (("underflow", _underflow), ("two_overflows", _two_overflows)):
        (root / name).mkdir()
        models[name] = _save(paddle, root / name, build, [1, 4, 8, 8])
    spec = importlib.util.spec_from_file_location("zoo", ROOT / "tests" / "sim" / "zoo.py")
    assert spec is not None and spec.loader is not None
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    squeeze = zoo.build("zoo_squeezenet", root)
    x = np.random.default_rng(1).standard_normal([1, 3, 64, 64]).astype(np.float32)
    np.savez(squeeze / "inputs.npz", x=x * 40000)  # the overflow by construction: max |x| ~1.6e5
    models["squeezenet"] = squeeze
    return models


def op_index(model_dir: Path, op_type: str, nth: int = 0) -> int:
    return [op.index for op in load_model(model_dir).ops if op.type == op_type][nth]


def compare_json(model_dir: Path, capsys, *extra: str) -> tuple[int, dict]:
    args = ["compare", str(model_dir), "--ref", "paddle", "--target", "fp16", "--inputs", str(model_dir / "inputs.npz")]
    code, stdout, _ = run_cli([*args, "--json", *extra], capsys)
    return code, json.loads(stdout)


def run_report(model_dir: Path, tmp_path: Path) -> dict:
    options = RunOptions(
        ref="paddle", target="fp16", out=tmp_path / "out", inputs=model_dir / "inputs.npz", minimise=False
    )
    return run_bisect(model_dir, options)


# ---- 1. the expectation is rounding alone -----------------------------------------------------------------------
def test_rounding_only_is_bit_identical_to_fp16_rounding_wherever_fp16_holds_the_value():
    # Every binade of fp16's normal range, random significands, and every one of them also as an exact tie.
    exponents = RNG.integers(-14, 16, 400_000)
    x = (RNG.uniform(1, 2, exponents.size) * np.exp2(exponents) * RNG.choice([-1, 1], exponents.size)).astype(
        np.float32
    )
    ties = ((x.view(np.uint32) & ~np.uint32(0x1FFF)) | np.uint32(0x1000)).view(np.float32)
    for values in (x, ties):
        values = values[np.abs(values) <= FP16_MAX]
        assert np.array_equal(round_significand(values), round_fp16(values))  # bit-exact, not within an ulp
    # Beyond the range it keeps rounding instead of overflowing; below it, relative precision instead of 2^-24.
    big = np.float32([1e5, -3e6, 1e30])
    assert np.isfinite(round_significand(big)).all() and np.isinf(round_fp16(big)).all()
    np.testing.assert_allclose(round_significand(big), big, rtol=2.0**-11)
    tiny = np.float32([1.2345e-6, 3e-9])
    assert np.abs(round_significand(tiny) / tiny - 1).max() <= 2.0**-11
    assert round_fp16(tiny)[1] == 0 and np.abs(round_fp16(tiny)[0] / tiny[0] - 1) > 1e-2


def test_the_expectation_engine_rounds_without_range(built):
    """`fp16:range=none` (the expectation) equals `fp16` where values are in range and stays finite beyond it."""
    from bisect_lite.cache import Cache
    from bisect_lite.engines.runner import EngineRunner

    model = load_model(FIXTURES / "transformer")
    with np.load(FIXTURES / "transformer" / "inputs.npz") as data:
        feeds = {k: data[k] for k in data.files}
    over = load_model(built["two_overflows"])
    with np.load(built["two_overflows"] / "inputs.npz") as data:
        over_feeds = {k: data[k] for k in data.files}
    cache = Cache(results=False)
    with EngineRunner("fp16", cache) as bounded, EngineRunner(EMULATION_SPEC, cache) as rounding:
        a, b = bounded.run(model, feeds), rounding.run(model, feeds)
        assert a.ok and b.ok
        for name in model.fetches:
            assert np.array_equal(a.outputs[name], b.outputs[name])  # every tensor of the fixture is in range
        a, b = bounded.run(over, over_feeds), rounding.run(over, over_feeds)
    cache.close()
    ref = predict(built["two_overflows"], over_feeds)
    [name] = over.fetches
    ref_out = next(iter(ref.values()))
    assert not np.isfinite(a.outputs[name]).all()  # the target overflows ...
    rel = np.linalg.norm(b.outputs[name] - ref_out) / np.linalg.norm(ref_out)
    assert rel < 2e-3  # ... its expectation is the reference rounded, nothing more


# ---- 2. range findings in a target's values ---------------------------------------------------------------------
def test_the_range_pre_check_never_skips_a_tensor_with_a_range_failure():
    """The every-tensor check skips `target_range_failure` when the reference's norm rules it out: every case
    where it finds something must be one the pre-check keeps, and typical activations must be skipped."""
    found = skipped = 0
    for scale in (1e-7, 1e-5, 1e-3, 0.05, 1.0, 30.0, 3e3, 4e4, 1.5e5):
        for size in (1, 7, 1000, 200_000):
            ref = (RNG.standard_normal(size) * scale).astype(np.float32)
            flushed = np.where(np.abs(ref) < 2.0**-14, 0, ref)
            for target in (np.clip(ref, -FP16_MAX, FP16_MAX), flushed, round_fp16(ref)):
                target = target.astype(np.float32)
                norm = float(np.linalg.norm(ref.astype(np.float64)))
                possible = range_failure_possible(ref.size, norm)
                if target_range_failure(ref, target) is not None:
                    found += 1
                    assert possible, (scale, size)
                skipped += not possible
    assert found >= 6 and skipped >= 20, (found, skipped)


def test_target_range_failures_pinned_and_flushed():
    ref = np.linspace(-1.2e5, 1.2e5, 64, dtype=np.float32)
    assert target_range_failure(ref, np.clip(ref, -FP16_MAX, FP16_MAX))[0] == OVERFLOW
    small = (RNG.standard_normal(1000) * 1e-6).astype(np.float32)
    assert target_range_failure(small, np.zeros_like(small))[0] == UNDERFLOW
    # Near misses: rounding noise; zeros of a relu where the reference is small but normal, or negligible.
    assert target_range_failure(ref, round_fp16(np.clip(ref, -6e4, 6e4))) is None
    relu = np.maximum(RNG.standard_normal(1000).astype(np.float32), 0)
    assert target_range_failure(relu, round_fp16(relu)) is None
    mostly_large = np.concatenate([np.ones(1000, np.float32), np.full(10, 1e-7, np.float32)])
    flushed = mostly_large.copy()
    flushed[1000:] = 0
    assert target_range_failure(mostly_large, flushed) is None  # 3e-9 of its norm: not significant
    # The precision model never excuses one: a flushed tensor fails even within generous bounds.
    m = TensorMetrics("t", (1000,), (1000,), "float32", "float32", rel_l2=1.0, max_abs=1e-5, passed=True)
    judged = with_range_check(m, small, np.zeros_like(small))
    assert not judged.passed and judged.reason.startswith("fp16 underflow")
    assert PrecisionRule().judge(m, None).passed  # (without the check the metrics alone pass here)


def test_underflow_is_significant_mass_below_the_smallest_normal():
    healthy = RNG.standard_normal(10_000).astype(np.float32)
    healthy[:100] *= 1e-6  # 1 % of the values tiny: a negligible share of the norm
    assert value_range(healthy)[1] < UNDERFLOW_SHARE
    scaled = healthy * np.float32(1e-6)
    peak, share = value_range(scaled)
    assert share > 0.99 and peak < 2.0**-14


# ---- 3. predicted from the reference alone -----------------------------------------------------------------------
def test_range_report_lists_exactly_the_tensors_beyond_range(built, capsys):
    model = load_model(built["two_overflows"])
    scales = [op for op in model.ops if op.type == "scale"]
    beyond = {scales[0].outputs["Out"][0]: scales[0].index, scales[2].outputs["Out"][0]: scales[2].index}
    inputs = str(built["two_overflows"] / "inputs.npz")
    code, stdout, _ = run_cli(
        ["ops", str(built["two_overflows"]), "--fp16-range", "--inputs", inputs, "--json"], capsys
    )
    assert code == 0
    listed = json.loads(stdout)["fp16_range"]
    assert {f["tensor"]: f["op"] for f in listed} == beyond
    assert all(f["kind"] == "overflow" and f["op_type"] == "scale" and f["max_abs"] > FP16_MAX for f in listed)
    # The underflow model: its small tensors, with their share below 2^-14; a clean model says so in one line.
    code, stdout, _ = run_cli(["ops", str(built["underflow"]), "--fp16-range", "--json"], capsys)
    under = json.loads(stdout)["fp16_range"]
    assert under and {f["kind"] for f in under} == {"underflow"}
    assert under[0]["op"] == op_index(built["underflow"], "scale") and under[0]["share_below_min_normal"] > 0.99
    code, stdout, _ = run_cli(["ops", str(FIXTURES / "resnet"), "--fp16-range"], capsys)
    assert code == 0 and stdout.strip().splitlines() == [
        "fp16 range: the reference stays within fp16's range (nothing beyond 65504, no significant mass below 2^-14)"
    ]


def test_accumulators_that_sum_in_half_are_predicted():
    """fp16_overflow: reduce_sum's output is beyond 65504; the layer_norm after it is in range, but its sum of
    squares is not (Paddle-Lite's OpenCL layer_norm accumulates it in half)."""
    model = load_model(FIXTURES / "fp16_overflow")
    with np.load(FIXTURES / "fp16_overflow" / "inputs.npz") as data:
        feeds = {k: data[k] for k in data.files}
    found = model_range(model, feeds)
    assert [(f.tensor, f.op, f.op_type, f.where) for f in found] == [
        ("reduce_sum_0.tmp_0", 9, "reduce_sum", "values"),
        ("layer_norm_0.tmp_0", 11, "layer_norm", "accumulator"),
    ]
    assert found[1].max_abs < 10 and found[1].accumulated_max_abs > FP16_MAX


# ---- 4-5. one verdict: compare and run on the same models --------------------------------------------------------
def test_overflow_model_compare_and_run_agree_and_name_the_overflow(built, tmp_path, capsys):
    """The issue: inputs x 40000 gave compare `pass`/PRECISION/exit 0 and run `nan_inf ... within fp16 range`."""
    model_dir = built["squeezenet"]
    with np.load(model_dir / "inputs.npz") as data:
        x = data["x"]
    code, report = compare_json(model_dir, capsys)
    assert (code, report["verdict"]) == (1, "mismatch")
    assert report["diagnosis"]["kind"] == "fp16_overflow" and report["diagnosis"]["op"] == 0
    assert report["fp16_range"][0]["tensor"] == "x" and report["fp16_range"][0]["op"] is None
    run = run_report(model_dir, tmp_path)
    assert run["verdict"] == "mismatch"
    [culprit] = run["culprits"]
    assert (culprit["index"], culprit["type"]) == (0, "conv2d")  # the first op whose values leave fp16's range
    diagnosis = culprit["diagnosis"]
    assert diagnosis["kind"] == "fp16_overflow"
    evidence = diagnosis["evidence"]
    assert evidence["max_abs_input"] == pytest.approx(float(np.abs(x).max()))
    assert evidence["max_abs_ref"] > FP16_MAX and "within fp16 range" not in diagnosis["summary"]
    assert "precision=fp32" in diagnosis["summary"]  # what a user can do
    assert [f["tensor"] for f in run["fp16_range"]] == [f["tensor"] for f in report["fp16_range"]]


def test_underflow_model_compare_and_run_agree(built, tmp_path, capsys):
    model_dir = built["underflow"]
    small = op_index(model_dir, "scale")
    code, report = compare_json(model_dir, capsys)
    assert (code, report["verdict"]) == (1, "mismatch")
    assert (report["diagnosis"]["op"], report["diagnosis"]["kind"]) == (small, "fp16_underflow")
    run = run_report(model_dir, tmp_path)
    [culprit] = run["culprits"]
    assert (culprit["index"], culprit["diagnosis"]["kind"]) == (small, "fp16_underflow")
    assert culprit["diagnosis"]["evidence"]["share_below_min_normal"] > 0.99
    assert any(f["kind"] == "underflow" and f["op"] == small for f in run["fp16_range"])


def test_bundled_fp16_overflow_fixture(tmp_path, capsys):
    fixture = FIXTURES / "fp16_overflow"
    code, report = compare_json(fixture, capsys)
    assert (code, report["verdict"]) == (1, "mismatch")
    assert (report["diagnosis"]["op"], report["diagnosis"]["op_type"]) == (9, "reduce_sum")
    assert report["diagnosis"]["kind"] == "fp16_overflow"
    first = RangeFinding(**report["fp16_range"][0])
    assert (first.tensor, first.op, first.kind, first.where) == ("reduce_sum_0.tmp_0", 9, "overflow", "values")
    assert report["diagnosis"]["evidence"]["max_abs_ref"] == pytest.approx(first.max_abs) and first.max_abs > 1.1e5
    md = render_report({**report, "precision": {"model": "precision", "factor": 5.0}, "ops": 14}, None)
    assert "reduce_sum_0.tmp_0" in md and "## fp16 range" in md


@pytest.mark.parametrize("name", ["rec", "cls"])
def test_healthy_ppocr_under_fp16_stays_precision(name, capsys):
    """No false alarm: every tensor within the rounding-only expectation, nothing beyond fp16's range (det:
    tests/test_precision.py)."""
    model_dir = ppocr_model(name)
    code, report = compare_json(model_dir, capsys)
    assert (code, report["verdict"]) == (0, "precision"), report.get("diagnosis")
    assert report["every_tensor"]["beyond_precision"] == [] and report["every_tensor"]["checked"] >= 300
    assert report["fp16_range"] == []


# ---- diagnosis and report ---------------------------------------------------------------------------------------
def test_nan_inf_never_claims_fp16_range_for_values_beyond_it():
    ref = np.linspace(-1e5, 1e5, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    target = ref.copy()
    target[0, 0, 4, 4] = np.nan  # NaN where the reference is small: not explained by the range
    d = diagnose(ref, target)
    assert d.kind == "nan_inf" and "within fp16 range" not in d.summary
    # Inside the op: output and inputs in range, the accumulator not (a reduce_mean summing in half).
    out = np.full((1, 4), 30.0, np.float32)
    inf = out.copy()
    inf[0, 1] = np.inf
    facts = {"op_type": "reduce_mean", "input_max_abs": 31.0, "accumulated_max_abs": 1.2e5}
    d = diagnose(out, inf, fp16_range=facts)
    assert d.kind == "fp16_overflow" and d.evidence["beyond"] == "accumulator" and "reduce_mean" in d.summary
    assert diagnose(out, inf, fp16_range={**facts, "accumulated_max_abs": 3e3}).kind == "nan_inf"


def test_underflow_diagnosis_and_its_near_miss():
    ref = (RNG.standard_normal((1, 8, 4, 4)) * 1e-6).astype(np.float32)
    d = diagnose(ref, round_fp16(ref).astype(np.float32))  # stored as fp16 subnormals
    assert d.kind == "fp16_underflow" and d.evidence["share_below_min_normal"] > 0.99
    assert "2^-14" in d.summary and "precision=fp32" in d.summary
    flushed = diagnose(ref, np.zeros_like(ref))
    assert flushed.kind == "fp16_underflow" and flushed.evidence["flushed_to_zero"] == ref.size
    normal = RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)
    assert diagnose(normal, (normal * 1.2).astype(np.float32)).kind != "fp16_underflow"
    # Tiny values 10 % off: a kernel fault, not fp16's range (the error is far beyond a subnormal's step).
    assert diagnose(ref, (ref * 1.1).astype(np.float32)).kind != "fp16_underflow"


def test_report_shows_the_rule_that_judged():
    tolerance = {"atol": 0.05, "rtol": 0.05, "overrides": {}}
    m = {"name": "y", "passed": True, "judged_by": "precision", "bound_rel_l2": 1e-3, "bound_max_abs": 0.2}
    report = {
        "verdict": "precision",
        "tolerance": tolerance,
        "precision": {"model": "precision", "factor": 5.0, "accumulation": "fp32"},
        "full_model": {"comparison": {"passed": True, "tensors": [m]}},
    }
    md = render_report(report, None)
    row = next(line for line in md.splitlines() if line.startswith("| Judgement |"))
    assert "precision model, K = 5.0" in row and "range failures" in row
    assert "precision: rel L2 <= 0.001" in md
    tol = render_report({**report, "precision": {"model": "tolerance", "why": "explicit --atol/--rtol"}}, None)
    assert "| Judgement | tolerances: atol=0.05, rtol=0.05 (explicit --atol/--rtol) |" in tol


def test_matplotlib_is_a_runtime_dependency():
    """The error-vs-depth plot is part of the report a user reads: a plain install draws it."""
    text = (ROOT / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert dependencies is not None and '"matplotlib' in dependencies.group(1)
