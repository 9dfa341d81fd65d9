"""The Paddle-Lite engine (`lite:arm`, `lite:opencl`, `lite:x86`): spec parsing, conversion and its cache, facts,
the opt/runtime version check, the python=, ssh and adb transports, crash reasons, and a bisection between real
ARM and real OpenCL kernels.

ARM and OpenCL numerics run REAL kernels: Paddle-Lite's aarch64 library under QEMU and its OpenCL library on PoCL
(fp32), through the native runners `bisect-lite setup lite` provisions (`require`: a failure in CI without them).
Stand-ins only for what cannot be real here, each said in its test: adb (tests/sim/bin/adb runs the REAL aarch64
runner and library under QEMU, so only adb is fake), ssh/scp (tests/sim/bin: "the board" runs the real x86 wheel),
a phone GPU's fp16 and a board wheel that aborts (the simulator in tests/sim, behind the stand-in adb / the Python
worker). Fixtures with Paddle 3.x schema drift (a flatten without XShape) crash real opt as exported: they run as
their `lite-compat` copies.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
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
from faulty_lib import make_faulty_opencl_lib

from bisect_lite.bisector import RunOptions, run_bisect
from bisect_lite.cache import Cache
from bisect_lite.compare import CompareConfig, compare_outputs
from bisect_lite.engines.registry import create_engine, default_tolerance
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.errors import EngineUnavailable, InputError
from bisect_lite.fsutil import file_sha256
from bisect_lite.lite_compat import repaired
from bisect_lite.lite_env import find_lite_env
from bisect_lite.model import load_model, write_model_files
from bisect_lite.model.fusion import fusion_groups

SIM = ROOT / "tests" / "sim"
SIM_BIN = SIM / "bin"
SIM_OPT = SIM_BIN / "paddle_lite_opt"
SIM_RUNNER = SIM_BIN / "bisect_lite_runner"
DEVICE_DIR = "/data/local/tmp/bisect-lite"
RUNTIME_VERSION = "v2.13-rc"  # lite::version() of the provisioned opt and libraries


# ------------------------------------------------------------------------------------------------ environment


@pytest.fixture(scope="module", autouse=True)
def stand_ins(tmp_path_factory):
    """For the whole module: the stand-in adb, ssh and scp first on PATH (then this venv's python3, which the
    `#!/usr/bin/env python3` stand-ins need), a simulated phone's file system and board names, no knob of the
    simulator leaking in from the caller. The real Paddle-Lite environment stays in effect. Restored afterwards."""
    root = tmp_path_factory.mktemp("stand-ins")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", os.pathsep.join([str(SIM_BIN), str(Path(sys.executable).parent), os.environ["PATH"]]))
        mp.setenv("PYTHON", sys.executable)  # the simulator's opt runs with this interpreter
        mp.setenv("ADB_SIM_ROOT", str(root / "phone"))
        mp.setenv("SSH_SIM_HOSTS", "sim,board@sim")
        mp.setenv("BISECT_LITE_SIM_DIR", str(SIM))  # where the simulated runner on the fp16 phone finds paddlelite
        for knob in ("PADDLELITE_SIM_FAULTS", "PADDLELITE_SIM_VERSION", "PADDLELITE_SIM_FATAL", "ADB_SIM_QEMU"):
            mp.delenv(knob, raising=False)
        for knob in ("PADDLELITE_SIM_CL_FP16", "OPENCL_MEMORY_CONFIG_FILE", "ANDROID_SERIAL"):
            mp.delenv(knob, raising=False)
        yield root


@pytest.fixture(scope="module")
def shared_cache(natives):
    # The test process's cache (conftest points it at a temp dir), which run_bisect uses too: conversions and
    # compiled OpenCL kernels made here are not redone by the bisection.
    return Cache()


@pytest.fixture(scope="module")
def compat_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compat")


def model_dir(name: str, compat_root: Path) -> Path:
    """The fixture, or its lite-compat copy when it has schema drift that real opt crashes on."""
    model = load_model(FIXTURES / name)
    fixed, drift = repaired(model)
    if not drift:
        return FIXTURES / name
    out = compat_root / name
    if not (out / "model.pdmodel").exists():
        out.mkdir(parents=True, exist_ok=True)
        write_model_files(fixed, out)
    return out


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


def run_ok(runner: EngineRunner, directory: Path, inputs_of: str | None = None) -> dict[str, np.ndarray]:
    model, inputs = load_model(directory), load_fixture_inputs(inputs_of or directory.name)
    result = runner.run(model, inputs)
    assert result.ok, f"{runner.spec} on {directory}: {result.status}: {result.message}"
    assert list(result.outputs) == list(model.fetches)  # names and order of the model's fetch targets
    return result.outputs


def within_fp32(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bool:
    config = CompareConfig(default=default_tolerance("paddle"))  # fp32: atol = rtol = 1e-4
    return compare_outputs(reference, outputs, config, names=list(reference)).passed


def same_bits(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a
    )


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def real_opt() -> str:
    env = find_lite_env()
    assert env is not None
    return str(env.opt)


# ------------------------------------------------------------------------------------------------ 1. specs


def test_spec_parsing_accepts_a_place_and_options():
    engine = create_engine("lite:opencl,precision=fp32")
    try:
        assert (engine.place, engine.precision, engine.half_precision) == ("opencl", "fp32", False)
    finally:
        engine.close()
    engine = create_engine("lite:opencl,adb")
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


def test_problem_explains_a_missing_opt(monkeypatch, tmp_path):
    # No provisioned environment and no paddle_lite_opt on PATH (the stand-ins' directory has the simulator's).
    monkeypatch.setenv("BISECT_LITE_LITE_ENV", str(tmp_path / "no-lite-env.json"))
    without_sim = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != SIM_BIN)
    monkeypatch.setenv("PATH", without_sim)
    if shutil.which("paddle_lite_opt"):
        pytest.skip("a paddle_lite_opt is on PATH")
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


# ------------------------------------------------------------------------------------------------ 2. real kernels


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_arm_kernels_match_paddle_on_every_fixture(arm, paddle_runner, compat_root, name):
    """Real ARM kernels under QEMU against Paddle Inference (exact mode), within fp32 tolerance (int64 exactly)."""
    directory = model_dir(name, compat_root)
    expected = paddle_runner.run(load_model(directory), load_fixture_inputs(name))
    assert expected.ok, expected.message
    got = run_ok(arm, directory, name)
    assert within_fp32(expected.outputs, got)
    for key, value in expected.outputs.items():
        if value.dtype.kind == "i":
            assert np.array_equal(got[key], value) and got[key].dtype == value.dtype, key


def test_fetch_names_survive_paddle_lite_renaming(arm, opencl, compat_root):
    # resnet's fetch is an identity scale that real opt drops; two_io has two outputs of different shapes, so a
    # swap would show; on OpenCL the runtime names its outputs `x/target_trans`.
    out = run_ok(arm, model_dir("resnet", compat_root), "resnet")
    assert [(k, v.shape) for k, v in out.items()] == [("save_infer_model/scale_0.tmp_0", (1, 10))]
    out = run_ok(arm, model_dir("two_io", compat_root), "two_io")
    assert [(k, v.shape) for k, v in out.items()] == [("logits", (1, 10)), ("regression", (1, 4))]
    out = run_ok(opencl, FIXTURES / "transformer")
    assert [(k, v.shape) for k, v in out.items()] == [("elementwise_add_1.tmp_0", (1, 16, 32))]


def test_opencl_kernels_match_paddle_in_fp32(opencl, paddle_runner):
    """Real OpenCL kernels on PoCL (no cl_khr_fp16: precision auto runs fp32) against Paddle Inference."""
    model = load_model(FIXTURES / "transformer")
    expected = paddle_runner.run(model, load_fixture_inputs("transformer"))
    assert expected.ok and within_fp32(expected.outputs, run_ok(opencl, FIXTURES / "transformer"))
    assert opencl.facts()["precision_used"] == "fp32"


# ------------------------------------------------------------------------------------- 3. a phone GPU's fp16 (stand-in)


@pytest.fixture(scope="module")
def fp16_phone(stand_ins, tmp_path_factory):
    """STAND-IN: no GPU with fp16 is reachable here (PoCL has no cl_khr_fp16), so a phone GPU's fp16 comes from the
    simulator: its opt and runner (tests/sim) behind the stand-in adb. Half storage only (tests/sim/README.md)."""
    libs = tmp_path_factory.mktemp("fp16-phone-libs")
    (libs / "libpaddle_light_api_shared.so").write_bytes(b"\x7fELF not really")  # the simulated runner ignores it
    spec = f"lite:opencl,adb,opt={SIM_OPT},runner={SIM_RUNNER},libs={libs},device_dir={DEVICE_DIR}"
    with EngineRunner(spec) as r:
        yield r


def test_a_phone_without_fp16_is_not_judged_as_fp16(stand_ins, tmp_path, monkeypatch):
    # precision=auto on a phone is judged as fp16; a GPU without cl_khr_fp16 runs fp32, and a looser fp16 judgement
    # could pass a real fp32 kernel bug: the engine stops and says which precision to state.
    monkeypatch.setenv("PADDLELITE_SIM_CL_FP16", "0")
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "libpaddle_light_api_shared.so").write_bytes(b"\x7fELF not really")
    spec = f"lite:opencl,adb,opt={SIM_OPT},runner={SIM_RUNNER},libs={libs},device_dir={DEVICE_DIR}"
    with EngineRunner(spec) as runner, pytest.raises(EngineUnavailable, match=r"ran fp32.*pass precision=fp32"):
        runner.run(load_model(FIXTURES / "two_io"), load_fixture_inputs("two_io"))
    with EngineRunner(spec + ",precision=fp32") as runner:
        assert runner.run(load_model(FIXTURES / "two_io"), load_fixture_inputs("two_io")).ok


@pytest.fixture(scope="module")
def paddle_outputs(paddle_runner):
    """Paddle Inference (exact mode) on the fixtures as exported (the simulator's opt takes them as they are)."""
    out = {}
    for name in ("resnet", "mobilenetv3", "two_io", "fp16_overflow"):
        result = paddle_runner.run(load_model(FIXTURES / name), load_fixture_inputs(name))
        assert result.ok, result.message
        out[name] = result.outputs
    return out


@pytest.mark.parametrize("name", ["resnet", "mobilenetv3", "two_io"])
def test_phone_fp16_differs_within_the_default_tolerance(fp16_phone, paddle_outputs, name):
    out = run_ok(fp16_phone, FIXTURES / name)
    ref = paddle_outputs[name]
    assert not same_bits(out, ref)  # fp16 storage rounds
    assert fp16_phone.engine.half_precision
    cmp = compare_outputs(ref, out, CompareConfig(default=default_tolerance("lite:opencl,adb")), names=list(ref))
    assert cmp.passed


def test_fp16_overflow_is_not_finite_on_a_phone_gpu(fp16_phone, paddle_outputs, stand_ins):
    out = run_ok(fp16_phone, FIXTURES / "fp16_overflow")
    assert all(np.isfinite(v).all() for v in paddle_outputs["fp16_overflow"].values())
    assert not all(np.isfinite(v).all() for v in out.values())
    # Each model gets its own OpenCL kernel-binary file on the phone (named by its prepared directory, unique per
    # model and engine): stale caches never leak between models.
    prepared = fp16_phone.cache.prepared_dir(load_model(FIXTURES / "fp16_overflow"), fp16_phone.engine.cache_key())
    found = {f.name for f in (stand_ins / "phone" / DEVICE_DIR.lstrip("/") / "opencl-cache").glob("*.bin")}
    assert f"{prepared.name}.bin" in found, found


# ------------------------------------------------------------------------------------------------ 4. conversion


def test_conversion_runs_opt_once_per_model(natives, tmp_path):
    log = tmp_path / "opt.log"
    opt = write_script(tmp_path / "opt", f'echo "$*" >> {log}\nexec {shlex.quote(real_opt())} "$@"\n')
    spec = f"lite:arm,opt={opt}"
    model, inputs = load_model(FIXTURES / "unet"), load_fixture_inputs("unet")
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
        "arm",
        "arm",
        "fp32",
        "qemu",
    )


