"""tests/faulty_lib.py: a copy of the real x86 OpenCL Paddle-Lite library with one kernel's embedded source made
wrong (issue 14, study e). The copy must differ from the real library in that kernel's bytes only, and a real run
on it (the project's native runner on PoCL) must go wrong exactly at the op that uses the kernel, in the way the
patch says, while the real library matches Paddle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, load_fixture_inputs, predict, require
from faulty_lib import (
    BILINEAR_ROW_WEIGHT,
    HEALTHY_OPENCL_LIB,
    LIB_NAME,
    KernelPatch,
    apply_patch,
    kernel_span,
    make_faulty_opencl_lib,
)
from test_runner_native import read_outputs, same_bits, write_inputs

from bisect_lite.model.fusion import base_name
from bisect_lite.model.io import load_model, save_model
from bisect_lite.model.slicing import truncate

FAULTY_LIB_CLI = ROOT / "tests" / "faulty_lib.py"
RUNNER_SRC = ROOT / "runners" / "android" / "bisect_lite_runner.cc"
# unet's only bilinear_interp_v2 (op 27): 16x16 -> 32x32, align_corners False, align_mode 0.
INTERP_IN, INTERP_OUT, UNET_OUT = "relu_7.tmp_0", "bilinear_interp_v2_0.tmp_0", "conv2d_9.tmp_1"

# ------------------------------------------------------------------------------------- the patch, on plain bytes

TOY = KernelPatch("image/toy_kernel.cl", "toy", ("toy",), b"x * 2.0f", b"x * 3.0f", "toy")
TOY_LIB = b"\x7fELF....#pragma once\n__kernel void toy(float x) {\ny = x * 2.0f;\n}\x00\x00__kernel void other("


def test_patch_changes_only_the_patched_bytes():
    patched, offset = apply_patch(TOY_LIB, TOY)
    assert len(patched) == len(TOY_LIB) and patched[offset : offset + 8] == b"x * 3.0f"
    assert [i for i in range(len(TOY_LIB)) if patched[i] != TOY_LIB[i]] == [offset + 4]
    start, end = kernel_span(TOY_LIB, "toy")
    assert TOY_LIB[start:end].startswith(b"__kernel void toy(") and TOY_LIB[end : end + 1] == b"\x00"


@pytest.mark.parametrize(
    "lib, patch, message",
    [
        (TOY_LIB.replace(b"2.0f", b"2.5f"), TOY, "found it 0 times"),  # another build of the library
        (TOY_LIB + b"x * 2.0f", TOY, "found it 2 times"),
        (TOY_LIB.replace(b"void toy(", b"void toz("), TOY, "expected one OpenCL kernel 'toy'"),
        (b"x * 2.0f;" + TOY_LIB.replace(b"x * 2.0f", b"x + 2.0f"), TOY, "outside OpenCL kernel 'toy'"),
        (TOY_LIB, KernelPatch("f", "toy", (), b"x * 2.0f", b"x * 2.0", "shorter"), "without changing their number"),
    ],
)
def test_patch_refuses_what_it_cannot_place(lib, patch, message):
    with pytest.raises(ValueError, match=message):
        apply_patch(lib, patch)


def test_cli_bad_healthy_library_is_one_line_exit_2(tmp_path):
    (tmp_path / "other.so").write_bytes(TOY_LIB)
    for healthy in (tmp_path / "missing.so", tmp_path / "other.so"):
        proc = subprocess.run(
            [sys.executable, str(FAULTY_LIB_CLI), str(tmp_path / "out"), "--healthy", str(healthy)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert proc.stderr.startswith("faulty_lib: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert not (tmp_path / "out" / LIB_NAME).exists()


# ------------------------------------------------------------------------------------ the real library, patched


def _real_opencl_lib() -> Path:
    require(HEALTHY_OPENCL_LIB.exists(), f"{HEALTHY_OPENCL_LIB} is missing (the real x86 OpenCL Paddle-Lite)")
    return HEALTHY_OPENCL_LIB


def test_faulty_copy_differs_in_one_kernel_only(tmp_path):
    healthy = _real_opencl_lib()
    before = hashlib.sha256(healthy.read_bytes()).hexdigest()
    proc = subprocess.run(
        [sys.executable, str(FAULTY_LIB_CLI), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    lib = Path(info["path"])
    assert lib == tmp_path / LIB_NAME
    good, bad = healthy.read_bytes(), lib.read_bytes()
    assert len(good) == len(bad)
    assert info["healthy_sha256"] == before == hashlib.sha256(healthy.read_bytes()).hexdigest()  # untouched
    assert info["sha256"] == hashlib.sha256(bad).hexdigest() != before
    assert (info["source_file"], info["kernel"], info["op_types"]) == (
        "image/bilinear_interp_kernel.cl",
        "bilinear_interp",
        ["bilinear_interp", "bilinear_interp_v2"],
    )
    diff = np.flatnonzero(np.frombuffer(good, np.uint8) != np.frombuffer(bad, np.uint8))
    offset, length = info["offset"], info["length"]
    start, end = kernel_span(good, "bilinear_interp")
    assert len(diff) == 1 and start <= offset <= diff[0] < offset + length <= end
    assert good.count(BILINEAR_ROW_WEIGHT.old) == 1 and bad.count(BILINEAR_ROW_WEIGHT.old) == 0
    assert bad.count(BILINEAR_ROW_WEIGHT.new) == 1 and bad[offset : offset + length] == BILINEAR_ROW_WEIGHT.new


# --------------------------------------------------------------------------------------- real runs on PoCL


def bilinear_2d(x: np.ndarray, out_h: int, out_w: int, faulty: bool) -> np.ndarray:
    """NCHW bilinear resize, align_corners False / align_mode 0, as the OpenCL kernel computes it; `faulty`: with
    the patched row weights, (1 - f) * (row_floor + row_ceil)."""

    def taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        centre = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0)
        lo = centre.astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), (centre - lo).astype(np.float32)

    (h_lo, h_hi, fh), (w_lo, w_hi, fw) = taps(x.shape[2], out_h), taps(x.shape[3], out_w)
    cols = x[..., w_lo] * (1 - fw) + x[..., w_hi] * fw
    lo, hi, fh = cols[:, :, h_lo, :], cols[:, :, h_hi, :], fh[:, None]
    return (lo + hi) * (1 - fh) if faulty else lo * (1 - fh) + hi * fh


class PoclRuns:
    """The native runner built against the real x86 OpenCL library, and .nb models converted by the real opt."""

    def __init__(self, base: Path) -> None:
        from bisect_lite.lite_env import find_lite_env

        self.env = find_lite_env()
        require(self.env is not None, "real Paddle-Lite is not provisioned (run `bisect-lite setup lite`)")
        require(shutil.which("g++") is not None, "g++ not found: cannot build the runner")
        self.base = base
        self.lib = _real_opencl_lib()
        self.faulty = make_faulty_opencl_lib(self.lib, base / "faulty")
        self.runner = base / "bisect_lite_runner"
        include = self.lib.parent.parent / "include"
        # Without BISECT_LITE_NO_OPENCL_API the runner probes IsOpenCLBackendValid(true), which marks OpenCL
        # invalid on PoCL (no fp16) and every load then fails; unconfigured, the library runs OpenCL in fp32
        # (CL_PRECISION_AUTO on a device without half).
        build = subprocess.run(
            ["g++", "-std=c++14", "-O2", "-DBISECT_LITE_NO_OPENCL_API", "-I", str(include),
             "-I", str(RUNNER_SRC.parent), str(RUNNER_SRC), "-o", str(self.runner), f"-L{self.lib.parent}",
             "-lpaddle_light_api_shared", "-Wl,--enable-new-dtags", f"-Wl,-rpath,{self.lib.parent}"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert build.returncode == 0, build.stderr[-2000:]
        # PoCL caches compiled kernels by source: a private cache, shared by both libraries (the patched
        # kernel's new source gets its own entry, the unchanged ones are compiled once).
        self.pocl_cache = base / "pocl-cache"

    def convert(self, model_dir: Path, name: str) -> Path:
        out = self.base / name
        proc = subprocess.run(
            [str(self.env.python), str(self.env.opt), f"--model_file={model_dir / 'model.pdmodel'}",
             f"--param_file={model_dir / 'model.pdiparams'}", "--valid_targets=x86_opencl",
             "--optimize_out_type=naive_buffer", f"--optimize_out={out}"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        nb = out.with_suffix(".nb")
        assert proc.returncode == 0 and nb.exists(), f"opt {name}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        return nb

    def run(self, nb: Path, feeds: dict[str, np.ndarray], lib_dir: Path, tag: str) -> dict[str, np.ndarray]:
        """Outputs by original tensor name (the `/target_trans` glue suffixes dropped)."""
        work = self.base / f"{nb.stem}-{tag}"
        env = {**os.environ, "POCL_CACHE_DIR": str(self.pocl_cache), "LD_LIBRARY_PATH": str(lib_dir)}
        proc = subprocess.run(
            [str(self.runner), "--model", str(nb), "--inputs", str(write_inputs(work / "in", feeds)),
             "--outputs", str(work / "out")],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "doesn't support the half data type" in proc.stderr  # so the OpenCL kernels ran in fp32
        return {base_name(n): a for n, a in read_outputs(work / "out").items()}


@pytest.fixture(scope="module")
def pocl(tmp_path_factory) -> PoclRuns:
    return PoclRuns(tmp_path_factory.mktemp("pocl"))


def _within(out: np.ndarray, ref: np.ndarray) -> float:
    """Max abs difference relative to the reference's scale."""
    assert out.shape == ref.shape and out.dtype == np.float32
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1.0))


