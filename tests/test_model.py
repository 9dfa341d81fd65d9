"""Model core: loading, params round trips, truncation and extraction checked against Paddle itself."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_NAMES, FIXTURES, load_fixture_inputs, predict, run_cli

from bisect_lite.errors import InputError
from bisect_lite.model import extract, frontier, load_model, save_model, truncate
from bisect_lite.model.params import read_combined, write_combined

pytestmark = pytest.mark.skipif(not FIXTURE_NAMES, reason="fixtures missing: run fixtures/generate.py")


def test_fixtures_present():
    assert {"mobilenetv3", "resnet", "transformer", "unet", "two_io", "argmax_classifier"} <= set(FIXTURE_NAMES)


# ---- params --------------------------------------------------------------------------------------------------
def test_params_round_trip_all_dtypes(paddle, tmp_path):
    """Our writer reproduces Paddle's own combined file byte for byte, for every dtype Paddle saves."""
    dtypes = ["float32", "float16", "float64", "int32", "int64", "bool", "uint8", "int8"]
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        variables = [
            paddle.static.create_global_var(
                shape=[2, 3] if i % 2 else [5], value=1, dtype=dt, persistable=True, name=f"v_{dt}"
            )
            for i, dt in enumerate(dtypes)
        ]
        variables.append(
            paddle.static.create_global_var(shape=[], value=3, dtype="float32", persistable=True, name="zero_d")
        )
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    rng = np.random.default_rng(1)
    expected = {}
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        for v in variables:
            tensor = scope.var(v.name).get_tensor()
            shape = np.array(tensor).shape
            value = (
                rng.integers(0, 2, shape).astype(bool)
                if v.name == "v_bool"
                else (rng.standard_normal(shape) * 100).astype(np.array(tensor).dtype)
            )
            if v.name == "v_int64":
                value = value.astype(np.int64) * (2**40)
            tensor.set(value, paddle.CPUPlace())
            expected[v.name] = value
        paddle.static.io.save_vars(exe, str(tmp_path), main, vars=variables, filename="combined")
    blob = (tmp_path / "combined").read_bytes()
    names = sorted(expected)
    arrays = read_combined(blob, names)
    for name in names:
        assert arrays[name].dtype == expected[name].dtype
        assert arrays[name].shape == expected[name].shape
        np.testing.assert_array_equal(arrays[name], expected[name])
    assert arrays["zero_d"].shape == ()
    assert write_combined(arrays) == blob


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_params_round_trip(name):
    model = load_model(FIXTURES / name)
    assert write_combined(model.params) == (FIXTURES / name / "model.pdiparams").read_bytes()
    assert model.param_names() == sorted(model.params)


# ---- truncation against Paddle -------------------------------------------------------------------------------
def _cut_points(model, count=6):
    tensors = [t for _, t in model.data_tensors() if t not in model.fetches]
    if len(tensors) <= count:
        return tensors
    picks = np.linspace(0, len(tensors) - 1, count).round().astype(int)
    return [tensors[i] for i in sorted(set(picks))]


def _paddle_full_values(paddle, name, names):
    """Intermediate values of the full model, computed by Paddle's executor (independent of our code)."""
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        program, feed_names, _ = paddle.static.load_inference_model(str(FIXTURES / name / "model"), exe)
        feeds = load_fixture_inputs(name)
        values = exe.run(program, feed={k: feeds[k] for k in feed_names}, fetch_list=list(names), scope=scope)
    return dict(zip(names, values, strict=True)), program, exe, scope


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_truncate_matches_paddle(paddle, name, tmp_path):
    model = load_model(FIXTURES / name)
    feeds = load_fixture_inputs(name)
    cuts = _cut_points(model)
    full, program, exe, scope = _paddle_full_values(paddle, name, cuts)
    for target in cuts:
        cut = truncate(model, [target])
        out = tmp_path / target.replace("/", "_")
        save_model(cut, out)
        # Params file holds exactly the slice's persistables, sorted (Paddle-Lite requires it).
        assert cut.param_names() == sorted(cut.params)
        reloaded = load_model(out)
        assert reloaded.fetches == [target]
        got = predict(out, {k: feeds[k] for k in reloaded.feeds})[target]
        np.testing.assert_array_equal(got, full[target])  # exact in IR-off mode
        # Same op and var set as Paddle's own pruning.
        ref_dir = tmp_path / ("paddle_" + target.replace("/", "_"))
        with paddle.static.scope_guard(scope):
            block = program.global_block()
            feed_vars = [block.var(f) for f in cut.feeds]  # paddle rejects feeds the slice does not use
            paddle.static.save_inference_model(
                str(ref_dir / "model"), feed_vars, [block.var(target)], exe, program=program
            )
        ref = load_model(ref_dir)
        assert [(o.type, o.outputs) for o in cut.ops] == [(o.type, o.outputs) for o in ref.ops]
        assert set(cut.params) == set(ref.params)
        assert set(cut.feeds) <= set(model.feeds)
        used = {n for op in cut.ops for n in op.reads}
        assert set(cut.feeds) == used & set(model.feeds)
        assert all("op_callstack" not in cut.op_attrs(o.index) for o in cut.ops)


