"""Shared test helpers. Paddle is imported at most once per test process (it costs about a second)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Legacy IR for every paddle import in the test process (the models are legacy programs).
os.environ.setdefault("FLAGS_enable_pir_api", "0")
os.environ.setdefault("GLOG_minloglevel", "3")
# Tests never touch the user's cache.
os.environ["BISECT_LITE_CACHE"] = tempfile.mkdtemp(prefix="bisect-lite-test-cache-")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
FIXTURE_NAMES = sorted(p.parent.name for p in FIXTURES.glob("*/model.pdmodel"))
# The real PP-OCRv5 models live in shared/ beside the checkout (CI lays a copy there).
SHARED = Path(os.environ.get("BISECT_LITE_SHARED_MODELS", ROOT.parent / "shared"))
PPOCR = SHARED / "models" / "ppocrv5"


FAULTY = ROOT / "tests" / "engines" / "faulty_target.py"  # the planted-fault cmd engine


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    """The planted-fault engine's server (keeps paddle loaded); `FAULTY run SOCKET ...` is its cmd: client."""
    sock = str(tmp_path_factory.mktemp("srv") / "s.sock")
    proc = subprocess.Popen(
        [sys.executable, str(FAULTY), "serve", sock],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield sock
    proc.kill()
    proc.wait()


def require(condition: object, why: str) -> None:
    """What real-thing tests need (real Paddle-Lite, the real models): a failure in CI, a skip elsewhere."""
    if not condition:
        if os.environ.get("CI"):
            pytest.fail(f"{why} (required when CI is set)")
        pytest.skip(why)


@pytest.fixture(scope="module")
def natives() -> dict[str, dict]:
    """The real ARM (QEMU) and OpenCL (PoCL) targets `bisect-lite setup lite` provisioned (required in CI)."""
    from bisect_lite.engines.lite import native_targets
    from bisect_lite.lite_env import find_lite_env

    found = native_targets(find_lite_env())
    require(
        {"arm", "opencl"} <= set(found),
        "real ARM/OpenCL kernels are not provisioned (run `bisect-lite setup lite`; it builds the native runners)",
    )
    return found


def ppocr_model(name: str) -> Path:
    path = PPOCR / name
    require((path / "model.pdmodel").exists(), f"{path} is missing (BISECT_LITE_SHARED_MODELS names shared/)")
    return path


@pytest.fixture(scope="session")
def paddle():
    import paddle as _paddle

    _paddle.enable_static()
    return _paddle


def predict(
    model_dir: Path,
    feeds: dict[str, np.ndarray],
    model_file: str = "model.pdmodel",
    params_file: str = "model.pdiparams",
) -> dict[str, np.ndarray]:
    """Run a model with Paddle Inference in exact mode (IR optimisation and oneDNN off)."""
    import paddle.inference as pi

    config = pi.Config(str(Path(model_dir) / model_file), str(Path(model_dir) / params_file))
    config.switch_ir_optim(False)
    config.disable_onednn()
    config.disable_glog_info()
    pred = pi.create_predictor(config)
    for name in pred.get_input_names():
        pred.get_input_handle(name).copy_from_cpu(np.ascontiguousarray(feeds[name]))
    pred.run()
    return {n: pred.get_output_handle(n).copy_to_cpu() for n in pred.get_output_names()}


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from bisect_lite.cli import main

    argv = sys.argv
    sys.argv = ["bisect-lite", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def load_fixture_inputs(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name / "inputs.npz") as data:
        return {k: data[k] for k in data.files}
