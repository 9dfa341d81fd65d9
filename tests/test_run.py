"""End to end: `run` finds planted faults on the fixtures, writes repros that fail on the faulty engine and pass
`verify` on a clean one; resume, crash, hang, non-determinism, two faults, int64 outputs, fp16 overflow."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import FAULTY, FIXTURES, run_cli

from bisect_lite.bisector import RunOptions, run_bisect
from bisect_lite.repro.verify import verify_repros
from bisect_lite.search import expected_probes


@pytest.fixture
def faulty(fault_server, tmp_path):
    """Build a cmd engine spec that plants the given faults."""

    def make(*faults: dict) -> str:
        path = tmp_path / f"faults-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(list(faults)))
        return f"cmd:{sys.executable} {FAULTY} run {fault_server} {path} {{model_dir}} {{inputs}} {{outputs}}"

    return make


def bisect(fixture: str, target: str, tmp_path: Path, **kw) -> dict:
    options = RunOptions(
        ref=kw.pop("ref", "paddle"), target=target, out=tmp_path / "out", inputs=FIXTURES / fixture / "inputs.npz", **kw
    )
    return run_bisect(FIXTURES / fixture, options)


def search_probes(report: dict, segment: int = 0) -> int:
    return sum(1 for p in report["probes"] if p["segment"] == segment)


def test_wrong_op_on_a_branch(faulty, tmp_path, capsys):
    target = faulty({"kind": "scale", "tensor": "batch_norm_7.tmp_0", "factor": 1.3})
    report = bisect("resnet", target, tmp_path)
    assert report["verdict"] == "mismatch"
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"], culprit["kind"]) == (23, "batch_norm", "op")
    assert search_probes(report) <= expected_probes(report["ops"]) + 1
    repro = tmp_path / "out" / "repro"
    facts = json.loads((repro / "repro.json").read_text())
    assert facts["op"]["type"] == "batch_norm" and facts["source"]["op_index"] == 23
    for name in ("model.pdmodel", "model.pdiparams", "inputs.npz", "expected.npz", "actual.npz", "ISSUE.md"):
        assert (repro / name).exists(), name
    assert "bisect-lite verify" in (repro / "ISSUE.md").read_text()
    assert (tmp_path / "out" / "report.md").exists()
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["culprits"][0]["repro"] == "repro" and saved["target_runs"] >= search_probes(report)
    # The repro fails on the faulty engine and passes on a clean one (a fixed build).
    # A recorded cmd: engine runs only when the user names it.
    assert [r.status for r in verify_repros([repro], target=target)] == ["failing"]
    code, _, _ = run_cli(
        ["verify", str(tmp_path / "out"), "--target", "paddle", "--junit", str(tmp_path / "j.xml")], capsys
    )
    assert code == 0
    assert 'failures="0"' in (tmp_path / "j.xml").read_text()
    code, out, _ = run_cli(["verify", str(repro), "--target", target], capsys)
    assert code == 1, out


def test_crash_is_bisected_as_a_crash(faulty, tmp_path):
    target = faulty({"kind": "crash", "tensor": "concat_0.tmp_0"})
    report = bisect("unet", target, tmp_path, minimise=False)
    assert report["verdict"] == "crash"
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"]) == (23, "concat")
    assert culprit["diagnosis"]["kind"] == "crash"
    assert "SIGABRT" in json.dumps(report["probes"]) or "SIGABRT" in culprit["diagnosis"]["summary"]
    repro = tmp_path / "out" / "repro"
    assert json.loads((repro / "repro.json").read_text())["status"] == "crash"
    assert [r.status for r in verify_repros([repro], target=target)] == ["crash"]
    assert [r.status for r in verify_repros([repro], target="paddle")] == ["fixed"]


def test_hang_becomes_a_timeout_verdict(faulty, tmp_path):
    report = bisect(
        "transformer", faulty({"kind": "hang", "tensor": "gelu_0.tmp_0"}), tmp_path, timeout=3, minimise=False
    )
    assert report["verdict"] == "crash"
    assert report["culprits"][0]["index"] == 25
    assert "no result within 3 s" in json.dumps(report)


def test_fault_needing_two_ops_is_a_subgraph(faulty, tmp_path):
    # Fires only when the op making batch_norm_9.tmp_0 runs in the same model (like a fused kernel).
    target = faulty(
        {"kind": "scale", "tensor": "hard_swish_1.tmp_0", "factor": 1.5, "requires": ["batch_norm_9.tmp_0"]}
    )
    report = bisect("mobilenetv3", target, tmp_path)
    [culprit] = report["culprits"]
    assert culprit["index"] == 35
    assert culprit["kind"] == "subgraph" and culprit["ops"] == [34, 35]
    assert any("alone" in n for n in culprit["notes"])
    facts = json.loads((tmp_path / "out" / "repro" / "repro.json").read_text())
    assert [o["index"] for o in facts["ops"]] == [34, 35]
    # verify labels the repro with what it holds: the described op and the other op it needs.
    [result] = verify_repros([tmp_path / "out" / "repro"], target=target)
    assert result.status == "failing" and result.op == "hard_swish (op 35) +1 ops"


def test_two_independent_faults_with_all(faulty, tmp_path):
    target = faulty(
        {"kind": "scale", "tensor": "softmax_0.tmp_0", "factor": 1.2},
        {"kind": "scale", "tensor": "gelu_0.tmp_0", "factor": 0.7},
    )
    report = bisect("transformer", target, tmp_path, find_all=True, minimise=False)
    assert [c["index"] for c in report["culprits"]] == [15, 25]
    assert [c["repro"] for c in report["culprits"]] == ["repro", "repro-2"]
    assert {r.status for r in verify_repros([tmp_path / "out"], target=target)} == {"failing"}
    without_all = bisect("transformer", target, tmp_path / "b", minimise=False)
    assert [c["index"] for c in without_all["culprits"]] == [15]


def test_nondeterministic_target_is_reported(faulty, tmp_path):
    target = faulty(
        {"kind": "noise", "tensor": "save_infer_model/scale_0.tmp_0", "amplitude": 1e-6},
        {"kind": "scale", "tensor": "batch_norm_3.tmp_0", "factor": 2.0},
    )
    report = bisect("resnet", target, tmp_path, minimise=False)
    assert report["target_nondeterministic"] is True
    assert report["culprits"][0]["index"] == 11
    # the second run fetched every tensor and its outputs changed: a third, plain run after the search decided
    assert report["full_model"]["every_tensor"]["fetch_invariance"] == "changed outputs"
    assert report["target_runs_by_phase"]["determinism"] == 1 and report["search_strategy"] == "binary"


def test_int64_output(faulty, tmp_path):
    report = bisect(
        "argmax_classifier",
        faulty({"kind": "scale", "tensor": "arg_max_0.tmp_0", "bias": 1.0}),
        tmp_path,
        minimise=False,
    )
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"]) == (15, "arg_max")
    assert culprit["diagnosis"]["kind"] == "int_mismatch"
    actual = np.load(tmp_path / "out" / "repro" / "actual.npz")
    assert actual[actual.files[0]].dtype == np.int64


def test_fp16_overflow_is_found_and_minimised(tmp_path, capsys):
    """The README's main job: the fp16 emulation against the exact reference."""
    code, out, err = run_cli(
        ["run", str(FIXTURES / "fp16_overflow"), "--ref", "paddle", "--target", "fp16", "--out", str(tmp_path / "out")],
        capsys,
    )
    assert code == 1, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    [culprit] = report["culprits"]
    assert (culprit["index"], culprit["type"]) == (9, "reduce_sum")
    assert culprit["diagnosis"]["kind"] == "fp16_overflow"
    assert "reduce_sum" in out and "fp16_overflow" in out
    facts = json.loads((tmp_path / "out" / "repro" / "repro.json").read_text())
    assert facts["inputs"]  # shapes recorded; shrinking keeps the overflow
    # A parameter-free single-op repro still gets its ONNX model, and ONNX Runtime agrees with the reference.
    assert facts["onnx"]["written"] and (tmp_path / "out" / "repro" / "model.onnx").exists()
    assert [r.status for r in verify_repros([tmp_path / "out" / "repro"], target="onnxruntime")] == ["fixed"]
    assert [r.status for r in verify_repros([tmp_path / "out" / "repro"])] == ["failing"]


