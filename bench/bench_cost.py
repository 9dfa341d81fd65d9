"""Cost of localising one planted fault, side by side: bisect-lite (binary and multi-cut search), a linear scan
and a mark-all run, on PP-OCRv5 det and rec and a generated 5,000-op chain, with faults at 10 %, 50 % and 90 %.

The target is the tests' fault-planting `cmd` engine (tests/engines/faulty_target.py: Paddle Inference in a
server process, one op's output scaled by 1.5), the reference is `paddle`; both compute in fp32, so the target is
declared fp32 (`--target-precision fp32`). Every method runs in its own process so that its peak RSS is its own;
the fault server is restarted per method and its peak (VmHWM) is the target engine's memory.

Methods:
- bisect-lite binary / multicut: `run_bisect` with `search="binary"` / `"multicut"` (the faulty engine computes
  the same values whatever it fetches, so opting in is right), `--max-memory` as given (default 256M). Target runs
  by phase, wall time of the run (repro and report writing excluded), its share outside engine runs, peaks.
- mark-all (Polygraphy `--mark all`): one target run fetching every tensor, each compared with the reference
  dump of the bisect-lite run; the first failing tensor in execution order names the op.
- linear scan (cut after every op, stop at the first failing cut): runs = planted op index + 1. Running thousands
  of cuts would take hours, so it runs the cut just before the planted op (must pass), the planted op's cut
  (must fail: "found" needs both) and `--linear-samples` evenly spaced cuts below it, and extrapolates the wall
  time as the mean time per cut run times the number of runs (marked `~`).

Usage: python bench/bench_cost.py [--models det,rec,chain] [--depths 0.1,0.5,0.9] [--max-memory 256M]
       [--minimise] [--json FILE]
PP-OCRv5 models are read from $PPOCR_DIR (default ../shared/models/ppocrv5 beside the checkout); the chain is generated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FAULTY = ROOT / "tests" / "engines" / "faulty_target.py"
PPOCR = Path(os.environ.get("PPOCR_DIR", ROOT.parent / "shared" / "models" / "ppocrv5"))  # shared/ beside the checkout
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "GLOG_minloglevel": "3", "PYTHONWARNINGS": "ignore"}


# ---- the fault server ----------------------------------------------------------------------------------------------
class FaultServer:
    def __init__(self, directory: Path) -> None:
        self.sock = str(directory / f"faulty-{time.monotonic_ns()}.sock")
        self.proc = subprocess.Popen(
            [sys.executable, str(FAULTY), "serve", self.sock], stdout=subprocess.PIPE, text=True, env=ENV
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def target(self, faults: Path) -> str:
        return f"cmd:{sys.executable} {FAULTY} run {self.sock} {faults} {{model_dir}} {{inputs}} {{outputs}}"

    def stop(self) -> float:
        """Stop it; its peak RSS in MB."""
        from bisect_lite.engines.worker import peak_rss

        peak = peak_rss(self.proc.pid) / (1 << 20)
        self.proc.kill()
        self.proc.wait()
        return peak


# ---- one method, in a child process (its own peak RSS) -------------------------------------------------------------
def child_bisect(model_dir: str, out: str, target: str, memory: str, search: str, minimise: str) -> dict[str, Any]:
    from bisect_lite.bisector import RunOptions, run_bisect
    from bisect_lite.cli import parse_size

    inputs = Path(model_dir) / "inputs.npz"
    options = RunOptions(
        ref="paddle",
        target=target,
        out=Path(out),
        inputs=inputs if inputs.exists() else None,
        max_memory=parse_size(memory),
        search=search,
        minimise=minimise == "1",
        target_precision="fp32",
    )
    report = run_bisect(Path(model_dir), options)
    return {
        "found": report["culprits"][0]["index"] if report["culprits"] else None,
        "runs": report["target_runs"],
        "by_phase": report["target_runs_by_phase"],
        "search_runs": report["search_probes"],
        "expected": report["expected_probes"],
        "seconds": report["seconds"],
        "engine_seconds": report["engine_seconds"],
        "strategy": report.get("search_strategy"),
        "strategy_reason": report.get("search_strategy_reason"),
        "peaks": report.get("peak_rss_mb", {}),
    }


def _judge_setup(model_dir: str, ref_dir: str, target: str) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
    from bisect_lite.compare import CompareConfig
    from bisect_lite.engines.registry import default_tolerance
    from bisect_lite.engines.runner import EngineRunner
    from bisect_lite.inputs import read_npz
    from bisect_lite.model import load_model
    from bisect_lite.reference import ReferenceValues

    model = load_model(model_dir)
    inputs = read_npz(Path(ref_dir).parent / "inputs.npz", "inputs")
    values = ReferenceValues(Path(ref_dir), inputs)
    runner = EngineRunner(target, timeout=600)
    config = CompareConfig(default=default_tolerance(target, "fp32"))
    return model, values, runner, config, inputs


def child_markall(model_dir: str, ref_dir: str, target: str) -> dict[str, Any]:
    from bisect_lite.compare import compare_outputs
    from bisect_lite.model import truncate

    t0 = time.perf_counter()
    model, values, runner, config, inputs = _judge_setup(model_dir, ref_dir, target)
    names = [t for _, t in model.data_tensors() if t in values]
    cut = truncate(model, names)
    result = runner.run(cut, {f: inputs[f] for f in cut.feeds})
    found = None
    if result.ok:
        cmp = compare_outputs(values, result.outputs, config, names=names)
        failing = set(cmp.failing)
        found = next((model.producers[t] for t in names if t in failing), None)
    seconds = time.perf_counter() - t0
    runner.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "found": found,
        "runs": 1,
        "seconds": seconds,
        "engine_seconds": result.seconds,
        "fetched": len(names),
        "peaks": {"bisect-lite": peak},
    }


def child_linear(model_dir: str, ref_dir: str, target: str, planted: str, samples: str) -> dict[str, Any]:
    from bisect_lite.compare import compare_outputs
    from bisect_lite.model import frontier, truncate

    model, values, runner, config, _ = _judge_setup(model_dir, ref_dir, target)
    f = int(planted)
    cuts = sorted({max(f - 1, 0), f} | {round(i * (f - 1) / (int(samples) + 1)) for i in range(1, int(samples) + 1)})
    verdicts: dict[int, bool] = {}
    spent = engine = 0.0
    for k in cuts:
        t0 = time.perf_counter()
        names = [t for t in frontier(model, k) if t in values]
        sub = truncate(model, names)
        result = runner.run(sub, {n: values[n] for n in sub.feeds})
        verdicts[k] = result.ok and compare_outputs(values, result.outputs, config, names=names).passed
        spent += time.perf_counter() - t0
        engine += result.seconds
    runner.close()
    runs = f + 1
    found = f if (f == 0 or verdicts[f - 1]) and not verdicts[f] else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "found": found,
        "runs": runs,
        "seconds": spent / len(cuts) * runs,
        "engine_seconds": engine / len(cuts) * runs,
        "sampled": len(cuts),
        "peaks": {"bisect-lite": peak},
    }


CHILDREN = {"_bisect": child_bisect, "_markall": child_markall, "_linear": child_linear}


def run_child(kind: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), kind, *args], capture_output=True, text=True, env=ENV
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1], "found": None}
    return json.loads(lines[-1])


# ---- the benchmark ------------------------------------------------------------------------------------------------
def model_dirs(names: list[str], tmp: Path) -> dict[str, Path]:
    dirs = {}
    for name in names:
        if name == "chain":
            dirs[name] = tmp / "chain5k"
            subprocess.run(
                [sys.executable, str(ROOT / "bench" / "gen_chain.py"), str(dirs[name])],
                check=True,
                capture_output=True,
                env=ENV,
            )
        else:
            dirs[name] = PPOCR / name
    return dirs


def planted_faults(model_dir: Path, depths: list[float]) -> list[tuple[float, int, str]]:
    from bisect_lite.model import load_model

    model = load_model(model_dir)
    # A scaled batch_norm output of an x2paddle model can be folded away by the reference's own conv; skip those.
    tensors = [(i, t) for i, t in model.data_tensors() if model.ops[i].type != "batch_norm"]
    return [(d, *tensors[int(d * (len(tensors) - 1))]) for d in depths]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        print(json.dumps(CHILDREN[sys.argv[1]](*sys.argv[2:])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="det,rec,chain")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--max-memory", default="256M")
    parser.add_argument("--minimise", action="store_true", help="also shrink the repro's shapes (more runs)")
    parser.add_argument("--linear-samples", type=int, default=3)
    parser.add_argument("--methods", default="binary,multicut,markall,linear")
    parser.add_argument("--json", type=Path, help="append one JSON line per case and method")
    args = parser.parse_args()
    depths = [float(d) for d in args.depths.split(",")]
    methods = args.methods.split(",")
    os.environ["BISECT_LITE_CACHE"] = ENV["BISECT_LITE_CACHE"] = tempfile.mkdtemp(prefix="bisect-lite-bench-")
    header = (
        f"{'model':<6} {'ops':>5} {'fault':>5} {'method':<9} {'found':>5} {'runs':>6} {'by phase (c/s/i/m)':>18} "
        f"{'log2N':>5} {'wall s':>8} {'outside':>7} {'self MB':>7} {'ref MB':>6} {'tgt MB':>6}"
    )
    print(header)
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp_name:
        tmp = Path(tmp_name)
        for name, model_dir in model_dirs(args.models.split(","), tmp).items():
            from bisect_lite.model import load_model

            n_ops = len(load_model(model_dir).ops)
            for depth, index, tensor in planted_faults(model_dir, depths):
                faults = tmp / f"{name}-{index}.json"
                faults.write_text(json.dumps([{"kind": "scale", "tensor": tensor, "factor": 1.5}]))
                ref_dir = None
                for method in methods:
                    server = FaultServer(tmp)
                    target = server.target(faults)
                    out = tmp / f"{name}-{index}-{method}"
                    if method in ("binary", "multicut"):
                        row = run_child(
                            "_bisect", str(model_dir), str(out), target, args.max_memory, method,
                            "1" if args.minimise else "0",
                        )  # fmt: skip
                        ref_dir = ref_dir or out / "reference"
                    elif ref_dir is None:
                        row = {"error": "needs a bisect-lite run first (its reference dump)", "found": None}
                    elif method == "markall":
                        row = run_child("_markall", str(model_dir), str(ref_dir), target)
                    else:
                        row = run_child("_linear", str(model_dir), str(ref_dir), target, str(index),
                                        str(args.linear_samples))  # fmt: skip
                    row.setdefault("peaks", {})["target engine"] = round(server.stop(), 1)
                    row.update(model=name, ops=n_ops, depth=depth, planted=index, method=method)
                    print_row(row)
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(json.dumps(row) + "\n")


def print_row(row: dict[str, Any]) -> None:
    if "error" in row:
        print(f"{row['model']:<6} {row['ops']:>5} {row['planted']:>5} {row['method']:<9} error: {row['error']}")
        return
    found = "yes" if row["found"] == row["planted"] else f"NO({row['found']})"
    phases = row.get("by_phase") or {}
    by_phase = "/".join(str(phases.get(k, 0)) for k in ("confirm", "search", "isolate", "minimise")) if phases else "-"
    approx = "~" if row["method"] == "linear" else ""
    outside = (row["seconds"] - row["engine_seconds"]) / row["seconds"] if row["seconds"] else 0.0
    peaks = row["peaks"]
    ref_mb = peaks.get("reference worker", 0)
    log2n = row.get("expected", "")
    print(
        f"{row['model']:<6} {row['ops']:>5} {row['planted']:>5} {row['method']:<9} {found:>5} "
        f"{approx + str(row['runs']):>6} {by_phase:>18} {log2n!s:>5} {approx + format(row['seconds'], '.1f'):>8} "
        f"{100 * outside:>6.1f}% {peaks.get('bisect-lite', 0):>7.0f} {ref_mb:>6.0f} {peaks['target engine']:>6.0f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
