"""Hostile inputs: malformed models, params, input files and option values are exit 2 with one line, before any
engine runs; nothing under the user's paths changes; nothing hangs."""

from __future__ import annotations

import os
import shutil
import signal
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, run_cli
from test_hostile_fs import refused, snapshot

from bisect_lite.model import load_model, write_model_files

MODEL = FIXTURES / "resnet"
ENGINES = ["--ref", "paddle", "--target", "fp16"]


@pytest.fixture(autouse=True)
def no_hang():
    """A case that blocks (a FIFO read) fails instead of hanging the suite."""

    def alarm(signum, frame):
        raise AssertionError("hung")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def edited_model(directory: Path, edit) -> Path:
    """The resnet fixture with its program edited by `edit(model)`; params written as they are."""
    model = load_model(MODEL)
    edit(model)
    directory.mkdir(parents=True)
    write_model_files(model, directory)
    return directory


def _var(model, name):
    return next(v for v in model.block.vars if v.name == name)


def _first_param(model):
    return model.param_names()[0]


def _set_dims(name: str, dims: list[int]):
    def edit(model):
        tensor = _var(model, name).type.dense_tensor.tensor
        del tensor.dims[:]
        tensor.dims.extend(dims)

    return edit


def _set_dtype(name_of, code: int):
    def edit(model):
        _var(model, name_of(model)).type.dense_tensor.tensor.data_type = code

    return edit


BAD_MODELS = {
    "overflowing dims": (_set_dims("relu_0.tmp_0", [2**62, 2**62, 4]), "implausible dims"),
    "negative dims": (_set_dims("relu_0.tmp_0", [1, -7, 3, 3]), "invalid dims"),
    "bfloat16 feed": (_set_dtype(lambda m: m.feeds[0], 22), "unsupported data type"),
    "param dtype differs from the program": (_set_dtype(_first_param, 6), "the program declares"),
    "param shape differs from the program": (
        lambda m: _set_dims(_first_param(m), [3, 3])(m),
        "the program declares",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_malformed_models_are_input_errors_at_load(tmp_path, capsys, case):
    edit, why = BAD_MODELS[case]
    model = edited_model(tmp_path / "m", edit)
    before = snapshot(tmp_path)
    for args in (
        ["ops", str(model)],
        ["compare", str(model), *ENGINES],
        ["run", str(model), *ENGINES, "--out", str(tmp_path / "o")],
    ):
        refused(*run_cli(args, capsys)[::2], why)
    assert snapshot(tmp_path) == before  # not even --out was created


def test_garbage_and_special_files_as_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "model.pdmodel").write_bytes(b"")
    (tmp_path / "empty" / "model.pdiparams").write_bytes(b"")
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "model.pdmodel").write_bytes(os.urandom(4096))
    (tmp_path / "noise" / "model.pdiparams").write_bytes(os.urandom(64))
    (tmp_path / "fifo").mkdir()
    os.mkfifo(tmp_path / "fifo" / "model.pdmodel")  # opening it for reading would block forever
    shutil.copy(MODEL / "model.pdiparams", tmp_path / "fifo")
    (tmp_path / "fifo-params").mkdir()
    shutil.copy(MODEL / "model.pdmodel", tmp_path / "fifo-params")
    os.mkfifo(tmp_path / "fifo-params" / "model.pdiparams")
    os.mkfifo(tmp_path / "bare-fifo")
    (tmp_path / "truncated").mkdir()
    shutil.copy(MODEL / "model.pdmodel", tmp_path / "truncated")
    (tmp_path / "truncated" / "model.pdiparams").write_bytes((MODEL / "model.pdiparams").read_bytes()[:-100])
    before = snapshot(tmp_path)
    for name in ("empty", "noise", "fifo", "fifo-params", "bare-fifo", "truncated", "missing"):
        refused(*run_cli(["ops", str(tmp_path / name)], capsys)[::2])
        refused(*run_cli(["compare", str(tmp_path / name), *ENGINES], capsys)[::2])
    refused(*run_cli(["ops", "/dev/zero"], capsys)[::2], "not a regular file or directory")
    assert snapshot(tmp_path) == before


