"""The Paddle-Lite engine (`lite:arm`, `lite:opencl`) against the simulator in tests/sim: spec parsing, the local,
python=, ssh and adb transports, the conversion cache, the opt/runtime version check, fused groups read from the
optimised program, and whole bisections between the ARM and OpenCL backends with injected kernel faults."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_NAMES, FIXTURES, ROOT, load_fixture_inputs, run_cli

from bisect_lite.bisector import RunOptions, run_bisect
from bisect_lite.cache import Cache
from bisect_lite.compare import CompareConfig, compare_outputs
from bisect_lite.engines.registry import create_engine, default_tolerance
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.errors import EngineUnavailable, InputError
from bisect_lite.model import load_model
from bisect_lite.model.fusion import GLUE_OPS, fusion_groups
from bisect_lite.model.graph import decode_attr
from bisect_lite.repro.verify import verify_repros

SIM = ROOT / "tests" / "sim"
SIM_BIN = SIM / "bin"
SIM_OPT = SIM_BIN / "paddle_lite_opt"
SIM_RUNNER = SIM_BIN / "bisect_lite_runner"
DEVICE_DIR = "/data/local/tmp/bisect-lite"
RUNTIME_VERSION = "v2.13-rc"  # the simulator's default lite::version()
SIM_ENV_KNOBS = ("PADDLELITE_SIM_FAULTS", "PADDLELITE_SIM_VERSION", "PADDLELITE_SIM_FATAL", "PADDLELITE_SIM_CL_FP16")
FUSED_CONV_FAULT = {
    "op_type": "conv2d",
    "place": "opencl",
    "kind": "scale",
    "value": 1.3,
    "when_fused": "fused",
    "output_var": "relu_3.tmp_0",
}
POOL_FAULT = {"op_type": "pool2d", "place": "opencl", "kind": "offset", "value": 0.5}


# ------------------------------------------------------------------------------------------------ environment


@pytest.fixture(scope="module", autouse=True)
def lite_env(tmp_path_factory):
    """For the whole module: the simulator's opt, adb, ssh and scp first on PATH (then this venv's python, which
    the `#!/usr/bin/env python3` stand-ins and the sim opt need), `paddlelite` importable, a simulated phone and
    board, and no fault or version knob leaking in from the caller. Restored afterwards."""
    root = tmp_path_factory.mktemp("lite-env")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", os.pathsep.join([str(SIM_BIN), str(Path(sys.executable).parent), os.environ["PATH"]]))
        mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SIM), os.environ.get("PYTHONPATH")])))
        mp.setenv("BISECT_LITE_SIM_DIR", str(SIM))  # where the simulated device runner finds paddlelite
        mp.setenv("ADB_SIM_ROOT", str(root / "phone"))
        mp.setenv("SSH_SIM_HOSTS", "sim,board@sim")
        # The simulator, not a real Paddle-Lite that `bisect-lite setup lite` may have provisioned.
        mp.setenv("BISECT_LITE_LITE_ENV", str(root / "no-lite-env.json"))
        for knob in (*SIM_ENV_KNOBS, "OPENCL_MEMORY_CONFIG_FILE", "ANDROID_SERIAL"):
            mp.delenv(knob, raising=False)
        yield root


@pytest.fixture(scope="module")
def shared_cache(lite_env):
    # The test process's cache (conftest points it at a temp dir), which run_bisect uses too: whole-model
    # conversions made here are not redone by the bisections.
    return Cache()


@pytest.fixture(scope="module")
def paddle_runner(shared_cache):
    with EngineRunner("paddle", cache=shared_cache) as r:
        yield r


@pytest.fixture(scope="module")
def arm(shared_cache):
    with EngineRunner("lite:arm", cache=shared_cache) as r:
        yield r


@pytest.fixture(scope="module")
def opencl(shared_cache):
    with EngineRunner("lite:opencl", cache=shared_cache) as r:
        yield r


@pytest.fixture(scope="module")
def opencl_fp32(shared_cache):
    with EngineRunner("lite:opencl,precision=fp32", cache=shared_cache) as r:
        yield r


@pytest.fixture(scope="module")
def paddle_outputs(paddle_runner):
    """Paddle Inference (exact mode) on every fixture: the bit-exact truth for ARM fp32."""
    out = {}
    for name in FIXTURE_NAMES:
        result = paddle_runner.run(load_model(FIXTURES / name), load_fixture_inputs(name))
        assert result.ok, result.message
        out[name] = result.outputs
    return out


def model_and_inputs(name: str):
    return load_model(FIXTURES / name), load_fixture_inputs(name)


def run_ok(runner: EngineRunner, name: str) -> dict[str, np.ndarray]:
    model, inputs = model_and_inputs(name)
    result = runner.run(model, inputs)
    assert result.ok, f"{runner.spec} on {name}: {result.status}: {result.message}"
    assert list(result.outputs) == list(model.fetches)  # names and order of the model's fetch targets
    return result.outputs


def same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a
    )


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# ------------------------------------------------------------------------------------------------ 1. specs


def test_spec_parsing_accepts_a_place_and_options():
    engine = create_engine("lite:opencl,precision=fp32")
    try:
        assert (engine.place, engine.precision, engine.half_precision) == ("opencl", "fp32", False)
    finally:
        engine.close()
    engine = create_engine("lite:opencl")
    try:
        assert (engine.precision, engine.half_precision) == ("auto", True)  # AUTO means fp16 on phones
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("lite", "exactly one place"),
        ("lite:arm,opencl", "exactly one place"),
        ("lite:opencl,precision=fp8", "precision=fp8 is not one of auto, fp16, fp32"),
        ("lite:arm,adb,ssh=x", "adb or ssh="),
        ("lite:arm,gpu", "unknown word 'gpu'"),
        ("lite:arm,threads=many", "threads=many is not an integer"),
    ],
)
def test_spec_errors(spec, message):
    with pytest.raises(InputError, match=message):
        create_engine(spec)


def test_constructing_an_engine_leaves_no_temp_dir(tmp_path, monkeypatch):
    # default_tolerance, resolve_engines and `bisect-lite engines` build engines they never close.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    default_tolerance("lite:opencl")
    assert list(tmp_path.iterdir()) == []


def test_problem_explains_a_missing_opt(monkeypatch):
    without_sim = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != SIM_BIN)
    monkeypatch.setenv("PATH", without_sim)
    engine = create_engine("lite:arm")
    try:
        assert "bisect-lite setup lite" in (engine.problem() or "")
        with pytest.raises(EngineUnavailable, match="setup lite"):
            EngineRunner(engine)
    finally:
        engine.close()
    engine = create_engine("lite:arm,opt=/nonexistent/opt")
    try:
        assert "/nonexistent/opt" in (engine.problem() or "")
    finally:
        engine.close()


def test_problem_explains_missing_adb_pieces(tmp_path):
    engine = create_engine(f"lite:opencl,adb,runner={tmp_path / 'no-runner'},libs={tmp_path}")
    try:
        assert "native runner" in (engine.problem() or "") and "not found" in engine.problem()
    finally:
        engine.close()
    for spec in (f"lite:opencl,adb,runner={SIM_RUNNER}", f"lite:opencl,adb,runner={SIM_RUNNER},libs={tmp_path}"):
        engine = create_engine(spec)
        try:
            reason = engine.problem() or ""
            assert "libs=" in reason and "libpaddle_light_api_shared.so" in reason, spec
        finally:
            engine.close()


def test_problem_explains_a_python_without_paddlelite(tmp_path):
    python = write_script(tmp_path / "python", f'PYTHONPATH= exec {sys.executable} -I "$@"\n')
    engine = create_engine(f"lite:arm,python={python}")
    try:
        assert "cannot import paddlelite" in (engine.problem() or "")
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------------ 2. local runs


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_arm_equals_paddle_bit_for_bit(arm, paddle_outputs, name):
    assert same_bits(run_ok(arm, name), paddle_outputs[name])


def test_fetch_names_survive_paddle_lite_renaming(opencl, arm):
    # resnet's fetch is an identity scale that remove_scale1_pass drops; two_io has two outputs of different
    # shapes, so a swap would show; on OpenCL the runtime names them `x/target_trans`.
    for runner in (arm, opencl):
        out = run_ok(runner, "resnet")
        assert list(out) == ["save_infer_model/scale_0.tmp_0"] and out["save_infer_model/scale_0.tmp_0"].shape == (
            1,
            10,
        )
        out = run_ok(runner, "two_io")
        assert [(k, v.shape) for k, v in out.items()] == [("logits", (1, 10)), ("regression", (1, 4))]


@pytest.mark.parametrize("name", ["resnet", "two_io", "fp16_overflow"])
def test_opencl_fp32_matches_paddle(opencl_fp32, paddle_outputs, name):
    out = run_ok(opencl_fp32, name)
    for k, ref in paddle_outputs[name].items():
        np.testing.assert_allclose(out[k], ref, rtol=1e-4, atol=1e-4, err_msg=f"{name}: {k}")


@pytest.mark.parametrize("name", ["resnet", "mobilenetv3", "two_io"])
def test_opencl_fp16_differs_within_the_default_tolerance(opencl, paddle_outputs, name):
    out = run_ok(opencl, name)
    ref = paddle_outputs[name]
    assert not same_bits(out, ref)  # fp16 storage rounds
    cmp = compare_outputs(ref, out, CompareConfig(default=default_tolerance("lite:opencl")), names=list(ref))
    assert cmp.passed


def test_fp16_overflow_is_not_finite_on_opencl(opencl, paddle_outputs):
    out = run_ok(opencl, "fp16_overflow")
    assert all(np.isfinite(v).all() for v in paddle_outputs["fp16_overflow"].values())
    assert not all(np.isfinite(v).all() for v in out.values())


# ------------------------------------------------------------------------------------------------ 3. conversion


def test_conversion_runs_opt_once_per_model(tmp_path):
    log = tmp_path / "opt.log"
    opt = write_script(tmp_path / "opt", f'echo "$*" >> {log}\nexec {SIM_OPT} "$@"\n')
    spec = f"lite:opencl,opt={opt}"
    model, inputs = model_and_inputs("two_io")
    cache = Cache(tmp_path / "cache")

    def conversions() -> int:
        return sum("--optimize_out=" in line for line in log.read_text().splitlines())

    with EngineRunner(spec, cache=cache) as runner:
        assert runner.run(model, inputs).ok
        prepared = cache.prepared_dir(model, runner.engine.cache_key())
        nb, pb = prepared / "model.nb", prepared / "optimized-noreuse" / "model"
        assert nb.is_file() and not pb.exists()  # a run needs only the naive buffer
        assert conversions() == 1
        assert runner.optimized_program(model) is not None  # the protobuf view, on demand
        assert pb.is_file() and conversions() == 2
        stamps = (nb.stat().st_mtime_ns, pb.stat().st_mtime_ns)
        assert runner.run(model, inputs).ok
        assert runner.optimized_program(model) is not None
        facts = runner.facts()
    with EngineRunner(spec, cache=cache) as again:  # another runner (a later bisect-lite command) reuses them
        assert again.optimized_program(model) is not None
    assert conversions() == 2
    assert (nb.stat().st_mtime_ns, pb.stat().st_mtime_ns) == stamps
    assert facts["opt_version"] == RUNTIME_VERSION and facts["paddle_lite_version"] == RUNTIME_VERSION
    assert (facts["place"], facts["valid_targets"], facts["precision"], facts["transport"]) == (
        "opencl",
        "opencl,arm",
        "auto",
        "python",
    )


def test_facts_name_place_and_precision(arm, opencl_fp32):
    assert {k: arm.facts()[k] for k in ("place", "precision", "valid_targets", "opt_version")} == {
        "place": "arm",
        "precision": "fp32",
        "valid_targets": "arm",
        "opt_version": RUNTIME_VERSION,
    }
    assert (opencl_fp32.facts()["place"], opencl_fp32.facts()["precision"]) == ("opencl", "fp32")


def test_each_model_gets_its_own_opencl_cache(opencl):
    files = []
    for name in ("resnet", "two_io"):
        run_ok(opencl, name)
        prepared = opencl.cache.prepared_dir(load_model(FIXTURES / name), opencl.engine.cache_key())
        found = sorted((prepared / "opencl-cache").glob("*.bin"))
        assert len(found) == 1, found
        files.append(found[0])
    assert files[0] != files[1] and files[0].name != files[1].name


# ------------------------------------------------------------------------------------------------ 4. versions


def test_opt_runtime_version_mismatch_is_an_engine_error(tmp_path, capsys):
    opt = write_script(tmp_path / "opt-2.12", f'PADDLELITE_SIM_VERSION=v2.12.0 exec {SIM_OPT} "$@"\n')
    spec = f"lite:arm,opt={opt}"
    engine = create_engine(spec)
    try:
        assert engine.facts()["opt_version"] == "v2.12.0"
    finally:
        engine.close()
    code, _, err = run_cli(["compare", str(FIXTURES / "two_io"), "--ref", "paddle", "--target", spec], capsys)
    assert code == 3, err
    # Both versions: the user has to find the opt of the runtime's release.
    assert "v2.12.0" in err and RUNTIME_VERSION in err, err


# ------------------------------------------------------------------------------------------------ 5-7. transports


# Paddle-Lite pads its log prefix with spaces: a one-digit day or minute must parse as a two-digit one does.
@pytest.mark.parametrize("log_time", ["2026-12-07 03:04:05", "2026-11-26 23:59:59"])
def test_a_worker_that_dies_is_a_crash_not_a_timeout(tmp_path, monkeypatch, log_time):
    monkeypatch.setenv("PADDLELITE_SIM_LOG_TIME", str(time.mktime(time.strptime(log_time, "%Y-%m-%d %H:%M:%S"))))
    # The worker's stdout can close a moment before its process is gone: ssh closes its stdout at the remote
    # EOF and exits after the exit status arrives; even locally, files close before the child is reapable.
    # Here the window is widened to 0.5 s, so the race is hit every time.
    python = write_script(tmp_path / "python", f'{sys.executable} "$@"\ncode=$?\nexec >&-\nsleep 0.5\nexit $code\n')
    monkeypatch.setenv("PADDLELITE_SIM_FAULTS", json.dumps([{"op_type": "conv2d", "kind": "crash"}]))
    model, inputs = model_and_inputs("two_io")
    with EngineRunner(f"lite:arm,python={python}") as runner:
        result = runner.run(model, inputs)
    assert result.status == "crash", f"{result.status} after {result.seconds:.1f} s: {result.message}"
    assert "Check failed" in result.message, result.message
    # The predictor was built; the kernel aborted in Run(): the verdict says so and keeps the whole fatal line.
    assert result.info["stage"] == "run" and result.info["signal"] == "SIGABRT", result.info
    assert "while running the program" in result.message and result.info["fatal"].startswith("Check failed")
    assert result.info["fatal"] in result.message


# What real opt 2.13-rc printed on this machine for a Paddle 3.x relu6 without `threshold`, run under
# lite_worker.py --trace (addresses shortened).
REAL_OPT_ABORT = """Loading topology data from relu6/model.pdmodel
1. Model is successfully loaded!
[F 11/26  7: 9:54.877 ...e-Lite/lite/core/model/general/op_desc.h:118 GetAttr] Check failed: it != attrs().end(): \
No attributes called threshold found for relu6
*** native stack at signal 6 ***
/lib/x86_64-linux-gnu/libc.so.6(+0x3c050)[0x7f8227a5a050]
/lib/x86_64-linux-gnu/libc.so.6(gsignal+0x12)[0x7f8227a59fb2]
/lib/x86_64-linux-gnu/libc.so.6(abort+0xd3)[0x7f8227a44472]
/v/lib/python3.10/site-packages/paddlelite/lite.so(+0x7b368e)[0x7f82259b368e]
/v/lib/python3.10/site-packages/paddlelite/lite.so(_ZN6paddle4lite9operators12ActivationOp10AttachImplERKNS0_7general6OpDescEPNS0_5ScopeE+0x10e7)[0x7f8225b548c7]
/v/lib/python3.10/site-packages/paddlelite/lite.so(_ZN6paddle4lite6OpLite6AttachERKNS0_7general6OpDescEPNS0_5ScopeE+0x339)[0x7f8226651519]
/root/.pyenv/versions/3.10.13/lib/libpython3.10.so.1.0(_PyEval_EvalFrameDefault+0x7941)[0x7fe55706ce81]
""".replace("\\\n", "")


@pytest.mark.parametrize(
    "line, where",
    [
        ("[F  1/ 2  3: 4: 5.678 ...lite/kernels/arm/conv2d.cc:88 Run] Check failed: x", "conv2d.cc:88 Run"),
        ("[F 12/31 23:59:59.999 ...lite/core/program.h:248 Init] Check failed: x", "program.h:248 Init"),
        ("[F 12/ 7 20:53:13.426 ...lite/kernels/arm/conv2d_compute.cc] Check failed: x", "conv2d_compute.cc"),
        ("[F 12/ 7 21: 0:45.549 /paddle-lite//lite/core/program.h:248 Init] Check failed: x", "program.h:248 Init"),
        ("[F  9/30  0: 0: 0.000] Check failed: x", ""),
        ("[F 12/ 7 21:28:51. 32 ...lite/api/paddle_api.cc:44 Fn] Check failed: x", "paddle_api.cc:44 Fn"),
        ("[F 1/2 3:4:5.6 a.cc:1 f] Check failed: x", "a.cc:1 f"),
        ("F1207 03:04:05.678901 4242 conv.cc:12] Check failed: x", "conv.cc:12"),
    ],
)
def test_fatal_line_parses_every_padding_form(line, where):
    from bisect_lite.engines.lite import crash_details, parse_log_line

    assert parse_log_line(line)[0] == "F"
    details = crash_details(f"something before\n{line}\n", -6, "run", "runtime")
    assert details["fatal"] == (f"Check failed: x ({where})" if where else "Check failed: x"), details
    assert "[F" not in details["message"], details["message"]


@pytest.mark.parametrize("severity", ["I", "W", "E"])
def test_only_fatal_severity_is_a_fatal_line(severity):
    from bisect_lite.engines.lite import crash_details, parse_log_line

    line = f"[{severity}  1/ 2  3: 4: 5.678 ...lite/core/program.h:248 Init] opencl_valid:0"
    assert parse_log_line(line) == (severity, "opencl_valid:0 (program.h:248 Init)")
    assert crash_details(line, -6, "run", "runtime")["fatal"] is None


def test_crash_details_keep_signal_fatal_line_frames_and_stage():
    from bisect_lite.engines.lite import crash_details

    details = crash_details(REAL_OPT_ABORT, -6, "build", "opt")
    assert details["stage"] == "build" and details["signal"] == "SIGABRT"
    assert details["fatal"] == (
        "Check failed: it != attrs().end(): No attributes called threshold found for relu6 (op_desc.h:118 GetAttr)"
    )
    # Handler, libc and interpreter frames are dropped; Paddle-Lite's are demangled when c++filt exists.
    assert len(details["frames"]) == 2 and "ActivationOp" in details["frames"][0] and "OpLite" in details["frames"][1]
    assert details["message"].startswith("Paddle-Lite opt killed by signal SIGABRT while building the program (opt): ")
    assert details["fatal"] in details["message"]
    # A worker that marked the run stage before dying is a run-time crash, whatever the caller assumed.
    run = crash_details("[bisect-lite] stage=build m.nb\n[bisect-lite] stage=run m.nb\n", -11, "build", "runtime")
    assert run["stage"] == "run" and run["signal"] == "SIGSEGV" and "while running the program" in run["message"]


def test_python_transport_equals_local(arm):
    with EngineRunner(f"lite:arm,python={sys.executable}") as runner:
        assert same_bits(run_ok(runner, "two_io"), run_ok(arm, "two_io"))
        assert runner.facts()["transport"] == "python"


def test_ssh_transport_equals_local(opencl, tmp_path):
    board = tmp_path / "board"
    with EngineRunner(f"lite:opencl,ssh=board@sim,python={sys.executable},device_dir={board}") as runner:
        for name in ("resnet", "two_io"):
            assert same_bits(run_ok(runner, name), run_ok(opencl, name))
        facts = runner.facts()
    assert facts["transport"] == "ssh" and facts["paddle_lite_version"] == RUNTIME_VERSION
    # Per-run directories are removed; the worker script and the per-model kernel caches stay.
    assert sorted(p.name for p in board.iterdir()) == ["lite_worker.py", "opencl-cache"]
    assert len(list((board / "opencl-cache").glob("*.bin"))) == 2


def test_ssh_to_an_unknown_host_stops_the_job(tmp_path):
    # Not a `crash` verdict: the bisection would then hunt a crashing op and blame the first one.
    model, inputs = model_and_inputs("two_io")
    spec = f"lite:arm,ssh=board@nosuch,python={sys.executable},device_dir={tmp_path}"
    with EngineRunner(spec) as runner, pytest.raises(EngineUnavailable) as info:
        result = runner.run(model, inputs)
        pytest.fail(f"no error; the run gave {result.status}: {result.message}")
    assert "nosuch" in str(info.value) and "resolve hostname" in str(info.value), str(info.value)


def test_ssh_and_scp_stand_ins(tmp_path):
    (tmp_path / "a").write_text("data")
    (tmp_path / "d").mkdir()

    def run(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=60)

    ok = run("ssh", "-o", "BatchMode=yes", "board@sim", "cat; exit 7", stdin="over ssh\n")
    assert (ok.returncode, ok.stdout) == (7, "over ssh\n")
    bad = run("ssh", "-o", "BatchMode=yes", "board@elsewhere", "true")
    assert bad.returncode == 255 and "Could not resolve hostname elsewhere" in bad.stderr
    assert run("ssh", "sim", "kill -ABRT $$").returncode == 255  # no exit status from a signalled command
    assert run("scp", "-q", "-r", str(tmp_path / "a"), f"sim:{tmp_path / 'd'}/").returncode == 0
    assert (tmp_path / "d" / "a").read_text() == "data"
    assert run("scp", "-q", f"board@sim:{tmp_path / 'd' / 'a'}", str(tmp_path / "b")).returncode == 0
    assert (tmp_path / "b").read_text() == "data"
    missing = run("scp", "-q", str(tmp_path / "nope"), f"sim:{tmp_path}/")
    assert missing.returncode == 1 and "nope: No such file or directory" in missing.stderr
    assert run("scp", str(tmp_path / "a"), f"elsewhere:{tmp_path}/x").returncode == 1


@pytest.fixture
def adb_spec(tmp_path):
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "libpaddle_light_api_shared.so").write_bytes(b"\x7fELF not really")
    return f"lite:opencl,adb,runner={SIM_RUNNER},libs={libs},device_dir={DEVICE_DIR}"


def test_adb_transport_equals_local(opencl, adb_spec, lite_env, monkeypatch):
    device = lite_env / "phone" / DEVICE_DIR.lstrip("/")
    with EngineRunner(adb_spec) as runner:
        assert same_bits(run_ok(runner, "two_io"), run_ok(opencl, "two_io"))
        assert sorted(p.name for p in device.iterdir()) == [
            "bisect_lite_runner",
            "libpaddle_light_api_shared.so",
            "opencl-cache",
        ]  # the per-run directories are gone
        # A CHECK failure in a kernel aborts the runner: a crash verdict, and the phone stays usable.
        monkeypatch.setenv("PADDLELITE_SIM_FAULTS", json.dumps([{"op_type": "conv2d", "kind": "crash"}]))
        model, inputs = model_and_inputs("two_io")
        crashed = runner.run(model, inputs)
        assert crashed.status == "crash" and "SIGABRT" in crashed.message, crashed.message
        monkeypatch.delenv("PADDLELITE_SIM_FAULTS")
        assert same_bits(run_ok(runner, "two_io"), run_ok(opencl, "two_io"))
        assert not [p for p in device.iterdir() if p.name.startswith("run-")]
        facts = runner.facts()
    assert facts["transport"] == "adb" and facts["android"] == "14" and facts["opencl_valid"] is True
    assert "SimPhone" in facts.values(), facts  # ro.product.model, from getprop


def elf_library(path: Path, machine: int) -> Path:
    """A file whose ELF header names `machine` (183 aarch64, 62 x86-64): what lib= checks before anything runs."""
    header = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    header[18:20] = machine.to_bytes(2, "little")
    path.write_bytes(bytes(header))
    return path


def test_adb_lib_replaces_the_pushed_library(adb_spec, lite_env, tmp_path):
    device = lite_env / "phone" / DEVICE_DIR.lstrip("/")
    shutil.rmtree(device, ignore_errors=True)
    fixed = elf_library(tmp_path / "libfixed.so", 183)
    with EngineRunner(f"{adb_spec},lib={fixed}") as runner:
        run_ok(runner, "two_io")
        facts = runner.facts()
    # Pushed under the name the runner links with, whatever the file was called; named with its sha256 in facts.
    assert (device / "libpaddle_light_api_shared.so").read_bytes() == fixed.read_bytes()
    assert facts["library"] == str(fixed) and facts["library_sha256"] == hashlib.sha256(fixed.read_bytes()).hexdigest()
    engine = create_engine(f"{adb_spec},lib={elf_library(tmp_path / 'x86.so', 62)}")
    try:
        assert "a phone runs aarch64" in (engine.problem() or "")
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------------ 8. fusion


def simulated_groups(model, optimized) -> list[list[int]]:
    """The simulator's ground truth: each optimised op's `__sim_fused_from` + `__sim_eliminated` (indices into
    the original block 0 with feed/fetch ops) mapped to bisect-lite's op indices; glue ops cover nothing."""
    index_of = {op.desc_index: op.index for op in model.ops}
    groups = []
    for desc in optimized.program.blocks[0].ops:
        if desc.type in GLUE_OPS:
            continue
        attrs = {a.name: decode_attr(a) for a in desc.attrs}
        covered = attrs.get("__sim_fused_from", []) + attrs.get("__sim_eliminated", [])
        ops = sorted(index_of[i] for i in covered if i in index_of)
        if ops:
            groups.append(ops)
    return sorted(groups)