def test_facts_name_place_and_precision(arm, natives):
    assert {k: arm.facts()[k] for k in ("place", "precision", "valid_targets", "opt_version", "transport")} == {
        "place": "arm",
        "precision": "fp32",
        "valid_targets": "arm",
        "opt_version": RUNTIME_VERSION,
        "transport": "qemu",
    }
    engine = create_engine("lite:opencl,precision=fp32")
    try:
        facts = engine.facts()
    finally:
        engine.close()
    assert (facts["place"], facts["precision"], facts["valid_targets"], facts["transport"]) == (
        "opencl",
        "fp32",
        "x86_opencl",
        "local",
    )


# ------------------------------------------------------------------------------------------------ 5. versions


def test_opt_runtime_version_mismatch_is_an_engine_error(natives, tmp_path, capsys):
    """An opt of another release (STAND-IN: the real opt behind a script that states v2.12.0, the one release
    fact the engine reads from it) against the real v2.13-rc runtime: exit 3 naming both, never a verdict."""
    real = shlex.quote(real_opt())
    opt = write_script(
        tmp_path / "opt-2.12", f'case "$*" in *--version*) echo v2.12.0; exit 0;; esac\nexec {real} "$@"\n'
    )
    spec = f"lite:arm,opt={opt}"
    engine = create_engine(spec)
    try:
        assert engine.facts()["opt_version"] == "v2.12.0"
    finally:
        engine.close()
    code, _, err = run_cli(["compare", str(FIXTURES / "unet"), "--ref", "paddle", "--target", spec], capsys)
    assert code == 3, err
    # Both versions: the user has to find the opt of the runtime's release.
    assert "v2.12.0" in err and RUNTIME_VERSION in err, err


