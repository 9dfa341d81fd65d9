"""The README's worked example (examples/ppocrv5-det-sigmoid-nan/): the repro bisect-lite wrote for healthy PP-OCRv5 det
on real OpenCL kernels. It must stay small, name the input that triggers the NaN, and still reproduce on this
machine's real kernels (`verify` is 1 on Paddle-Lite's OpenCL library, 0 on its ARM kernels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import require, run_cli

from bisect_lite.engines.lite import native_targets
from bisect_lite.lite_env import find_lite_env

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ppocrv5-det-sigmoid-nan"
OVERFLOW = -float(np.log(np.finfo(np.float32).max))  # -88.72: below it exp(-x) overflows float32


def test_the_example_is_small_and_names_what_triggers_the_nan():
    assert sum(p.stat().st_size for p in EXAMPLE.iterdir()) < 1 << 20
    repro = json.loads((EXAMPLE / "repro.json").read_text())
    assert [op["type"] for op in repro["ops"]] == ["sigmoid", "scale"] and repro["diagnosis"]["kind"] == "nan_inf"
    first = repro["first_nonfinite"]
    [(name, value)] = first["inputs"].items()
    assert first["target"] == "nan" and first["reference"] == 0.0 and value < OVERFLOW
    inputs, actual = np.load(EXAMPLE / "inputs.npz")[name], np.load(EXAMPLE / "actual.npz")
    [out] = actual.files
    # Exactly the elements whose input is below the overflow threshold are NaN.
    np.testing.assert_array_equal(np.isnan(actual[out]), inputs < OVERFLOW)
    issue = (EXAMPLE / "ISSUE.md").read_text()
    assert issue.startswith("# [OpenCL] sigmoid (+1 fused ops) gives 1 NaN where ARM is finite (fp32)")
    assert "activation_kernel.cl" in issue and "-cl-fast-relaxed-math" in issue


@pytest.fixture(scope="module")
def natives() -> dict[str, dict]:
    found = native_targets(find_lite_env())
    require({"arm", "opencl"} <= set(found), "real ARM/OpenCL kernels are not provisioned (`bisect-lite setup lite`)")
    return found


@pytest.mark.parametrize(("target", "expected"), [("lite:opencl", 1), ("lite:arm", 0)])
def test_the_example_still_reproduces_on_real_kernels(natives, target, expected, capsys):
    code, _, err = run_cli(["verify", str(EXAMPLE), "--target", target], capsys)
    assert code == expected, err
