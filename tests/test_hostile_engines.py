"""Hostile engines and engine output: cmd: runners get absolute paths and the user's working directory, engine
output is validated before it is loaded (FIFO, /dev/zero, lying headers, pickles), engine text is never rich
markup, cache entries are checked before use, and `verify` never runs a command recorded in a shared repro."""

from __future__ import annotations

import io
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, run_cli
from rich.console import Console
from test_hostile_fs import make_repro, refused, snapshot

from bisect_lite.cache import Cache
from bisect_lite.engines.runner import EngineRunner, check_outputs_file
from bisect_lite.model import load_model

MODEL = FIXTURES / "two_io"

# A cmd: runner that records how it was called, then misbehaves as told (argv[1]).
RUNNER = r"""
import json, os, sys
import numpy as np
mode, model_dir, inputs, outputs, io_file = sys.argv[1:6]
with open("seen.json", "w") as f:  # relative on purpose: lands in the working directory it was given
    json.dump({"argv": sys.argv[2:6], "cwd": os.getcwd()}, f)
fetches = json.load(open(io_file))["fetches"]
if mode == "ok":
    np.savez(outputs, **{name: np.zeros(1, np.float32) for name in fetches})
elif mode == "huge":
    np.savez(outputs, **{name: np.zeros(1 << 24, np.float32) for name in fetches})
elif mode == "devzero":
    os.symlink("/dev/zero", outputs)
elif mode == "fifo":
    os.mkfifo(outputs)
elif mode == "lying":
    import zipfile
    header = b"\x93NUMPY\x01\x00" + b"v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
    with zipfile.ZipFile(outputs, "w") as z:
        for name in fetches:
            z.writestr(name + ".npy", header.ljust(127, b" ") + b"\n" + b"\x00" * 64)
elif mode == "objects":
    np.savez(outputs, **{name: np.array([{}], dtype=object) for name in fetches})
elif mode == "markup":
    sys.stderr.write("[/dims] [bold red]not markup[/] [link=x]\n")
    sys.exit(3)
"""


@pytest.fixture
def runner_script(tmp_path) -> Path:
    path = tmp_path / "user" / "my_runner.py"
    path.parent.mkdir()
    path.write_text(RUNNER)
    return path


def spec(mode: str) -> str:
    return f"cmd:{sys.executable} my_runner.py {mode} {{model_dir}} {{inputs}} {{outputs}} {{io}}"


def test_cmd_gets_absolute_paths_and_the_users_working_directory(runner_script, monkeypatch):
    user = runner_script.parent
    monkeypatch.chdir(user)
    model = load_model(MODEL)
    feeds = {n: np.zeros([max(d, 1) for d in model.vars[n].shape], model.vars[n].dtype) for n in model.feeds}
    # a relative scratch directory, as with the default `--out bisect-out`
    with EngineRunner(spec("ok"), scratch=Path("bisect-out/.scratch")) as runner:
        result = runner.run(model, feeds)
    assert result.ok, result.message
    seen = json.loads((user / "seen.json").read_text())
    assert seen["cwd"] == str(user)
    assert all(os.path.isabs(a) for a in seen["argv"]), seen["argv"]


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("devzero", "not a regular file"),
        ("fifo", "not a regular file"),
        ("lying", "claims shape [1099511627776]"),
        ("objects", "Python objects"),
    ],
)
def test_hostile_outputs_are_crash_verdicts_not_errors(runner_script, monkeypatch, mode, why):
    monkeypatch.chdir(runner_script.parent)
    model = load_model(MODEL)
    feeds = {n: np.zeros([max(d, 1) for d in model.vars[n].shape], model.vars[n].dtype) for n in model.feeds}
    with EngineRunner(spec(mode), timeout=30) as runner:
        result = runner.run(model, feeds)
    assert result.status == "crash" and why in result.message, result.message


def test_oversized_outputs_are_refused_before_loading(runner_script, monkeypatch):
    """An answer far larger than the fetches declare (here 64 MiB for a few KB) is a crash verdict."""
    monkeypatch.chdir(runner_script.parent)
    model = load_model(MODEL)
    feeds = {n: np.zeros([max(d, 1) for d in model.vars[n].shape], model.vars[n].dtype) for n in model.feeds}
    with EngineRunner(spec("huge"), timeout=60) as runner:
        result = runner.run(model, feeds)
    assert result.status == "crash" and "cap" in result.message, result.message


def test_outputs_beyond_the_byte_cap_are_refused_before_loading(tmp_path):
    path = tmp_path / "out.npz"
    np.savez(path, a=np.zeros(1000, np.float32))
    assert set(check_outputs_file(path, ["a"])) == {"a"}
    with pytest.raises(Exception, match="cap"):
        check_outputs_file(path, ["a"], limit=1000)
    many = tmp_path / "many.npz"
    np.savez(many, **{f"t{i}": np.zeros(1) for i in range(40)})
    with pytest.raises(Exception, match="arrays for 1 fetches"):
        check_outputs_file(many, ["t0"])


def test_engine_text_is_never_markup(runner_script, monkeypatch, capsys):
    from bisect_lite.cli import err, out
    from bisect_lite.progress import RunProgress

    out.print("[/dims] [bold]x[/]")
    err.print("[/dims]")
    terminal = Console(file=io.StringIO(), force_terminal=True, width=100)
    with RunProgress(terminal) as progress:
        progress.event("phase", {"name": "search", "detail": "[/dims]"})
        progress.event("probe", {"cut": 3, "verdict": "crash", "message": "[/dims] [bold]"})
    assert "[/dims]" in terminal.file.getvalue()
    monkeypatch.chdir(runner_script.parent)
    code, stdout, stderr = run_cli(["compare", str(MODEL), "--ref", "paddle", "--target", spec("markup")], capsys)
    assert code in (1, 3), stderr
    assert "[/dims] [bold red]not markup[/]" in stdout + stderr