# ------------------------------------------------------------------------------------------------ 6-8. transports


# Paddle-Lite pads its log prefix with spaces: a one-digit day or minute must parse as a two-digit one does.
@pytest.mark.parametrize("log_time", ["2026-12-07 03:04:05", "2026-11-26 23:59:59"])
def test_a_worker_that_dies_is_a_crash_not_a_timeout(tmp_path, monkeypatch, log_time):
    """STAND-IN: a board's Python wheel whose kernel aborts (the simulator's crash fault; the x86 wheel here has no
    kernel that aborts at run time on a fixture). What is tested is the Python worker transport's verdict."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(SIM), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PADDLELITE_SIM_LOG_TIME", str(time.mktime(time.strptime(log_time, "%Y-%m-%d %H:%M:%S"))))
    # The worker's stdout can close a moment before its process is gone: ssh closes its stdout at the remote
    # EOF and exits after the exit status arrives; even locally, files close before the child is reapable.
    # Here the window is widened to 0.5 s, so the race is hit every time.
    python = write_script(tmp_path / "python", f'{sys.executable} "$@"\ncode=$?\nexec >&-\nsleep 0.5\nexit $code\n')
    monkeypatch.setenv("PADDLELITE_SIM_FAULTS", json.dumps([{"op_type": "conv2d", "kind": "crash"}]))
    model, inputs = load_model(FIXTURES / "two_io"), load_fixture_inputs("two_io")
    with EngineRunner(f"lite:arm,opt={SIM_OPT},python={python}") as runner:
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


def test_python_transport_runs_the_wheel(natives):
    """python= runs the worker on that interpreter's wheel: here the real x86 one, equal to lite:x86."""
    env = find_lite_env()
    assert env is not None
    with EngineRunner("lite:x86") as local, EngineRunner(f"lite:x86,python={env.python}") as runner:
        assert same_bits(run_ok(runner, FIXTURES / "unet"), run_ok(local, FIXTURES / "unet"))
        assert runner.facts()["transport"] == "python"