def test_truncate_several_targets_keeps_order(paddle):
    model = load_model(FIXTURES / "resnet")
    tensors = [t for _, t in model.data_tensors()]
    targets = [tensors[10], tensors[3], tensors[7]]
    cut = truncate(model, targets)
    assert cut.fetches == targets


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_extract_matches_full_model(paddle, name, tmp_path):
    model = load_model(FIXTURES / name)
    n = len(model.ops)
    windows = [(0, 0), (n // 3, n // 3), (n // 2, min(n - 1, n // 2 + 3)), (n - 1, n - 1)]
    names = sorted({t for _, t in model.data_tensors()})
    full, *_ = _paddle_full_values(paddle, name, names)
    feeds = load_fixture_inputs(name)
    values = {**feeds, **full}
    for lo, hi in windows:
        sub = extract(model, range(lo, hi + 1))
        out = tmp_path / f"ops_{lo}_{hi}"
        save_model(sub, out)
        reloaded = load_model(out)
        for feed in reloaded.feeds:
            assert reloaded.vars[feed].dtype == model.vars[feed].dtype
        got = predict(out, {f: values[f] for f in reloaded.feeds})
        assert set(got) == set(sub.fetches)
        for tensor, value in got.items():
            np.testing.assert_array_equal(value, values[tensor], err_msg=f"{name} ops {lo}..{hi}: {tensor}")


def test_frontier_is_what_later_ops_need():
    model = load_model(FIXTURES / "resnet")
    for cut in range(len(model.ops)):
        front = frontier(model, cut)
        later_reads = {n for op in model.ops[cut + 1 :] for n in op.reads} | set(model.fetches)
        produced = {n for op in model.ops[: cut + 1] for n in op.data_outputs()}
        assert set(front) == (produced & later_reads) - set(model.params)


def test_residual_frontier_holds_both_branches():
    model = load_model(FIXTURES / "resnet")
    add = next(op for op in model.ops if op.type == "elementwise_add" and not any(model.is_param(n) for n in op.reads))
    front = frontier(model, add.index - 1)
    assert set(add.inputs["X"] + add.inputs["Y"]) <= set(front)


# ---- errors ----------------------------------------------------------------------------------------------------
def _copy_fixture(tmp_path, name="resnet"):
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _snapshot(path: Path):
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize(
    "case",
    [
        "missing_params",
        "truncated_params",
        "corrupt_params",
        "corrupt_model",
        "unknown_tensor",
        "pir_json",
        "unreadable_dir",
        "empty_dir",
        "ambiguous",
        "extra_params",
    ],
)
def test_bad_input_is_one_line_exit_2(case, tmp_path, capsys):
    model_dir = _copy_fixture(tmp_path)
    params = model_dir / "model.pdiparams"
    args = ["ops", str(model_dir)]
    if case == "missing_params":
        params.unlink()
    elif case == "truncated_params":
        params.write_bytes(params.read_bytes()[:-100])
    elif case == "corrupt_params":
        data = bytearray(params.read_bytes())
        data[0:4] = b"\x07\x00\x00\x00"
        params.write_bytes(bytes(data))
    elif case == "extra_params":
        params.write_bytes(params.read_bytes() + b"\x00" * 64)
    elif case == "corrupt_model":
        (model_dir / "model.pdmodel").write_bytes(b"\xff\xfe garbage \x00" * 50)
    elif case == "unknown_tensor":
        args = ["truncate", str(model_dir), "--at", "no_such_tensor", "-o", str(tmp_path / "out")]
    elif case == "pir_json":
        shutil.rmtree(model_dir)
        model_dir.mkdir()
        (model_dir / "inference.json").write_text('{"base_code": {"magic": "pir"}, "program": {}}')
        (model_dir / "inference.pdiparams").write_bytes(b"")
    elif case == "unreadable_dir":
        if os.geteuid() == 0:
            args = ["ops", str(tmp_path / "does-not-exist")]
        else:
            model_dir.chmod(0)
    elif case == "empty_dir":
        shutil.rmtree(model_dir)
        model_dir.mkdir()
    elif case == "ambiguous":
        shutil.copy(model_dir / "model.pdmodel", model_dir / "other.pdmodel")
    before = _snapshot(tmp_path)
    code, out, err = run_cli(args, capsys)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert _snapshot(tmp_path) == before  # nothing written, nothing damaged
    if case == "pir_json":
        assert "FLAGS_enable_pir_api=0" in err
    if case == "ambiguous":
        assert "other.pdmodel" in err


def test_load_formats(tmp_path, paddle):
    """__model__ + per-param files, model + params, explicit files."""
    model = load_model(FIXTURES / "resnet")
    sep = tmp_path / "separate"
    sep.mkdir()
    (sep / "__model__").write_bytes(model.program_bytes())
    from bisect_lite.model.params import tensor_bytes

    for name, arr in model.params.items():
        (sep / name).write_bytes(tensor_bytes(arr))
    a = load_model(sep)
    assert a.fingerprint == model.fingerprint
    mp = tmp_path / "mp"
    mp.mkdir()
    shutil.copy(FIXTURES / "resnet" / "model.pdmodel", mp / "model")
    shutil.copy(FIXTURES / "resnet" / "model.pdiparams", mp / "params")
    assert load_model(mp).fingerprint == model.fingerprint
    assert load_model(mp / "model", mp / "params").fingerprint == model.fingerprint


def test_save_refuses_model_dir_and_is_atomic(tmp_path):
    model_dir = _copy_fixture(tmp_path)
    model = load_model(model_dir)
    with pytest.raises(InputError):
        save_model(model, model_dir)
    with pytest.raises(InputError):
        save_model(model, model_dir / "sub")
    out = tmp_path / "out"
    save_model(truncate(model, [next(t for _, t in model.data_tensors())]), out)
    assert sorted(p.name for p in out.iterdir()) == ["model.pdiparams", "model.pdmodel"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_cli_ops_json(capsys):
    import json

    code, out, _ = run_cli(["ops", str(FIXTURES / "transformer"), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["op_types"].get("layer_norm", 0) >= 2
    assert [f["name"] for f in info["feeds"]] == load_model(FIXTURES / "transformer").feeds


def test_cli_truncate_and_extract(tmp_path, capsys, paddle):
    model = load_model(FIXTURES / "unet")
    target = [t for _, t in model.data_tensors()][5]
    code, _, err = run_cli(["truncate", str(FIXTURES / "unet"), "--at", target, "-o", str(tmp_path / "t")], capsys)
    assert code == 0, err
    assert load_model(tmp_path / "t").fetches == [target]
    code, _, err = run_cli(["extract", str(FIXTURES / "unet"), "--op", "3..5", "-o", str(tmp_path / "e")], capsys)
    assert code == 0, err
    assert len(load_model(tmp_path / "e").ops) == 3


def _control_flow_model(paddle, path: Path) -> None:
    """A legacy program with a conditional_block (a sub-block) that conditionally overwrites `branch_out`."""
    from paddle.base.layer_helper import LayerHelper
    from paddle.static.nn.control_flow import ConditionalBlock

    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [1, 4], "float32")
        h = paddle.static.nn.fc(x, 4)
        helper = LayerHelper("cf")
        zero = paddle.static.create_global_var([1], 0.0, "float32", persistable=True, name="zero")
        mean = helper.create_variable_for_type_inference("float32")
        helper.append_op(
            type="reduce_mean",
            inputs={"X": [h]},
            outputs={"Out": [mean]},
            attrs={"dim": [0, 1], "keep_dim": False, "reduce_all": True},
        )
        cond = helper.create_variable_for_type_inference("bool")
        helper.append_op(type="greater_than", inputs={"X": [mean], "Y": [zero]}, outputs={"Out": [cond]})
        out = main.global_block().create_var(name="branch_out", dtype="float32", shape=[1, 4])
        helper.append_op(type="scale", inputs={"X": [h]}, outputs={"Out": [out]}, attrs={"scale": -1.0})
        block = ConditionalBlock([cond], is_scalar_condition=True)
        with block.block():
            tmp = helper.create_variable_for_type_inference("float32")
            helper.append_op(type="scale", inputs={"X": [h]}, outputs={"Out": [tmp]}, attrs={"scale": 2.0})
            helper.append_op(type="assign", inputs={"X": [tmp]}, outputs={"Out": [out]})
        y = helper.create_variable_for_type_inference("float32")
        helper.append_op(type="relu", inputs={"X": [out]}, outputs={"Out": [y]})
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        paddle.static.save_inference_model(str(path / "model"), [x], [y], exe, program=main)


def test_control_flow_ops_are_kept_whole(paddle, tmp_path):
    _control_flow_model(paddle, tmp_path / "cf")
    model = load_model(tmp_path / "cf")
    [cb] = [op for op in model.ops if op.type == "conditional_block"]
    assert cb.sub_blocks == (1,)
    assert "branch_out" in cb.reads  # it may keep the value the scale before it wrote
    relu_out = model.fetches[0]
    for sign in (1.0, -1.0):  # both branches
        feeds = {"x": (sign * np.abs(np.random.default_rng(0).standard_normal((1, 4)))).astype(np.float32)}
        full = predict(tmp_path / "cf", feeds)[relu_out]
        for target in ("branch_out", relu_out):
            cut = truncate(model, [target])
            assert len(cut.program.blocks) == 2 and "conditional_block" in [o.type for o in cut.ops]
            assert "scale" in [o.type for o in cut.ops]  # the value the branch may leave untouched
            out = tmp_path / f"cut-{target}-{sign}"
            save_model(cut, out)
            got = predict(out, feeds)[target]
            if target == relu_out:
                np.testing.assert_array_equal(got, full)
    assert frontier(model, cb.index) == ["branch_out"]
