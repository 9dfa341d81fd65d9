"""Cost of a run (issues 10, 16): target runs by phase, the multi-cut search, every tensor observed in the
whole-model runs, the cached reference, bounded memory, cheap comparisons."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FAULTY, FIXTURES, ROOT, ppocr_model, require, run_cli
from faulty_lib import make_faulty_opencl_lib

from bisect_lite import compare as compare_module
from bisect_lite.bisector import RunOptions, run_bisect
from bisect_lite.cache import Cache
from bisect_lite.compare import CompareConfig, Scratch, Tolerance, compare_outputs, compare_tensor, quick_compare
from bisect_lite.engines.lite import native_targets
from bisect_lite.lite_env import find_lite_env
from bisect_lite.model import frontier, load_model
from bisect_lite.npz import BadNpz, NpzReader
from bisect_lite.phases.observe import FrontierIndex
from bisect_lite.reference import estimated_bytes

LOCALISATION = ("confirm", "search")


def faulty_target(sock: str, directory: Path, tensor: str, **fault: object) -> str:
    faults = directory / f"faults-{time.monotonic_ns()}.json"
    faults.write_text(json.dumps([{"kind": "scale", "tensor": tensor, "factor": 1.5, **fault}]))
    return f"cmd:{sys.executable} {FAULTY} run {sock} {faults} {{model_dir}} {{inputs}} {{outputs}}"


def localisation_runs(report: dict) -> int:
    return sum(report["target_runs_by_phase"].get(k, 0) for k in LOCALISATION)


@pytest.fixture(scope="module")
def resnet_runs(fault_server, tmp_path_factory):
    """The same planted fault in resnet (op 23, on a branch) searched by the binary search and by the default,
    which tests whether the cmd: target computes the same whatever it fetches (the faulty engine does)."""
    tmp = tmp_path_factory.mktemp("resnet")
    target = faulty_target(fault_server, tmp, "batch_norm_7.tmp_0")
    reports = {}
    for search in ("binary", "auto"):
        options = RunOptions(
            ref="paddle",
            target=target,
            out=tmp / search,
            inputs=FIXTURES / "resnet" / "inputs.npz",
            search=search,
            minimise=False,
            target_precision="fp32",
        )
        reports[search] = {**run_bisect(FIXTURES / "resnet", options), "_out": tmp / search}
    return reports


def test_runs_by_phase_and_the_localisation_bound(resnet_runs):
    for report in resnet_runs.values():
        by_phase = report["target_runs_by_phase"]
        assert {"confirm", "search", "isolate"} <= set(by_phase), by_phase
        assert set(by_phase) <= {"confirm", "search", "isolate", "minimise", "all", "setup"}, by_phase
        assert sum(by_phase.values()) == report["target_runs"]
        assert localisation_runs(report) <= math.ceil(math.log2(report["ops"])) + 2, by_phase
        assert "setup" not in by_phase, by_phase  # a probe or tensor that passed proves the target works
        saved = json.loads((report["_out"] / "report.json").read_text())
        assert saved["target_runs_by_phase"] == by_phase and saved["search_strategy"] == report["search_strategy"]


def test_a_cmd_target_shown_fetch_invariant_finds_the_same_op_in_fewer_runs(resnet_runs):
    binary, multi = resnet_runs["binary"], resnet_runs["auto"]
    assert binary["search_strategy"] == "binary" and binary["search_strategy_reason"] == "--search binary"
    assert "every_tensor" not in binary["full_model"]
    # --search auto: the second whole-model run fetched every tensor and returned bit-identical outputs
    assert multi["search_strategy"] == "multicut", multi["search_strategy_reason"]
    assert "bit-identical outputs" in multi["search_strategy_reason"]
    assert multi["full_model"]["every_tensor"]["fetch_invariance"] == "bit-identical outputs"
    assert multi["target_nondeterministic"] is False and "determinism" not in multi["target_runs_by_phase"]
    assert [c["index"] for c in binary["culprits"]] == [c["index"] for c in multi["culprits"]] == [23]
    assert multi["target_runs_by_phase"]["search"] < binary["target_runs_by_phase"]["search"]
    assert multi["search_probes"] == multi["target_runs_by_phase"]["search"]
    # The second whole-model run observed every tensor: the search confirms its first failing one with one probe,
    # and the error-vs-depth plot gets every tensor's error.
    every = multi["full_model"]["every_tensor"]
    assert every["observed"] and every["beyond_tolerance"][0] == "batch_norm_7.tmp_0", every
    assert multi["target_runs_by_phase"]["search"] == 1 and localisation_runs(multi) <= 3, multi["target_runs_by_phase"]
    assert len(every["depth"]) == every["checked"] > 20


def test_a_cmd_target_whose_values_depend_on_what_it_fetches_keeps_the_binary_search(fault_server, tmp_path):
    """A fused kernel that a fetch of its inner tensor breaks up (the fault vanishes when conv2d_7.tmp_0 is
    fetched): the every-tensor run changes the outputs, so the search probes plain cuts, within the binary
    search's bound, and one plain run after it shows the target deterministic."""
    target = faulty_target(fault_server, tmp_path, "batch_norm_7.tmp_0", unless_fetched=["conv2d_7.tmp_0"])
    options = RunOptions(
        ref="paddle", target=target, out=tmp_path / "out", inputs=FIXTURES / "resnet" / "inputs.npz",
        minimise=False, target_precision="fp32",
    )  # fmt: skip
    report = run_bisect(FIXTURES / "resnet", options)
    assert [c["index"] for c in report["culprits"]] == [23]
    assert report["search_strategy"] == "binary" and "not return the same outputs" in report["search_strategy_reason"]
    assert report["full_model"]["every_tensor"]["fetch_invariance"] == "changed outputs"
    assert localisation_runs(report) <= math.ceil(math.log2(report["ops"])) + 2, report["target_runs_by_phase"]
    assert report["target_runs_by_phase"]["confirm"] == 2 and report["target_runs_by_phase"]["determinism"] == 1
    assert report["target_nondeterministic"] is False
    assert any("depends on which tensors it fetches" in n for n in report["notes"]), report["notes"]