def test_ssh_transport_equals_local(natives, tmp_path):
    """STAND-IN ssh/scp (tests/sim/bin): "the board" is this machine running the real x86 wheel, so only ssh is
    fake; the worker and every file go over ssh and scp as they would to a board."""
    env = find_lite_env()
    assert env is not None
    board = tmp_path / "board"
    with (
        EngineRunner("lite:x86") as local,
        EngineRunner(f"lite:x86,ssh=board@sim,python={env.python},device_dir={board}") as runner,
    ):
        for name in ("unet", "transformer"):
            assert same_bits(run_ok(runner, FIXTURES / name), run_ok(local, FIXTURES / name))
        facts = runner.facts()
    assert facts["transport"] == "ssh" and facts["paddle_lite_version"] == RUNTIME_VERSION
    # Per-run directories are removed; the worker script stays.
    assert "lite_worker.py" in {p.name for p in board.iterdir()}
    assert not [p for p in board.iterdir() if p.name not in ("lite_worker.py", "opencl-cache")]


def test_ssh_to_an_unknown_host_stops_the_job(tmp_path):
    # Not a `crash` verdict: the bisection would then hunt a crashing op and blame the first one.
    model, inputs = load_model(FIXTURES / "unet"), load_fixture_inputs("unet")
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
def arm_phone(natives, stand_ins, monkeypatch):
    """STAND-IN adb with the REAL aarch64 runner and library: the stand-in runs the phone's aarch64 programs under
    QEMU (ADB_SIM_QEMU), so the ARM kernels are real and only adb (and the phone's Android) is fake."""
    monkeypatch.setenv("ADB_SIM_QEMU", shlex.join(natives["arm"]["launcher"]))
    device = stand_ins / "phone" / DEVICE_DIR.lstrip("/")
    shutil.rmtree(device, ignore_errors=True)
    libs = Path(natives["arm"]["lib"]).parent
    return f"adb,runner={natives['arm']['runner']},libs={libs},device_dir={DEVICE_DIR}", device


