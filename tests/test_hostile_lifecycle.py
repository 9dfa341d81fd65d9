"""Lifecycle: no engine process (or a child it started) outlives a run, Ctrl-C or SIGTERM; a busy --out is locked;
a damaged or contradicted journal is refused with one line (a torn last line is dropped)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, ROOT, run_cli
from test_hostile_fs import refused, snapshot

from bisect_lite.cache import inputs_hash
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.fsutil import MARKER, claim_output_dir
from bisect_lite.inputs import generate_inputs, save_npz
from bisect_lite.journal import Journal
from bisect_lite.model import load_model

MODEL = FIXTURES / "two_io"
FP16 = ["--target", "fp16", "--no-cache"]

# A cmd: runner that leaves a grandchild behind (same process group), records both pids, then answers or hangs.
RUNNER = r"""
import json, subprocess, sys, time
import numpy as np
pids_file, mode, io_file, outputs = sys.argv[1:5]
child = subprocess.Popen(["sleep", "300"])
with open(pids_file + ".tmp", "w") as f:
    json.dump({"runner": __import__("os").getpid(), "child": child.pid}, f)
__import__("os").replace(pids_file + ".tmp", pids_file)
if mode == "hang":
    time.sleep(300)
fetches = json.load(open(io_file))["fetches"]
np.savez(outputs, **{name: np.zeros(1, np.float32) for name in fetches})
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped by its (init) parent


def wait_dead(pids: list[int], seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def wait_for(path: Path, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
def runner_spec(tmp_path):
    script = tmp_path / "leaky_runner.py"
    script.write_text(RUNNER)

    def make(mode: str, pids_file: Path) -> str:
        return f"cmd:{sys.executable} {script} {pids_file} {mode} {{io}} {{outputs}}"

    return make


def test_children_of_a_cmd_runner_do_not_outlive_its_run(tmp_path, runner_spec):
    model = load_model(MODEL)
    feeds = generate_inputs(model)
    pids_file = tmp_path / "pids.json"
    with EngineRunner(runner_spec("ok", pids_file), timeout=60) as runner:
        assert runner.run(model, feeds).ok
        pids = json.loads(pids_file.read_text())
        assert wait_dead([pids["child"], pids["runner"]]), "a child of the runner survived the run"
    pids_file.unlink()
    with EngineRunner(runner_spec("hang", pids_file), timeout=3) as runner:
        assert runner.run(model, feeds).status == "timeout"
        pids = json.loads(pids_file.read_text())
        assert wait_dead([pids["child"], pids["runner"]])


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_end_the_in_flight_runner_and_its_children(tmp_path, runner_spec, sig, code):
    pids_file = tmp_path / "pids.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bisect_lite", "compare", str(MODEL), "--ref", runner_spec("hang", pids_file), *FP16],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pids = wait_for(pids_file)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert wait_dead([pids["runner"], pids["child"]]), "the in-flight runner outlived bisect-lite"


# ---- the lock and the journal ------------------------------------------------------------------------------------
def recorded_run(out: Path, *, seed: int = 0, ref: str = "paddle", target: str = "fp16") -> list[str]:
    """An interrupted run's directory as `run` leaves it: marker, inputs.npz, journal with a header and a probe."""
    model = load_model(MODEL)
    feeds = generate_inputs(model, seed=seed)
    out.mkdir()
    (out / MARKER).write_text("{}\n")
    save_npz(out / "inputs.npz", feeds)
    header = {"type": "start", "model": model.fingerprint, "ref": ref, "target": target, "inputs": inputs_hash(feeds)}
    probe = {"type": "probe", "segment": 0, "cut": 3, "fetched": [], "verdict": "pass", "metrics": []}
    lines = [json.dumps(header), json.dumps(probe)]
    (out / "journal.jsonl").write_text("\n".join(lines) + "\n")
    return lines


def run_args(out: Path, *extra: str) -> list[str]:
    return ["run", str(MODEL), "--out", str(out), *extra]


def test_a_busy_out_dir_is_refused_and_left_alone(tmp_path, capsys):
    out = tmp_path / "out"
    recorded_run(out)
    with claim_output_dir(out, resume=True):  # another run holds it
        before = snapshot(tmp_path)
        for extra in (["--force", "--ref", "paddle", "--target", "fp16"], ["--resume"]):
            refused(*run_cli(run_args(out, *extra), capsys)[::2], "in use by another bisect-lite run")
            assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda lines: [lines[0], "garbage{", lines[1]], "line 2"),
        (lambda lines: [lines[0], "[1, 2]", lines[1]], "line 2"),
        (lambda lines: [lines[0].replace('"model"', '"modle"'), lines[1]], "header lacks model"),
        (lambda lines: [lines[1], lines[0]], "header"),
        (lambda lines: [lines[0], lines[0]], "second header"),
        (lambda lines: [lines[0], lines[1].replace('"cut": 3', '"cut": "3"')], "damaged probe"),
        (lambda lines: [], "no header"),
    ],
)
def test_damaged_journal_is_refused_with_how_to_start_over(tmp_path, capsys, damage, why):
    out = tmp_path / "out"
    lines = recorded_run(out)
    (out / "journal.jsonl").write_text("".join(line + "\n" for line in damage(lines)))
    before = snapshot(tmp_path)
    refused(*run_cli(run_args(out, "--resume"), capsys)[::2], why, "--force")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (["--seed", "7"], "other inputs"),
        (["--target", "onnxruntime"], "--target fp16"),
        (["--ref", "paddle-opt"], "--ref paddle"),
        (["--inputs", "OTHER"], "other inputs"),
    ],
)
def test_resume_refuses_options_that_contradict_the_journal(tmp_path, capsys, extra, why):
    out = tmp_path / "out"
    recorded_run(out)
    other = tmp_path / "other.npz"
    save_npz(other, generate_inputs(load_model(MODEL), seed=9))
    extra = [str(other) if e == "OTHER" else e for e in extra]
    before = snapshot(tmp_path)
    refused(*run_cli(run_args(out, "--resume", *extra), capsys)[::2], why)
    assert snapshot(tmp_path) == before


