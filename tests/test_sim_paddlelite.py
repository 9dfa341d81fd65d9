"""Tests of the Paddle-Lite simulator in tests/sim (the stand-in for the `paddlelite` wheel)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIM = Path(__file__).resolve().parent / "sim"
if str(SIM) not in sys.path:
    sys.path.insert(0, str(SIM))

os.environ.setdefault("GLOG_minloglevel", "2")  # before paddle is imported; legacy IR comes from OldIrGuard

import paddle  # noqa: E402
from paddle import inference  # noqa: E402
from paddle.base.proto import framework_pb2 as fpb  # noqa: E402
from paddlelite import lite  # noqa: E402
from paddlelite._sim.log import LiteFatalError  # noqa: E402

OPT_SCRIPT = SIM / "bin" / "paddle_lite_opt"
X = np.random.RandomState(1).uniform(-1, 1, (2, 3, 8, 8)).astype("float32")


# ---------------------------------------------------------------- fixtures and helpers


def _build_model(dirname: Path) -> None:
    """x -> conv1 -> bn -> relu -> r1; conv2(r1) + bias (old-style elementwise_add) + r1 -> relu -> flatten
    -> fc -> logits -> arg_max(keepdims=False). Random weights scaled so activations stay near unit scale."""
    rng = np.random.RandomState(0)
    was_dynamic = paddle.in_dynamic_mode()  # the test process shares one paddle: leave its mode as found
    with paddle.pir_utils.OldIrGuard():
        paddle.enable_static()
        try:
            main, startup = paddle.static.Program(), paddle.static.Program()
            with paddle.static.program_guard(main, startup):
                x = paddle.static.data("x", [-1, 3, 8, 8], "float32")
                r1 = paddle.nn.functional.relu(
                    paddle.nn.BatchNorm2D(8)(paddle.nn.Conv2D(3, 8, 3, padding=1, bias_attr=False)(x))
                )
                c2 = paddle.nn.Conv2D(8, 8, 3, padding=1, bias_attr=False)(r1)
                helper = paddle.base.layer_helper.LayerHelper("conv2_bias")
                b = helper.create_parameter(attr=None, shape=[8], dtype="float32", is_bias=True)
                c2b = helper.create_variable_for_type_inference("float32")
                helper.append_op(
                    type="elementwise_add", inputs={"X": c2, "Y": b}, outputs={"Out": c2b}, attrs={"axis": 1}
                )
                res = helper.create_variable_for_type_inference("float32")
                helper.append_op(
                    type="elementwise_add",
                    inputs={"X": c2b, "Y": r1},
                    outputs={"Out": res},
                    attrs={"axis": -1},
                )
                r2 = paddle.nn.functional.relu(res)
                logits = paddle.nn.Linear(512, 10)(paddle.flatten(r2, 1))
                am = paddle.base.layer_helper.LayerHelper("arg_max")
                idx = am.create_variable_for_type_inference(dtype="int64")
                am.append_op(
                    type="arg_max",
                    inputs={"X": logits},
                    outputs={"Out": idx},
                    attrs={"axis": -1, "keepdims": False, "flatten": False, "dtype": 3},
                )
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            scope = paddle.static.global_scope()
            for v in main.list_vars():
                if not v.persistable or v.name in ("feed", "fetch"):
                    continue
                t = scope.find_var(v.name).get_tensor()
                shape = np.array(t).shape
                if v.name.endswith(".w_2"):  # BN variance
                    val = rng.uniform(0.5, 1.5, shape)
                elif v.name.startswith("conv2d") or v.name.startswith("linear"):
                    val = rng.normal(0, 1.0 / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1), shape)
                    if v.name.startswith("linear") and len(shape) == 2:
                        val = rng.normal(0, 1.0 / np.sqrt(shape[0]), shape)
                else:
                    val = rng.uniform(-0.5, 0.5, shape)
                t.set(val.astype("float32"), paddle.CPUPlace())
            paddle.static.save_inference_model(
                str(dirname / "inference"), [x], [logits, idx], exe, program=main
            )
        finally:
            if was_dynamic:
                paddle.disable_static()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("model")
    _build_model(d)
    return d


def _program(model_dir: Path) -> fpb.ProgramDesc:
    p = fpb.ProgramDesc()
    p.ParseFromString((model_dir / "inference.pdmodel").read_bytes())
    return p


def _op_index(prog: fpb.ProgramDesc, op_type: str, nth: int = 0) -> int:
    return [i for i, op in enumerate(prog.blocks[0].ops) if op.type == op_type][nth]


def _out(op: fpb.OpDesc, slot: str) -> str:
    return next(v.arguments[0] for v in op.outputs if v.parameter == slot)


def _attr(op: fpb.OpDesc, name: str):
    for a in op.attrs:
        if a.name == name:
            return {0: a.i, 2: a.s, 3: list(a.ints), 6: a.b}.get(a.type)
    return None


def _reference(model_dir: Path, x: np.ndarray = X) -> list[np.ndarray]:
    cfg = inference.Config(str(model_dir / "inference.pdmodel"), str(model_dir / "inference.pdiparams"))
    cfg.switch_ir_optim(False)
    cfg.disable_onednn()
    cfg.disable_glog_info()
    pred = inference.create_predictor(cfg)
    pred.get_input_handle("x").copy_from_cpu(x)
    pred.run()
    return [pred.get_output_handle(n).copy_to_cpu() for n in pred.get_output_names()]


def _opt(model_dir: Path, out: Path, targets: str, model_type: str = "naive_buffer") -> Path:
    o = lite.Opt()
    o.set_model_file(str(model_dir / "inference.pdmodel"))
    o.set_param_file(str(model_dir / "inference.pdiparams"))
    o.set_valid_places(targets)
    o.set_model_type(model_type)
    o.set_optimize_out(str(out))
    o.run()
    return Path(str(out) + ".nb") if model_type == "naive_buffer" else out


def _run(nb: Path, precision=None, runs: int = 1, x: np.ndarray = X) -> list[list[np.ndarray]]:
    cfg = lite.MobileConfig()
    cfg.set_model_from_file(str(nb))
    if precision is not None:
        cfg.set_opencl_precision(precision)
    pred = lite.create_paddle_predictor(cfg)
    results = []
    for _ in range(runs):
        pred.get_input(0).from_numpy(x)
        pred.run()
        results.append([pred.get_output(i).numpy() for i in range(len(pred.get_output_names()))])
    return results


def _optimized_ops(pb_dir: Path) -> list[fpb.OpDesc]:
    p = fpb.ProgramDesc()
    p.ParseFromString((pb_dir / "model").read_bytes())
    return list(p.blocks[0].ops)


@pytest.fixture(scope="module")
def nbs(model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("nb")
    return {"arm": _opt(model, d / "m_arm", "arm"), "opencl": _opt(model, d / "m_cl", "opencl,arm")}


FP32 = lite.CLPrecisionType.CL_PRECISION_FP32
FP16 = lite.CLPrecisionType.CL_PRECISION_FP16


# ---------------------------------------------------------------- opt


def test_opt_writes_nb_with_version(nbs: dict[str, Path]) -> None:
    import zipfile

    for target, nb in nbs.items():
        assert nb.is_file() and nb.suffix == ".nb"
        meta = json.loads(zipfile.ZipFile(nb).read("sim_nb.json"))
        assert meta["opt_version"] == lite.Opt().version()
        assert meta["valid_targets"][0] == target


def test_protobuf_shows_fusion_and_glue(model: Path, tmp_path: Path) -> None:
    prog = _program(model)
    conv1, bn, relu1 = _op_index(prog, "conv2d"), _op_index(prog, "batch_norm"), _op_index(prog, "relu")
    ops = _optimized_ops(_opt(model, tmp_path / "pb_cl", "opencl", "protobuf"))
    assert (tmp_path / "pb_cl" / "params").is_file()
    types = [op.type for op in ops]
    assert "batch_norm" not in types and "matmul_v2" not in types
    conv = next(op for op in ops if op.type == "conv2d" and _attr(op, "with_act"))
    assert _attr(conv, "__sim_fused_from") == [conv1, bn, relu1]
    assert _attr(conv, "act_type") == "relu" and _attr(conv, "__sim_place") == "opencl"
    assert _attr(conv, "__@kernel_type_attr@__") == "conv2d/image2d/5/5/4"
    conv2 = [op for op in ops if op.type == "conv2d"][1]
    assert len(_attr(conv2, "__sim_fused_from")) == 2  # conv + elementwise_add(bias)
    assert "fusion_elementwise_add_activation" in types and "fc" in types
    assert types[:3] == ["feed", "io_copy", "layout"]  # host -> OpenCL image before the first OpenCL op
    am = next(op for op in ops if op.type == "arg_max")  # keepdims=False: moved to the CPU
    assert _attr(am, "__sim_place") == "arm"
    k = types.index("arg_max")
    assert types[k - 2 : k] == ["layout", "io_copy"]
    # flatten is folded into the fc (lite_flatten_fc_fuse_pass), so only the input and arg_max cross the boundary.
    assert "flatten_contiguous_range" not in types
    assert types.count("io_copy") == 2 and types[-1] == "fetch"

    arm_ops = _optimized_ops(_opt(model, tmp_path / "pb_arm", "arm", "protobuf"))
    assert "io_copy" not in [op.type for op in arm_ops]
    assert {_attr(op, "__sim_place") for op in arm_ops} <= {"arm", "host"}


def _with_extra_fetch(model: Path, dst: Path, var: str) -> Path:
    """A 'truncated' model: var becomes an extra fetch target (what a bisection tool does)."""
    prog = _program(model)
    block = prog.blocks[0]
    n_fetch = sum(op.type == "fetch" for op in block.ops)
    op = block.ops.add()
    op.type = "fetch"
    op.inputs.add(parameter="X", arguments=[var])
    op.outputs.add(parameter="Out", arguments=["fetch"])
    op.attrs.add(name="col", type=fpb.AttrType.INT, i=n_fetch)
    dst.mkdir()
    (dst / "inference.pdmodel").write_bytes(prog.SerializeToString())
    (dst / "inference.pdiparams").write_bytes((model / "inference.pdiparams").read_bytes())
    return dst


@pytest.fixture(scope="module")
def cut_model(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prog = _program(model)
    conv_out = _out(prog.blocks[0].ops[_op_index(prog, "conv2d")], "Output")
    return _with_extra_fetch(model, tmp_path_factory.mktemp("cut") / "m", conv_out)


def test_fetching_an_intermediate_removes_the_fusion(cut_model: Path, tmp_path: Path) -> None:
    prog = _program(cut_model)
    ops = _optimized_ops(_opt(cut_model, tmp_path / "pb", "opencl", "protobuf"))
    conv = next(op for op in ops if op.type == "conv2d")
    assert _attr(conv, "__sim_fused_from") == [_op_index(prog, "conv2d")]
    assert not _attr(conv, "with_act")
    assert "batch_norm" in [op.type for op in ops] and "relu" in [op.type for op in ops]


def _with_identity_scale(model: Path, dst: Path) -> tuple[Path, str, str]:
    """The logits fetch goes through scale(1, 0), like Paddle 2.x jit.save's save_infer_model/scale_N."""
    prog = _program(model)
    block = prog.blocks[0]
    fetch = next(op for op in block.ops if op.type == "fetch" and _attr(op, "col") == 0)
    logits = fetch.inputs[0].arguments[0]
    out = "save_infer_model/scale_0.tmp_0"
    var = block.vars.add()
    var.CopyFrom(next(v for v in block.vars if v.name == logits))
    var.name = out
    del fetch.inputs[0].arguments[:]
    fetch.inputs[0].arguments.append(out)
    scale = fpb.OpDesc(type="scale")
    scale.inputs.add(parameter="X", arguments=[logits])
    scale.outputs.add(parameter="Out", arguments=[out])
    scale.attrs.add(name="scale", type=fpb.AttrType.FLOAT, f=1.0)
    scale.attrs.add(name="bias", type=fpb.AttrType.FLOAT, f=0.0)
    scale.attrs.add(name="bias_after_scale", type=fpb.AttrType.BOOLEAN, b=True)
    ops = list(block.ops)
    k = ops.index(fetch)
    del block.ops[:]
    block.ops.extend([*ops[:k], scale, *ops[k:]])
    dst.mkdir()
    (dst / "inference.pdmodel").write_bytes(prog.SerializeToString())
    (dst / "inference.pdiparams").write_bytes((model / "inference.pdiparams").read_bytes())
    return dst, logits, out


