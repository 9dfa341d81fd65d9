"""Cost of a run (issue 10): target runs by phase, the multi-cut search, bounded memory, cheap comparisons."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import FAULTY, FIXTURES, ROOT

from bisect_lite import compare as compare_module
from bisect_lite.bisector import RunOptions, run_bisect
from bisect_lite.compare import CompareConfig, Tolerance, compare_outputs
from bisect_lite.model import frontier, load_model
from bisect_lite.phases.observe import FrontierIndex
from bisect_lite.reference import estimated_bytes

LOCALISATION = ("confirm", "search")


def faulty_target(sock: str, directory: Path, tensor: str) -> str:
    faults = directory / f"faults-{time.monotonic_ns()}.json"
    faults.write_text(json.dumps([{"kind": "scale", "tensor": tensor, "factor": 1.5}]))
    return f"cmd:{sys.executable} {FAULTY} run {sock} {faults} {{model_dir}} {{inputs}} {{outputs}}"


def localisation_runs(report: dict) -> int:
    return sum(report["target_runs_by_phase"].get(k, 0) for k in LOCALISATION)


@pytest.fixture(scope="module")
def resnet_runs(fault_server, tmp_path_factory):
    """The same planted fault in resnet (op 23, on a branch) searched by the default (binary, for a cmd: target)
    and by the multi-cut search the faulty engine may opt into (it computes the same whatever it fetches)."""
    tmp = tmp_path_factory.mktemp("resnet")
    target = faulty_target(fault_server, tmp, "batch_norm_7.tmp_0")
    reports = {}
    for search in ("auto", "multicut"):
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
        saved = json.loads((report["_out"] / "report.json").read_text())
        assert saved["target_runs_by_phase"] == by_phase and saved["search_strategy"] == report["search_strategy"]


def test_cmd_target_keeps_the_binary_search_and_multicut_finds_the_same_op_in_fewer_runs(resnet_runs):
    binary, multi = resnet_runs["auto"], resnet_runs["multicut"]
    assert binary["search_strategy"] == "binary" and "--search multicut opts in" in binary["search_strategy_reason"]
    assert multi["search_strategy"] == "multicut", multi["search_strategy_reason"]
    assert [c["index"] for c in binary["culprits"]] == [c["index"] for c in multi["culprits"]] == [23]
    assert multi["target_runs_by_phase"]["search"] < binary["target_runs_by_phase"]["search"]
    assert multi["search_probes"] == multi["target_runs_by_phase"]["search"]  # a run of many cuts counts once
    # Every observed cut is reported (the error-vs-depth plot shows them), not only the runs.
    assert len({p["cut"] for p in multi["probes"]}) > multi["search_probes"]
    observed = [p for p in multi["probes"] if p["message"].startswith("observed with")]
    assert observed and all(p["verdict"] in ("pass", "fail") for p in observed)


def test_report_records_the_peak_of_every_process(resnet_runs):
    peaks = resnet_runs["auto"]["peak_rss_mb"]
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
print(json.dumps({k: report[k] for k in ("peak_rss_mb", "culprits", "search_strategy_reason",
                                          "target_runs_by_phase")}))
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
    # Budget-bound observation runs: more than one, each within half the budget (the reason lists their widths).
    assert report["target_runs_by_phase"]["search"] >= 2, report
    peaks = report["peak_rss_mb"]
    params_mb = (model_dir / "model.pdiparams").stat().st_size / (1 << 20)  # the model's own size (~50 MB)
    budget_mb = budget / (1 << 20)
    # Documented constants (README, Performance): bisect-lite ~120 MB (python, numpy, protobuf), a Paddle worker
    # ~350 MB (paddle itself); each holds at most the budget and the model besides. Breaking it (every activation
    # held, or a worker without buffer reuse) adds ~200 MB and fails these.
    assert peaks["bisect-lite"] < 120 + params_mb + budget_mb + 30, peaks
    assert 0 < peaks["reference worker"] < 350 + params_mb + budget_mb + 30, peaks
