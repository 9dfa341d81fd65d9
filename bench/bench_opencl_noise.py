"""Noise of the real OpenCL kernels in fp32 (PoCL) against a reference, per tensor, and what the default judgement
does with it (issue 14, study b).

Per model, the tensors that survive the target's own fusion (every data tensor except the ones internal to a fused
group, as `run`'s every-tensor check and multicut search pick them) are fetched in ONE target run: real opt gives
the same kernel sequence as for the untouched model (checked here and printed), so what is measured is what the
whole model computes. The reference runs the same cut model. Per float tensor: rel L2 = ||t-r|| / ||r|| and
max-abs-relative = max |t-r| / max |r| (finite elements), then median, p99 and max over the tensors.

Judgement: the rule `run` uses for this target (`precision.resolve_rule` of the engine's declared precision:
lite:opencl on PoCL declares fp32, so no precision model and the fp32 tolerances of `default_tolerance`), applied
to every tensor. NaN/inf where the reference is finite is a finding, not noise (PP-OCRv5 det's sigmoid region
under -cl-fast-relaxed-math): such tensors are listed apart and left out of the statistics.

    .venv/bin/python bench/bench_opencl_noise.py [--models det,rec,cls] [--ref lite:arm] [--json FILE]

The reference defaults to lite:arm (real ARM kernels under QEMU: det ~20 s per run); `--ref lite:x86` or
`--ref paddle` are faster stand-ins.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bisect_lite.compare import CompareConfig, TensorMetrics, compare_tensor  # noqa: E402
from bisect_lite.engines.registry import default_tolerance  # noqa: E402
from bisect_lite.engines.runner import EngineRunner  # noqa: E402
from bisect_lite.fsutil import atomic_write_text  # noqa: E402
from bisect_lite.inputs import read_npz  # noqa: E402
from bisect_lite.model import Model, load_model, truncate  # noqa: E402
from bisect_lite.model.fusion import fusion_groups, optimized_ops  # noqa: E402
from bisect_lite.precision import resolve_rule  # noqa: E402

MODELS = ("det", "rec", "cls")
TARGET = "lite:opencl"
QUANTILES = {"median": 50.0, "p99": 99.0, "max": 100.0}


def model_path(name: str) -> Path:
    return ROOT.parent / "shared" / "models" / "ppocrv5" / name  # shared/ beside the checkout


def surviving_tensors(model: Model, optimized: Model) -> list[str]:
    """Every data tensor the target materialises (fused-away ones excluded), in execution order, outputs last."""
    hidden = {t for g in fusion_groups(model, optimized) for t in g.internal}
    names = [t for _, t in model.data_tensors() if t not in hidden and t not in model.fetches]
    return [*names, *model.fetches]


def same_kernels(a: Model, b: Model) -> bool:
    """The two optimised programs run the same kernels in the same order (glue ops aside)."""
    return [(op.type, op.kernel) for op in optimized_ops(a)] == [(op.type, op.kernel) for op in optimized_ops(b)]


def fetch_all(
    runner: EngineRunner, model: Model, names: list[str], inputs: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[str], int]:
    """Every tensor of `names`, from one run of the model cut to all of them; a run that crashes is split in
    halves (its message kept): on real OpenCL some sets of fetches crash the glue that brings them to the host.
    Returns the tensors, the crash messages and the number of runs."""
    cut = truncate(model, names)
    result = runner.run(cut, {f: inputs[f] for f in cut.feeds}, use_cache=False)
    if result.ok:
        return dict(result.outputs), [], 1
    if len(names) == 1:  # this tensor cannot be fetched at all: reported, left out
        return {}, [f"{names[0]} alone: {result.message[-200:]}"], 1
    half = len(names) // 2
    first, crashed_first, runs_first = fetch_all(runner, model, names[:half], inputs)
    second, crashed_second, runs_second = fetch_all(runner, model, names[half:], inputs)
    crashed = [f"{len(names)} fetches: {result.message[:200]}", *crashed_first, *crashed_second]
    return {**first, **second}, crashed, 1 + runs_first + runs_second


def max_abs_relative(ref: np.ndarray, out: np.ndarray) -> float:
    finite = np.isfinite(ref) & np.isfinite(out)
    if not finite.any():
        return float("nan")
    scale = float(np.abs(ref[finite]).max())
    diff = float(np.abs(out[finite].astype(np.float64) - ref[finite]).max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def nonfinite_finding(m: TensorMetrics) -> bool:
    """NaN/inf in the target where the reference has none: a finding of its own, not noise."""
    return m.nan_target > m.nan_ref or m.inf_target > m.inf_ref


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(QUANTILES)
    return {k: float(np.percentile(values, q)) for k, q in QUANTILES.items()}


def measure(name: str, ref_spec: str) -> dict[str, Any]:
    path = model_path(name)
    model = load_model(path)
    inputs = read_npz(path / "inputs.npz", "inputs")
    with EngineRunner(TARGET, timeout=900) as target, EngineRunner(ref_spec, timeout=900) as ref:
        declared = target.engine.declared_precision
        rule = resolve_rule(declared)  # what `run` resolves for this target with no flags
        if rule is not None:  # a half-precision target is judged by the precision model, which this bench does not
            raise SystemExit(f"bench_opencl_noise: {TARGET} declares {declared}, not fp32: this bench judges fp32")
        config = CompareConfig(default=default_tolerance(TARGET))
        whole = target.optimized_program(model)
        assert whole is not None
        names = surviving_tensors(model, whole)
        cut = truncate(model, names)
        cut_program = target.optimized_program(cut)
        assert cut_program is not None
        t0 = time.perf_counter()
        got, crashes, runs = fetch_all(target, model, names, inputs)
        target_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        expected, ref_crashes, _ = fetch_all(ref, model, names, inputs)
        ref_seconds = time.perf_counter() - t0
        rel_l2: list[float] = []
        peak: list[float] = []
        findings: list[dict[str, Any]] = []
        failing: list[str] = []
        unfetched = [t for t in names if t not in got or t not in expected]
        for tensor in names:
            if tensor in unfetched:
                continue
            r, t = expected[tensor], got[tensor]
            m = compare_tensor(tensor, r, t, config)
            if nonfinite_finding(m):
                findings.append(
                    {
                        "tensor": tensor,
                        "op": model.producers.get(tensor),
                        "nan_target": m.nan_target,
                        "nan_ref": m.nan_ref,
                        "elements": int(r.size),
                        "rel_l2_finite": m.rel_l2,
                        "passed": m.passed,
                    }
                )
                continue
            if not m.passed:
                failing.append(tensor)
            if r.dtype.kind == "f" and m.rel_l2 is not None:
                rel_l2.append(float(m.rel_l2))
                peak.append(max_abs_relative(r, t))
    return {
        "model": name,
        "reference": ref_spec,
        "target": TARGET,
        "target_precision": declared,
        "judged_by": "fp32 tolerances" if rule is None else "precision model",
        "tolerance": {"atol": config.default.atol, "rtol": config.default.rtol},
        "ops": len(model.ops),
        "tensors": len(names),
        "float_tensors_measured": len(rel_l2),
        "kernels_as_whole_model": same_kernels(whole, cut_program),
        "target_runs": runs,
        "target_crashes": crashes,
        "reference_crashes": ref_crashes,
        "unfetched": unfetched,
        "target_seconds": round(target_seconds, 2),
        "reference_seconds": round(ref_seconds, 2),
        "rel_l2": quantiles(rel_l2),
        "max_abs_relative": quantiles(peak),
        "false_alarms": failing,
        "nonfinite_findings": findings,
    }


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | tensors measured | rel L2 median | p99 | max | max-abs-rel median | p99 | max | judged by "
        "| false alarms | NaN findings | target runs | target s | ref s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        l2, pk = r["rel_l2"], r["max_abs_relative"]
        nan = "; ".join(
            f"{f['tensor']} (op {f['op']}): {f['nan_target']} NaN of {f['elements']}" for f in r["nonfinite_findings"]
        )
        lines.append(
            f"| {r['model']} | {r['float_tensors_measured']} | {fmt(l2['median'])} | {fmt(l2['p99'])} "
            f"| {fmt(l2['max'])} | {fmt(pk['median'])} | {fmt(pk['p99'])} | {fmt(pk['max'])} "
            f"| {r['judged_by']} (atol {r['tolerance']['atol']:g}, rtol {r['tolerance']['rtol']:g}) "
            f"| {len(r['false_alarms'])} | {nan or 'none'} | {r['target_runs']} | {r['target_seconds']:.1f} "
            f"| {r['reference_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--ref", default="lite:arm", help="reference engine (lite:arm under QEMU, lite:x86, paddle)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        row = measure(name, args.ref)
        rows.append(row)
        print(f"{name}: {json.dumps(row)}", file=sys.stderr, flush=True)
    print(
        f"target {TARGET} (real OpenCL kernels on PoCL, fp32) vs reference {args.ref}; one run fetching every "
        "tensor that survives the target's fusion"
    )
    print(table(rows))
    for r in rows:
        if not r["kernels_as_whole_model"]:
            print(f"warning: {r['model']}: fetching every surviving tensor changed the target's kernels")
        if r["unfetched"]:
            print(f"{r['model']}: {len(r['unfetched'])} tensors could not be fetched: {', '.join(r['unfetched'][:10])}")
        for crash in [*r["target_crashes"], *r["reference_crashes"]]:
            print(f"{r['model']}: a target run crashed and was split: {crash}")
        if r["false_alarms"]:
            print(f"{r['model']}: false alarms: {', '.join(r['false_alarms'][:10])}")
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
