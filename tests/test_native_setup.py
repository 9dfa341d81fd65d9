"""`bisect-lite setup lite`'s native targets on REAL Paddle-Lite libraries (shared/paddle-lite beside the checkout):
the runner built for lite:opencl (x86 + OpenCL kernels on this machine's OpenCL platform, PoCL here) and cross-built
for lite:arm (ARM kernels under qemu-aarch64), their facts, the probe against numpy, the LD_LIBRARY_PATH substitution
of the library, fp16 refused on a device without cl_khr_fp16, and the one-line failures (exit 3).

Every build goes into a temporary copy of the environment's manifest: the provisioned environment is not touched.
Needs real Paddle-Lite and the libraries: in CI (env CI set) a missing one fails; locally they skip. The package
logic (apt-get as root, or one line naming the packages) is checked with stand-in dpkg-query/apt-get and needs
nothing real.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import require, run_cli

from bisect_lite import lite_native
from bisect_lite.fsutil import file_sha256
from bisect_lite.lite_env import LiteEnv, NativeTarget, convert_probe, find_lite_env, write_probe_model
from bisect_lite.lite_native import LIBRARY, PLACES, default_libraries, install_packages, missing_packages

# A dpkg-query (as setup calls it: -W -f=FORMAT PACKAGE...) on which every package but qemu-user is installed.
DPKG_QUERY_WITHOUT_QEMU = '#!/bin/sh\nshift 2\nfor p in "$@"; do [ "$p" = qemu-user ] || echo "$p installed"; done\n'
SCHEMA = {"runner", "lib", "lib_sha256", "version", "valid_targets", "launcher", "machine", "device"}


@pytest.fixture(scope="module")
def real_env() -> LiteEnv:
    env = find_lite_env()
    require(env is not None, "real Paddle-Lite is not provisioned (run `bisect-lite setup lite`)")
    assert env is not None
    libs = default_libraries()
    for spec in PLACES.values():
        lib = libs / spec.folder / "lib" / LIBRARY
        require(lib.is_file(), f"{lib} is missing (shared/paddle-lite beside the checkout)")
    return env


def private_copy(env: LiteEnv, directory: Path) -> LiteEnv:
    """The environment with its manifest in `directory` and no native target recorded yet."""
    directory.mkdir(parents=True, exist_ok=True)
    copy = dataclasses.replace(
        env, manifest=directory / "lite-env.json", native={}, runs=[r for r in env.runs if r not in env.native]
    )
    (directory / "lite-env.json").write_text(json.dumps(copy.to_json(), indent=2) + "\n")
    return copy


@pytest.fixture(scope="module")
def native_setup(real_env, tmp_path_factory) -> tuple[lite_native.NativeSetup, list[str]]:
    """setup's native part, once per module, on a private copy of the environment: (result, what it said)."""
    env = private_copy(real_env, tmp_path_factory.mktemp("env"))
    messages: list[str] = []
    return lite_native.setup_native(env, libs=default_libraries(), say=messages.append), messages


@pytest.fixture(scope="module")
def native(native_setup) -> lite_native.NativeSetup:
    return native_setup[0]


@pytest.fixture(scope="module")
def probes(real_env, tmp_path_factory) -> dict[str, Path]:
    """The probe model (y = x + b) converted by real opt for each place's valid targets."""
    work = tmp_path_factory.mktemp("probe")
    write_probe_model(work / "probe")
    nbs = {
        place: convert_probe(real_env.python, real_env.opt, work, spec.valid_targets, place)
        for place, spec in PLACES.items()
    }
    assert all(nbs.values()), nbs
    return nbs  # type: ignore[return-value]