def test_identity_scale_before_fetch_is_removed(model: Path, tmp_path: Path) -> None:
    scaled, logits, _ = _with_identity_scale(model, tmp_path / "scaled")
    prog = _program(scaled)
    ops = _optimized_ops(_opt(scaled, tmp_path / "pb", "opencl", "protobuf"))
    assert "scale" not in [op.type for op in ops]
    fc = next(op for op in ops if op.type == "fc")
    assert _attr(fc, "__sim_eliminated") == [_op_index(prog, "scale")]
    cfg = lite.MobileConfig()
    cfg.set_model_from_file(str(_opt(scaled, tmp_path / "cl", "opencl")))
    cfg.set_opencl_precision(FP32)
    pred = lite.create_paddle_predictor(cfg)
    # remove_scale1_pass rewires the fetch to the scale's input: Lite reports another name than Paddle's.
    assert pred.get_output_names()[0] == f"{logits}/target_trans"
    pred.get_input(0).from_numpy(X)
    pred.run()
    np.testing.assert_allclose(pred.get_output(0).numpy(), _reference(scaled)[0], rtol=0, atol=1e-6)


# ---------------------------------------------------------------- execution


def test_arm_equals_paddle_inference_exactly(model: Path, nbs: dict[str, Path]) -> None:
    ref = _reference(model)
    (out,) = _run(nbs["arm"])
    assert len(out) == 2
    for a, b in zip(out, ref, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_opencl_precisions(model: Path, nbs: dict[str, Path]) -> None:
    ref = _reference(model)
    (fp32,) = _run(nbs["opencl"], FP32)
    np.testing.assert_allclose(fp32[0], ref[0], rtol=0, atol=1e-6)
    (fp16,) = _run(nbs["opencl"], FP16)
    (auto,) = _run(nbs["opencl"])  # AUTO = fp16 on an fp16-capable GPU
    err = np.abs(fp16[0] - ref[0]).max()
    assert 1e-5 < err < 2e-2, err
    assert np.array_equal(auto[0], fp16[0])


def test_api_surface(nbs: dict[str, Path]) -> None:
    assert lite.CLPrecisionType.CL_PRECISION_FP16.value == 2 and int(lite.CLTuneMode.CL_TUNE_NORMAL) == 2
    assert lite.PowerMode.LITE_POWER_NO_BIND.value == 3 and lite.TargetType.OpenCL.value == 5
    assert lite.Place(lite.TargetType.ARM, percision=lite.PrecisionType.FP32).is_valid()
    cfg = lite.MobileConfig()
    cfg.set_model_from_buffer(nbs["opencl"].read_bytes())
    cfg.set_threads(2)
    cfg.set_power_mode(lite.PowerMode.LITE_POWER_HIGH)
    cfg.set_opencl_tune(lite.CLTuneMode.CL_TUNE_NONE, "", "", 4)
    with pytest.raises(TypeError):
        cfg.set_opencl_tune(lite.CLTuneMode.CL_TUNE_NONE, "", "")  # the bindings declare no defaults
    with pytest.raises(TypeError):
        cfg.set_opencl_precision(1)  # pybind enums do not accept ints
    pred = lite.create_paddle_predictor(cfg)
    assert pred.get_input_names() == ["x"]
    names = pred.get_output_names()
    # A fetch of an OpenCL tensor reads the io_copy output; arg_max ran on the CPU, so its name is plain.
    assert names[0].endswith("/target_trans") and not names[1].endswith("/target_trans")
    t = pred.get_input_by_name("x")
    t.from_numpy(X)
    assert t.shape() == [2, 3, 8, 8] and t.precision() == lite.PrecisionType.FP32
    pred.run()
    assert pred.get_output_by_name(names[1]).numpy().dtype == np.int64
    assert pred.get_output_by_name("nope") is None
    assert pred.get_version() == lite.Opt().version()


# ---------------------------------------------------------------- faults


def _faulty(
    monkeypatch: pytest.MonkeyPatch,
    nb: Path,
    faults: list[dict],
    precision=FP32,
    runs: int = 1,
    x: np.ndarray = X,
) -> list[list[np.ndarray]]:
    monkeypatch.setenv("PADDLELITE_SIM_FAULTS", json.dumps(faults))
    try:
        return _run(nb, precision, runs, x)
    finally:
        monkeypatch.delenv("PADDLELITE_SIM_FAULTS")


@pytest.mark.parametrize(
    "fault",
    [
        {"op_type": "conv2d", "kind": "offset", "value": 0.5},
        {"op_type": "conv2d", "kind": "scale", "value": 1.5},
        {"op_type": "conv2d", "kind": "zero_channel", "channel": 3},
        {"op_type": "conv2d", "kind": "transpose_hw"},
        {"op_type": "conv2d", "kind": "border", "value": 1.0},
        {"op_type": "fc", "kind": "offset"},
        {"op_type": "fusion_elementwise_add_activation", "kind": "scale", "value": 0.5},
    ],
)
def test_data_faults_change_output(
    monkeypatch: pytest.MonkeyPatch, nbs: dict[str, Path], fault: dict
) -> None:
    (clean,) = _run(nbs["opencl"], FP32)
    (bad,) = _faulty(monkeypatch, nbs["opencl"], [dict(fault, place="opencl")])
    assert not np.allclose(bad[0], clean[0], atol=1e-4)
    (arm,) = _faulty(monkeypatch, nbs["arm"], [dict(fault, place="opencl")])
    (arm_clean,) = _run(nbs["arm"])
    assert np.array_equal(arm[0], arm_clean[0])  # an OpenCL kernel bug does not touch the ARM build


def test_nan_fault(monkeypatch: pytest.MonkeyPatch, nbs: dict[str, Path]) -> None:
    # (a NaN inside the conv stack would be squashed by the next relu, as max(x, 0) does on both backends)
    (bad,) = _faulty(
        monkeypatch, nbs["opencl"], [{"op_type": "fc", "kind": "nan", "place": "opencl", "index": 3}]
    )
    assert np.isnan(bad[0]).sum() == 1 and np.isnan(bad[0].reshape(-1)[3])


def test_int64_garbage_on_cpu_fallback(monkeypatch: pytest.MonkeyPatch, nbs: dict[str, Path]) -> None:
    (clean,) = _run(nbs["opencl"], FP32)
    (bad,) = _faulty(
        monkeypatch, nbs["opencl"], [{"op_type": "arg_max", "kind": "int64_garbage", "place": "arm"}]
    )
    assert np.array_equal(bad[0], clean[0]) and not np.array_equal(bad[1], clean[1])
    assert bad[1].dtype == np.int64 and (bad[1] > 2**31).all()


def test_second_run_fault(monkeypatch: pytest.MonkeyPatch, nbs: dict[str, Path]) -> None:
    (clean,) = _run(nbs["opencl"], FP32)
    first, second, third = _faulty(
        monkeypatch, nbs["opencl"], [{"op_type": "fc", "kind": "second_run", "place": "opencl"}], runs=3
    )
    assert np.array_equal(first[0], clean[0])
    assert not np.allclose(second[0], clean[0]) and np.array_equal(second[0], third[0])


def test_when_fused_fault_follows_the_fusion(
    monkeypatch: pytest.MonkeyPatch, nbs: dict[str, Path], cut_model: Path, tmp_path: Path
) -> None:
    fault = [
        {
            "op_type": "conv2d",
            "kind": "offset",
            "place": "opencl",
            "when_fused": "fused",
            "match_attrs": {"with_act": True},
        }
    ]
    (clean,) = _run(nbs["opencl"], FP32)
    (bad,) = _faulty(monkeypatch, nbs["opencl"], fault)
    assert not np.allclose(bad[0], clean[0], atol=1e-4)
    cut_nb = _opt(cut_model, tmp_path / "cut", "opencl")
    (cut_clean,) = _run(cut_nb, FP32)
    (cut_bad,) = _faulty(monkeypatch, cut_nb, fault)
    for a, b in zip(
        cut_bad, cut_clean, strict=True
    ):  # conv+bn+relu is no longer fused: the fused-kernel bug is hidden
        assert np.array_equal(a, b)
    assert np.array_equal(cut_clean[0], clean[0])


def test_memory_config_moves_op_to_arm(monkeypatch: pytest.MonkeyPatch, model: Path, tmp_path: Path) -> None:
    prog = _program(model)
    relu_out = _out(prog.blocks[0].ops[_op_index(prog, "relu")], "Out")
    cfg = tmp_path / "mem.txt"
    cfg.write_text(f"device:cpu\nconv2d:x:{relu_out}\n")
    monkeypatch.setenv("OPENCL_MEMORY_CONFIG_FILE", str(cfg))
    ops = _optimized_ops(_opt(model, tmp_path / "pb", "opencl", "protobuf"))
    nb = _opt(model, tmp_path / "cl", "opencl")
    monkeypatch.delenv("OPENCL_MEMORY_CONFIG_FILE")
    conv = next(op for op in ops if op.type == "conv2d" and _attr(op, "with_act"))
    assert _attr(conv, "__sim_place") == "arm"
    assert [op.type for op in ops][:2] == ["feed", "conv2d"]  # no io_copy before a CPU conv
    fault = [{"op_type": "conv2d", "kind": "offset", "place": "opencl", "match_attrs": {"with_act": True}}]
    (clean,) = _run(nb, FP32)
    (bad,) = _faulty(monkeypatch, nb, fault)
    assert np.array_equal(bad[0], clean[0])


def test_glue_fault_only_hits_the_boundary(monkeypatch: pytest.MonkeyPatch, nbs: dict[str, Path]) -> None:
    d2h = {"__@kernel_type_attr@__": "io_copy/device_to_host/5/4/2"}
    (clean,) = _run(nbs["opencl"], FP32)
    (bad,) = _faulty(
        monkeypatch, nbs["opencl"], [{"op_type": "io_copy", "kind": "offset", "match_attrs": d2h}]
    )
    assert not np.allclose(
        bad[0], clean[0], atol=1e-3
    )  # flatten (CPU) read a corrupted copy of the conv output


def test_crash_fault_aborts(nbs: dict[str, Path]) -> None:
    code = (
        "import sys, numpy as np; from paddlelite import lite\n"
        "c = lite.MobileConfig(); c.set_model_from_file(sys.argv[1])\n"
        "p = lite.create_paddle_predictor(c); p.get_input(0).from_numpy(np.zeros((1, 3, 8, 8), 'float32'))\n"
        "print('before run', flush=True); p.run(); print('after run')\n"
    )
    env = dict(
        os.environ,
        PYTHONPATH=str(SIM),
        PADDLELITE_SIM_FAULTS=json.dumps([{"op_type": "fc", "kind": "crash", "place": "opencl"}]),
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(nbs["opencl"])], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == -signal.SIGABRT, r.stderr
    assert "before run" in r.stdout and "after run" not in r.stdout and "Check failed" in r.stderr
    r = subprocess.run(
        [sys.executable, "-c", code, str(nbs["arm"])], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "after run" in r.stdout


def test_bad_fault_config_is_rejected(monkeypatch: pytest.MonkeyPatch, nbs: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        _faulty(monkeypatch, nbs["arm"], [{"op_type": "conv2d", "kind": "bogus"}])


# ---------------------------------------------------------------- failures


def test_version_mismatch_is_fatal(monkeypatch: pytest.MonkeyPatch, nbs: dict[str, Path]) -> None:
    monkeypatch.setenv("PADDLELITE_SIM_FATAL", "raise")
    monkeypatch.setenv("PADDLELITE_SIM_VERSION", "v9.9")
    with pytest.raises(LiteFatalError, match=r"kernels\.end"):
        _run(nbs["arm"])


def test_pir_json_model_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PADDLELITE_SIM_FATAL", "raise")
    (tmp_path / "inference.json").write_text('{"base_code": {"magic": "pir"}, "program": {}}')
    (tmp_path / "inference.pdiparams").write_bytes(b"")
    o = lite.Opt()
    o.set_model_dir(str(tmp_path))
    o.set_valid_places("opencl")
    o.set_optimize_out(str(tmp_path / "out"))
    with pytest.raises(LiteFatalError, match="Unsupported model format"):
        o.run()
    o.set_model_file(str(tmp_path / "inference.json"))
    o.set_param_file(str(tmp_path / "inference.pdiparams"))
    with pytest.raises(LiteFatalError, match="PIR"):
        o.run()


def test_opt_cli_script(model: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHON=sys.executable)
    r = subprocess.run(
        [
            str(OPT_SCRIPT),
            f"--model_dir={model}",
            "--valid_targets=opencl,arm",
            f"--optimize_out={tmp_path / 'cli'}",
            "--enable_fp16=true",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli.nb").is_file() and "successfully" in r.stdout
    r = subprocess.run(
        [
            str(OPT_SCRIPT),
            f"--model_dir={model}",
            "--optimize_out_type=protobuf",
            f"--optimize_out={tmp_path / 'clipb'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        r.returncode == 0
        and (tmp_path / "clipb" / "model").is_file()
        and (tmp_path / "clipb" / "params").is_file()
    )
    r = subprocess.run([str(OPT_SCRIPT), "--version"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == lite.Opt().version()
    r = subprocess.run(
        [str(OPT_SCRIPT), "--valid_targets=bogus"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == -signal.SIGABRT and "Wrong target" in r.stderr