def test_a_cmd_target_that_fails_when_asked_for_every_tensor_keeps_the_binary_search(fault_server, tmp_path):
    """A runner that cannot return many tensors (it aborts beyond 5): the failed test run is no verdict; a plain
    second run decides determinism and the binary search finds the fault."""
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps([
        {"kind": "scale", "tensor": "batch_norm_7.tmp_0", "factor": 1.5}, {"kind": "max_fetches", "count": 5}
    ]))  # fmt: skip
    target = f"cmd:{sys.executable} {FAULTY} run {fault_server} {faults} {{model_dir}} {{inputs}} {{outputs}}"
    options = RunOptions(
        ref="paddle", target=target, out=tmp_path / "out", inputs=FIXTURES / "resnet" / "inputs.npz",
        minimise=False, target_precision="fp32",
    )  # fmt: skip
    report = run_bisect(FIXTURES / "resnet", options)
    assert report["verdict"] == "mismatch" and [c["index"] for c in report["culprits"]] == [23]
    assert report["search_strategy"] == "binary" and "or it failed" in report["search_strategy_reason"]
    assert report["target_runs_by_phase"]["confirm"] == 3 and report["target_nondeterministic"] is False
    assert any("crashed when asked for every tensor" in n for n in report["notes"]), report["notes"]


def test_report_records_the_peak_of_every_process(resnet_runs):
    peaks = resnet_runs["binary"]["peak_rss_mb"]
    assert peaks["bisect-lite"] > 10 and peaks["reference worker"] > 10, peaks


