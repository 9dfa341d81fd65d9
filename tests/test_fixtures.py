"""The committed legacy-format Paddle fixtures: present, small, runnable, reproducible by generate.py."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle  # imported once for the whole module: Paddle Inference runs every fixture in-process
import pytest
from conftest import FIXTURES, ROOT, load_fixture_inputs, predict
from paddle.base.proto import framework_pb2

MAX_BYTES = 2 * 1024 * 1024
FP16_MAX = 65504.0

# name -> (feeds {name: shape} in `col` order, fetches [(name, dtype)] in `col` order)
EXPECTED: dict[str, tuple[dict[str, tuple[int, ...]], list[tuple[str, str]]]] = {
    "mobilenetv3": ({"image": (1, 3, 64, 64)}, [("linear_0.tmp_1", "float32")]),
    "resnet": ({"image": (1, 3, 32, 32)}, [("save_infer_model/scale_0.tmp_0", "float32")]),
    "transformer": ({"tokens_embedding": (1, 16, 32)}, [("elementwise_add_1.tmp_0", "float32")]),
    "unet": ({"image": (1, 3, 32, 32)}, [("conv2d_9.tmp_1", "float32")]),
    "two_io": ({"image": (1, 3, 16, 16), "aux": (1, 8)}, [("logits", "float32"), ("regression", "float32")]),
    "argmax_classifier": ({"image": (1, 3, 32, 32)}, [("arg_max_0.tmp_0", "int64")]),
    "fp16_overflow": ({"image": (1, 3, 32, 32)}, [("linear_0.tmp_1", "float32")]),
}
FILES = ("model.pdmodel", "model.pdiparams", "inputs.npz")


def load_program(model_dir: Path) -> framework_pb2.ProgramDesc:
    prog = framework_pb2.ProgramDesc()
    prog.ParseFromString((model_dir / "model.pdmodel").read_bytes())
    return prog


def _col(op) -> int:
    return next(a.i for a in op.attrs if a.name == "col")


def io_names(prog: framework_pb2.ProgramDesc) -> tuple[list[str], list[str]]:
    """Feed and fetch var names ordered by their `col` attr (feed ops are stored in reverse)."""
    ops = prog.blocks[0].ops
    feeds = sorted((op for op in ops if op.type == "feed"), key=_col)
    fetches = sorted((op for op in ops if op.type == "fetch"), key=_col)
    return [op.outputs[0].arguments[0] for op in feeds], [op.inputs[0].arguments[0] for op in fetches]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_files(name: str) -> None:
    model_dir = FIXTURES / name
    for f in FILES:
        assert (model_dir / f).is_file(), f"{name}/{f} missing"
    total = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert total <= MAX_BYTES, f"{name}: {total} bytes"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_runs(name: str) -> None:
    model_dir = FIXTURES / name
    feeds, fetches = EXPECTED[name]
    prog = load_program(model_dir)
    feed_names, fetch_names = io_names(prog)
    assert feed_names == list(feeds)
    assert fetch_names == [n for n, _ in fetches]
    assert not any(a.name == "op_callstack" for op in prog.blocks[0].ops for a in op.attrs)

    inputs = load_fixture_inputs(model_dir.name)
    assert list(inputs) == feed_names
    for feed, shape in feeds.items():
        assert inputs[feed].shape == shape and inputs[feed].dtype == np.float32

    outs = predict(model_dir, inputs)
    assert list(outs) == fetch_names
    for (fetch, dtype), value in zip(fetches, outs.values(), strict=True):
        assert value.dtype == np.dtype(dtype), fetch
        if value.dtype.kind == "f":
            assert np.isfinite(value).all(), fetch
            assert np.ptp(value) > 0, f"{fetch}: all outputs equal"
        else:
            assert value.shape == (1,) and 0 <= int(value[0]) < 10


def test_fp16_overflow_is_real(tmp_path: Path) -> None:
    """reduce_sum's output leaves the fp16 range (inf once rounded to half); the fp32 output is finite."""
    model_dir = FIXTURES / "fp16_overflow"
    prog = load_program(model_dir)
    ops = prog.blocks[0].ops
    (reduce_op,) = [op for op in ops if op.type == "reduce_sum"]
    target = reduce_op.outputs[0].arguments[0]
    # Expose the intermediate as a second fetch: copy the fetch op with X and col changed.
    fetch = next(op for op in ops if op.type == "fetch")
    extra = prog.blocks[0].ops.add()
    extra.CopyFrom(fetch)
    extra.inputs[0].arguments[:] = [target]
    next(a for a in extra.attrs if a.name == "col").i = 1
    (tmp_path / "model.pdmodel").write_bytes(prog.SerializeToString())

    outs = predict(tmp_path, load_fixture_inputs(model_dir.name), params_file=str(model_dir / "model.pdiparams"))
    final, summed = outs.values()
    assert np.isfinite(final).all() and np.abs(final).max() < 100
    assert np.isfinite(summed).all() and np.abs(summed).max() > FP16_MAX
    with np.errstate(over="ignore"):
        assert np.isinf(summed.astype(np.float16)).any()


def _recorded_paddle_version() -> int:
    from bisect_lite.model import load_model

    return load_model(FIXTURES / "resnet").program.version.version


def test_generator_check_reproduces_bytes() -> None:
    """One subprocess regenerates (and re-verifies) every fixture and compares bytes with the committed."""

    parts = re.match(r"(\d+)\.(\d+)\.(\d+)", paddle.__version__)
    major, minor, patch = (int(p) for p in parts.groups()) if parts else (0, 0, 0)
    if major * 1_000_000 + minor * 1_000 + patch != _recorded_paddle_version():
        # The ProgramDesc records the writer's version, so other releases write other bytes.
        pytest.skip(f"fixtures were written by paddle {_recorded_paddle_version()}, this is {paddle.__version__}")
    proc = subprocess.run(
        [sys.executable, str(FIXTURES / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert f"{len(EXPECTED)} fixtures checked, 0 differences" in proc.stdout
