"""The engine interface: spec grammar, registry, worker isolation, the cmd protocol, paddle-opt, caching, inputs."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_NAMES, FIXTURES, load_fixture_inputs, require, run_cli

from bisect_lite.cache import Cache
from bisect_lite.engines.registry import (
    create_engine,
    default_tolerance,
    list_engines,
    real_kernels_problem,
    resolve_engines,
)
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.engines.spec import EngineSpec, parse_spec
from bisect_lite.errors import InputError
from bisect_lite.inputs import generate_inputs, load_inputs, parse_shapes
from bisect_lite.model import load_model, truncate

PROTOCOL_SCRIPT = textwrap.dedent("""
    # A cmd engine honouring the protocol: Paddle Inference on {model_dir}, names from {io}.
    import json, sys, numpy as np, paddle.inference as pi
    model_dir, inputs, outputs, io = sys.argv[1:5]
    spec = json.load(open(io))
    config = pi.Config(model_dir + "/model.pdmodel", model_dir + "/model.pdiparams")
    config.switch_ir_optim(False); config.disable_onednn(); config.disable_glog_info()
    pred = pi.create_predictor(config)
    data = np.load(inputs)
    for name in spec["feeds"]:
        pred.get_input_handle(name).copy_from_cpu(data[name])
    pred.run()
    mode = sys.argv[5] if len(sys.argv) > 5 else "ok"
    fetches = spec["fetches"][:-1] if mode == "incomplete" else spec["fetches"]
    np.savez(outputs, **{n: pred.get_output_handle(n).copy_to_cpu() for n in fetches})