def test_faulty_kernel_breaks_exactly_its_op(pocl, tmp_path):
    """unet cut to fetch the bilinear_interp_v2 input and output and the model output: on the real library all
    three match Paddle; on the faulty copy the op's input is bit-identical, its output is what the patched
    formula gives, and the model output is clearly wrong."""
    model_dir = save_model(truncate(load_model(FIXTURES / "unet"), [INTERP_IN, INTERP_OUT, UNET_OUT]), tmp_path / "m")
    feeds = load_fixture_inputs("unet")
    reference = predict(model_dir, feeds)
    nb = pocl.convert(model_dir, "unet_interp")
    healthy = pocl.run(nb, feeds, pocl.lib.parent, "healthy")
    faulty = pocl.run(nb, feeds, pocl.faulty.path.parent, "faulty")
    assert set(healthy) == set(faulty) == set(reference) == {INTERP_IN, INTERP_OUT, UNET_OUT}
    for name in reference:
        assert _within(healthy[name], reference[name]) < 1e-5, name

    x = healthy[INTERP_IN]
    out_h, out_w = healthy[INTERP_OUT].shape[2:]
    assert (out_h, out_w) == (2 * x.shape[2], 2 * x.shape[3])
    assert _within(healthy[INTERP_OUT], bilinear_2d(x, out_h, out_w, faulty=False)) < 1e-6
    assert same_bits(faulty[INTERP_IN], x)  # everything before the op is untouched
    assert _within(faulty[INTERP_OUT], bilinear_2d(x, out_h, out_w, faulty=True)) < 1e-6
    assert _within(faulty[INTERP_OUT], healthy[INTERP_OUT]) > 0.3
    wrong = np.linalg.norm(faulty[UNET_OUT] - healthy[UNET_OUT]) / np.linalg.norm(healthy[UNET_OUT])
    assert wrong > 0.1, wrong


def test_models_without_the_kernel_run_identically(pocl):
    """transformer (layer_norm, matmul_v2, softmax, gelu, ... on OpenCL, no interpolation): the faulty copy gives
    the same bits as the real library, which matches Paddle."""
    feeds = load_fixture_inputs("transformer")
    reference = predict(FIXTURES / "transformer", feeds)
    nb = pocl.convert(FIXTURES / "transformer", "transformer")
    healthy = pocl.run(nb, feeds, pocl.lib.parent, "healthy")
    faulty = pocl.run(nb, feeds, pocl.faulty.path.parent, "faulty")
    assert set(healthy) == set(faulty) == set(reference)
    for name, ref in reference.items():
        assert _within(healthy[name], ref) < 1e-5, name
        assert same_bits(faulty[name], healthy[name]), name
