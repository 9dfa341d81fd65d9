"""`lite:arm` and `lite:opencl` on REAL kernels: Paddle-Lite's aarch64 library under QEMU and its OpenCL library on
this machine's OpenCL platform (PoCL), through the native runner that `bisect-lite setup lite` provisions.

Checked here: both match the x86 reference; what they state (QEMU and the CPU it shows, the OpenCL platform and
device, fp16 support and the precision really used, the library's path and sha256, the kernel caches and what
they saved); `lib=PATH` (a copy runs, a library of another release, of the wrong machine, or no OpenCL platform
is exit 3 in one line naming what to install); a library with one OpenCL kernel made wrong (tests/faulty_lib.py)
is found by `run` and told apart from the healthy one by `verify ... lib=` (1 / 0); precision=fp16 where the device
has no fp16; crash reasons and timeouts; the default engines; and a whole `run` between real ARM and real OpenCL
kernels. Models are small (QEMU costs seconds).

Needs the provisioned native runners: in CI (env CI set) a missing one fails every test here; locally they skip.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, load_fixture_inputs, run_cli
from faulty_lib import make_faulty_opencl_lib

from bisect_lite.compare import CompareConfig, compare_outputs
from bisect_lite.engines.base import Job
from bisect_lite.engines.native import read_outputs, write_inputs
from bisect_lite.engines.registry import create_engine, default_tolerance, resolve_engines
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.errors import EngineUnavailable
from bisect_lite.fsutil import file_sha256
from bisect_lite.inputs import save_npz
from bisect_lite.lite_env import find_lite_env
from bisect_lite.model import load_model

MODEL = "unet"  # 37 ops: conv, pool, conv_transpose, concat; 0.4 s a run under QEMU


@pytest.fixture(scope="module")
def kernel_home(natives, tmp_path_factory):
    """A cache root of this module's own, so that the first OpenCL run here compiles its kernels (measured)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BISECT_LITE_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def unet():
    return load_model(FIXTURES / MODEL), load_fixture_inputs(MODEL)


@pytest.fixture(scope="module")
def x86_reference(natives, unet):
    with EngineRunner("lite:x86") as runner:
        result = runner.run(*unet)
    assert result.ok, result.message
    return result.outputs


@pytest.fixture(scope="module")
def opencl_runs(kernel_home, unet):
    """lite:opencl twice on the same model: the first run compiles the kernels, the second finds them cached."""
    with EngineRunner("lite:opencl") as runner:
        cold = runner.run(*unet)
        warm = runner.run(*unet)
        facts = runner.facts()
    assert cold.ok and warm.ok, cold.message or warm.message
    return cold, warm, facts


@pytest.fixture(scope="module")
def arm_run(kernel_home, unet):
    with EngineRunner("lite:arm") as runner:
        result = runner.run(*unet)
        facts = runner.facts()
    assert result.ok, result.message
    return result, facts