""")


# ---- spec grammar and registry ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("paddle", EngineSpec("paddle")),
        ("paddle-opt:threads=2", EngineSpec("paddle-opt", (), (("threads", "2"),))),
        ("lite:opencl,precision=fp32,adb", EngineSpec("lite", ("opencl", "adb"), (("precision", "fp32"),))),
        ("cmd:run.sh a,b:c {inputs}", EngineSpec("cmd", (), (("template", "run.sh a,b:c {inputs}"),))),
    ],
)
def test_spec_grammar(text, expected):
    spec = parse_spec(text)
    assert spec == expected
    assert parse_spec(str(spec)) == spec  # canonical form round-trips


@pytest.mark.parametrize("text", ["", "lite:", "bad name", "paddle:threads=1,threads=2", "paddle:=3", "cmd:"])
def test_bad_specs(text):
    with pytest.raises(InputError):
        parse_spec(text)


@pytest.mark.parametrize(
    "text", ["nosuch", "paddle:bogus=1", "fp16:weights=maybe", "paddle:threads=x", "cmd:run {nonsense}"]
)
def test_unknown_engines_and_options(text):
    with pytest.raises(InputError):
        create_engine(text).int_option("threads", 1)


def test_engines_command_lists_every_engine(capsys):
    code, out, _ = run_cli(["engines", "--json"], capsys)
    rows = json.loads(out)
    assert code == 0
    assert {r["name"] for r in rows} == {"paddle", "paddle-opt", "fp16", "onnxruntime", "cmd", "lite"}
    assert all(r["available"] or r["why_not"] for r in rows)
    assert {r["name"] for r in list_engines() if r["available"]} >= {"paddle", "fp16", "onnxruntime", "cmd"}


def test_without_real_kernels_the_defaults_are_paddle_and_fp16_and_say_why(tmp_path, monkeypatch):
    monkeypatch.setenv("BISECT_LITE_LITE_ENV", str(tmp_path / "none.json"))  # no provisioned Paddle-Lite
    ref, target, note = resolve_engines(None, None)
    assert (ref, target) == ("paddle", "fp16")
    assert note and "--ref paddle --target fp16" in note and "bisect-lite setup lite" in note
    assert resolve_engines(None, "onnxruntime")[:2] == ("paddle", "onnxruntime")
    assert resolve_engines("paddle", "fp16") == ("paddle", "fp16", None)  # nothing filled in: nothing to say


def test_a_target_that_is_not_paddle_lite_is_held_against_paddle_even_with_real_kernels():
    require(real_kernels_problem() is None, f"real ARM and OpenCL kernels are missing: {real_kernels_problem()}")
    assert resolve_engines(None, None)[:2] == ("lite:arm", "lite:opencl")
    ref, target, note = resolve_engines(None, "fp16")
    assert (ref, target) == ("paddle", "fp16") and note and "--ref paddle" in note
    assert resolve_engines(None, "lite:opencl,precision=fp32")[:2] == ("lite:arm", "lite:opencl,precision=fp32")
    assert resolve_engines("paddle", None)[:2] == ("paddle", "lite:opencl")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("paddle:threads=abc", "threads=abc is not an integer"),
        ("paddle-opt:threads=0", "threads=0 must be at least 1"),
        ("fp16:threads=-2", "threads=-2 must be at least 1"),
        ("onnxruntime:opset=x", "opset=x is not an integer"),
        ("onnxruntime:threads=0", "threads=0 must be at least 1"),
        ("lite:arm,runs=0", "runs=0 must be at least 1"),
        ("lite:opencl,tune=fast", "tune=fast is not one of"),
        ("lite:arm,lib=/nonexistent/libpaddle_light_api_shared.so", "is not a file"),
        ("lite:arm,memory_config=/nonexistent/config.txt", "is not a file"),
    ],
)
def test_engine_options_are_checked_when_the_spec_is_parsed(spec, message, capsys):
    with pytest.raises(InputError, match=message):
        create_engine(spec)
    # `run` refuses it in one line (exit 2) before anything runs: no output directory is made.
    code, _, err = run_cli(
        ["run", str(FIXTURES / "resnet"), "--ref", spec, "--target", "fp16", "--out", "/nonexistent/o"], capsys
    )
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and message in err, err


def test_a_lib_that_is_not_a_shared_library_is_bad_input(tmp_path):
    fake = tmp_path / "libpaddle_light_api_shared.so"
    fake.write_text("not ELF")
    with pytest.raises(InputError, match="not an ELF shared library"):
        create_engine(f"lite:opencl,lib={fake}")
    with pytest.raises(InputError, match="lib= runs the native runner"):
        create_engine(f"lite:arm,lib={sys.executable},python={sys.executable}")


def test_default_tolerance_follows_target_precision(tmp_path, monkeypatch):
    # Without real OpenCL here, lite:opencl is a phone's: precision=auto is fp16 there (lite_native tests PoCL's fp32).
    monkeypatch.setenv("BISECT_LITE_LITE_ENV", str(tmp_path / "none.json"))
    assert default_tolerance("fp16").atol > default_tolerance("paddle-opt").atol
    assert default_tolerance("lite:opencl") == default_tolerance("fp16")
    assert default_tolerance("lite:opencl,precision=fp32") == default_tolerance("onnxruntime")


# ---- worker isolation -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet():
    return load_model(FIXTURES / "resnet"), load_fixture_inputs("resnet")


def test_worker_timeout_and_death_are_verdicts_and_it_restarts(resnet):
    model, feeds = resnet
    with EngineRunner("paddle", timeout=60) as runner:
        assert runner.run(model, feeds).ok
        runner.timeout = 0.001
        timed_out = runner.run(model, feeds)
        assert timed_out.status == "timeout" and "no answer within" in timed_out.message
        runner.timeout = 60
        assert runner.run(model, feeds).ok  # a fresh worker
        os.kill(runner.worker.proc.pid, signal.SIGKILL)
        assert runner.run(model, feeds).ok  # dead between runs: restarted


def test_paddle_opt_returns_every_fetch_and_matches(resnet):
    """IR optimisation would drop fetched batch_norm outputs (batch_norm_act_fuse_pass) if not disabled."""
    model, feeds = resnet
    every = truncate(model, [t for _, t in model.data_tensors()])
    with EngineRunner("paddle") as ref, EngineRunner("paddle-opt") as opt:
        a, b = ref.run(every, feeds), opt.run(every, feeds)
    assert a.ok and b.ok, b.message
    assert set(b.outputs) == set(every.fetches)
    for name in every.fetches:
        np.testing.assert_allclose(b.outputs[name], a.outputs[name], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_paddle_opt_on_every_fixture(name):
    model, feeds = load_model(FIXTURES / name), load_fixture_inputs(name)
    with EngineRunner("paddle") as ref, EngineRunner("paddle-opt") as opt:
        a, b = ref.run(model, feeds), opt.run(model, feeds)
    assert b.ok, b.message
    for fetch in model.fetches:
        np.testing.assert_allclose(b.outputs[fetch], a.outputs[fetch], rtol=1e-3, atol=1e-4)


# ---- the cmd protocol -------------------------------------------------------------------------------------
@pytest.fixture
def scripts(tmp_path):
    (tmp_path / "engine.py").write_text(PROTOCOL_SCRIPT)
    (tmp_path / "segv.sh").write_text("echo 'F1124 kernel: image2d too large' >&2\nkill -SEGV $$\n")
    (tmp_path / "exit3.sh").write_text("echo 'clBuildProgram failed' >&2\nexit 3\n")
    (tmp_path / "hang.sh").write_text("sleep 60\n")
    return tmp_path


def test_cmd_protocol_and_failure_verdicts(scripts, resnet):
    model, feeds = resnet
    small = truncate(model, [t for _, t in model.data_tensors()][:3])
    good = f"cmd:{sys.executable} {scripts / 'engine.py'} {{model_dir}} {{inputs}} {{outputs}} {{io}}"
    with EngineRunner("paddle") as ref:
        expected = ref.run(small, feeds).outputs
    with EngineRunner(good) as runner:
        result = runner.run(small, feeds)
        assert result.ok, result.message
        assert list(result.outputs) == small.fetches
        for name in small.fetches:
            np.testing.assert_array_equal(result.outputs[name], expected[name])
    incomplete = good + " incomplete"
    cases = {
        f"cmd:sh {scripts / 'segv.sh'}": ("crash", "SIGSEGV"),
        f"cmd:sh {scripts / 'exit3.sh'}": ("crash", "exit code 3"),
        f"cmd:sh {scripts / 'hang.sh'}": ("timeout", "no result within"),
        incomplete: ("crash", "lacks 1 of 3 fetches"),
        "cmd:/no/such/program {inputs}": ("crash", "cannot start"),
    }
    for spec, (status, text) in cases.items():
        # Only the hanging runner needs a short limit; the others import paddle, slow on a loaded machine.
        with EngineRunner(spec, timeout=3 if status == "timeout" else 120) as runner:
            result = runner.run(small, feeds)
            assert result.status == status, (spec, result.message)
            assert text in result.message, result.message
    assert "clBuildProgram failed" in EngineRunner(f"cmd:sh {scripts / 'exit3.sh'}").run(small, feeds).message


def test_cmd_engine_template_braces(scripts):
    with pytest.raises(InputError):
        create_engine("cmd:echo {model}")
    assert create_engine("cmd:echo {{literal}} {inputs}").argv == ["echo", "{{literal}}", "{inputs}"]


# ---- cache -----------------------------------------------------------------------------------------------
def test_results_are_cached_by_model_engine_and_inputs(tmp_path, resnet):
    model, feeds = resnet
    cache = Cache(tmp_path / "cache")
    with EngineRunner("paddle", cache) as runner:
        first = runner.run(model, feeds)
        again = runner.run(model, feeds)
        other = runner.run(model, {k: v + 1 for k, v in feeds.items()})
        fresh = runner.run(model, feeds, use_cache=False)
    assert not first.cached and again.cached and not other.cached and not fresh.cached
    assert runner.runs == 3 and runner.cache_hits == 1
    np.testing.assert_array_equal(again.outputs[model.fetches[0]], first.outputs[model.fetches[0]])


def test_no_cache_uses_a_private_directory(tmp_path, resnet):
    model, feeds = resnet
    cache = Cache(results=False)
    with EngineRunner("paddle", cache) as runner:
        assert not runner.run(model, feeds).cached
        assert not runner.run(model, feeds).cached
    assert not str(cache.root).startswith(str(Path.home()))
    cache.close()


# ---- inputs ----------------------------------------------------------------------------------------------
def test_generated_inputs_follow_feeds():
    model = load_model(FIXTURES / "two_io")
    a = generate_inputs(model, seed=3)
    b = generate_inputs(model, seed=3)
    assert set(a) == {"image", "aux"}
    assert a["image"].shape == (1, 3, 16, 16) and a["image"].dtype == np.float32
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], generate_inputs(model, seed=4)["image"])
    assert parse_shapes(["image=2,3,16,16"]) == {"image": (2, 3, 16, 16)}
    with pytest.raises(InputError):
        parse_shapes(["image=2,x"])


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_corrupt_inputs_file(tmp_path, content, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(InputError):
        load_inputs(bad, load_model(FIXTURES / "resnet"))
    code, _, err = run_cli(
        ["compare", str(FIXTURES / "resnet"), "--ref", "paddle", "--target", "fp16", "--inputs", str(bad)], capsys
    )
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_inputs_with_wrong_names_or_shapes(tmp_path):
    model = load_model(FIXTURES / "resnet")
    np.savez(tmp_path / "names.npz", other=np.zeros((1, 3, 32, 32), np.float32))
    np.savez(tmp_path / "shape.npz", image=np.zeros((1, 3, 16, 16), np.float32))
    for name in ("names", "shape"):
        with pytest.raises(InputError):
            load_inputs(tmp_path / f"{name}.npz", model)


def test_compare_command(capsys, tmp_path):
    saved = tmp_path / "used.npz"
    code, out, _ = run_cli(
        [
            "compare",
            str(FIXTURES / "resnet"),
            "--ref",
            "paddle",
            "--target",
            "onnxruntime",
            "--json",
            "--save-inputs",
            str(saved),
        ],
        capsys,
    )
    report = json.loads(out)
    assert code == 0 and report["verdict"] == "match"
    assert saved.exists() and report["inputs_file"] == str(saved)
    code, out, _ = run_cli(["compare", str(FIXTURES / "fp16_overflow"), "--ref", "paddle", "--target", "fp16"], capsys)
    assert code == 1 and "MISMATCH" in out and "NaN" in out