def test_huge_sparse_model_files_are_refused_before_reading(tmp_path, capsys):
    """A 100 GB (sparse) params file or a 3 GB program must not be read into memory: one line, exit 2, at once."""
    (tmp_path / "big-params").mkdir()
    shutil.copy(MODEL / "model.pdmodel", tmp_path / "big-params")
    with open(tmp_path / "big-params" / "model.pdiparams", "wb") as f:
        f.truncate(100 << 30)
    (tmp_path / "big-program").mkdir()
    shutil.copy(MODEL / "model.pdiparams", tmp_path / "big-program")
    with open(tmp_path / "big-program" / "model.pdmodel", "wb") as f:
        f.truncate(3 << 30)
    before = snapshot(tmp_path)
    refused(*run_cli(["ops", str(tmp_path / "big-params")], capsys)[::2], "more than")
    refused(*run_cli(["ops", str(tmp_path / "big-program")], capsys)[::2], "more than")
    assert snapshot(tmp_path) == before


def test_bad_inputs_files(tmp_path, capsys):
    np.save(tmp_path / "one.npy", np.zeros((1, 3, 32, 32), np.float32))
    np.savez(tmp_path / "objects.npz", image=np.array([{"a": 1}], dtype=object))
    (tmp_path / "text.npz").write_text("not a zip")
    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as z:  # a header claiming 2**40 floats in 100 bytes
        header = b"\x93NUMPY\x01\x00" + b"v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
        z.writestr("image.npy", header.ljust(128, b" ")[:127] + b"\n" + b"\x00" * 100)
    os.mkfifo(tmp_path / "fifo.npz")
    (tmp_path / "dir.npz").mkdir()
    before = snapshot(tmp_path)
    cases = {
        "one.npy": "an .npy holds one array",
        "objects.npz": "",
        "text.npz": "not an .npz",
        "lying.npz": "",
        "fifo.npz": "not a regular file",
        "dir.npz": "not a regular file",
        "absent.npz": "not found",
    }
    for name, why in cases.items():
        for command in ("compare", "run"):
            out = ["--out", str(tmp_path / "o")] if command == "run" else []
            args = [command, str(MODEL), *ENGINES, "--inputs", str(tmp_path / name), *out]
            refused(*run_cli(args, capsys)[::2], why)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "option",
    [
        ["--seed", "-1"],
        ["--seed", str(2**64)],
        ["--timeout", "inf"],
        ["--timeout", "nan"],
        ["--timeout", "0"],
        ["--timeout", "-5"],
        ["--timeout", "1e300"],
        ["--shape", "image=100000,100000,100000,3"],
        ["--shape", "image=1,3,99999999999,2"],
        ["--shape", "image=0,3"],
        ["--shape", "image=1,3,32"],
        ["--shape", "nosuch=1,2"],
        ["--int-range", "5,1"],
        ["--max-memory", "-1G"],
        ["--max-memory", "infG"],
        ["--atol", "nan"],
    ],
)
def test_bad_option_values(tmp_path, capsys, option):
    for command in ("compare", "run"):
        out = ["--out", str(tmp_path / "o")] if command == "run" else []
        if command == "compare" and option[0] == "--max-memory":
            continue
        code, _, err = run_cli([command, str(MODEL), *ENGINES, *option, *out], capsys)
        refused(code, err)
    assert not (tmp_path / "o").exists()


def test_bad_engine_specs(tmp_path, capsys):
    for spec in ("nonsense", "cmd:", "cmd:'unclosed", "cmd:prog {nope}", "paddle:threads=1,threads=2", "fp16:,"):
        refused(*run_cli(["compare", str(MODEL), "--ref", "paddle", "--target", spec], capsys)[::2])


def test_verbose_does_not_turn_an_internal_error_into_a_verdict(capsys, monkeypatch):
    import bisect_lite.compare_engines

    def broken(*args, **kwargs):
        raise RuntimeError("a planted bug")

    monkeypatch.setattr(bisect_lite.compare_engines, "compare_engines", broken)
    for extra in ([], ["-v"]):
        code, _, err = run_cli(["compare", str(MODEL), *ENGINES, *extra], capsys)
        assert code == 4 and "a planted bug" in err.splitlines()[-1]
