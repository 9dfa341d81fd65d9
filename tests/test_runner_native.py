"""The device runner: the native C++ runner compiled on this host against the REAL Paddle-Lite library of the
paddlelite wheel (runners/android/host: bit-exact against the Python API, and its header checked against the
library's ABI), the same source against a stub library (what the x86 library cannot show: OpenCL config calls,
failing runs, every dtype), the simulated Python runner (tests/sim/bin/bisect_lite_runner) and the stand-in adb
(tests/sim/bin/adb)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from numpy.lib import format as npformat

ROOT = Path(__file__).resolve().parents[1]
SIM = ROOT / "tests" / "sim"
RUNNER_SRC = ROOT / "runners" / "android" / "bisect_lite_runner.cc"
STUB_SRC = SIM / "stub_light_api.cc"
STUB_OPENCL_SRC = SIM / "stub_opencl.cc"  # a stand-in libOpenCL.so: the device the runner reads fp16 from
HOST_DIR = ROOT / "runners" / "android" / "host"
HOST_INCLUDE = HOST_DIR / "include"
HOST_BUILD = HOST_DIR / "build.sh"
LITE_WORKER = ROOT / "bisect_lite" / "engines" / "lite_worker.py"
SIM_RUNNER = SIM / "bin" / "bisect_lite_runner"
ADB = SIM / "bin" / "adb"
REAL_SIM_LITE = SIM / "paddlelite" / "lite.py"
DEVICE_DIR = "/data/local/tmp/bisect_lite"

# A tiny stand-in for paddlelite.lite, enough to test the simulated runner's protocol on its own. It logs
# config calls in the same format as the C++ stub and echoes inputs like it.
FAKE_LITE = textwrap.dedent("""
    import json
    import os

    import numpy as np


    class CLPrecisionType:
        CL_PRECISION_AUTO, CL_PRECISION_FP32, CL_PRECISION_FP16 = 0, 1, 2


    class CLTuneMode:
        CL_TUNE_NONE, CL_TUNE_RAPID, CL_TUNE_NORMAL, CL_TUNE_EXHAUSTIVE = 0, 1, 2, 3


    def _log(line):
        path = os.environ.get("STUB_CONFIG_LOG")
        if path:
            with open(path, "a") as f:
                f.write(line + "\\n")


    class MobileConfig:
        def set_model_from_file(self, path):
            self.model = path
            _log(f"set_model_from_file {path}")

        def set_opencl_binary_path_name(self, path, name):
            _log(f"set_opencl_binary_path_name {path} {name}")

        def set_opencl_tune(self, mode, path="", name="", lws_repeats=4):
            _log(f"set_opencl_tune {int(mode)} {path} {name} {lws_repeats}")

        def set_opencl_precision(self, p):
            _log(f"set_opencl_precision {int(p)}")

        def set_threads(self, n):
            _log(f"set_threads {n}")

        def set_power_mode(self, m):
            _log(f"set_power_mode {int(m)}")


    class Tensor:
        def __init__(self):
            self.array = None

        def from_numpy(self, array):
            self.array = np.array(array, copy=True)

        def numpy(self):
            return self.array.copy()

        def shape(self):
            return list(self.array.shape)


    class Predictor:
        def __init__(self, spec):
            self.spec = spec
            self.inputs = [Tensor() for _ in spec["inputs"]]
            self.outputs = [Tensor() for _ in self.get_output_names()]
            self.runs = 0

        def get_input_names(self):
            return list(self.spec["inputs"])

        def get_output_names(self):
            return ["out_" + n for n in self.spec["inputs"]] + (["run_count"] if self.spec["run_counter"] else [])

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

        def get_version(self):
            return self.spec["version"]

        def run(self):
            self.runs += 1
            if self.spec["fail_run"]:
                raise RuntimeError("fake: run fails as the model asks")
            for src, dst in zip(self.inputs, self.outputs):
                dst.array = src.array.copy()
            if self.spec["run_counter"]:
                self.outputs[-1].array = np.array(self.runs, dtype=np.int64)


    def create_paddle_predictor(config):
        with open(config.model) as f:
            spec = json.load(f)
        _log("create_predictor")
        return Predictor(spec)