def test_frontier_index_matches_frontier():
    for name in ("resnet", "transformer", "unet", "two_io", "mobilenetv3"):
        model = load_model(FIXTURES / name)
        names = {t for _, t in model.data_tensors()}
        for start in (0, len(model.ops) // 3):
            index = FrontierIndex(SimpleNamespace(model=model, values=names), start)  # type: ignore[arg-type]
            cuts = list(range(start, len(model.ops)))
            got = index.at_many(cuts)
            for cut in cuts:
                assert got[cut] == [t for t in frontier(model, cut) if model.producers.get(t, -1) >= start]
            for subset in (cuts[::5], cuts[1::9], cuts[-1:]):
                union = {t for c in subset for t in got[c]}
                assert index.union_bytes(subset) == sum(estimated_bytes(model, t) for t in union)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_bit_identical_fast_path_gives_the_streamed_statistics(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    config = CompareConfig(default=Tolerance(1e-4, 1e-4))
    for ref in (rng.standard_normal((3, 50_000)).astype(dtype), np.zeros((4, 4), dtype)):
        fast = compare_outputs({"a": ref}, {"a": ref.copy()}, config).tensors[0].to_dict()
        monkeypatch.setattr(compare_module, "_bit_identical_finite", lambda r, t: False)
        slow = compare_outputs({"a": ref}, {"a": ref.copy()}, config).tensors[0].to_dict()
        monkeypatch.undo()
        assert fast.pop("cosine") == pytest.approx(slow.pop("cosine"), abs=1e-12)
        assert fast == slow
    # NaN/inf and a one-bit difference never take the fast path
    a = rng.standard_normal(1000).astype(dtype)
    b = a.copy()
    b.view(f"u{a.itemsize}")[500] ^= 1
    assert not compare_module._bit_identical_finite(a, b)
    a[3] = np.inf
    assert not compare_module._bit_identical_finite(a, a.copy())


MEMORY_RUN = """
import json, sys
from pathlib import Path
from bisect_lite.bisector import RunOptions, run_bisect
model, out, target, budget = sys.argv[1:5]
options = RunOptions(ref="paddle", target=target, out=Path(out), inputs=Path(model) / "inputs.npz",
                     max_memory=int(budget), search="multicut", minimise=False, target_precision="fp32")
report = run_bisect(Path(model), options)
shown = {k: report[k] for k in ("peak_rss_mb", "culprits", "search_strategy_reason", "target_runs_by_phase")}
print(json.dumps({**shown, "every_tensor": report["full_model"]["every_tensor"]}))
"""


def test_memory_stays_within_the_budget_on_a_model_larger_than_it(fault_server, tmp_path):
    """A 200-op chain of 1 MB tensors (200 MB of activations) under a 32 MB budget: the reference dump is batched
    and spilled, the observation runs fetch what half the budget holds, comparisons stream. The bisect-lite
    process stays near its import baseline; holding every activation would add ~200 MB."""
    model_dir = tmp_path / "chain"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gen_chain.py"), str(model_dir), "--ops", "200", "--shape", "16,128,128"],
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    model = load_model(model_dir)
    total = sum(estimated_bytes(model, t) for _, t in model.data_tensors())
    assert total > 200e6
    planted = [t for _, t in model.data_tensors()][150]
    target = faulty_target(fault_server, tmp_path, planted)
    budget = 32 << 20
    proc = subprocess.run(
        [sys.executable, "-c", MEMORY_RUN, str(model_dir), str(tmp_path / "out"), target, str(budget)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [c["index"] for c in report["culprits"]] == [150]
    # Budget-bound observation: every tensor in runs of at most the budget, and the report says how many and why.
    every = report["every_tensor"]
    assert every["batches"] == report["target_runs_by_phase"]["confirm"] - 1 >= 7, report
    assert every["memory"].startswith(f"the 200 observed tensors take {total / (1 << 20):.0f} MB, more than"), every
    assert localisation_runs(report) <= math.ceil(math.log2(200)) + 2, report
    peaks = report["peak_rss_mb"]
    params_mb = (model_dir / "model.pdiparams").stat().st_size / (1 << 20)  # the model's own size (~50 MB)
    budget_mb = budget / (1 << 20)
    # Documented constants (README, Performance): bisect-lite ~120 MB (python, numpy, protobuf), a Paddle worker
    # ~350 MB (paddle itself); each holds at most the budget and the model besides. Breaking it (every activation
    # held, or a worker without buffer reuse) adds ~200 MB and fails these.
    assert peaks["bisect-lite"] < 120 + params_mb + budget_mb + 30, peaks
    assert 0 < peaks["reference worker"] < 350 + params_mb + budget_mb + 30, peaks


# ---- issue 16: localisation in three target runs, a cached reference ---------------------------------------------
@contextmanager
def private_cache(path: Path) -> Iterator[None]:
    """A cache of the test's own: the session's may already hold a dump another test made."""
    old = os.environ["BISECT_LITE_CACHE"]
    os.environ["BISECT_LITE_CACHE"] = str(path)
    try:
        yield
    finally:
        os.environ["BISECT_LITE_CACHE"] = old


DET_FAULT = "elementwise_add_53"  # made by op 186, mid-model


@pytest.fixture(scope="module")
def det_cold(fault_server, tmp_path_factory):
    """PP-OCRv5 det with a planted fault in a fetch-invariant cmd: target, default options (the second run shows it
    fetch-invariant), on a cold cache."""
    det = ppocr_model("det")
    tmp = tmp_path_factory.mktemp("det")
    target = faulty_target(fault_server, tmp, DET_FAULT)
    options = RunOptions(
        ref="paddle",
        target=target,
        out=tmp / "cold",
        inputs=det / "inputs.npz",
        minimise=False,
        target_precision="fp32",
    )
    with private_cache(tmp / "cache"):
        report = run_bisect(det, options)
    return SimpleNamespace(report=report, det=det, tmp=tmp, target=target)


def test_det_localises_a_planted_fault_in_three_target_runs(det_cold):
    """The first run is the plain model, the second returns every tensor (judged one at a time from disk): it
    names op 186, and one plain probe of that cut confirms it. The setup check is not needed: tensors passed."""
    report = det_cold.report
    assert [c["index"] for c in report["culprits"]] == [186]
    by_phase = report["target_runs_by_phase"]
    assert sum(by_phase.get(k, 0) for k in ("confirm", "setup", "search")) <= 3, by_phase
    assert by_phase == {"confirm": 2, "search": 1, "isolate": 1}, by_phase
    every = report["full_model"]["every_tensor"]
    assert every["observed"] and every["batches"] == 1 and every["memory"] is None, every
    assert every["checked"] >= 370 and every["beyond_tolerance"][0] == DET_FAULT
    assert report["search_probes"] == 1 and "confirmed by a plain probe" in report["search_strategy_reason"]
    assert every["fetch_invariance"] == "bit-identical outputs", every
    assert report["reference"]["dump"] == "computed" and report["reference"]["runs"] >= 2


def test_a_second_run_takes_the_reference_from_the_cache(det_cold, capsys):
    cold, out = det_cold.report, det_cold.tmp / "warm"
    args = ["run", str(det_cold.det), "--ref", "paddle", "--target", det_cold.target, "--out", str(out)]
    args += ["--inputs", str(det_cold.det / "inputs.npz"), "--target-precision", "fp32"]
    with private_cache(det_cold.tmp / "cache"):
        code, stdout, _ = run_cli([*args, "--no-minimise"], capsys)
    assert code == 1, stdout
    warm = json.loads((out / "report.json").read_text())
    assert [c["index"] for c in warm["culprits"]] == [186]
    ref = warm["reference"]
    assert ref["dump"] == "cache" and ref["seconds"] == cold["reference"]["seconds"], ref
    # At most the isolation's (whose result may itself come from the result cache)
    assert warm["reference_runs"] <= cold["reference_runs"] - cold["reference"]["runs"]
    assert 0 < ref["saved_seconds"] <= cold["reference"]["seconds"] and ref["load_seconds"] < ref["seconds"]
    assert "reference dump from the cache" in " ".join(stdout.split())
    assert "Reference dump: from the cache" in (out / "report.md").read_text()


def test_a_real_opencl_kernel_fault_is_localised_in_three_target_runs(tmp_path):
    """Real Paddle-Lite OpenCL kernels (PoCL) with one kernel made wrong (tests/faulty_lib.py): `lite:*` is
    fetch-invariant, so the second whole-model run fetches every tensor that survives its fusion, by default."""
    natives = native_targets(find_lite_env())
    require("opencl" in natives, "real OpenCL kernels are not provisioned (run `bisect-lite setup lite`)")
    faulty = make_faulty_opencl_lib(Path(natives["opencl"]["lib"]), tmp_path / "faulty")
    options = RunOptions(
        ref="paddle", target=f"lite:opencl,lib={faulty.path}", out=tmp_path / "out",
        inputs=FIXTURES / "unet" / "inputs.npz", minimise=False,
    )  # fmt: skip
    report = run_bisect(FIXTURES / "unet", options)
    [culprit] = report["culprits"]
    assert culprit["type"] in faulty.op_types, culprit
    by_phase = report["target_runs_by_phase"]
    assert sum(by_phase.get(k, 0) for k in ("confirm", "setup", "search")) <= 3, by_phase
    every = report["full_model"]["every_tensor"]
    assert every["observed"] and every["batches"] == 1, every


def test_the_cached_reference_is_keyed_and_checked(tmp_path):
    """Another model, other inputs, another reference engine or budget compute their own dump; a damaged entry is
    never used (recomputed)."""
    with private_cache(tmp_path / "cache"):

        def dump(name: str = "two_io", **kw: object) -> str:
            options = RunOptions(
                ref=str(kw.pop("ref", "paddle")), target="paddle", out=tmp_path / f"o{time.monotonic_ns()}", **kw
            )
            return run_bisect(FIXTURES / name, options)["reference"]["dump"]

        assert [dump(), dump()] == ["computed", "cache"]
        [entry] = (tmp_path / "cache" / "references").iterdir()
        batch = entry / "batch-0.npz"
        offset = next(m for m in NpzReader(batch).members.values() if m is not None)[0]
        with open(batch, "r+b") as f:  # one flipped bit in the first array's data
            f.seek(offset + 3)
            byte = f.read(1)
            f.seek(offset + 3)
            f.write(bytes([byte[0] ^ 1]))
        assert [dump(), dump()] == ["computed", "cache"]
        assert dump(seed=1) == "computed"  # other inputs
        assert dump(ref="paddle:threads=2") == "computed"  # another reference engine
        assert dump(max_memory=1 << 20) == "computed"  # other batches
        assert dump("resnet") == "computed"
        assert len(list((tmp_path / "cache" / "references").iterdir())) == 5
    assert Cache(tmp_path / "off", results=False).get_reference(entry.name, tmp_path / "x") is None


def test_observing_every_tensor_shows_a_nondeterministic_target(fault_server, tmp_path):
    """The second run returns every tensor; its outputs against the first run's still show non-determinism."""
    target = faulty_target(fault_server, tmp_path, "save_infer_model/scale_0.tmp_0", kind="noise", amplitude=1e-6)
    options = RunOptions(
        ref="paddle", target=target, out=tmp_path / "out", inputs=FIXTURES / "resnet" / "inputs.npz",
        search="multicut", target_precision="fp32",
    )  # fmt: skip
    report = run_bisect(FIXTURES / "resnet", options)
    assert report["target_nondeterministic"] is True and report["full_model"]["every_tensor"]["observed"]
    assert any("second run returned every tensor" in n for n in report["notes"]), report["notes"]


@pytest.mark.parametrize("scale", [1.0, 40.0])
def test_quick_tolerance_verdict_agrees_with_the_element_rule(scale):
    rng = np.random.default_rng(1)
    config = CompareConfig(default=Tolerance(1e-4, 1e-4))
    ref = (scale * rng.standard_normal((4, 30_000))).astype(np.float32)
    scratch = Scratch()  # work arrays reused across tensors give the same answers
    for noise in (1e-7, 3e-6, 1e-3):
        target = (ref + noise * scale * rng.standard_normal(ref.shape)).astype(np.float32)
        quick, full = quick_compare("a", ref, target, config), compare_tensor("a", ref, target, config)
        assert quick is not None and quick.passed == full.passed, (noise, quick, full)
        head = (ref[:3], target[:3])
        assert quick_compare("a", *head, config, scratch) == quick_compare("a", *head, config)
        assert quick_compare("a", ref, target, config, scratch) == quick
        assert quick.rel_l2 == pytest.approx(full.rel_l2, rel=1e-4) and quick.max_abs == pytest.approx(full.max_abs)
        assert quick.atol == pytest.approx(full.atol, rel=1e-4)
    # NaN, another shape or a worst element at its allowance go to the element rule
    bad = ref.copy()
    bad[0, 0] = np.nan
    assert quick_compare("a", ref, bad, config) is None and quick_compare("a", ref, ref[:2], config) is None
    edge = ref.copy()
    edge[0, 0] += max(1e-4 * max(1.0, float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))), 1e-4 * abs(ref[0, 0]))
    assert quick_compare("a", ref, edge, config) is None


def test_npz_reader_reads_what_numpy_wrote_and_refuses_lying_headers(tmp_path):
    arrays = {
        "c": np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        "f": np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
        "scalar": np.float16(3.5),
        "empty": np.zeros((0, 3), np.float32),
        "record": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),  # numpy's own header parser
    }
    np.savez(tmp_path / "a.npz", **arrays)
    np.savez_compressed(tmp_path / "z.npz", **arrays)
    for file in ("a.npz", "z.npz"):
        reader = NpzReader(tmp_path / file)
        assert set(reader) == set(arrays) and reader.crcs.keys() == arrays.keys()
        for name, want in arrays.items():
            got = reader[name]
            assert got.dtype == want.dtype and got.shape == np.shape(want) and np.array_equal(got, want), name
        assert reader["f"].flags.f_contiguous
        reader.close()
    header = b"\x93NUMPY\x01\x00" + b"v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }"
    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as z:
        z.writestr("x.npy", header.ljust(127, b" ") + b"\n" + b"\x00" * 64)
    with pytest.raises(BadNpz, match=r"'x': claims shape \[1099511627776\]"):
        NpzReader(tmp_path / "lying.npz")
    np.savez(tmp_path / "objects.npz", o=np.array([{}], dtype=object))
    with pytest.raises(BadNpz, match="Python objects"):
        NpzReader(tmp_path / "objects.npz")