def test_adb_transport_runs_the_real_runner_and_equals_local(arm, arm_phone):
    options, device = arm_phone
    with EngineRunner(f"lite:arm,{options}") as runner:
        assert same_bits(run_ok(runner, FIXTURES / "unet"), run_ok(arm, FIXTURES / "unet"))
        assert sorted(p.name for p in device.iterdir()) == [
            "bisect_lite_runner",
            "libpaddle_light_api_shared.so",
            "opencl-cache",
        ]  # the per-run directories are gone
        facts = runner.facts()
    assert facts["transport"] == "adb" and facts["android"] == "14" and facts["device_model"] == "SimPhone"
    assert facts["paddle_lite_version"] == RUNTIME_VERSION and facts["opencl_valid"] is False  # an ARM-only library


def test_opencl_on_a_phone_without_opencl_is_an_engine_error(arm_phone, capsys):
    """The phone's library has no OpenCL (the real aarch64 one): exit 3 in one line, never an op blamed."""
    options, _ = arm_phone
    code, _, err = run_cli(
        ["compare", str(FIXTURES / "unet"), "--ref", "paddle", "--target", f"lite:opencl,{options}"], capsys
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 3 and len(lines) == 1 and "no usable OpenCL" in lines[0], err


def elf_library(path: Path, machine: int) -> Path:
    """A file whose ELF header names `machine` (62 x86-64): what lib= checks before anything runs."""
    header = bytearray(b"\x7fELF\x02\x01\x01" + bytes(57))
    header[18:20] = machine.to_bytes(2, "little")
    path.write_bytes(bytes(header))
    return path


def test_adb_lib_replaces_the_pushed_library(arm, arm_phone, natives, tmp_path):
    options, device = arm_phone
    fixed = tmp_path / "libfixed.so"  # a kernel developer's build: here a copy of the real aarch64 library
    shutil.copy(natives["arm"]["lib"], fixed)
    with EngineRunner(f"lite:arm,{options},lib={fixed}") as runner:
        assert same_bits(run_ok(runner, FIXTURES / "unet"), run_ok(arm, FIXTURES / "unet"))
        facts = runner.facts()
    # Pushed under the name the runner links with, whatever the file was called; named with its sha256 in facts.
    assert file_sha256(device / "libpaddle_light_api_shared.so") == file_sha256(fixed)
    assert facts["library"] == str(fixed) and facts["library_sha256"] == hashlib.sha256(fixed.read_bytes()).hexdigest()
    engine = create_engine(f"lite:arm,{options},lib={elf_library(tmp_path / 'x86.so', 62)}")
    try:
        assert "a phone runs aarch64" in (engine.problem() or "")
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------------ 9. end to end


def test_bisection_on_real_kernels_cuts_only_between_fused_groups(natives, opencl, tmp_path):
    """Real ARM kernels against real OpenCL kernels with one kernel made wrong (tests/faulty_lib.py: bilinear_interp):
    the culprit is that op, every probe cuts at the end of a fused group of the real optimised program, and the
    search stays within its log2 bound. (`verify` on the healthy and faulty libraries: tests/test_lite_native.py.)"""
    faulty = make_faulty_opencl_lib(Path(natives["opencl"]["lib"]), tmp_path / "faulty")
    model = load_model(FIXTURES / "unet")
    options = RunOptions(
        ref="lite:arm",
        target=f"lite:opencl,lib={faulty.path}",
        out=tmp_path / "out",
        inputs=FIXTURES / "unet" / "inputs.npz",
        minimise=False,  # shape shrinking is tested elsewhere and costs many probes
    )
    report = run_bisect(FIXTURES / "unet", options)
    assert report["verdict"] == "mismatch"
    [culprit] = report["culprits"]
    assert (culprit["type"], culprit["kind"]) == ("bilinear_interp_v2", "op"), culprit
    groups = fusion_groups(model, opencl.optimized_program(model))
    assert len(groups) < len(model.ops)  # conv+bn+relu are fused: fewer cut points than ops
    assert 0 < report["search_probes"] <= math.ceil(math.log2(len(groups))) + 1, report["probes"]
    ends = {g.last for g in groups}
    assert all(p["cut"] in ends for p in report["probes"]), report["probes"]


def test_engine_messages_drop_the_log_prefix():
    from bisect_lite.preflight import one_line

    text = "worker died (SIGABRT)\n[F 12/ 7 21: 0:45.549 /p//lite/core/program.h:248 Init] Check failed: opencl_valid:0"
    assert one_line(text) == "worker died (SIGABRT) Check failed: opencl_valid:0 (program.h:248 Init)"


def test_a_runner_failure_is_its_own_line_not_the_log_chatter_after_it():
    from bisect_lite.engines.lite import crash_details

    log = (
        "bisect_lite_runner: runtime failure: output 'layer_norm_0.tmp_0' holds no data\n"
        "[I 12/ 7 22:27:49.204 ...//lite/backends/opencl/cl_runtime.cc:41 ~CLRuntime] is_cl_runtime_initialized_:1\n"
    )
    details = crash_details(log, 3, "run", "runtime")
    assert details["message"].endswith("bisect_lite_runner: runtime failure: output 'layer_norm_0.tmp_0' holds no data")