""")


# ------------------------------------------------------------------------------------------------ helpers


def sample_arrays() -> dict[str, np.ndarray]:
    """Every dtype, with the values most likely to be mangled: NaN payloads, -0, subnormals, int64 > 2**53."""
    f32 = (
        np.array(
            [
                0x00000000,
                0x80000000,
                0x3FC00000,
                0x7F800000,
                0xFF800000,
                0x7FC00001,
                0xFFFFFFFF,
                0x00000001,
                0x7F7FFFFF,
                0x12345678,
            ],
            dtype=np.uint32,
        )
        .view(np.float32)
        .reshape(2, 5)
    )
    f16 = np.array([0x0000, 0x8000, 0x3E00, 0x7C00, 0x7E01, 0x0001, 0x7BFF, 0xFFFF], dtype=np.uint16).view(np.float16)
    return {
        "f32": f32,
        "f16": f16.reshape(2, 2, 2),
        "f64": np.array([np.pi, -0.0, 5e-324, np.nan], dtype=np.float64),
        "i64": np.array(
            [2**40 + 1, -(2**40) - 7, 2**62 + 12345, 2**63 - 1, -(2**63), 2**53 + 1], dtype=np.int64
        ).reshape(3, 2),
        "i32": np.array([-(2**31), 2**31 - 1, 0, -1, 123456789], dtype=np.int32),
        "i16": np.array([-(2**15), 2**15 - 1, 7], dtype=np.int16),
        "i8": np.array([[-128, 127], [0, -1]], dtype=np.int8),
        "u8": np.arange(256, dtype=np.uint8).reshape(16, 16),
        "flag": np.array([True, False, True, True]),
        "i64_0d": np.array(2**41 + 5, dtype=np.int64),
        "f32_0d": np.array(-2.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "f32_1x": np.ones((1, 1, 1), dtype=np.float32),
    }


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def write_inputs(directory: Path, feeds: dict[str, np.ndarray], versions: dict[str, tuple[int, int]] | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "names.txt").write_text("".join(f"{n}\n" for n in feeds))
    for i, (name, arr) in enumerate(feeds.items()):
        version = (versions or {}).get(name, (1, 0))
        with open(directory / f"{i}.npy", "wb") as f:
            npformat.write_array(f, arr, version=version, allow_pickle=False)
    return directory


def read_outputs(directory: Path) -> dict[str, np.ndarray]:
    names = (directory / "names.txt").read_text().splitlines()
    return {n: np.load(directory / f"{i}.npy", allow_pickle=False) for i, n in enumerate(names)}


def check_npy_layout(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:8] == b"\x93NUMPY\x01\x00", path
    header_len = int.from_bytes(raw[8:10], "little")
    assert (10 + header_len) % 64 == 0
    header = raw[10 : 10 + header_len].decode("latin1")
    assert header.endswith("\n") and "'fortran_order': False" in header
    descr = header.split("'descr': '")[1][:3]
    assert descr[0] in "<|"


def one_line(stderr: str) -> bool:
    return len(stderr.strip().splitlines()) == 1


class Runner:
    """One runner flavour: how to make a model file for it and how to invoke it."""

    def __init__(self, kind: str, argv: list[str], env: dict[str, str]) -> None:
        self.kind, self.argv, self.env = kind, argv, env

    def model(
        self,
        path: Path,
        inputs: list[str],
        *,
        run_counter: bool = False,
        fail_run: bool = False,
        version: str = "9.9-test",
    ) -> Path:
        if self.kind == "native":
            lines = ["bisect-lite-stub-model", f"version {version}", *[f"input {n}" for n in inputs]]
            lines += ["run_counter"] * run_counter + ["fail_run"] * fail_run
            path.write_text("\n".join(lines) + "\n")
        else:
            spec = {"inputs": inputs, "run_counter": run_counter, "fail_run": fail_run, "version": version}
            path.write_text(json.dumps(spec))
        return path

    def __call__(self, *args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, **self.env, **(env or {})}
        return subprocess.run(
            [*self.argv, *map(str, args)],
            capture_output=True,
            text=True,
            errors="replace",
            env=full_env,
            timeout=120,
            check=False,
        )


def compile_native(out: Path, *extra: str) -> Path:
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: cannot compile the native runner on this host")
    cmd = [
        gxx,
        "-std=c++14",
        "-Wall",
        "-Werror",
        *extra,
        "-I",
        str(HOST_INCLUDE),
        str(RUNNER_SRC),
        str(STUB_SRC),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def native_binary(tmp_path_factory) -> Path:
    return compile_native(tmp_path_factory.mktemp("native") / "runner")


@pytest.fixture(scope="module")
def stub_opencl_dir(tmp_path_factory) -> Path:
    """A directory holding the stand-in libOpenCL.so (put first on LD_LIBRARY_PATH)."""
    out = tmp_path_factory.mktemp("stub_opencl")
    cmd = ["g++", "-std=c++14", "-Wall", "-Werror", "-shared", "-fPIC", str(STUB_OPENCL_SRC), "-o"]
    proc = subprocess.run([*cmd, str(out / "libOpenCL.so")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def fake_lite_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fake_lite")
    (base / "paddlelite").mkdir()
    (base / "paddlelite" / "__init__.py").write_text("")
    (base / "paddlelite" / "lite.py").write_text(FAKE_LITE)
    return base


@pytest.fixture(params=["native", "sim"])
def runner(request, tmp_path) -> Runner:
    env = {"STUB_CONFIG_LOG": str(tmp_path / "config.log")}
    if request.param == "native":
        env["LD_LIBRARY_PATH"] = str(request.getfixturevalue("stub_opencl_dir"))
        return Runner("native", [str(request.getfixturevalue("native_binary"))], env)
    env["BISECT_LITE_SIM_DIR"] = str(request.getfixturevalue("fake_lite_dir"))
    return Runner("sim", [sys.executable, str(SIM_RUNNER)], env)


def config_log(tmp_path: Path) -> list[str]:
    path = tmp_path / "config.log"
    return path.read_text().splitlines() if path.exists() else []


# ------------------------------------------------------------------------------------------------ protocol


def test_all_dtypes_round_trip_bit_exact(runner, tmp_path):
    feeds = sample_arrays()
    versions = {"f16": (2, 0), "u8": (3, 0)}
    in_dir = write_inputs(tmp_path / "in", feeds, versions)
    # The predictor's input order differs from names.txt: matching is by name.
    order = list(reversed(feeds))
    model = runner.model(tmp_path / "m.nb", order)
    proc = runner("--model", model, "--inputs", in_dir, "--outputs", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    outs = read_outputs(tmp_path / "out")
    assert list(outs) == [f"out_{n}" for n in order]
    for name, arr in feeds.items():
        assert same_bits(outs[f"out_{name}"], arr), name
    for i in range(len(order)):
        check_npy_layout(tmp_path / "out" / f"{i}.npy")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert not (tmp_path / "out" / "run0").exists()

    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert set(info) >= {"paddle_lite_version", "precision", "precision_used", "opencl_valid", "opencl_fp16"}
    assert set(info) >= {"opencl_platform", "opencl_device", "library", "cpu", "seconds", "device", "runner_version"}
    assert info["paddle_lite_version"] == "9.9-test"
    assert info["precision"] == "auto" and info["precision_used"] == "fp16"  # AUTO on a device with fp16
    assert info["opencl_valid"] is True and info["opencl_fp16"] is True
    assert isinstance(info["cpu"]["arm_parts"], list) and info["cpu"]["online"] >= 1
    assert len(info["seconds"]) == 1 and info["seconds"][0] >= 0
    assert isinstance(info["device"], str) and info["device"]


def test_runs_keep_first_and_last(runner, tmp_path):
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "ids": np.array([2**45, -3], dtype=np.int64)}
    in_dir = write_inputs(tmp_path / "in", feeds)
    model = runner.model(tmp_path / "m.nb", ["x", "ids"], run_counter=True)
    proc = runner("--model", model, "--inputs", in_dir, "--outputs", tmp_path / "out", "--runs", "3")
    assert proc.returncode == 0, proc.stderr
    last, first = read_outputs(tmp_path / "out"), read_outputs(tmp_path / "out" / "run0")
    assert list(last) == list(first) == ["out_x", "out_ids", "run_count"]
    assert int(first["run_count"]) == 1 and int(last["run_count"]) == 3
    assert first["run_count"].shape == () and first["run_count"].dtype == np.int64
    for name, arr in feeds.items():
        assert same_bits(first[f"out_{name}"], arr) and same_bits(last[f"out_{name}"], arr)
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert len(info["seconds"]) == 3


@pytest.mark.parametrize("opencl", ["1", "fp32", "0"])
def test_config_calls_and_info(runner, tmp_path, opencl):
    in_dir = write_inputs(tmp_path / "in", {"x": np.ones(3, np.float32)})
    model = runner.model(tmp_path / "m.nb", ["x"])
    env = {"STUB_OPENCL": opencl, "BISECT_LITE_SIM_OPENCL": opencl}
    proc = runner(
        "--model",
        model,
        "--inputs",
        in_dir,
        "--outputs",
        tmp_path / "out",
        "--precision",
        "fp16",
        "--tune",
        "exhaustive",
        "--tune-file",
        "/cache/dir/m.tune",
        "--cl-cache=/cache/m.bin",
        "--threads",
        "4",
        "--power-mode",
        "0",
        env=env,
    )
    calls = config_log(tmp_path)
    if opencl == "fp32":
        # fp16 on a device without cl_khr_fp16: refused before any model is loaded (Paddle-Lite would abort).
        assert proc.returncode == 5 and one_line(proc.stderr), proc.stderr
        assert "unsupported precision: --precision fp16 needs an OpenCL device with cl_khr_fp16" in proc.stderr
        assert calls == [] and not (tmp_path / "out" / "info.json").exists()
        return
    assert proc.returncode == 0, proc.stderr
    assert calls[0] == f"set_model_from_file {model}"
    opencl_calls = [
        "set_opencl_binary_path_name /cache m.bin",
        "set_opencl_tune 3 /cache/dir m.tune 4",
        "set_opencl_precision 2",
    ]
    assert calls[1:-1] == (opencl_calls if opencl != "0" else []) + ["set_power_mode 0", "set_threads 4"]
    assert calls[-1] == "create_predictor"
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert info["precision"] == "fp16"
    assert info["opencl_valid"] is (opencl != "0")
    assert info["opencl_fp16"] is (True if opencl == "1" else None)
    assert info["precision_used"] == ("fp16" if opencl == "1" else None)  # no OpenCL: no OpenCL precision
    if runner.kind == "native" and opencl == "1":
        # Read from the device through the OpenCL C API (here the stand-in libOpenCL.so).
        assert info["opencl_platform"] == "Stub OpenCL (OpenCL 1.2 stub)"
        assert info["opencl_device"] == "Stub GPU (GPU, driver 9.9-stub)"
    elif opencl == "0":
        assert info["opencl_platform"] is None and info["opencl_device"] is None


def test_tune_file_and_defaults(runner, tmp_path):
    in_dir = write_inputs(tmp_path / "in", {"x": np.ones(3, np.float32)})
    (tmp_path / "sub").mkdir()
    model = runner.model(tmp_path / "sub" / "m.nb", ["x"])
    proc = runner(
        "--model",
        model,
        "--inputs",
        in_dir,
        "--outputs",
        tmp_path / "a" / "b" / "out",
        "--tune",
        "rapid",
        "--tune-file",
        tmp_path / "t.tune",
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "a" / "b" / "out" / "info.json").exists()
    # AUTO is decided by the runner and passed explicitly: fp16 (2) on this device, which lists cl_khr_fp16.
    assert config_log(tmp_path)[1:-1] == [f"set_opencl_tune 1 {tmp_path} t.tune 4", "set_opencl_precision 2"]
    # Without --tune-file the tune file sits next to the model, named after it.
    (tmp_path / "config.log").unlink()
    proc = runner("--model", model, "--inputs", in_dir, "--outputs", tmp_path / "out2", "--tune", "normal")
    assert proc.returncode == 0, proc.stderr
    assert config_log(tmp_path)[1:-1] == [f"set_opencl_tune 2 {tmp_path / 'sub'} m.nb.tune 4", "set_opencl_precision 2"]
    # --tune none (the default) ignores --tune-file; no threads or power mode unless asked. AUTO on a device
    # without fp16 is fp32 (1).
    (tmp_path / "config.log").unlink()
    fp32_device = {"STUB_OPENCL": "fp32", "BISECT_LITE_SIM_OPENCL": "fp32"}
    out3 = tmp_path / "out3"
    proc = runner("--model", model, "--inputs", in_dir, "--outputs", out3, "--tune-file", "x/y.tune", env=fp32_device)
    assert proc.returncode == 0, proc.stderr
    assert config_log(tmp_path)[1:-1] == ["set_opencl_precision 1"]
    assert json.loads((out3 / "info.json").read_text())["precision_used"] == "fp32"


def test_info_mode(runner, tmp_path):
    proc = runner("--info", env={"STUB_OPENCL": "fp32", "BISECT_LITE_SIM_OPENCL": "fp32"})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["opencl_valid"] is True and info["opencl_fp16"] is False and info["precision_used"] == "fp32"
    assert info["paddle_lite_version"] is None and "seconds" not in info
    model = runner.model(tmp_path / "m.nb", ["x"], version="2.13-x")
    proc = runner("--info", "--model", model)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["paddle_lite_version"] == "2.13-x"


def _bad_npy(kind: str, path: Path) -> None:
    good = tmp_bytes(np.arange(6, dtype=np.float32).reshape(2, 3))
    if kind == "fortran":
        with open(path, "wb") as f:
            npformat.write_array(f, np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
        assert b"'fortran_order': True" in path.read_bytes()
    elif kind == "magic":
        path.write_bytes(b"NOTNUMPY" + good[8:])
    elif kind == "truncated":
        path.write_bytes(good[:-3])
    elif kind == "trailing":
        path.write_bytes(good + b"\0")
    elif kind == "header":
        path.write_bytes(good.replace(b"'shape': (2, 3)", b"'shape': [2, 3]"))
    elif kind == "big_endian":
        path.write_bytes(tmp_bytes(np.arange(3, dtype=">i4")))
    elif kind == "complex":
        path.write_bytes(tmp_bytes(np.zeros(2, np.complex64)))
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "version":
        path.write_bytes(good[:6] + b"\x09\x00" + good[8:])


def tmp_bytes(arr: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    npformat.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind", ["fortran", "magic", "truncated", "trailing", "header", "big_endian", "complex", "empty_file", "version"]
)
def test_bad_npy_is_input_error(runner, tmp_path, kind):
    in_dir = write_inputs(tmp_path / "in", {"x": np.ones(3, np.float32), "y": np.ones(2, np.int64)})
    _bad_npy(kind, in_dir / "1.npy")
    model = runner.model(tmp_path / "m.nb", ["x", "y"])
    proc = runner("--model", model, "--inputs", in_dir, "--outputs", tmp_path / "out")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert one_line(proc.stderr) and "1.npy" in proc.stderr
    if kind == "fortran":
        assert "fortran" in proc.stderr
    assert not (tmp_path / "out" / "info.json").exists()


def test_usage_and_input_errors(runner, tmp_path):
    in_dir = write_inputs(tmp_path / "in", {"x": np.ones(3, np.float32)})
    model = runner.model(tmp_path / "m.nb", ["x", "missing_feed"])
    out = tmp_path / "out"
    cases = [
        ["--model", model, "--inputs", in_dir, "--outputs", out],  # model input not in names.txt
        ["--model", tmp_path / "nope.nb", "--inputs", in_dir, "--outputs", out],
        ["--model", model, "--inputs", tmp_path / "nope", "--outputs", out],
        ["--model", model, "--inputs", in_dir],
        ["--model", model, "--inputs", in_dir, "--outputs", out, "--precision", "int8"],
        ["--model", model, "--inputs", in_dir, "--outputs", out, "--tune", "fast"],
        ["--model", model, "--inputs", in_dir, "--outputs", out, "--runs", "0"],
        ["--model", model, "--inputs", in_dir, "--outputs", out, "--threads", "two"],
        ["--model", model, "--inputs", in_dir, "--outputs", out, "--power-mode", "9"],
        ["--model", model, "--inputs", in_dir, "--outputs", out, "--cl-cache", "dir/"],
        ["--model", model, "--inputs", in_dir, "--outputs", out, "--bogus"],
        ["--model", model, "--inputs", in_dir, "--outputs"],
    ]
    for args in cases:
        proc = runner(*args)
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
        assert one_line(proc.stderr), (args, proc.stderr)
    proc = runner(*cases[0])
    assert "missing_feed" in proc.stderr

    (tmp_path / "in2").mkdir()
    (tmp_path / "in2" / "names.txt").write_text("x\n")
    proc = runner("--model", runner.model(tmp_path / "m1.nb", ["x"]), "--inputs", tmp_path / "in2", "--outputs", out)
    assert proc.returncode == 2 and "0.npy" in proc.stderr
    write_inputs(tmp_path / "in3", {"x": np.ones(1, np.float32)})
    (tmp_path / "in3" / "names.txt").write_text("x\n\ny\n")
    proc = runner("--model", tmp_path / "m1.nb", "--inputs", tmp_path / "in3", "--outputs", out)
    assert proc.returncode == 2 and "empty" in proc.stderr


def test_runtime_failures_exit_3(runner, tmp_path):
    in_dir = write_inputs(tmp_path / "in", {"x": np.ones(3, np.float32)})
    proc = runner(
        "--model",
        runner.model(tmp_path / "m.nb", ["x"], fail_run=True),
        "--inputs",
        in_dir,
        "--outputs",
        tmp_path / "out",
    )
    assert proc.returncode == 3 and one_line(proc.stderr), proc.stderr
    (tmp_path / "garbage.nb").write_bytes(b"\x00\x01garbage")
    proc = runner("--model", tmp_path / "garbage.nb", "--inputs", in_dir, "--outputs", tmp_path / "out")
    assert proc.returncode == 3 and one_line(proc.stderr), proc.stderr
    assert not (tmp_path / "out" / "info.json").exists()


def test_extra_feeds_are_ignored_and_crlf_names(runner, tmp_path):
    feeds = {"unused": np.zeros(2, np.uint8), "x": np.full(4, 7, np.int32)}
    in_dir = write_inputs(tmp_path / "in", feeds)
    (in_dir / "names.txt").write_bytes(b"unused\r\nx\r\n")
    proc = runner("--model", runner.model(tmp_path / "m.nb", ["x"]), "--inputs", in_dir, "--outputs", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert same_bits(read_outputs(tmp_path / "out")["out_x"], feeds["x"])


# ------------------------------------------------------------------------------------------------ real library
# The runner built by runners/android/host/build.sh against the paddlelite wheel's own lite.so (x86 kernels
# only, so x86 .nb files), with bisect-lite's header (host/include) checked against that library.

REAL_MODEL_FIXTURES = ("transformer", "unet", "fp16_overflow")  # the fixtures real opt 2.13-rc converts for x86
DTYPE_MODEL_FETCHES = ["top", "picked", "kk", "k2", "ids2", "prob"]


def _real_lite_env():
    """The provisioned real Paddle-Lite (`bisect-lite setup lite`, or $BISECT_LITE_LITE_ENV), or None."""
    try:
        from bisect_lite.lite_env import find_lite_env
    except ImportError:
        return None
    return find_lite_env()


def _build_dtype_model(paddle, model_dir: Path) -> dict[str, np.ndarray]:
    """Three feeds (float32, int64, int32) and six fetches (int64, float32, float32, int32, int64, float32).

    Ops are appended directly: paddle 3.3's functional API refuses legacy static mode (see fixtures/generate.py).
    """
    vt_fp32, vt_int32, vt_int64 = 5, 2, 3
    program = paddle.static.Program()
    block = program.global_block()
    with paddle.static.program_guard(program, paddle.static.Program()):
        x = paddle.static.data("x", [2, 8], "float32")
        ids = paddle.static.data("ids", [3], "int64")
        k = paddle.static.data("k", [2, 8], "int32")
    w = block.create_parameter(name="w", shape=[8, 8], dtype="float32")

    def op(type_: str, inputs: dict, out: str, var_dtype: str = "float32", **attrs):
        var = block.create_var(name=out, dtype=var_dtype)
        block.append_op(type=type_, inputs=inputs, outputs={"Out": [var]}, attrs=attrs)
        return var

    h = op("matmul_v2", {"X": [x], "Y": [w]}, "h", trans_x=False, trans_y=False)
    prob = op("softmax", {"X": [h]}, "prob", axis=-1)
    top = op("arg_max", {"X": [h]}, "top", "int64", axis=-1, keepdims=False, flatten=False, dtype=vt_int64)
    picked = op("gather", {"X": [prob], "Index": [ids]}, "picked", axis=0)
    kf = op("cast", {"X": [k]}, "kf", in_dtype=vt_int32, out_dtype=vt_fp32)
    kk = op("elementwise_mul", {"X": [kf], "Y": [prob]}, "kk", axis=-1)
    k2 = op("elementwise_add", {"X": [k], "Y": [k]}, "k2", "int32", axis=-1)
    ids2 = op("elementwise_add", {"X": [ids], "Y": [ids]}, "ids2", "int64", axis=-1)
    fetches = [top, picked, kk, k2, ids2, prob]
    assert [v.name for v in fetches] == DTYPE_MODEL_FETCHES

    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    rng = np.random.default_rng(11)
    with paddle.static.scope_guard(scope):
        scope.var("w").get_tensor().set(rng.standard_normal((8, 8)).astype(np.float32), paddle.CPUPlace())
        paddle.static.save_inference_model(str(model_dir / "model"), [x, ids, k], fetches, exe, program=program)
    return {
        "x": rng.standard_normal((2, 8)).astype(np.float32),
        "ids": np.array([1, 0, 1], dtype=np.int64),
        "k": (np.arange(16, dtype=np.int32).reshape(2, 8) - 5) * 7919,
    }


class RealLite:
    def __init__(self, env, base: Path) -> None:
        self.python = Path(env.python)
        self.site_packages = Path(env.site_packages)
        self.base = base
        self.runner = base / "build" / "bisect_lite_runner"
        self.abi_check = base / "build" / "abi_check"
        self.lite_so = (base / "build" / "lib" / "liblite_pybind.so").resolve()
        self.models: dict[str, tuple[Path, dict[str, np.ndarray]]] = {}  # name -> (.nb, feeds)
        code = "import sysconfig as s; print(s.get_config_var('LIBDIR')); print('python' + s.get_config_var('VERSION'))"
        lines = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True, check=True).stdout
        self.libpython_dir, self.libpython = lines.split()

    def run(self, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.runner), *map(str, args)], capture_output=True, text=True, timeout=timeout, check=False
        )

    def build(self, out: Path, **env: str) -> subprocess.Popen:
        """Start runners/android/host/build.sh (env: HOST_INCLUDE, TARGETS)."""
        return subprocess.Popen(
            ["bash", str(HOST_BUILD), str(out)],
            env={**os.environ, "PYTHON": str(self.python), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture(scope="module")
def real_lite(tmp_path_factory, request) -> RealLite:
    from conftest import FIXTURES, load_fixture_inputs

    env = _real_lite_env()
    require(env is not None, "real Paddle-Lite is not provisioned (run `bisect-lite setup lite`)")
    require(shutil.which("g++") is not None, "g++ not found: cannot build the runner against the real library")
    real = RealLite(env, tmp_path_factory.mktemp("real_lite"))
    build = real.build(real.base / "build")  # compiles while the models convert
    try:
        sources = {"dtypes": real.base / "dtypes"}
        # paddle is imported (about a second) only once real Paddle-Lite is known to be there.
        feeds = {"dtypes": _build_dtype_model(request.getfixturevalue("paddle"), sources["dtypes"])}
        for name in REAL_MODEL_FIXTURES:
            sources[name], feeds[name] = FIXTURES / name, load_fixture_inputs(name)
        for name, src in sources.items():
            proc = subprocess.run(
                [
                    str(env.python),  # opt is a Python script of the environment
                    str(env.opt),
                    f"--model_file={src / 'model.pdmodel'}",
                    f"--param_file={src / 'model.pdiparams'}",
                    "--valid_targets=x86",
                    "--optimize_out_type=naive_buffer",
                    f"--optimize_out={real.base / name}",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            nb = real.base / f"{name}.nb"
            assert proc.returncode == 0 and nb.exists(), f"opt {name}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            real.models[name] = (nb, feeds[name])
        out, _ = build.communicate(timeout=600)
    finally:
        if build.poll() is None:
            build.kill()
            build.wait()
    assert build.returncode == 0, out
    return real


def python_api_outputs(real: RealLite, tmp_path: Path, jobs: dict[str, list[str]]) -> tuple[dict, str]:
    """Run each model with Paddle-Lite's Python API through bisect-lite's own worker (one process).

    jobs: model name -> output names (the worker names outputs by index). Returns ({model: [arrays]}, version).
    """
    worker = subprocess.Popen(
        [str(real.python), str(LITE_WORKER)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert json.loads(worker.stdout.readline()).get("ready"), "lite worker did not start"
        results, version = {}, ""
        for name, fetches in jobs.items():
            nb, feeds = real.models[name]
            np.savez(tmp_path / f"{name}_in.npz", **feeds)
            request = {
                "cmd": "run",
                "nb": str(nb),
                "inputs": str(tmp_path / f"{name}_in.npz"),
                "outputs": str(tmp_path / f"{name}_out.npz"),
                "feeds": list(feeds),
                "fetches": fetches,
            }
            worker.stdin.write(json.dumps(request) + "\n")
            worker.stdin.flush()
            line = worker.stdout.readline()
            assert line, f"the lite worker died on {name} (exit {worker.wait(timeout=60)})"
            reply = json.loads(line)
            assert reply.get("ok"), (name, reply)
            version = reply["info"]["paddle_lite_version"]
            with np.load(tmp_path / f"{name}_out.npz", allow_pickle=False) as data:
                results[name] = [data[f] for f in fetches]
        return results, version
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)


def test_real_runner_bit_exact_against_python_api(real_lite, tmp_path):
    """Every output of every model, byte for byte: the C++ runner and the Python API run the same library."""
    names_by_model, runner_outputs, first_run = {}, {}, {}
    for name, (nb, feeds) in real_lite.models.items():
        # names.txt lists the feeds in another order than the model's inputs: matching is by name.
        in_dir = write_inputs(tmp_path / name / "in", dict(reversed(list(feeds.items()))))
        out = tmp_path / name / "out"
        proc = real_lite.run("--model", nb, "--inputs", in_dir, "--outputs", out, "--runs", "2")
        assert proc.returncode == 0, (name, proc.stderr)
        runner_outputs[name] = read_outputs(out)
        first_run[name] = read_outputs(out / "run0")
        names_by_model[name] = list(runner_outputs[name])
        info = json.loads((out / "info.json").read_text())
        assert info["opencl_valid"] is False and len(info["seconds"]) == 2
    assert names_by_model["dtypes"] == DTYPE_MODEL_FETCHES

    reference, version = python_api_outputs(real_lite, tmp_path, names_by_model)
    assert (
        version
        and json.loads((tmp_path / "dtypes" / "out" / "info.json").read_text())["paddle_lite_version"] == version
    )
    seen_dtypes = set()
    for name, expected in reference.items():
        got = list(runner_outputs[name].values())
        assert len(got) == len(expected) > 0, name
        for out_name, a, b in zip(names_by_model[name], got, expected, strict=True):
            assert same_bits(a, b), f"{name}/{out_name}: runner {a.dtype}{a.shape} != Python API {b.dtype}{b.shape}"
            assert same_bits(first_run[name][out_name], a), f"{name}/{out_name}: run 1 and run 2 differ"
            seen_dtypes.add(a.dtype)
        assert all(np.isfinite(a).all() for a in got if a.dtype.kind == "f"), name
    assert seen_dtypes == {np.dtype(np.float32), np.dtype(np.int64), np.dtype(np.int32)}
    # Not vacuous: the outputs depend on every feed (the int32 one too).
    assert runner_outputs["dtypes"]["k2"].tolist() == (2 * real_lite.models["dtypes"][1]["k"]).tolist()
    assert runner_outputs["dtypes"]["ids2"].tolist() == [2, 0, 2]


def test_sim_runner_on_the_real_library_matches_the_native_runner(real_lite, tmp_path):
    """tests/sim/bin/bisect_lite_runner (used behind the stand-in adb) on the real paddlelite.lite, not the
    simulator: same names, dtypes and bytes as the C++ runner, and the same info fields."""
    nb, feeds = real_lite.models["dtypes"]
    in_dir = write_inputs(tmp_path / "in", feeds)
    native = real_lite.run("--model", nb, "--inputs", in_dir, "--outputs", tmp_path / "native", "--runs", "2")
    assert native.returncode == 0, native.stderr
    args = ["--model", nb, "--inputs", in_dir, "--outputs", tmp_path / "sim", "--runs", "2"]
    sim = subprocess.run(
        [real_lite.python, SIM_RUNNER, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BISECT_LITE_SIM_DIR": str(real_lite.site_packages)},
        timeout=120,
        check=False,
    )
    assert sim.returncode == 0, sim.stderr
    for sub in ("", "run0"):
        a, b = read_outputs(tmp_path / "native" / sub), read_outputs(tmp_path / "sim" / sub)
        assert list(a) == list(b) == DTYPE_MODEL_FETCHES
        for name in a:
            assert same_bits(a[name], b[name]), (sub, name)
    info_native = json.loads((tmp_path / "native" / "info.json").read_text())
    info_sim = json.loads((tmp_path / "sim" / "info.json").read_text())
    keys = ("paddle_lite_version", "precision", "precision_used", "opencl_valid", "opencl_fp16", "runner_version")
    for key in keys:
        assert info_native[key] == info_sim[key], key


def test_engine_adb_transport_with_the_real_runner(real_lite, tmp_path, monkeypatch):
    """bisect-lite's `lite:x86,adb` engine driving the real runner through the stand-in adb gives the same bytes as
    `lite:x86` (the Python API worker): the whole phone path except the NDK, adb itself and ARM/OpenCL kernels."""
    from bisect_lite.engines.runner import EngineRunner
    from bisect_lite.model import load_model

    tools = tmp_path / "tools"  # the stand-in adb only: opt must stay the real one
    tools.mkdir()
    (tools / "adb").symlink_to(ADB)
    monkeypatch.setenv("PATH", os.pathsep.join([str(tools), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("ADB_SIM_ROOT", str(tmp_path / "phone"))
    libs = tmp_path / "libs"  # what build.sh puts next to the runner; the host runner finds lite.so by rpath
    libs.mkdir()
    (libs / "libpaddle_light_api_shared.so").symlink_to(real_lite.lite_so)
    adb_spec = f"lite:x86,adb,runner={real_lite.runner},libs={libs},device_dir={DEVICE_DIR}"
    models = {"dtypes": real_lite.base / "dtypes", "transformer": ROOT / "fixtures" / "transformer"}
    with EngineRunner("lite:x86") as local, EngineRunner(adb_spec) as phone:
        for name, directory in models.items():
            model, feeds = load_model(directory), real_lite.models[name][1]
            want, got = local.run(model, feeds), phone.run(model, feeds)
            assert want.status == "ok" and got.status == "ok", (name, want.message, got.message)
            assert list(got.outputs) == list(want.outputs) and got.outputs, name
            for out in want.outputs:
                assert same_bits(got.outputs[out], want.outputs[out]), (name, out)
        facts = phone.facts()
    assert facts["transport"] == "adb" and facts["opencl_valid"] is False
    assert facts["paddle_lite_version"] == facts["opt_version"]
    device = tmp_path / "phone" / DEVICE_DIR.lstrip("/")
    assert not [p for p in device.iterdir() if p.name.startswith("run-")]


def test_real_header_matches_library_abi(real_lite):
    nb = real_lite.models["dtypes"][0]
    proc = subprocess.run([str(real_lite.abi_check), str(nb)], capture_output=True, text=True, timeout=120, check=False)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["failures"] == [], report["failures"]
    slots = {entry["header"].split("(")[0]: entry for entry in report["vtable"]}
    # The runner's calls land in the loaded predictor's own implementations, in the slots the header says.
    for used, slot in (("GetInput", 0), ("GetOutput", 1), ("Run", 2), ("GetVersion", 5), ("GetInputNames", 6)):
        assert slots[used]["slot"] == slot
        assert slots[used]["library"].startswith(f"paddle::lite::LightPredictorImpl::{used}"), slots[used]
    assert len(report["vtable"]) == 15 and report["version"]

    # Enum values cross the boundary as ints: compare the header's with the library's own Python bindings.
    code = (
        "import json; from paddlelite import lite; print(json.dumps({e: {k: int(v) for k, v in "
        "getattr(lite, e).__members__.items()} for e in "
        "['PrecisionType', 'TargetType', 'PowerMode', 'CLTuneMode', 'CLPrecisionType']}))"
    )
    bound = json.loads(
        subprocess.run([str(real_lite.python), "-c", code], capture_output=True, text=True, check=True).stdout
    )
    python_name = {"kFloat": "FP32", "kInt8": "INT8", "kInt32": "INT32", "kFP16": "FP16", "kBool": "BOOL"}
    python_name |= {"kInt64": "INT64", "kInt16": "INT16", "kUInt8": "UINT8", "kFP64": "FP64", "kARM": "ARM"}
    compared = 0
    for enum, members in report["enums"].items():
        for member, value in members.items():
            name = python_name.get(member, member[1:] if member.startswith("k") else member)
            if enum == "TargetType" and member == "kCUDA":
                continue  # the x86 wheel binds no CUDA target
            assert bound[enum][name] == value, (enum, member)
            compared += 1
    assert compared >= 30


def test_real_runner_uses_only_symbols_the_library_exports(real_lite):
    """The mangled names (which encode parameter types) of every library function the runner calls."""

    def symbols(path: Path, *flags: str) -> set[str]:
        out = subprocess.run(["nm", "-D", *flags, str(path)], capture_output=True, text=True, check=True).stdout
        return {line.split()[-1] for line in out.splitlines() if line.strip()}

    wanted = {s for s in symbols(real_lite.runner, "--undefined-only") if "paddle" in s}
    exported = symbols(real_lite.lite_so, "--defined-only")
    assert (
        "_ZN6paddle8lite_api21CreatePaddlePredictorINS0_12MobileConfigEEESt10shared_ptrINS0_15PaddlePredictorEERKT_"
        in wanted
    )
    assert len(wanted) >= 20 and not wanted - exported, sorted(wanted - exported)


def test_real_runner_failures(real_lite, tmp_path):
    nb, feeds = real_lite.models["dtypes"]
    partial = write_inputs(tmp_path / "partial", {k: v for k, v in feeds.items() if k != "ids"})
    proc = real_lite.run("--model", nb, "--inputs", partial, "--outputs", tmp_path / "out")
    assert proc.returncode == 2 and one_line(proc.stderr) and "'ids'" in proc.stderr, proc.stderr

    (tmp_path / "garbage.nb").write_bytes(b"\x00\x01 not a naive buffer model" * 10)
    proc = real_lite.run(
        "--model",
        tmp_path / "garbage.nb",
        "--inputs",
        write_inputs(tmp_path / "in", feeds),
        "--outputs",
        tmp_path / "out2",
    )
    # A load error is exit 3; a Paddle-Lite CHECK failure aborts (signal): callers treat both as a runtime failure.
    assert proc.returncode == 3 or proc.returncode < 0, (proc.returncode, proc.stderr[-500:])
    assert not (tmp_path / "out2" / "info.json").exists()

    proc = real_lite.run("--info", "--model", nb)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["paddle_lite_version"].startswith("v2.13") and info["opencl_valid"] is False


# (what is wrong, text in host/include/paddle_api.h, replacement, what to build, what the failure must name)
HEADER_MUTATIONS = [
    ("ConfigBase 8 bytes short", "library_members_[528]", "library_members_[520]", "abi_check", "wrong offset"),
    (
        "two virtuals swapped",
        "  virtual std::vector<std::string> GetInputNames() = 0;\n"
        "  virtual std::vector<std::string> GetOutputNames() = 0;\n",
        "  virtual std::vector<std::string> GetOutputNames() = 0;\n"
        "  virtual std::vector<std::string> GetInputNames() = 0;\n",
        "abi_check",
        "vtable slot 6",
    ),
    (
        "a parameter type changed",
        "size_t lws_repeats = 4",
        "int lws_repeats = 4",
        "bisect_lite_runner",
        "set_opencl_tune",
    ),
]


def test_real_abi_checks_catch_a_wrong_header(real_lite, tmp_path):
    """Each kind of mismatch between our header and the library fails: layout, vtable order, signature."""
    builds = []
    for n, (mutation, before, after, target, _) in enumerate(HEADER_MUTATIONS):
        include = tmp_path / f"include{n}"
        shutil.copytree(HOST_INCLUDE, include)
        header = include / "paddle_api.h"
        text = header.read_text()
        assert text.count(before) == 1, mutation
        header.write_text(text.replace(before, after))
        # All at once: each is one compile against the real library.
        builds.append(real_lite.build(tmp_path / f"build{n}", HOST_INCLUDE=str(include), TARGETS=target))
    logs = [build.communicate(timeout=600)[0] for build in builds]
    nb = real_lite.models["dtypes"][0]
    for n, ((mutation, _, _, target, expect), build, log) in enumerate(
        zip(HEADER_MUTATIONS, builds, logs, strict=True)
    ):
        if target == "bisect_lite_runner":
            # Signatures are in the mangled names: the link against the real library fails.
            assert build.returncode == 1 and "undefined reference" in log and expect in log, (mutation, log[-3000:])
            continue
        assert build.returncode == 0, (mutation, log)
        proc = subprocess.run(
            [str(tmp_path / f"build{n}" / target), str(nb)], capture_output=True, text=True, timeout=120, check=False
        )
        assert proc.returncode == 1, (mutation, proc.returncode, proc.stdout, proc.stderr[-1000:])
        failures = json.loads(proc.stdout)["failures"]
        assert any(expect in f for f in failures), (mutation, failures)


# ------------------------------------------------------------------------------------------------ native builds


def test_native_minimal_build_without_arm_and_opencl_api(tmp_path):
    """With the guards on, the runner compiles against a header lacking the ARM-only and OpenCL-only calls."""
    binary = compile_native(
        tmp_path / "runner_min",
        "-DBISECT_LITE_NO_ARM_API",
        "-DBISECT_LITE_NO_OPENCL_API",
        "-DBISECT_LITE_HOST_OMIT_ARM_API",
        "-DBISECT_LITE_HOST_OMIT_OPENCL_API",
    )
    run = Runner("native", [str(binary)], {"STUB_CONFIG_LOG": str(tmp_path / "config.log")})
    in_dir = write_inputs(tmp_path / "in", {"x": np.ones(3, np.float32)})
    proc = run(
        "--model",
        run.model(tmp_path / "m.nb", ["x"]),
        "--inputs",
        in_dir,
        "--outputs",
        tmp_path / "out",
        "--threads",
        "2",
        "--precision",
        "fp32",
    )
    assert proc.returncode == 0, proc.stderr
    assert "ignored" in proc.stderr
    assert config_log(tmp_path)[1:] == ["create_predictor"]
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert info["opencl_valid"] is False and info["opencl_fp16"] is None and info["precision_used"] is None


def test_cmakelists_builds_against_the_real_library(real_lite, tmp_path):
    """The Android CMake project, on this host: PADDLE_LITE_DIR laid out like a prebuilt library's `cxx`
    directory, with the wheel's lite.so as libpaddle_light_api_shared.so (plus the libpython it needs)."""
    cmake = shutil.which("cmake")
    require(cmake is not None, "cmake not found")
    lite = tmp_path / "cxx"
    shutil.copytree(HOST_INCLUDE, lite / "include")
    (lite / "lib").mkdir()
    (lite / "lib" / "libpaddle_light_api_shared.so").symlink_to(real_lite.lite_so)
    # Appended after the library on the link line, so the linker keeps libpython for lite.so's references.
    extra_libs = (
        f"-L{real_lite.libpython_dir} -l{real_lite.libpython} -Wl,-rpath,{real_lite.libpython_dir} "
        f"-Wl,-rpath-link,{real_lite.lite_so.parent / 'libs'}"
    )
    build = tmp_path / "build"
    for cmd in (
        [
            cmake,
            "-S",
            str(RUNNER_SRC.parent),
            "-B",
            str(build),
            f"-DPADDLE_LITE_DIR={lite}",
            f"-DCMAKE_CXX_STANDARD_LIBRARIES={extra_libs}",
        ],
        [cmake, "--build", str(build)],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nb, feeds = real_lite.models["dtypes"]
    in_dir = write_inputs(tmp_path / "in", feeds)
    # lite.so's SONAME is liblite_pybind.so: the host build's lib/ has it under that name.
    env = {**os.environ, "LD_LIBRARY_PATH": str(real_lite.base / "build" / "lib")}
    proc = subprocess.run(
        [
            str(build / "bisect_lite_runner"),
            "--model",
            str(nb),
            "--inputs",
            str(in_dir),
            "--outputs",
            str(tmp_path / "a"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert real_lite.run("--model", nb, "--inputs", in_dir, "--outputs", tmp_path / "b").returncode == 0
    cmake_outputs, host_outputs = read_outputs(tmp_path / "a"), read_outputs(tmp_path / "b")
    assert list(cmake_outputs) == DTYPE_MODEL_FETCHES
    for name in DTYPE_MODEL_FETCHES:
        assert same_bits(cmake_outputs[name], host_outputs[name]), name


def test_cmakelists_explains_missing_library(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake not found")
    proc = subprocess.run(
        [cmake, "-S", str(RUNNER_SRC.parent), "-B", str(tmp_path / "b2")],
        capture_output=True,
        text=True,
        check=False,
        env={k: v for k, v in os.environ.items() if k != "PADDLE_LITE_DIR"},
    )
    assert proc.returncode != 0 and "PADDLE_LITE_DIR" in proc.stderr
    (tmp_path / "cxx" / "include").mkdir(parents=True)
    (tmp_path / "cxx" / "include" / "paddle_api.h").write_text("")
    proc = subprocess.run(
        [cmake, "-S", str(RUNNER_SRC.parent), "-B", str(tmp_path / "b3"), f"-DPADDLE_LITE_DIR={tmp_path / 'cxx'}"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "libpaddle_light_api_shared.so" in proc.stderr


def test_build_script_explains_missing_environment(tmp_path):
    script = RUNNER_SRC.parent / "build.sh"
    base = {k: v for k, v in os.environ.items() if k not in ("ANDROID_NDK", "PADDLE_LITE_DIR")}
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "b")], capture_output=True, text=True, env=base, check=False
    )
    assert proc.returncode == 2 and "ANDROID_NDK is not set" in proc.stderr
    ndk = tmp_path / "ndk"
    (ndk / "build" / "cmake").mkdir(parents=True)
    (ndk / "build" / "cmake" / "android.toolchain.cmake").write_text("")
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env={**base, "ANDROID_NDK": str(ndk)},
        check=False,
    )
    assert proc.returncode == 2 and "PADDLE_LITE_DIR is not set" in proc.stderr
    assert not (tmp_path / "b").exists()


def test_host_build_script_explains_missing_environment(tmp_path):
    base = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    proc = subprocess.run(["bash", str(HOST_BUILD), str(tmp_path / "b")], capture_output=True, text=True, env=base)
    assert proc.returncode == 2 and "PYTHON is not set" in proc.stderr and one_line(proc.stderr)
    # This interpreter has no paddlelite: an environment problem, said in one line, nothing built.
    proc = subprocess.run(
        ["bash", str(HOST_BUILD), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        env={**base, "PYTHON": sys.executable},
    )
    assert proc.returncode == 3 and "cannot import paddlelite" in proc.stderr and one_line(proc.stderr)
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ fake adb


def adb_env(root: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ANDROID_SERIAL"}
    # Commands run on the "device" use the host's tools: make `python3` the interpreter running the tests.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["ADB_SIM_ROOT"] = str(root)
    env.update(extra)
    return env


def adb(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ADB), *map(str, args)], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def test_fake_adb_basics(tmp_path):
    root = tmp_path / "phone"
    env = adb_env(root)
    proc = adb(env, "devices")
    assert proc.returncode == 0 and "sim-0001\tdevice" in proc.stdout
    two = adb_env(root, ADB_SIM_SERIALS="aa,bb")
    assert "aa\tdevice" in adb(two, "devices").stdout and "bb\tdevice" in adb(two, "devices").stdout
    assert adb(two, "shell", "true").returncode == 1  # more than one device
    assert adb(two, "-s", "bb", "shell", "true").returncode == 0
    proc = adb(env, "-s", "nosuch", "shell", "true")
    assert proc.returncode == 1 and "nosuch" in proc.stderr
    assert adb({k: v for k, v in env.items() if k != "ADB_SIM_ROOT"}, "shell", "true").returncode == 1

    script = tmp_path / "tool.sh"
    script.write_text('#!/bin/sh\necho tool-ran "$@"\n')
    script.chmod(0o755)
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "a.bin").write_bytes(bytes(range(256)))
    assert adb(env, "shell", "mkdir", "-p", DEVICE_DIR).returncode == 0
    assert adb(env, "push", script, f"{DEVICE_DIR}/").returncode == 0  # into an existing directory
    assert adb(env, "push", script, f"{DEVICE_DIR}/renamed.sh").returncode == 0
    assert adb(env, "push", tmp_path / "tree", f"{DEVICE_DIR}/tree").returncode == 0  # directory, new name
    assert adb(env, "push", tmp_path / "tree", f"{DEVICE_DIR}/tree").returncode == 0  # lands inside, like adb
    host_dir = root / DEVICE_DIR.lstrip("/")
    assert (host_dir / "tree" / "sub" / "a.bin").read_bytes() == bytes(range(256))
    assert (host_dir / "tree" / "tree" / "sub" / "a.bin").exists()
    assert (host_dir / "tool.sh").stat().st_mode & stat.S_IXUSR
    assert (host_dir / "renamed.sh").stat().st_mode & stat.S_IXUSR

    proc = adb(
        env,
        "shell",
        f"cd {DEVICE_DIR} && ./renamed.sh a b && getprop ro.product.model && getprop ro.build.version.release",
    )
    assert proc.returncode == 0 and proc.stdout.split("\n")[:3] == ["tool-ran a b", "SimPhone", "14"]
    assert adb(env, "shell", "exit 5").returncode == 5
    assert adb(env, "shell", f"test -f {DEVICE_DIR}/tool.sh").returncode == 0
    assert adb(env, "shell", "getprop").stdout.count("[ro.") >= 5

    pulled = tmp_path / "pulled"
    pulled.mkdir()
    assert adb(env, "pull", f"{DEVICE_DIR}/tree", pulled).returncode == 0
    assert (pulled / "tree" / "sub" / "a.bin").read_bytes() == bytes(range(256))
    assert adb(env, "pull", f"{DEVICE_DIR}/tool.sh", tmp_path / "copy.sh").returncode == 0
    assert (tmp_path / "copy.sh").read_text() == script.read_text()
    proc = adb(env, "pull", f"{DEVICE_DIR}/nothing", pulled)
    assert proc.returncode == 1 and "nothing" in proc.stderr

    assert adb(env, "shell", "rm", "-rf", f"{DEVICE_DIR}/tree").returncode == 0
    assert not (host_dir / "tree").exists() and (host_dir / "tool.sh").exists()
    outside = tmp_path / "keep.txt"
    outside.write_text("x")
    assert adb(env, "shell", "rm", "-f", outside).returncode == 1
    assert outside.exists()


def test_sim_runner_through_adb_with_fake_lite(tmp_path, fake_lite_dir):
    """Push the runner and its "library" (the paddlelite package) like the native runner and its .so."""
    root = tmp_path / "phone"
    env = adb_env(root)
    feeds = sample_arrays()
    write_inputs(tmp_path / "in", feeds)
    model = Runner("sim", [], {}).model(tmp_path / "model.nb", list(feeds), run_counter=True)
    assert adb(env, "shell", "rm", "-rf", DEVICE_DIR, "&&", "mkdir", "-p", DEVICE_DIR).returncode == 0
    for local in (SIM_RUNNER, fake_lite_dir / "paddlelite", model):
        proc = adb(env, "push", local, f"{DEVICE_DIR}/")
        assert proc.returncode == 0, proc.stderr
    assert adb(env, "push", tmp_path / "in", f"{DEVICE_DIR}/in").returncode == 0
    proc = adb(
        env,
        "shell",
        f"cd {DEVICE_DIR} && ./bisect_lite_runner --model {DEVICE_DIR}/model.nb --inputs in "
        "--outputs out --runs 2 --precision fp32",
    )
    assert proc.returncode == 0, proc.stderr
    assert adb(env, "pull", f"{DEVICE_DIR}/out", tmp_path / "out").returncode == 0
    outs = read_outputs(tmp_path / "out")
    for name, arr in feeds.items():
        assert same_bits(outs[f"out_{name}"], arr), name
    assert int(outs["run_count"]) == 2 and int(read_outputs(tmp_path / "out" / "run0")["run_count"]) == 1
    assert json.loads((tmp_path / "out" / "info.json").read_text())["precision"] == "fp32"
    proc = adb(env, "shell", f"cd {DEVICE_DIR} && ./bisect_lite_runner --model model.nb --inputs nowhere --outputs out")
    assert proc.returncode == 2


# ------------------------------------------------------------------------------------------------ real simulator


def _build_paddle_model(paddle, model_dir: Path) -> dict[str, np.ndarray]:
    """conv -> relu -> pool -> fc -> softmax on x, plus an elementwise add of a second input: two feeds."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [1, 3, 8, 8], "float32")
        y = paddle.static.data("y", [1, 4], "float32")
        h = paddle.nn.functional.relu(paddle.nn.Conv2D(3, 4, 3, padding=1)(x))
        h = paddle.nn.functional.adaptive_avg_pool2d(h, 1)
        h = paddle.reshape(h, [1, 4])
        logits = paddle.static.nn.fc(h + y, size=5)
        prob = paddle.nn.functional.softmax(logits)
    exe = paddle.static.Executor(paddle.CPUPlace())
    scope = paddle.static.Scope()
    with paddle.static.scope_guard(scope):
        exe.run(startup)
        paddle.static.save_inference_model(str(model_dir / "model"), [x, y], [prob, logits], exe, program=main)
    rng = np.random.default_rng(3)
    return {
        "y": rng.standard_normal((1, 4)).astype(np.float32),
        "x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32),
    }


@pytest.mark.skipif(
    not REAL_SIM_LITE.exists(),
    reason="tests/sim/paddlelite/lite.py (the paddlelite simulator) is "
    "absent; the native runner and the fake-lite path are tested above",
)
def test_sim_runner_through_adb_with_paddlelite_simulator(paddle, tmp_path):
    from conftest import predict

    model_dir = tmp_path / "paddle_model"
    model_dir.mkdir()
    feeds = _build_paddle_model(paddle, model_dir)
    expected = predict(model_dir, feeds)

    sys.path.insert(0, str(SIM))
    try:
        from paddlelite import lite
    finally:
        sys.path.remove(str(SIM))
    opt = lite.Opt()
    opt.set_model_file(str(model_dir / "model.pdmodel"))
    opt.set_param_file(str(model_dir / "model.pdiparams"))
    opt.set_valid_places("opencl,arm")
    opt.set_model_type("naive_buffer")
    opt.set_optimize_out(str(tmp_path / "model"))
    opt.run()
    nb = tmp_path / "model.nb"
    assert nb.exists()

    root = tmp_path / "phone"
    env = adb_env(root)
    write_inputs(tmp_path / "in", feeds)
    assert adb(env, "shell", "mkdir", "-p", DEVICE_DIR).returncode == 0
    for local in (SIM_RUNNER, SIM / "paddlelite", nb):
        proc = adb(env, "push", local, f"{DEVICE_DIR}/")
        assert proc.returncode == 0, proc.stderr
    assert adb(env, "push", tmp_path / "in", f"{DEVICE_DIR}/in").returncode == 0
    proc = adb(
        env,
        "shell",
        f"cd {DEVICE_DIR} && ./bisect_lite_runner --model model.nb --inputs in --outputs out "
        f"--precision fp32 --cl-cache {DEVICE_DIR}/model.clbin --runs 2 --tune rapid "
        f"--tune-file {DEVICE_DIR}/model.tune --threads 2 --power-mode 3",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert adb(env, "pull", f"{DEVICE_DIR}/out", tmp_path / "out").returncode == 0
    outs = read_outputs(tmp_path / "out")
    first = read_outputs(tmp_path / "out" / "run0")
    assert list(outs) == list(first)
    # Like Paddle-Lite, the OpenCL graph's glue may rename outputs ("<fetch var>/target_trans"): order holds.
    assert [n.split("/")[0] for n in outs] == list(expected)
    for name, got, want in zip(outs, outs.values(), expected.values(), strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)
        assert same_bits(got, first[name])
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert info["precision"] == "fp32" and len(info["seconds"]) == 2
    assert info["opencl_valid"] is True
    # The simulator writes the OpenCL cache and tune files where the runner told it to.
    device_dir = root / DEVICE_DIR.lstrip("/")
    assert (device_dir / "model.clbin").exists() and (device_dir / "model.tune").exists()