def test_resume_refuses_another_model(tmp_path, capsys):
    out = tmp_path / "out"
    recorded_run(out)
    before = snapshot(tmp_path)
    refused(*run_cli(["run", str(FIXTURES / "resnet"), "--out", str(out), "--resume"], capsys)[::2], "another model")
    assert snapshot(tmp_path) == before


def test_resume_on_a_missing_or_foreign_dir_says_so(tmp_path, capsys):
    refused(*run_cli(run_args(tmp_path / "nope", "--resume"), capsys)[::2], "does not exist")
    (tmp_path / "empty").mkdir()
    refused(*run_cli(run_args(tmp_path / "empty", "--resume"), capsys)[::2], "empty")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "journal.jsonl").write_text("{}\n")  # not ours: no marker
    refused(*run_cli(run_args(tmp_path / "mine", "--resume"), capsys)[::2], "not written by bisect-lite")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / MARKER).write_text("{}\n")
    (ours / "report.md").write_text("x")
    refused(*run_cli(run_args(ours, "--resume"), capsys)[::2], "no journal")


def test_a_torn_last_line_is_dropped_and_cut_before_the_next_record(tmp_path):
    out = tmp_path / "out"
    lines = recorded_run(out)
    path = out / "journal.jsonl"
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + '{"type": "probe", "segm')  # killed mid-write
    journal = Journal(path)
    assert [e["type"] for e in journal.entries] == ["start", "probe"]
    journal.append({"type": "probe", "segment": 0, "cut": 5, "fetched": [], "verdict": "fail", "metrics": []})
    again = Journal(path)
    assert [e.get("cut") for e in again.entries] == [None, 3, 5]
    assert path.read_text().endswith("\n") and "segm\n" not in path.read_text()


def test_interrupted_run_resumes_after_a_torn_line(tmp_path, capsys):
    """End to end: a real run's journal with a torn tail still resumes to the same verdict."""
    out = tmp_path / "out"
    args = ["run", str(FIXTURES / "fp16_overflow"), "--ref", "paddle", "--target", "fp16", "--no-minimise", "--out"]
    code, _, err = run_cli([*args, str(out)], capsys)
    assert code == 1, err
    first = json.loads((out / "report.json").read_text())
    with open(out / "journal.jsonl", "a") as f:
        f.write('{"type": "probe", "seg')
    code, _, err = run_cli([*args, str(out), "--resume"], capsys)
    assert code == 1, err
    again = json.loads((out / "report.json").read_text())
    assert [c["index"] for c in again["culprits"]] == [c["index"] for c in first["culprits"]]
    assert np.array_equal(
        np.load(out / "inputs.npz")[load_model(FIXTURES / "fp16_overflow").feeds[0]],
        generate_inputs(load_model(FIXTURES / "fp16_overflow"))[load_model(FIXTURES / "fp16_overflow").feeds[0]],
    )
