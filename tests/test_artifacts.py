"""Hostile-input hardening of verdicts and artefacts (issue 9, part 2): nobody is blamed for a setup failure,
no vacuous or silent verdict, --all reports each root cause once and says where it stopped, and every artefact
describes exactly what its repro holds. End to end with the planted-fault engine (tests/engines/faulty_target.py)
on the fixtures; the pure helpers are tested directly."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FIXTURES, load_fixture_inputs, run_cli
from test_run import bisect, faulty  # noqa: F401 (pytest fixture)

from bisect_lite.compare import CompareConfig, Comparison, compare_tensor
from bisect_lite.errors import InputError
from bisect_lite.model import extract, load_model, save_model
from bisect_lite.model.slicing import build, with_feed_shapes, with_var_shapes
from bisect_lite.phases.bundle import culprit_entry
from bisect_lite.preflight import check_comparable, check_spec_fits_model, nonfinite_warnings
from bisect_lite.report import render_report
from bisect_lite.repro.issue import render_issue
from bisect_lite.search.shrink import shrink_dims, tied_dims


# ---- shrinking keeps broadcasting: pure helpers ---------------------------------------------------------------
def test_equal_dims_of_different_feeds_are_tied():
    # X [1, 32, 8, 8] * Y [1, 32, 1, 1]: the channel dims are one axis seen twice; size-1 dims stay free.
    assert tied_dims([(1, 32, 8, 8), (1, 32, 1, 1)]) == [[1, 5]]
    # Dims of one feed are never tied to each other, only through another feed.
    assert tied_dims([(8, 8)]) == []
    assert sorted(map(sorted, tied_dims([(4, 16), (16, 4)]))) == [[0, 3], [1, 2]]


def test_tied_dims_shrink_together():
    calls: list[tuple[int, ...]] = []

    def fails(dims: tuple[int, ...]) -> bool:
        calls.append(dims)
        x_c, y_c = dims[1], dims[5]
        assert x_c == y_c, f"tied dims cropped apart: {dims}"
        return dims[2] >= 3  # fails while the spatial dim is at least 3

    result = shrink_dims([1, 32, 8, 8, 1, 32, 1, 1], fails, ties=tied_dims([(1, 32, 8, 8), (1, 32, 1, 1)]))
    assert result.dims == (1, 1, 3, 1, 1, 1, 1, 1)
    assert calls and all(c[1] == c[5] for c in calls)
    # Without ties the channel of one feed alone shrinks: the function the op computes would change.
    free = shrink_dims([1, 32, 8, 8, 1, 32, 1, 1], lambda d: d[2] >= 3 and d[1] == 32)
    assert free.dims[5] == 1 and free.dims[1] == 32


def test_shrunk_programs_carry_no_stale_shapes():
    model = load_model(FIXTURES / "two_io")
    sub = extract(model, [10])  # elementwise_mul, fed by relu_1.tmp_0 [1, 32, 8, 8] and reshape2_0.tmp_0
    shrunk = with_feed_shapes(sub, {"relu_1.tmp_0": (1, 4, 2, 2), "reshape2_0.tmp_0": (1, 4, 1, 1)})
    assert shrunk.vars["relu_1.tmp_0"].shape == (1, 4, 2, 2)
    assert shrunk.vars["elementwise_mul_0.tmp_0"].shape == (-1, -1, -1, -1)  # was [1, 32, 8, 8]: now unknown
    known = with_var_shapes(shrunk, {"elementwise_mul_0.tmp_0": (1, 4, 2, 2)})
    assert known.vars["elementwise_mul_0.tmp_0"].shape == (1, 4, 2, 2)
    # Parameters keep their shapes, and a name that is not a feed is refused.
    weights = with_var_shapes(load_model(FIXTURES / "two_io"), {"linear_0.w_0": (1,)})
    assert weights.vars["linear_0.w_0"].shape == (8, 32)
    with pytest.raises(InputError):
        with_feed_shapes(sub, {"elementwise_mul_0.tmp_0": (1,)})


# ---- vacuous verdicts ---------------------------------------------------------------------------------------------
def test_models_without_ops_or_fetches_are_refused(tmp_path, capsys):
    model = load_model(FIXTURES / "two_io")
    no_ops = build(model, [], ["aux"], ["aux"])  # feed straight to fetch
    no_fetch = build(model, [6], ["aux"], [])
    for name, m in (("no_ops", no_ops), ("no_fetch", no_fetch)):
        save_model(m, tmp_path / name)
        with pytest.raises(InputError):
            check_comparable(load_model(tmp_path / name))
        for command in (["compare"], ["run", "--out", str(tmp_path / f"out-{name}")]):
            code, out, err = run_cli([*command, str(tmp_path / name), "--ref", "paddle", "--target", "fp16"], capsys)
            assert code == 2, (name, command, out, err)
            assert err.startswith("error: ") and err.count("\n") == 1 and "nothing to compare" in err
        assert not (tmp_path / f"out-{name}" / "report.md").exists()


def test_fp16_op_list_naming_a_missing_op_type_is_refused(capsys, tmp_path):
    model = load_model(FIXTURES / "two_io")
    check_spec_fits_model("fp16:ops=conv2d+relu", model)  # real op types pass
    check_spec_fits_model("fp16:ops=feed", model)
    with pytest.raises(InputError, match="conv2dd"):
        check_spec_fits_model("fp16:ops=conv2dd", model)
    with pytest.raises(InputError, match="softmax"):
        check_spec_fits_model("fp16:skip=softmax", model)
    code, _, err = run_cli(
        ["compare", str(FIXTURES / "two_io"), "--ref", "paddle", "--target", "fp16:ops=conv2dd"], capsys
    )
    assert code == 2 and "conv2dd" in err and err.count("\n") == 1


def test_nan_on_both_sides_is_a_warning_not_a_silent_match(capsys, tmp_path):
    inputs = load_fixture_inputs("two_io")
    inputs["aux"] = inputs["aux"].copy()
    inputs["aux"][0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **inputs)
    args = ["compare", str(FIXTURES / "two_io"), "--ref", "paddle", "--target", "paddle-opt"]
    code, out, _ = run_cli(
        [*args, "--inputs", str(tmp_path / "nan.npz"), "--save-inputs", str(tmp_path / "s.npz")], capsys
    )
    assert "warning: the reference's outputs hold NaN/Inf" in out and "input aux" in out, out
    # Finite inputs: no warning.
    code, out, _ = run_cli(
        [*args, "--inputs", str(FIXTURES / "two_io" / "inputs.npz"), "--save-inputs", str(tmp_path / "t.npz")], capsys
    )
    assert code == 0 and "warning" not in out
    assert nonfinite_warnings({"y": np.array([1.0, np.inf])}, {}, {"w": np.array([np.nan])})[0].count("param w") == 1
    assert nonfinite_warnings({"y": np.array([1.0])}, {"x": np.array([np.nan])}) == []


# ---- setup errors are not an op's fault ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "template",
    [
        "/nonexistent/prog {model_dir} {inputs} {outputs}",
        f"{sys.executable} -c 'import sys; sys.exit(7)' {{model_dir}} {{inputs}} {{outputs}}",
    ],
)
def test_a_target_that_runs_nothing_is_a_setup_error(template, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        ["run", str(FIXTURES / "two_io"), "--ref", "paddle", "--target", f"cmd:{template}", "--out", str(out_dir)],
        capsys,
    )
    assert code == 3, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1
    assert not list(out_dir.rglob("ISSUE.md")) and not (out_dir / "repro").exists()
    assert "conv2d crashes" not in out + err and "culprit" not in out
    code, out, err = run_cli(
        [
            "compare",
            str(FIXTURES / "two_io"),
            "--ref",
            "paddle",
            "--target",
            f"cmd:{template}",
            "--save-inputs",
            str(tmp_path / "in.npz"),
        ],
        capsys,
    )
    assert code == 3 and "CRASH" not in out, (out, err)


def test_a_target_that_gets_every_op_wrong_is_a_setup_error(tmp_path, capsys):
    """A runner that answers every model with garbage (here: zeros of the wrong shape) would otherwise have op 0
    blamed for a mismatch."""
    runner = tmp_path / "garbage.py"
    runner.write_text(
        "import json, sys\nimport numpy as np\n"
        "fetches = json.load(open(sys.argv[1]))['fetches']\n"
        "np.savez(sys.argv[2], **{f: np.zeros(3, np.float32) for f in fetches})\n"
    )
    out_dir = tmp_path / "out"
    target = f"cmd:{sys.executable} {runner} {{io}} {{outputs}}"
    code, out, err = run_cli(
        ["run", str(FIXTURES / "two_io"), "--ref", "paddle", "--target", target, "--out", str(out_dir)], capsys
    )
    assert code == 3, (out, err)
    assert (
        "fails on every op of this model tried alone (conv2d, batch_norm, relu)" in err and "nothing was blamed" in err
    )
    assert not list(out_dir.rglob("ISSUE.md")) and "culprit" not in out


def test_a_crash_of_op_0_is_still_hunted(faulty, tmp_path):  # noqa: F811
    report = bisect("two_io", faulty({"kind": "crash", "tensor": "conv2d_0.tmp_0"}), tmp_path, minimise=False)
    assert report["verdict"] == "crash"
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"], culprit["diagnosis"]["kind"]) == (0, "conv2d", "crash")
    # A wrong op 0 is still hunted as a mismatch (other ops alone are right).
    report = bisect("two_io", faulty({"kind": "scale", "tensor": "conv2d_0.tmp_0", "factor": 1.3}), tmp_path / "b")
    assert report["verdict"] == "mismatch" and [c["index"] for c in report["culprits"]] == [0]


# ---- artefacts describe the repro ----------------------------------------------------------------------------
def test_broadcast_op_repro_is_shrunk_consistently_and_described_exactly(faulty, tmp_path):  # noqa: F811
    target = faulty({"kind": "scale", "tensor": "elementwise_mul_0.tmp_0", "factor": 1.13})
    report = bisect("two_io", target, tmp_path)
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"]) == (10, "elementwise_mul")
    repro = tmp_path / "out" / "repro"
    facts = json.loads((repro / "repro.json").read_text())
    with np.load(repro / "inputs.npz") as f:
        x, y = f["relu_1.tmp_0"], f["reshape2_0.tmp_0"]
    with np.load(repro / "expected.npz") as f:
        expected = {k: f[k] for k in f.files}
    assert x.size < 32 * 8 * 8, "the repro was not shrunk"
    # The channel axis both feeds share is cropped together: Y still scales each channel of X.
    assert x.shape[1] == y.shape[1] and y.shape[2:] == (1, 1)
    # The repro fails like the model did: by the planted factor, not by a broadcasting artefact.
    [metric] = facts["metrics"]
    assert metric["rel_l2"] == pytest.approx(0.13, rel=0.05)
    # The diagnosis and the isolated metrics come from the full-size evidence, the bundle from the shrunk one.
    assert culprit["isolated"]["tensors"][0]["ref_shape"] == [1, 32, 8, 8]
    assert metric["ref_shape"] == list(x.shape)
    # The repro program records the shapes its files have.
    program = load_model(repro)
    assert program.vars["relu_1.tmp_0"].shape == x.shape and program.vars["reshape2_0.tmp_0"].shape == y.shape
    assert program.vars["elementwise_mul_0.tmp_0"].shape == expected["elementwise_mul_0.tmp_0"].shape
    # repro.json and ISSUE.md give the op's shapes as the repro has them, not the model's.
    assert facts["op"]["inputs"]["X"][0]["shape"] == list(x.shape)
    assert facts["op"]["outputs"]["Out"][0]["shape"] == list(expected["elementwise_mul_0.tmp_0"].shape)
    # ISSUE.md: written for a custom runner, plain snippet first, one engine row, no index install.
    issue = (repro / "ISSUE.md").read_text()
    assert issue.startswith("# [custom runner] elementwise_mul output differs from Paddle Inference")
    assert "pip install bisect-lite" not in issue and "pip install -e ." in issue
    assert sum(line.startswith("| engine |") for line in issue.splitlines()) == 1
    assert issue.index("```python") < issue.index("bisect-lite verify .")


def test_entry_follows_the_ops_delta_debugging_kept():
    """When ddmin keeps ops that exclude where the search pointed, report and issue name the repro's op."""
    model = load_model(FIXTURES / "two_io")
    ref = np.linspace(-1, 1, 32, dtype=np.float32).reshape(1, 32)
    bad = ref * 1.5
    cmp = Comparison(tensors=[compare_tensor("sigmoid_0.tmp_0", ref, bad, CompareConfig())])
    repro = {
        "kind": "subgraph",
        "ops": [7, 8],
        "comparison": cmp,
        "expected": {"sigmoid_0.tmp_0": ref},
        "actual": {"sigmoid_0.tmp_0": bad},
        "tried": ["delta debugging kept ops [7, 8] (40 runs, stopped at its budget of 40 runs)"],
        "ddmin": {"one_minimal": False, "calls": 40, "budget": 40},
        "message": "",
    }
    located = {"index": 10, "ops": [10], "segment": 0, "status": "fail", "group": "conv2d + 18 fused ops"}
    ctx = SimpleNamespace(model=model, probes=[])
    entry = culprit_entry(ctx, located, repro, nondet=False)
    assert (entry["index"], entry["type"], entry["ops"]) == (8, "sigmoid", [7, 8])
    assert not any("fused" in n for n in entry["notes"]), "the group note belongs to the search's op, not the repro"
    assert any("pointed at op 10 (elementwise_mul)" in n for n in entry["notes"])
    md = render_report({"verdict": "mismatch", "culprits": [entry], "model": "m", "ops": 21}, None)
    assert "op #8 `sigmoid`" in md and "elementwise_mul" not in md.split("## Culprit")[1].split("- the search")[0]
    assert "stopped at its budget of 40 runs" in md and "could not be split further" not in md
    issue = render_issue(
        {
            "op": {"type": entry["type"], "index": entry["index"], "attrs": entry["attrs"]},
            "kind": entry["kind"],
            "ops": [{"index": 7, "type": "elementwise_add"}, {"index": 8, "type": "sigmoid"}],
            "target": {"engine": "lite:opencl"},
            "reference": {"engine": "lite:arm"},
            "metrics": [],
            "diagnosis": entry["diagnosis"],
        }
    )
    assert issue.startswith("# [OpenCL] sigmoid (+1 ops) ") and "fused" not in issue.splitlines()[0]


