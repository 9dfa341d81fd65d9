"""The `fp16` (OpenCL fp16 emulation) and `onnxruntime` engines, run end to end through worker processes.

Models: a small legacy model built here (conv2d+bn+relu, linear/matmul_v2, second feed, layer_norm, softmax; two
fetches), the same model with its fetch cols swapped (paddle2onnx numbers outputs by op order, not col), and every
directory under fixtures/ (a broken fixture directory fails loudly; a missing fixtures/ only drops those cases).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bisect_lite.cache import Cache
from bisect_lite.engines.registry import create_engine
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.errors import InputError
from bisect_lite.model import Model, load_model, truncate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
FIXTURE_DIRS = (
    sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if FIXTURES.is_dir()
    else []
)
OWN = ["own", "own_swapped"]
FP16_MAX = 65504.0


# ---- models ---------------------------------------------------------------------------------------------------
def _build_own_model(paddle, out_dir: Path) -> None:
    """A legacy program with every op family the engines must handle, weights calibrated to unit-scale outputs."""
    rng = np.random.default_rng(7)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup), paddle.utils.unique_name.guard():
        x = paddle.static.data("x", [-1, 3, 8, 8], "float32")
        y = paddle.static.data("y", [-1, 16], "float32")
        conv, bn = paddle.nn.Conv2D(3, 8, 3, padding=1), paddle.nn.BatchNorm2D(8)
        lin, norm = paddle.nn.Linear(8 * 64, 16), paddle.nn.LayerNorm(16)
        bn.eval()
        relu = paddle.nn.functional.relu(bn(conv(x)))
        out = paddle.nn.functional.softmax(norm(lin(paddle.flatten(relu, 1)) + y))
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe = paddle.static.Executor(paddle.CPUPlace())
        exe.run(startup)
        # Random BN stats and non-trivial biases/affine params (zeros and ones are exact in fp16 and would hide
        # whether a tensor was rounded).
        for param, value in [
            (bn.weight, rng.uniform(0.5, 2.0, 8)),
            (bn.bias, rng.normal(0, 0.5, 8)),
            (bn._mean, rng.normal(0, 0.1, 8)),
            (bn._variance, rng.uniform(0.05, 0.3, 8)),
            (conv.bias, rng.normal(0, 0.1, 8)),
            (lin.bias, rng.normal(0, 0.1, 16)),
            (norm.weight, rng.uniform(0.5, 1.5, 16)),
            (norm.bias, rng.normal(0, 0.3, 16)),
        ]:
            scope.find_var(param.name).get_tensor().set(value.astype("float32"), paddle.CPUPlace())
        paddle.static.save_inference_model(str(out_dir / "model"), [x, y], [out, relu], exe, program=main)


def _swap_fetch_cols(model: Model) -> Model:
    """Same program, fetch cols reversed while the fetch ops keep their order."""
    swapped = Model.from_bytes(model.program_bytes(), dict(model.params))
    fetch_ops = [od for od in swapped.block.ops if od.type == "fetch"]
    for od in fetch_ops:
        for attr in od.attrs:
            if attr.name == "col":
                attr.i = len(fetch_ops) - 1 - attr.i
    return Model.from_bytes(swapped.program_bytes(), swapped.params)


@pytest.fixture(scope="module")
def own_dir(paddle, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("own_model")
    _build_own_model(paddle, out)
    return out


def _own_inputs(scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "x": (rng.standard_normal((2, 3, 8, 8)) * scale).astype(np.float32),
        "y": rng.standard_normal((2, 16)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def models(own_dir) -> dict[str, tuple[Model, dict[str, np.ndarray]]]:
    own = load_model(own_dir)
    return {"own": (own, _own_inputs()), "own_swapped": (_swap_fetch_cols(own), _own_inputs())}


def get_model(models, name: str) -> tuple[Model, dict[str, np.ndarray]]:
    if name in models:
        return models[name]
    directory = FIXTURES / name
    model = load_model(directory)  # a broken fixture directory fails here, loudly
    with np.load(directory / "inputs.npz", allow_pickle=False) as data:
        inputs = {k: data[k] for k in data.files}
    assert set(inputs) == set(model.feeds), f"{directory}/inputs.npz does not match the model's feeds"
    return model, inputs


# ---- runners (one worker per engine spec for the whole module) ---------------------------------------------------
@pytest.fixture(scope="module")
def cache():
    c = Cache(results=False)
    yield c
    c.close()


def _runner(cache, spec: str):
    runner = EngineRunner(spec, cache)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def paddle_runner(cache):
    yield from _runner(cache, "paddle")


@pytest.fixture(scope="module")
def ort_runner(cache):
    yield from _runner(cache, "onnxruntime")


@pytest.fixture(scope="module")
def fp16_runner(cache):
    yield from _runner(cache, "fp16")


def run_ok(runner: EngineRunner, model: Model, inputs) -> dict[str, np.ndarray]:
    result = runner.run(model, inputs)
    assert result.ok, f"{runner.spec}: {result.status}: {result.message}"
    assert list(result.outputs) == list(model.fetches)
    return result.outputs


def max_rel(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = a.astype(np.float64), ref.astype(np.float64)
    return float(np.abs(a - ref).max() / max(float(np.abs(ref).max()), 1e-30))


def is_fp16(a: np.ndarray) -> bool:
    """Every value exactly representable in half precision (inf/NaN included)."""
    with np.errstate(over="ignore"):
        return bool(np.array_equal(a, a.astype(np.float16).astype(np.float32), equal_nan=True))


def comparable_tensors(model: Model) -> list[str]:
    # paddle2onnx does not export layer_norm's Mean/Variance (see test_ort_reports_unexported_outputs).
    stats = {
        n for op in model.ops if op.type == "layer_norm" for s in ("Mean", "Variance") for n in op.outputs.get(s, [])
    }
    return [name for _, name in model.data_tensors() if name not in stats]


# ---- onnxruntime ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OWN + FIXTURE_DIRS)
def test_ort_matches_paddle(name, models, paddle_runner, ort_runner):
    model, inputs = get_model(models, name)
    ref, got = run_ok(paddle_runner, model, inputs), run_ok(ort_runner, model, inputs)
    for fetch in model.fetches:
        assert got[fetch].shape == ref[fetch].shape and got[fetch].dtype == ref[fetch].dtype, fetch
        if ref[fetch].dtype.kind == "f":
            assert max_rel(got[fetch], ref[fetch]) < 1e-4, fetch
        else:
            assert np.array_equal(got[fetch], ref[fetch]), fetch


@pytest.mark.parametrize("name", ["own", *FIXTURE_DIRS])
def test_ort_matches_paddle_on_every_intermediate(name, models, paddle_runner, ort_runner):
    model, inputs = get_model(models, name)
    wide = truncate(model, comparable_tensors(model))  # many outputs: exercises the fetch_name_N mapping
    ref, got = run_ok(paddle_runner, wide, inputs), run_ok(ort_runner, wide, inputs)
    for fetch in wide.fetches:
        if ref[fetch].dtype.kind == "f":
            assert max_rel(got[fetch], ref[fetch]) < 1e-4, fetch
        else:
            assert np.array_equal(got[fetch], ref[fetch]), fetch


def test_ort_reports_unexported_outputs(models, ort_runner):
    model, inputs = models["own"]
    mean = next(op for op in model.ops if op.type == "layer_norm").outputs["Mean"][0]
    result = ort_runner.run(truncate(model, [mean]), inputs)
    assert result.status == "crash"
    assert mean in result.message and "paddle2onnx" in result.message


def test_ort_conversion_is_cached(models, ort_runner):
    model, inputs = models["own"]
    run_ok(ort_runner, model, inputs)
    onnx_file = ort_runner.cache.prepared_dir(model, ort_runner.engine.cache_key()) / "model.onnx"
    assert onnx_file.is_file()
    before = onnx_file.stat()
    ort_runner.worker.stop()  # a fresh worker must load the model again, from the cached file
    result = ort_runner.run(model, inputs)
    assert result.ok, result.message
    after = onnx_file.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_ort_conversion_failure_is_a_crash_verdict(models, ort_runner):
    model, inputs = models["own"]
    bad = Model.from_bytes(model.program_bytes(), dict(model.params))
    next(od for od in bad.block.ops if od.type == "softmax").type = "no_such_op"
    bad = Model.from_bytes(bad.program_bytes(), bad.params)
    result = ort_runner.run(bad, inputs)
    assert result.status == "crash"
    assert "paddle2onnx cannot convert" in result.message and "no_such_op" in result.message
    assert ort_runner.run(model, inputs).ok  # the worker survives a failed conversion


def test_export_onnx_naming(own_dir, models, tmp_path):
    import onnx

    from bisect_lite.engines.onnxruntime import export_onnx

    out = tmp_path / "repro" / "model.onnx"
    export_onnx(own_dir, out)
    graph = onnx.load(str(out)).graph
    model = models["own"][0]
    assert sorted(i.name for i in graph.input) == sorted(model.feeds)  # feed names kept (order is not)
    assert [o.name for o in graph.output] == [f"fetch_name_{i}" for i in range(len(model.fetches))]
    with pytest.raises(RuntimeError, match="opset"):
        export_onnx(own_dir, tmp_path / "x.onnx", opset=99)


def test_export_onnx_failure(models, tmp_path):
    from bisect_lite.engines.onnxruntime import export_onnx
    from bisect_lite.model import save_model

    model = models["own"][0]
    bad = Model.from_bytes(model.program_bytes(), dict(model.params))
    next(od for od in bad.block.ops if od.type == "relu").type = "no_such_op"
    save_model(Model.from_bytes(bad.program_bytes(), bad.params), tmp_path / "bad")
    with pytest.raises(RuntimeError, match="no_such_op"):
        export_onnx(tmp_path / "bad", tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()


# ---- fp16 -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OWN + FIXTURE_DIRS)
def test_fp16_close_to_paddle(name, models, paddle_runner, fp16_runner):
    model, inputs = get_model(models, name)
    ref, got = run_ok(paddle_runner, model, inputs), run_ok(fp16_runner, model, inputs)
    for fetch in model.fetches:
        assert got[fetch].shape == ref[fetch].shape and got[fetch].dtype == ref[fetch].dtype, fetch
        assert np.isfinite(ref[fetch]).all()
        if ref[fetch].dtype.kind != "f":
            assert np.array_equal(got[fetch], ref[fetch]), fetch  # e.g. arg_max: the class must not flip
        elif name == "fp16_overflow":  # built so that reduce_sum exceeds 65504
            assert not np.isfinite(got[fetch]).all(), fetch
        else:
            assert np.isfinite(got[fetch]).all(), fetch
            assert is_fp16(got[fetch]), f"{fetch} was not rounded at its producer"
            assert 1e-5 < max_rel(got[fetch], ref[fetch]) < 5e-2, fetch


def test_fp16_overflow_fixture_first_nonfinite(models, fp16_runner):
    if "fp16_overflow" not in FIXTURE_DIRS:
        pytest.skip("fixtures/fp16_overflow is not there")
    model, inputs = get_model(models, "fp16_overflow")
    names = [name for _, name in model.data_tensors()]
    got = run_ok(fp16_runner, truncate(model, names), inputs)
    first = next(n for n in names if got[n].dtype.kind == "f" and not np.isfinite(got[n]).all())
    assert first == "reduce_sum_0.tmp_0"


def test_fp16_overflow_on_large_inputs(probe, paddle_runner, fp16_runner):
    model, _ = probe
    inputs = _own_inputs(scale=1e5)  # |x| > 0.66 becomes > 65504: inf as soon as the feed is stored as half
    assert np.abs(inputs["x"]).max() > FP16_MAX
    ref, got = run_ok(paddle_runner, model, inputs), run_ok(fp16_runner, model, inputs)
    assert all(np.isfinite(ref[fetch]).all() for fetch in model.fetches)
    first = next(fetch for fetch in model.fetches if not np.isfinite(got[fetch]).all())
    # The conv2d reading the overflowed feed is the first bad tensor (NaN: +inf and -inf terms meet in its sums).
    assert first == model.ops[0].outputs["Output"][0]


@pytest.fixture(scope="module")
def probe(models):
    """The own model cut so that every intermediate tensor is fetched."""
    model, inputs = models["own"]
    return truncate(model, comparable_tensors(model)), inputs


@pytest.mark.parametrize(
    "spec, rounded",
    [
        ("fp16:ops=conv2d,weights=keep", {"conv2d"}),  # rounded weights would make e.g. a reshaped bias exact
        ("fp16:skip=conv2d+softmax,weights=keep", "all but conv2d softmax"),
    ],
)
def test_fp16_ops_and_skip_select_tensors(spec, rounded, cache, probe):
    model, inputs = probe
    with EngineRunner(spec, cache) as runner:
        got = run_ok(runner, model, inputs)
    by_type = {name: op.type for op in model.ops for name in op.data_outputs()}
    for fetch in model.fetches:
        op_type = by_type[fetch]
        expected = op_type in rounded if isinstance(rounded, set) else op_type not in {"conv2d", "softmax"}
        assert is_fp16(got[fetch]) == expected, f"{spec}: {fetch} ({op_type})"


def test_fp16_skip_everything_equals_paddle(cache, probe, paddle_runner):
    model, inputs = probe
    every = sorted({op.type for op in model.ops} | {"feed"})
    with EngineRunner(f"fp16:skip={'+'.join(every)},weights=keep", cache) as runner:
        got = run_ok(runner, model, inputs)
    ref = run_ok(paddle_runner, model, inputs)
    for fetch in model.fetches:
        assert np.array_equal(got[fetch], ref[fetch]), fetch


def test_fp16_weights_option(cache, models, paddle_runner, fp16_runner):
    """ops=none rounds only the weights; weights=keep on top of it is the fp32 model again."""
    model, inputs = models["own"]
    ref = run_ok(paddle_runner, model, inputs)
    with EngineRunner("fp16:ops=none", cache) as runner:
        weights_only = run_ok(runner, model, inputs)
    for fetch in model.fetches:
        assert 0 < max_rel(weights_only[fetch], ref[fetch]) < 1e-2
    prepared = cache.prepared_dir(model, create_engine("fp16:ops=none").cache_key()) / "fp16-model"
    rewritten = load_model(prepared)
    assert not any(op.type == "cast" for op in rewritten.ops)
    assert all(is_fp16(arr) for name, arr in rewritten.params.items() if arr.dtype == np.float32), (
        "weights were not rounded"
    )


def test_fp16_rewrite_keeps_names(cache, models, fp16_runner):
    model, inputs = models["own"]
    run_ok(fp16_runner, model, inputs)
    rewritten = load_model(cache.prepared_dir(model, fp16_runner.engine.cache_key()) / "fp16-model")
    assert rewritten.feeds == model.feeds and rewritten.fetches == model.fetches
    casts = [op for op in rewritten.ops if op.type == "cast"]
    # Two casts per float activation (feeds + every data output of every op).
    float_outputs = [n for _, n in model.data_tensors() if model.vars[n].dtype == "float32"]
    assert len(casts) == 2 * (len(model.feeds) + len(float_outputs))
    conv = next(op for op in rewritten.ops if op.type == "conv2d")
    out = conv.outputs["Output"][0]
    assert out.endswith("@fp32") and rewritten.vars[out].dtype == "float32"
    assert rewritten.vars[out.replace("@fp32", "@fp16")].dtype == "float16"


@pytest.mark.parametrize(
    "spec",
    [
        "fp16:weights=maybe",
        "fp16:ops=",
        "fp16:ops=conv2d+",
        "fp16:skip=relu;x",
        "fp16:skip=all",
        "fp16:threads=0",
        "fp16:threads=two",
        "fp16:colour=red",
        "onnxruntime:opset=abc",
        "onnxruntime:opset=99",
        "onnxruntime:threads=0",
        "onnxruntime:fast",
    ],
)
def test_bad_options(spec):
    with pytest.raises(InputError):
        create_engine(spec)


def test_versions_and_availability():
    from bisect_lite.engines.fp16 import Fp16Engine
    from bisect_lite.engines.onnxruntime import OnnxRuntimeEngine

    assert Fp16Engine.unavailable_reason() is None and OnnxRuntimeEngine.unavailable_reason() is None
    assert create_engine("onnxruntime").version().startswith("onnxruntime ")
    assert "/ paddle2onnx " in create_engine("onnxruntime").version()
    assert "paddlepaddle" in create_engine("fp16").version()
    # Different options are different engines: their prepared models and results must not be shared.
    assert create_engine("fp16").cache_key() != create_engine("fp16:weights=keep").cache_key()
    assert json.dumps(create_engine("fp16:ops=conv2d").facts())