def test_match_exits_zero(tmp_path, capsys):
    code, out, err = run_cli(
        [
            "run",
            str(FIXTURES / "resnet"),
            "--ref",
            "paddle",
            "--target",
            "paddle-opt",
            "--out",
            str(tmp_path / "out"),
            "--atol",
            "1e-4",
            "--rtol",
            "1e-4",
        ],
        capsys,
    )
    assert code == 0, err
    assert "MATCH" in out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["verdict"] == "match"


def test_interrupt_then_resume_repeats_no_probe(faulty, tmp_path):
    target = faulty({"kind": "scale", "tensor": "relu_6.tmp_0", "factor": 1.5})
    seen = []

    def interrupt_after_two(kind, data):
        if kind == "probe":
            seen.append(data["cut"])
            if len(seen) == 2:
                raise KeyboardInterrupt

    # the binary search: probes one after another (the default observes every tensor, then confirms with one)
    options = RunOptions(
        ref="paddle", target=target, out=tmp_path / "out", minimise=False, inputs=FIXTURES / "resnet" / "inputs.npz",
        search="binary",
    )  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        run_bisect(FIXTURES / "resnet", options, interrupt_after_two)
    assert not (tmp_path / "out" / "repro").exists()  # never a half-written repro
    resumed_cuts = []
    options.resume = True
    report = run_bisect(
        FIXTURES / "resnet", options, lambda kind, data: resumed_cuts.append(data["cut"]) if kind == "probe" else None
    )
    assert report["culprits"][0]["index"] == 25
    assert not set(resumed_cuts) & set(seen)
    assert [p["cut"] for p in report["probes"]][:2] == seen