def test_verify_never_runs_a_recorded_command(tmp_path, capsys):
    marker = tmp_path / "pwned"
    repro = make_repro(tmp_path / "shared-repro", f"cmd:touch {marker}")
    before = snapshot(tmp_path)
    code, _, err = run_cli(["verify", str(repro)], capsys)
    refused(code, err, "--target")
    assert not marker.exists() and snapshot(tmp_path) == before
    code, _, err = run_cli(["verify", str(tmp_path)], capsys)  # found by searching a parent directory, too
    refused(code, err, "does not run a recorded command")
    assert not marker.exists()
    # named by the user: their engine runs, the recorded command does not
    code, _, err = run_cli(["verify", str(repro), "--target", "fp16"], capsys)
    assert code in (0, 1), err
    assert not marker.exists()
    # explicitly trusted: it runs (touch writes no outputs: a crash verdict)
    code, _, err = run_cli(["verify", str(repro), "--trust-recorded-command"], capsys)
    assert code == 1 and marker.exists()


@pytest.mark.parametrize(
    "recorded",
    ["lite:arm,python=/tmp/evil", "lite:opencl,ssh=someone@example.org", "lite:opencl,adb,device_dir=/sdcard"],
)
def test_verify_refuses_recorded_programs_hosts_and_device_dirs(tmp_path, capsys, recorded):
    repro = make_repro(tmp_path / "r", recorded)
    refused(*run_cli(["verify", str(repro)], capsys)[::2], "does not run a recorded command")


@pytest.mark.parametrize(
    "facts",
    ["{not json", "[]", json.dumps({"op": {"type": "relu"}}), json.dumps({"target": {"engine": 5}})],
)
def test_corrupt_repro_json_is_an_input_error(tmp_path, capsys, facts):
    repro = make_repro(tmp_path / "r", "fp16")
    (repro / "repro.json").write_text(facts)
    refused(*run_cli(["verify", str(repro)], capsys)[::2], "repro.json")


def test_corrupt_cache_entries_are_discarded_and_recomputed(tmp_path):
    model = load_model(MODEL)
    cache = Cache(tmp_path / "cache")
    cache.put_result("k", {"a": np.arange(4.0)})
    entry = next((tmp_path / "cache" / "results").iterdir())
    assert np.array_equal(cache.get_result("k")["a"], np.arange(4.0))
    data = bytearray(entry.read_bytes())
    data[-30] ^= 0xFF  # one flipped bit inside the array data
    entry.write_bytes(bytes(data))
    assert cache.get_result("k") is None and not entry.exists()
    entry.write_bytes(b"garbage")
    assert cache.get_result("k") is None

    directory = cache.model_dir(model)
    original = (directory / "model.pdiparams").read_bytes()
    (directory / "model.pdiparams").write_bytes(original[:-10])  # damaged after it was written
    assert Cache(tmp_path / "cache").model_dir(model) == directory  # a new process checks it
    assert (directory / "model.pdiparams").read_bytes() == original


def test_damaged_conversion_in_the_cache_is_redone_not_a_verdict(tmp_path):
    model = load_model(FIXTURES / "resnet")
    with np.load(FIXTURES / "resnet" / "inputs.npz") as data:
        feeds = {k: data[k] for k in data.files}
    with EngineRunner("fp16", Cache(tmp_path / "cache")) as runner:
        first = runner.run(model, feeds, use_cache=False)
    assert first.ok
    converted = list((tmp_path / "cache" / "prepared").rglob("model.pdiparams"))
    assert converted
    for path in converted:
        path.write_bytes(b"\x00" * 10)
    with EngineRunner("fp16", Cache(tmp_path / "cache")) as runner:
        again = runner.run(model, feeds, use_cache=False)
    assert again.ok, again.message
    for name in first.outputs:
        assert np.array_equal(first.outputs[name], again.outputs[name])


def test_result_file_format_is_checksummed(tmp_path):
    cache = Cache(tmp_path)
    cache.put_result("x", {"t": np.ones(3)})
    blob = next((tmp_path / "results").iterdir()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(blob[32:])) as z:
        assert z.namelist() == ["t.npy"]


def test_a_full_disk_in_the_worker_is_an_environment_error_not_a_verdict(tmp_path):
    """The worker's outputs land on a full device (/dev/full: ENOSPC): the job stops with exit 3, no op is blamed."""
    from bisect_lite.engines.base import Job
    from bisect_lite.engines.worker import Worker
    from bisect_lite.errors import EngineUnavailable
    from bisect_lite.inputs import generate_inputs, save_npz

    model = load_model(MODEL)
    cache = Cache(tmp_path / "cache")
    job = Job(
        model_dir=cache.model_dir(model),
        inputs_file=tmp_path / "inputs.npz",
        outputs_file=tmp_path / "outputs.npz",
        io_file=tmp_path / "io.json",
        feeds=list(model.feeds),
        fetches=list(model.fetches),
        work_dir=tmp_path / "work",
    )
    save_npz(job.inputs_file, generate_inputs(model))
    (tmp_path / "outputs.npz.part.npz").symlink_to("/dev/full")
    worker = Worker("paddle", tmp_path / "worker.log")
    try:
        with pytest.raises(EngineUnavailable, match="No space left"):
            worker.run(job, timeout=120)
    finally:
        worker.stop()