# ---- --all: one entry per root cause, and a word when it stops ------------------------------------------------
def test_all_reports_each_root_cause_once_and_says_where_it_stopped(faulty, tmp_path):  # noqa: F811
    target = faulty(
        {"kind": "scale", "tensor": "relu_5.tmp_0", "factor": 2.0},  # op 19
        {"kind": "scale", "tensor": "relu_7.tmp_0", "factor": 2.0},  # op 28: same op type, attrs and failure
        {"kind": "scale", "tensor": "conv2d_10.tmp_0", "factor": 1.5},  # op 33
        {"kind": "scale", "tensor": "pool2d_0.tmp_0", "factor": 1.5},  # op 42: beyond the limit
    )
    report = bisect("resnet", target, tmp_path, find_all=True, minimise=False, max_culprits=2)
    assert [(c["index"], c["type"]) for c in report["culprits"]] == [(19, "relu"), (33, "conv2d")]
    assert report["culprits"][0]["duplicates"] == [{"index": 28, "ops": [28]}]
    assert any("op 28 relu" in n and "same root cause as culprit op 19 (repro)" in n for n in report["notes"])
    assert report.get("stopped_at_limit") is True
    assert any("--max-culprits 2" in n and "ops 34..46 were not searched" in n for n in report["notes"])
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("repro*")) == ["repro", "repro-2"]
    md = (out / "report.md").read_text()
    assert "also at ops 28 (op #28)" in md and "--max-culprits 2" in md