def test_force_replaces_an_earlier_run_only(tmp_path, capsys):
    args = [
        "run",
        str(FIXTURES / "fp16_overflow"),
        "--ref",
        "paddle",
        "--target",
        "fp16",
        "--no-minimise",
        "--out",
        str(tmp_path / "out"),
    ]
    assert run_cli(args, capsys)[0] == 1
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "--force" in err
    assert run_cli([*args, "--force"], capsys)[0] == 1  # an earlier run's directory is replaced
    assert (tmp_path / "out" / "report.json").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = run_cli([*args[:-1], str(tmp_path / "mine"), "--force"], capsys)
    assert code == 2 and "refusing" in err and (tmp_path / "mine" / "notes.txt").exists()


def test_out_dir_rules(tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("user file")
    code, _, err = run_cli(
        ["run", str(FIXTURES / "resnet"), "--ref", "paddle", "--target", "fp16", "--out", str(tmp_path / "busy")],
        capsys,
    )
    assert code == 2 and "not empty" in err
    assert (tmp_path / "busy" / "x").read_text() == "user file"
    code, _, err = run_cli(
        ["run", str(FIXTURES / "resnet"), "--target", "nonsense:zz", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "unknown engine" in err


def test_memory_budget_splits_the_reference_dump(faulty, tmp_path):
    """A tiny --max-memory spills the reference values in many batches; the answer does not change."""
    target = faulty({"kind": "scale", "tensor": "batch_norm_7.tmp_0", "factor": 1.3})
    report = bisect("resnet", target, tmp_path, minimise=False, max_memory=64 * 1024)
    batches = sorted((tmp_path / "out" / "reference").glob("batch-*.npz"))
    assert len(batches) > 5
    for batch in batches:  # under the budget, unless one tensor alone is larger
        assert batch.stat().st_size < 64 * 1024 or len(np.load(batch).files) == 1
    assert report["culprits"][0]["index"] == 23


def test_nondeterministic_reference_is_reported(faulty, tmp_path):
    noisy_ref = faulty({"kind": "noise", "tensor": "relu_3.tmp_0", "amplitude": 1e-7})
    target = faulty({"kind": "scale", "tensor": "batch_norm_7.tmp_0", "factor": 1.3})
    report = bisect("resnet", target, tmp_path, ref=noisy_ref, minimise=False)
    assert report["reference_nondeterministic"] is True
    assert any("relu_3.tmp_0" in note for note in report["notes"])
    assert report["culprits"][0]["index"] == 23
    assert not (tmp_path / "out" / "reference" / "second.npz").exists()