def within_fp32(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> bool:
    config = CompareConfig(default=default_tolerance("paddle"))  # fp32: atol = rtol = 1e-4
    return compare_outputs(reference, outputs, config, names=list(reference)).passed


def one_line_exit(code: int, err: str, expected: int) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == expected and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------------ real kernels


def test_arm_kernels_under_qemu_match_the_x86_reference(arm_run, x86_reference):
    result, facts = arm_run
    assert within_fp32(x86_reference, result.outputs)
    assert facts["transport"] == "qemu" and facts["valid_targets"] == "arm" and facts["precision_used"] == "fp32"
    assert facts["emulator"].startswith("qemu-aarch64") and "ARM core" in facts["cpu"]
    assert facts["paddle_lite_version"] == facts["opt_version"]


def test_opencl_kernels_match_the_x86_reference_in_fp32(opencl_runs, x86_reference):
    cold, warm, facts = opencl_runs
    assert within_fp32(x86_reference, cold.outputs)
    assert all(np.array_equal(cold.outputs[k], warm.outputs[k], equal_nan=True) for k in cold.outputs)
    # The device has no cl_khr_fp16: precision=auto runs fp32 and the engine says so (judged as fp32).
    assert facts["opencl_fp16"] is False and facts["precision"] == "auto" and facts["precision_used"] == "fp32"
    assert create_engine("lite:opencl").declared_precision == "fp32"
    assert default_tolerance("lite:opencl") == default_tolerance("paddle")
    assert facts["transport"] == "local" and facts["valid_targets"] == "x86_opencl"
    assert facts["opencl_platform"] and facts["opencl_device"]


def test_facts_name_the_library_and_its_sha256(arm_run, opencl_runs, natives):
    for facts, native in ((arm_run[1], natives["arm"]), (opencl_runs[2], natives["opencl"])):
        assert facts["library"] == native["lib"]
        assert facts["library_sha256"] == file_sha256(Path(native["lib"]))


def test_the_kernel_cache_keeps_compilation_out_of_later_runs(opencl_runs, kernel_home):
    cold, warm, facts = opencl_runs
    assert facts["kernel_cache_runs_compiling"] == 1 and facts["kernel_programs_compiled"] > 0
    assert facts["kernel_cache_runs_warm"] == 1 and facts["kernel_binary_cache_hits"] == 1
    assert warm.seconds < cold.seconds / 3, (cold.seconds, warm.seconds)
    assert facts["kernel_compile_seconds_saved"] > 0
    assert facts["kernel_compile_seconds_saved"] <= cold.seconds  # no more than the cold run's compile
    assert Path(facts["kernel_cache"]).is_relative_to(kernel_home)  # bisect-lite's cache, not ~/.cache/pocl


def test_a_run_past_its_timeout_is_a_timeout_verdict_and_leaves_no_process(natives, unet, tmp_path, monkeypatch):
    monkeypatch.setenv("BISECT_LITE_CACHE", str(tmp_path))  # empty kernel caches: compiling takes seconds
    with EngineRunner("lite:opencl", timeout=2) as runner:
        start = time.perf_counter()
        result = runner.run(*unet)
    assert result.status == "timeout" and "no result within" in result.message
    assert time.perf_counter() - start < 20
    # The runner's command line names its private kernel-cache directory, under tmp_path: none may be left.
    left = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(tmp_path).encode() in cmdline.read_bytes():
                left.append(cmdline.parent.name)
        except OSError:
            pass
    assert not left


def test_a_runtime_failure_keeps_paddle_lites_reason_and_stage(kernel_home, unet, tmp_path):
    """The ARM library given an OpenCL .nb refuses it while building the program: a crash verdict whose message
    is Paddle-Lite's own fatal line (not the runner's whole log), stage `build`."""
    model, feeds = unet
    opencl, arm = create_engine("lite:opencl"), create_engine("lite:arm")
    try:
        source = FIXTURES / MODEL  # opt only reads it; the .nb goes to tmp_path
        nb = opencl.convert(source, tmp_path / "converted")
        save_npz(tmp_path / "inputs.npz", feeds)
        job = Job(
            source,
            tmp_path / "inputs.npz",
            tmp_path / "outputs.npz",
            tmp_path / "io.json",
            list(model.feeds),
            list(model.fetches),
            tmp_path / "work",
        )
        write_inputs(job.inputs_file, job.feeds, tmp_path / "in")
        ended = arm._local_executor().run(nb, tmp_path / "in", tmp_path / "out", [], 60)
        result = arm._runner_verdict(ended, job, tmp_path / "out")
    finally:
        opencl.close()
        arm.close()
    assert result.status == "crash" and result.info["stage"] == "build"
    assert "kernel for 'io_copy' is not supported" in result.message and len(result.message.splitlines()) == 1
    assert result.message.startswith("Paddle-Lite runtime exit code 3 while building the program"), result.message


# ------------------------------------------------------------------------------------------------ lib=PATH


def test_lib_runs_a_copy_of_the_library(kernel_home, natives, unet, arm_run, tmp_path):
    copy = tmp_path / "build" / "libpaddle_light_api_shared.so"
    copy.parent.mkdir()
    shutil.copy(natives["arm"]["lib"], copy)
    with EngineRunner(f"lite:arm,lib={copy}") as runner:
        result = runner.run(*unet)
        facts = runner.facts()
    assert result.ok, result.message
    assert all(np.array_equal(result.outputs[k], arm_run[0].outputs[k]) for k in result.outputs)
    assert facts["library"] == str(copy) and facts["library_sha256"] == file_sha256(copy)
    assert facts["transport"] == "qemu"


def test_a_faulty_opencl_library_is_found_and_verify_tells_it_from_the_healthy_one(
    kernel_home, natives, tmp_path, capsys
):
    """The kernel developer's loop on real kernels: one OpenCL kernel made wrong (tests/faulty_lib.py: bilinear_interp
    weighs the wrong row); `run` against real ARM kernels names the op that uses it, the repro records the library,
    and `verify --target lite:opencl,lib=...` is 0 on the healthy library and 1 on the faulty one."""
    faulty = make_faulty_opencl_lib(Path(natives["opencl"]["lib"]), tmp_path / "faulty")
    healthy = tmp_path / "healthy" / "libpaddle_light_api_shared.so"
    healthy.parent.mkdir()
    shutil.copy(natives["opencl"]["lib"], healthy)
    out = tmp_path / "out"
    target = f"lite:opencl,lib={faulty.path}"
    code, _, err = run_cli(
        ["run", str(FIXTURES / MODEL), "--ref", "lite:arm", "--target", target, "--out", str(out)], capsys
    )
    assert code == 1, err
    culprit = json.loads((out / "report.json").read_text())["culprits"][0]
    assert culprit["type"] in faulty.op_types and culprit["diagnosis"]["kind"] == "kernel_bug"
    repro = json.loads((out / "repro" / "repro.json").read_text())
    assert repro["target"]["facts"]["library_sha256"] == faulty.sha256 != faulty.healthy_sha256
    [row] = repro["target"]["kernels"]["ops"]
    assert row["type"] in faulty.op_types and row["place"] == "opencl" and not row["fallback"]
    for library, expected in ((healthy, 0), (faulty.path, 1)):
        code, _, err = run_cli(["verify", str(out / "repro"), "--target", f"lite:opencl,lib={library}"], capsys)
        assert code == expected, (library, err)


def test_lib_of_another_release_is_refused(kernel_home, natives, tmp_path, capsys):
    # The same library stating another release (its version string patched, same length): opt's .nb files are
    # refused by such a runtime, so no op may be blamed.
    data = Path(natives["arm"]["lib"]).read_bytes()
    assert data.count(b"v2.13-rc\x00") == 1
    other = tmp_path / "libpaddle_light_api_shared.so"
    other.write_bytes(data.replace(b"v2.13-rc\x00", b"v2.12-rc\x00"))
    code, _, err = run_cli(
        ["compare", str(FIXTURES / MODEL), "--ref", "lite:x86", "--target", f"lite:arm,lib={other}"], capsys
    )
    line = one_line_exit(code, err, 3)
    assert "v2.12-rc" in line and "v2.13-rc" in line


def test_lib_of_the_wrong_machine_is_refused(kernel_home, natives, capsys):
    code, _, err = run_cli(
        ["compare", str(FIXTURES / MODEL), "--ref", "lite:x86", "--target", f"lite:opencl,lib={natives['arm']['lib']}"],
        capsys,
    )
    line = one_line_exit(code, err, 3)
    assert "x86-64 library" in line and "aarch64" in line


def test_precision_fp16_without_device_fp16_is_refused(kernel_home, natives, tmp_path, capsys):
    code, _, err = run_cli(
        ["compare", str(FIXTURES / MODEL), "--ref", "lite:x86", "--target", "lite:opencl,precision=fp16"], capsys
    )
    line = one_line_exit(code, err, 3)
    assert "cl_khr_fp16" in line and "precision=auto or fp32" in line
    # Past that check (a stale manifest), the runner itself refuses before loading (its exit 5): still exit 3.
    engine = create_engine("lite:opencl,precision=fp16")
    try:
        nb = engine.convert(FIXTURES / MODEL, tmp_path / "converted")
        ended = engine._local_executor().run(nb, tmp_path, tmp_path / "out", ["--precision", "fp16"], 60)
        assert ended.code == 5, ended.log[-500:]
        with pytest.raises(EngineUnavailable, match="fp16"):
            engine._runner_verdict(ended, None, tmp_path / "out")
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------------ environment


@pytest.fixture
def manifest_copy(natives, tmp_path, monkeypatch):
    """A copy of the environment's manifest in effect (BISECT_LITE_LITE_ENV); call it with an edit to apply."""
    env = find_lite_env()
    assert env is not None and env.manifest is not None
    data = json.loads(Path(env.manifest).read_text())
    path = tmp_path / "lite-env.json"

    def write(edit) -> None:
        edit(data)
        path.write_text(json.dumps(data))

    monkeypatch.setenv("BISECT_LITE_LITE_ENV", str(path))
    write(lambda d: None)
    return write


def test_missing_qemu_is_exit_3_naming_the_package(manifest_copy, capsys):
    manifest_copy(lambda d: d["native"]["arm"].__setitem__("launcher", ["/nonexistent/qemu-aarch64", "-L", "/usr"]))
    code, _, err = run_cli(["compare", str(FIXTURES / MODEL), "--ref", "lite:arm", "--target", "lite:x86"], capsys)
    line = one_line_exit(code, err, 3)
    assert "qemu-aarch64" in line and "qemu-user" in line


def test_no_opencl_platform_is_exit_3_naming_the_packages(kernel_home, natives, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OCL_ICD_VENDORS", str(tmp_path))  # an ICD directory without a platform
    code, _, err = run_cli(["compare", str(FIXTURES / MODEL), "--ref", "lite:x86", "--target", "lite:opencl"], capsys)
    line = one_line_exit(code, err, 3)
    assert "no usable OpenCL platform" in line and "pocl-opencl-icd" in line and "ocl-icd-libopencl1" in line


# ------------------------------------------------------------------------------------------------ defaults and run


def test_real_arm_against_real_opencl_are_the_defaults(natives):
    ref, target, note = resolve_engines(None, None)
    assert (ref, target) == ("lite:arm", "lite:opencl") and note and "real ARM kernels under QEMU" in note


def test_run_with_the_defaults_compares_real_arm_with_real_opencl(kernel_home, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["run", str(FIXTURES / MODEL), "--out", str(out)], capsys)
    assert code == 0, err
    assert "MATCH" in stdout and "defaults --ref lite:arm --target lite:opencl" in err
    report = json.loads((out / "report.json").read_text())
    assert report["reference"]["engine"] == "lite:arm" and report["target"]["engine"] == "lite:opencl"
    assert report["precision"]["model"] == "tolerance"  # fp32 on PoCL: judged as fp32
    facts = report["target"]["facts"]
    assert facts["precision_used"] == "fp32" and facts["library_sha256"] and facts["opencl_device"]
    assert report["reference"]["facts"]["transport"] == "qemu"
    kernels = report["target"]["kernels"]
    assert kernels["place"] == "opencl" and kernels["kernels"] == kernels["on_place"] + kernels["fallback"] > 0
    markdown = (out / "report.md").read_text()
    assert "## Target kernels" in markdown and f"{kernels['on_place']} on opencl" in markdown
    assert "defaults --ref lite:arm --target lite:opencl" in markdown


# ------------------------------------------------------------------------------------------------ rendering


def test_issue_and_report_show_kernels_and_the_native_steps():
    """Rendering only (no kernels needed): the culprit's kernels and the runner command of a native target."""
    from bisect_lite.report.kernels import kernel_facts, kernel_lines
    from bisect_lite.repro.issue import render_issue

    described = {
        "optimized_ops": [
            {
                "type": "conv2d",
                "glue": False,
                "place": "opencl",
                "precision": "fp32",
                "layout": "ImageDefault",
                "ops": [0, 1],
            },
            {"type": "io_copy", "glue": True, "place": "opencl", "precision": "any", "layout": "NCHW"},
            {"type": "arg_max", "glue": False, "place": "x86", "precision": "fp32", "layout": "NCHW", "ops": [2]},
        ]
    }
    kernels = kernel_facts(described, "opencl", [2])
    assert (kernels["kernels"], kernels["on_place"], kernels["fallback"], kernels["glue_ops"]) == (2, 1, 1, 1)
    assert [(r["type"], r["fallback"]) for r in kernels["ops"]] == [("arg_max", True)]
    assert "| #2 | `arg_max` | x86 (host fallback) | fp32 | NCHW |" in kernel_lines(kernels)
    facts = {"transport": "local", "valid_targets": "x86_opencl", "precision_used": "fp32", "library": "/l/lib.so"}
    repro = {
        "op": {"type": "arg_max", "index": 2},
        "target": {"engine": "lite:opencl", "facts": {"place": "opencl", **facts}, "kernels": kernels},
        "reference": {"engine": "lite:arm", "facts": {}},
        "files": ["model.pdmodel"],
    }
    text = render_issue(repro)
    assert "### Kernels" in text and "x86 (host fallback)" in text
    assert "--valid_targets=x86_opencl" in text and "--precision fp32" in text and "`/l/lib.so`" in text
    assert "qemu-aarch64" not in text


def test_runner_outputs_are_copied_into_the_archive_one_file_at_a_time(tmp_path):
    """The runner's .npy files become the job's .npz keyed by the fetches in order, byte for byte, without being
    loaded (an every-tensor run of det returns 559 MB); a truncated or missing file is an incomplete output."""
    from bisect_lite.npz import NpzReader

    out = tmp_path / "out"
    out.mkdir()
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array(7, np.int64), np.zeros((0, 5), np.float32)]
    for i, a in enumerate(arrays):
        np.save(out / f"{i}.npy", a)
    (out / "names.txt").write_text("a/target_trans\nb\nc\n")
    (out / "info.json").write_text(json.dumps({"precision_used": "fp32"}))
    fetches = ["save_infer_model/scale_0.tmp_0", "n", "empty"]
    info, why = read_outputs(out, fetches, tmp_path / "outputs.npz")
    assert info == {"precision_used": "fp32"} and why == ""
    reader = NpzReader(tmp_path / "outputs.npz")
    assert list(reader) == fetches
    for name, a in zip(fetches, arrays, strict=True):
        got = reader[name]
        assert got.dtype == a.dtype and got.shape == a.shape and np.array_equal(got, a)
    reader.close()
    with zipfile.ZipFile(tmp_path / "outputs.npz") as archive:  # the runner's files as they are
        assert archive.read("n.npy") == (out / "1.npy").read_bytes()
    # damaged runner outputs: one file cut short, one missing, one count short
    data = (out / "0.npy").read_bytes()
    (out / "0.npy").write_bytes(data[:-4])
    info, why = read_outputs(out, fetches, tmp_path / "bad.npz")
    assert info is None and "incomplete runner outputs" in why and not (tmp_path / "bad.npz").exists()
    (out / "0.npy").write_bytes(data)
    (out / "2.npy").unlink()
    assert read_outputs(out, fetches, tmp_path / "bad.npz")[0] is None
    info, why = read_outputs(out, fetches[:2], tmp_path / "short.npz")
    assert info is None and why == "runner returned 3 outputs, expected 2"