def test_minimise_crops_broadcast_partners_together(monkeypatch):
    """A fault that needs 16 channels: shrinking the gate Y's channels alone would still "fail" through numpy
    broadcasting but compute another function (every channel scaled by channel 0's gate). The engine stand-in is
    the op's real function in numpy; the minimiser under test is the project's."""
    import bisect_lite.phases.minimise as minimise

    model = load_model(FIXTURES / "two_io")
    sub = extract(model, [10])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 32, 8, 8)).astype(np.float32)
    y = rng.standard_normal((1, 32, 1, 1)).astype(np.float32)
    out_name = "elementwise_mul_0.tmp_0"

    def isolate(ctx, ops, hunted, model=None, inputs=None):
        a, b = inputs["relu_1.tmp_0"], inputs["reshape2_0.tmp_0"]
        try:
            value = a * b
        except ValueError:
            return None  # the reference cannot run shapes that do not broadcast
        return {
            "model": model,
            "inputs": inputs,
            "expected": {out_name: value},
            "actual": {out_name: value * 2},
            "fails": a.shape[1] >= 16,
            "comparison": None,
            "ops": list(ops),
        }

    monkeypatch.setattr(minimise, "isolate", isolate)
    found = {
        "model": sub,
        "inputs": {"relu_1.tmp_0": x, "reshape2_0.tmp_0": y},
        "expected": {out_name: x * y},
        "ops": [10],
        "kind": "op",
        "tried": [],
    }
    best = minimise.minimise_shapes(SimpleNamespace(), found, hunted=None)
    xs, ys = best["inputs"]["relu_1.tmp_0"], best["inputs"]["reshape2_0.tmp_0"]
    assert xs.shape[1] == ys.shape[1] == 16, (xs.shape, ys.shape)
    # The shrunk repro computes a crop of what the model computed.
    h, w = xs.shape[2:]
    np.testing.assert_array_equal(best["expected"][out_name], (x * y)[:, :16, :h, :w])
    assert best["model"].vars[out_name].shape == best["expected"][out_name].shape