@pytest.mark.parametrize("name", ["resnet", "mobilenetv3", "unet", "two_io"])
def test_fusion_groups_match_the_optimiser(opencl, name):
    model = load_model(FIXTURES / name)
    optimized = opencl.optimized_program(model)
    truth = simulated_groups(model, optimized)
    assert sorted(i for g in truth for i in g) == list(range(len(model.ops)))  # a partition of the ops
    assert sorted(g.ops for g in fusion_groups(model, optimized)) == truth
    if name == "resnet":
        # conv+bn+relu; flatten+matmul+add -> fc (lite_flatten_fc_fuse_pass) + identity scale, as real opt fuses
        assert [10, 11, 12] in truth and [43, 44, 45, 46] in truth


# ------------------------------------------------------------------------------------------------ 9. end to end


@pytest.fixture(scope="module")
def faulty_run(opencl, tmp_path_factory):
    """One bisection of resnet, ARM reference against OpenCL, with two kernel bugs: a conv2d that is wrong only
    when fused with its bn+relu (ops 10..12), and a pool2d (op 42, not fused). find_all: both are reported."""
    out = tmp_path_factory.mktemp("bisect") / "out"
    model = load_model(FIXTURES / "resnet")
    options = RunOptions(
        ref="lite:arm",
        target="lite:opencl",
        out=out,
        inputs=FIXTURES / "resnet" / "inputs.npz",
        find_all=True,
        minimise=False,  # shape shrinking is tested elsewhere and costs many probes
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PADDLELITE_SIM_FAULTS", json.dumps([FUSED_CONV_FAULT, POOL_FAULT]))
        report = run_bisect(FIXTURES / "resnet", options)
    groups = fusion_groups(model, opencl.optimized_program(model))
    return report, out, groups


def test_fault_in_a_fused_group_is_blamed_on_the_group(faulty_run):
    report, _, _ = faulty_run
    assert report["verdict"] == "mismatch"
    culprit = report["culprits"][0]
    assert (culprit["index"], culprit["type"], culprit["kind"], culprit["ops"]) == (10, "conv2d", "group", [10, 11, 12])
    assert any("group" in n and "fuses" in n for n in culprit["notes"]), culprit["notes"]


def test_fault_in_an_unfused_op_is_blamed_on_the_op(faulty_run):
    report, _, _ = faulty_run
    assert [(c["index"], c["type"], c["kind"], c["ops"]) for c in report["culprits"][1:]] == [
        (42, "pool2d", "op", [42])
    ]


def test_search_cuts_only_between_fused_groups(faulty_run):
    report, _, groups = faulty_run
    cuts = len(groups)  # a cut point after each group
    assert cuts < len(load_model(FIXTURES / "resnet").ops)
    assert 0 < report["search_probes"] <= math.ceil(math.log2(cuts)) + 1, report["probes"]
    ends = {g.last for g in groups}
    assert all(p["cut"] in ends for p in report["probes"]), report["probes"]


def test_repros_pass_only_once_the_kernels_are_fixed(faulty_run, monkeypatch):
    _, out, _ = faulty_run
    monkeypatch.setenv("PADDLELITE_SIM_FAULTS", json.dumps([FUSED_CONV_FAULT, POOL_FAULT]))
    assert [r.status for r in verify_repros([out], target="lite:opencl")] == ["failing", "failing"]
    monkeypatch.delenv("PADDLELITE_SIM_FAULTS")
    assert [r.status for r in verify_repros([out], target="lite:opencl")] == ["fixed", "fixed"]


def test_engine_messages_drop_the_log_prefix():
    from bisect_lite.preflight import one_line

    text = "worker died (SIGABRT)\n[F 12/ 7 21: 0:45.549 /p//lite/core/program.h:248 Init] Check failed: opencl_valid:0"
    assert one_line(text) == "worker died (SIGABRT) Check failed: opencl_valid:0 (program.h:248 Init)"