def run_native(target: NativeTarget, *args: str | Path, env: dict[str, str] | None = None, qemu_env: str = ""):
    """Run a native target's runner as the engines do: through its launcher (QEMU takes -E VAR=VALUE)."""
    launcher = [*target.launcher, *(["-E", qemu_env] if qemu_env and target.launcher else [])]
    return subprocess.run(
        [*launcher, str(target.runner), *map(str, args)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def write_inputs(directory: Path, x: np.ndarray) -> Path:
    directory.mkdir(parents=True)
    (directory / "names.txt").write_text("x\n")
    np.save(directory / "0.npy", x)
    return directory


def one_line(stderr: str) -> bool:
    return len(stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ setup


def test_setup_builds_and_verifies_both_runners(native_setup):
    native, messages = native_setup
    assert native.problems == {}, native.problems
    assert native.source == "--libs" and native.libraries == default_libraries().resolve()
    env = native.env
    assert set(env.native) == {"arm", "opencl"} and {"arm", "opencl"} <= set(env.runs)
    assert any("building the runner" in m for m in messages) and any("probing" in m for m in messages)
    # The manifest on disk holds the interface's schema, and reads back as the same environment.
    recorded = json.loads(env.manifest.read_text())["native"]
    assert set(recorded) == {"arm", "opencl"} and all(set(t) == SCHEMA for t in recorded.values())
    assert LiteEnv.from_json(json.loads(env.manifest.read_text()), env.manifest) == env
    arm, opencl = env.native["arm"], env.native["opencl"]
    for place, target in env.native.items():
        assert target.lib == (default_libraries() / PLACES[place].folder / "lib" / LIBRARY).resolve()
        assert target.lib_sha256 == file_sha256(target.lib)
        # Built in the environment directory, never in the checkout or the library folder.
        assert target.runner.is_file() and target.runner.is_relative_to(env.manifest.parent / "native")
        # RUNPATH (LD_LIBRARY_PATH can replace the library), not RPATH (which would win over it).
        dynamic = subprocess.run(["readelf", "-d", str(target.runner)], capture_output=True, text=True).stdout
        assert f"Library runpath: [{target.lib.parent}]" in dynamic and "(RPATH)" not in dynamic
    assert arm.valid_targets == "arm" and arm.machine == "aarch64" and arm.version == "v2.13-rc"
    assert Path(arm.launcher[0]).name == "qemu-aarch64" and arm.launcher[1:] == ["-L", "/usr/aarch64-linux-gnu"]
    assert arm.device["emulator"].startswith("qemu-aarch64 7.") and "ARM" in arm.device["cpu"]
    assert opencl.valid_targets == "x86_opencl" and opencl.machine == "x86_64" and opencl.launcher == []
    # This x86-opencl library answers GetVersion() with nothing: recorded as such, not made up.
    assert opencl.version == ""
    assert opencl.device["opencl_platform"].startswith("Portable Computing Language")
    assert opencl.device["opencl_fp16"] is False and "CPU" in opencl.device["opencl_device"]


def test_setup_again_reuses_the_verified_runners(native):
    messages: list[str] = []
    before = native.env.manifest.read_text()
    again = lite_native.setup_native(native.env, say=messages.append)
    assert again.problems == {} and again.env == native.env and native.env.manifest.read_text() == before
    assert not any("building" in m or "probing" in m for m in messages), messages
    # Without --libs the folder recorded by the last setup is used, and said.
    assert messages[0].startswith(f"Paddle-Lite libraries: {default_libraries().resolve()}")


# ------------------------------------------------------------------------------------------------ the runners


def test_info_reports_the_library_and_device(native, probes):
    arm, opencl = native.env.native["arm"], native.env.native["opencl"]
    proc = run_native(arm, "--info", "--model", probes["arm"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["paddle_lite_version"] == "v2.13-rc" and info["library"] == str(arm.lib)
    assert info["device"].endswith("aarch64")  # the runner is an aarch64 program (QEMU runs it)
    # A CPU-only library asked about OpenCL: no OpenCL, no crash.
    assert info["opencl_valid"] is False and info["opencl_fp16"] is None and info["precision_used"] is None
    assert info["cpu"]["arm_parts"] == [] and info["cpu"]["online"] >= 1  # QEMU shows the host's /proc/cpuinfo

    proc = run_native(opencl, "--info", "--model", probes["opencl"])
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["paddle_lite_version"] == "" and info["library"] == str(opencl.lib)
    assert info["opencl_valid"] is True and info["opencl_fp16"] is False  # PoCL 3.1 has no cl_khr_fp16
    assert info["precision"] == "auto" and info["precision_used"] == "fp32"
    assert info["opencl_platform"] == opencl.device["opencl_platform"]
    assert info["opencl_device"] == opencl.device["opencl_device"]


@pytest.mark.parametrize("place", ["arm", "opencl"])
def test_probe_model_matches_numpy_on_real_kernels(native, probes, place, tmp_path):
    target = native.env.native[place]
    x = np.random.default_rng(7).standard_normal((3, 4)).astype(np.float32)
    inputs = write_inputs(tmp_path / "in", x)
    proc = run_native(
        target, "--model", probes[place], "--inputs", inputs, "--outputs", tmp_path / "out", "--runs", "2"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = x + np.array([0.5, -1.25, 2.0, 3.75], dtype=np.float32)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "0.npy"), expected, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "run0" / "0.npy"), np.load(tmp_path / "out" / "0.npy"))
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert len(info["seconds"]) == 2 and info["library"] == str(target.lib)
    assert info["precision_used"] == ("fp32" if place == "opencl" else None)


@pytest.mark.parametrize("place", ["arm", "opencl"])
def test_ld_library_path_replaces_the_library(native, probes, place, tmp_path):
    """lib=PATH rests on this: a library in another folder named by LD_LIBRARY_PATH (QEMU: -E) wins over RUNPATH."""
    target = native.env.native[place]
    other = tmp_path / "other"
    other.mkdir()
    copy = other / LIBRARY
    shutil.copyfile(target.lib, copy)
    with copy.open("ab") as f:
        f.write(b"bisect-lite: a distinct sha256")  # trailing bytes: the loader ignores them
    assert file_sha256(copy) != target.lib_sha256
    inputs = write_inputs(tmp_path / "in", np.ones((1, 4), np.float32))
    argv = ("--model", probes[place], "--inputs", inputs, "--outputs", tmp_path / "out")
    if target.launcher:
        proc = run_native(target, *argv, qemu_env=f"LD_LIBRARY_PATH={other}")
    else:
        proc = run_native(target, *argv, env={"LD_LIBRARY_PATH": str(other)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "info.json").read_text())["library"] == str(copy)


def test_fp16_on_a_device_without_fp16_fails_cleanly(native, probes, tmp_path):
    opencl, arm = native.env.native["opencl"], native.env.native["arm"]
    inputs = write_inputs(tmp_path / "in", np.ones((1, 4), np.float32))
    proc = run_native(
        opencl, "--model", probes["opencl"], "--inputs", inputs, "--outputs", tmp_path / "o16", "--precision", "fp16"
    )
    assert proc.returncode == 5, proc.stderr[-2000:]  # refused before loading: Paddle-Lite would abort
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("bisect_lite_runner:")]
    assert len(ours) == 1 and "unsupported precision" in ours[0] and "cl_khr_fp16" in ours[0], proc.stderr[-2000:]
    assert not (tmp_path / "o16").exists()
    proc = run_native(
        opencl, "--model", probes["opencl"], "--inputs", inputs, "--outputs", tmp_path / "o32", "--precision", "fp32"
    )
    assert proc.returncode == 0 and json.loads((tmp_path / "o32" / "info.json").read_text())["precision_used"] == "fp32"
    # The OpenCL precision means nothing to the ARM CPU library: the run goes on.
    proc = run_native(
        arm, "--model", probes["arm"], "--inputs", inputs, "--outputs", tmp_path / "oarm", "--precision", "fp16"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------------ failures


@pytest.fixture
def env_copy(real_env, tmp_path, monkeypatch) -> LiteEnv:
    """`setup lite` through the CLI on a private copy of the manifest."""
    copy = private_copy(real_env, tmp_path / "env")
    monkeypatch.setenv("BISECT_LITE_LITE_ENV", str(copy.manifest))
    monkeypatch.delenv(lite_native.LIBS_ENV, raising=False)
    return copy


def test_missing_library_folder_is_exit_3_in_one_line(env_copy, tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["setup", "lite", "--libs", str(tmp_path / "nowhere")], capsys)
    assert code == 3 and err.startswith("error: ") and one_line(err), err
    assert f"{tmp_path / 'nowhere'} does not exist" in err and "armv8/lib/" in err
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(lite_native.LIBS_ENV, str(tmp_path / "empty"))
    code, _, err = run_cli(["setup", "lite"], capsys)
    assert code == 3 and one_line(err) and "$BISECT_LITE_PADDLE_LITE_LIBS" in err and "holds no" in err, err
    assert json.loads(env_copy.manifest.read_text())["native"] == {}


def test_missing_qemu_is_exit_3_in_one_line(env_copy, tmp_path, capsys, monkeypatch):
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "armv8").symlink_to(default_libraries() / "armv8")  # an ARM library only
    bin_dir = tmp_path / "bin"  # a PATH with the cross compiler and no qemu-aarch64
    bin_dir.mkdir()
    (bin_dir / "aarch64-linux-gnu-g++").symlink_to(shutil.which("aarch64-linux-gnu-g++") or "/nonexistent")
    (bin_dir / "dpkg-query").write_text(DPKG_QUERY_WITHOUT_QEMU)
    (bin_dir / "dpkg-query").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # not root: the missing package is named, not installed
    code, out, err = run_cli(["setup", "lite", "--libs", str(libs)], capsys)
    # Progress lines come first (where the libraries came from), then the error in one line.
    assert code == 3 and "(--libs)" in err and err.strip().splitlines()[-1].startswith("error: "), err
    assert [ln.startswith("error: ") for ln in err.strip().splitlines()].count(True) == 1
    assert "lite:arm needs qemu-aarch64" in err and "install qemu-user" in err
    assert "(missing Debian packages qemu-user (not root: run `apt-get install qemu-user` as root))" in err
    # The Python part still works and is recorded; the native target is not.
    assert "runs here: x86" in out
    recorded = LiteEnv.from_json(json.loads(env_copy.manifest.read_text()), env_copy.manifest)
    assert recorded.native == {} and "arm" not in recorded.runs


def test_a_library_of_another_release_is_refused(native, real_env):
    arm = native.env.native["arm"]
    other_opt = dataclasses.replace(real_env, version="v2.99")  # as if opt were another release
    with pytest.raises(lite_native.EngineUnavailable) as info:
        lite_native.probe_place("arm", PLACES["arm"], arm.runner, arm.lib, arm.launcher, other_opt)
    assert "is Paddle-Lite v2.13-rc and opt is v2.99" in str(info.value)


def test_no_opencl_platform_names_what_to_install(native, real_env, tmp_path, monkeypatch):
    opencl = native.env.native["opencl"]
    (tmp_path / "vendors").mkdir()
    monkeypatch.setenv("OCL_ICD_VENDORS", str(tmp_path / "vendors"))  # the ICD loader finds no platform
    with pytest.raises(lite_native.EngineUnavailable) as info:
        lite_native.probe_place("opencl", PLACES["opencl"], opencl.runner, opencl.lib, [], real_env)
    assert "no usable OpenCL platform" in str(info.value) and "pocl-opencl-icd" in str(info.value)


def test_engines_json_shows_the_native_targets(native, capsys, monkeypatch):
    monkeypatch.setenv("BISECT_LITE_LITE_ENV", str(native.env.manifest))
    code, out, _ = run_cli(["engines", "--json"], capsys)
    facts = next(r for r in json.loads(out) if r["name"] == "lite")["paddle_lite"]
    assert code == 0 and set(facts["native"]) == {"arm", "opencl"}
    assert facts["native"]["opencl"]["valid_targets"] == "x86_opencl"


# ------------------------------------------------------------------------------------------------ packages


@pytest.fixture
def fake_apt(tmp_path, monkeypatch) -> Path:
    """dpkg-query that reports qemu-user missing, apt-get that logs its arguments: nothing is installed."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "dpkg-query").write_text(DPKG_QUERY_WITHOUT_QEMU)
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_missing_packages_are_installed_as_root(fake_apt, monkeypatch):
    assert missing_packages(["g++", "qemu-user", "g++-aarch64-linux-gnu"]) == ["qemu-user"]
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    said: list[str] = []
    assert install_packages(["qemu-user"], said.append) is None
    assert fake_apt.read_text().splitlines() == ["update -q", "install -y -q --no-install-recommends qemu-user"]
    assert said == ["installing qemu-user with apt-get (apt-get update first)"]


def test_missing_packages_are_named_when_not_root(fake_apt, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    line = install_packages(["qemu-user", "pocl-opencl-icd"], lambda _: None)
    assert line == (
        "missing Debian packages qemu-user, pocl-opencl-icd (not root: run `apt-get install qemu-user "
        "pocl-opencl-icd` as root)"
    )
    assert not fake_apt.exists()