# ---- an engine that cannot convert the model -------------------------------------------------------------------
@pytest.fixture(scope="module")
def unconvertible(paddle, tmp_path_factory) -> Path:
    """reshape -> determinant -> scale: paddle2onnx 2.1 has no converter for determinant (it aborts)."""
    directory = tmp_path_factory.mktemp("det")
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [1, 8], "float32")
        y = paddle.linalg.det(paddle.reshape(x[:, :4], [1, 2, 2])) * 2.0
    exe = paddle.static.Executor()
    exe.run(startup)
    paddle.static.save_inference_model(str(directory / "model"), [x], [y], exe, program=main)
    (directory / "model.pdiparams").touch()  # no parameters: the loader wants the file all the same
    return directory


def test_a_model_the_converter_cannot_take(unconvertible, tmp_path, capsys):
    code, out, err = run_cli(
        [
            "compare",
            str(unconvertible),
            "--ref",
            "paddle",
            "--target",
            "onnxruntime",
            "--save-inputs",
            str(tmp_path / "in.npz"),
        ],
        capsys,
    )
    assert code == 3 and "CRASH" not in out, (out, err)
    assert err.startswith("error: engine onnxruntime cannot run this model") and err.count("\n") == 1
    assert "unsupported operators" in err  # the converter's own words, not a signal dump
    # run hunts the op the converter lacks (other ops convert) and files the issue with the converter.
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        [
            "run",
            str(unconvertible),
            "--ref",
            "paddle",
            "--target",
            "onnxruntime",
            "--out",
            str(out_dir),
            "--no-minimise",
        ],
        capsys,
    )
    assert code == 1, (out, err)
    report = json.loads((out_dir / "report.json").read_text())
    assert [c["type"] for c in report["culprits"]] == ["determinant"]
    assert any("failed while loading" in n for n in report["culprits"][0]["notes"])
    issue = (out_dir / "repro" / "ISSUE.md").read_text()
    assert issue.startswith("# [paddle2onnx] determinant cannot be converted to ONNX")
    assert "Where to file: PaddlePaddle/Paddle2ONNX" in issue and "paddle2onnx.export(" in issue
    assert json.loads((out_dir / "repro" / "repro.json").read_text())["failed_while"] == "loading"


def test_imprecise_is_not_garbage():
    """A tolerance tighter than the target's precision fails every op, but that is not a broken engine."""
    from bisect_lite.compare import Tolerance, compare_outputs
    from bisect_lite.preflight import garbage_output

    ref = {"y": np.linspace(-3, 3, 64, dtype=np.float32)}
    tight = CompareConfig(default=Tolerance(1e-6, 1e-6))
    rounded = compare_outputs(ref, {"y": ref["y"].astype(np.float16).astype(np.float32)}, tight, names=["y"])
    assert not rounded.passed and garbage_output(rounded) is None
    zeros = compare_outputs(ref, {"y": np.zeros(64, np.float32)}, tight, names=["y"])
    assert "y is wrong" in garbage_output(zeros)
    shaped = compare_outputs(ref, {"y": np.zeros(3, np.float32)}, tight, names=["y"])
    assert "shape [3] instead of [64]" in garbage_output(shaped)
    assert "no output y" in garbage_output(compare_outputs(ref, {}, tight, names=["y"]))
