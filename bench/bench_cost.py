"""Cost of localising one planted fault, side by side: bisect-lite (binary search, and the multi-cut path that
observes every tensor), a linear scan and a mark-all run, on PP-OCRv5 det and rec and a generated 5,000-op chain,
with faults at 10 %, 50 % and 90 %.

Engines: `--ref` (default `paddle`) and `--target`. The default target is the tests' fault-planting `cmd` engine
(tests/engines/faulty_target.py: Paddle Inference in a server process, one op's output scaled by 1.5); it computes
in fp32 and the same values whatever it fetches: it is declared fp32, and `--search auto` shows it fetch-invariant
(its outputs stay bit-identical when every tensor is fetched), as `--search multicut` declares it. Any
other target spec is used as given, `{faults}` in it replaced by the path of the faults JSON (a runner that plants
faults itself); a spec without `{faults}` plants nothing, and the rows then show the verdict of a healthy run.
Every method runs in its own process so that its peak RSS is its own; the fault server is restarted per method and
its peak (VmHWM) is the target engine's memory.

Methods:
- binary: `run` with `--search binary`: two plain whole-model runs, the setup check, a binary search over cuts.
- multicut: `run` with `--search multicut`: the second whole-model run fetches every tensor (streamed to disk and
  judged one at a time), which names the first op beyond tolerance; one plain probe confirms it.
- multicut+cache: the same again on the multicut run's cache: the reference dump comes from the cache.
- mark-all (Polygraphy `--mark all`): one target run fetching every tensor, each compared with the reference
  dump of the bisect-lite run; the first failing tensor in execution order names the op.
- linear scan (cut after every op, stop at the first failing cut): runs = planted op index + 1. Running thousands
  of cuts would take hours, so it runs the cut just before the planted op (must pass), the planted op's cut
  (must fail: "found" needs both) and `--linear-samples` evenly spaced cuts below it, and extrapolates the wall
  time as the mean time per cut run times the number of runs (marked `~`).
Every bisect-lite method starts on a cold cache of its own (the reference is computed), except multicut+cache.
Columns: target runs by phase (confirm/setup/search/isolate/minimise/determinism), wall time of the run (repro and
report writing excluded), its share outside engine runs, the reference dump's time (`c`: computed, `$`: from the cache),
peak RSS of bisect-lite, the reference worker and the target engine.

--healthy SPEC adds one row per model: `run` of SPEC with no fault (e.g. `fp16`: the precision model judges it).
--own-fault plants nothing: every method runs on the target's own fault (real kernels: `--target lite:opencl`,
PP-OCRv5 det's sigmoid NaN, rec's crash on PoCL); "found" is the op each method names, and the linear scan runs up
to the op the binary search found.
--corpus runs 20 cases (det, rec, cls, the fixtures; faults at several depths) with `run`'s default options (and
`--search`) and prints each case's target runs over ceil(log2 N), and their median.

Usage: python bench/bench_cost.py [--models det,rec,chain] [--depths 0.1,0.5,0.9] [--max-memory 1G]
       [--methods binary,multicut,multicut+cache,markall,linear] [--ref SPEC] [--target SPEC] [--healthy SPEC]
       [--own-fault] [--minimise] [--json FILE]
       python bench/bench_cost.py --corpus [--search auto|multicut|binary] [--target SPEC] [--json FILE]
PP-OCRv5 models are read from $PPOCR_DIR (default ../shared/models/ppocrv5 beside the checkout); the chain is generated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
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
PHASES = ("confirm", "setup", "search", "isolate", "minimise", "determinism")
OWN = "<the target's own fault>"


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


class Target:
    """The target engine of one method: the fault server's cmd (started per method), or a given spec."""

    def __init__(self, spec: str, tmp: Path, faults: Path | None) -> None:
        self.server = FaultServer(tmp) if spec == "faulty" else None
        if self.server is not None:
            assert faults is not None
            self.spec = self.server.target(faults)
        else:
            self.spec = spec.replace("{faults}", str(faults)) if faults is not None else spec

    def stop(self) -> float | None:
        return self.server.stop() if self.server is not None else None


# ---- one method, in a child process (its own peak RSS) -------------------------------------------------------------
def child_bisect(
    model_dir: str, out: str, ref: str, target: str, memory: str, search: str, minimise: str, precision: str
) -> dict[str, Any]:
    from bisect_lite.bisector import RunOptions, run_bisect
    from bisect_lite.cli import parse_size

    inputs = Path(model_dir) / "inputs.npz"
    options = RunOptions(
        ref=ref,
        target=target,
        out=Path(out),
        inputs=inputs if inputs.exists() else None,
        max_memory=parse_size(memory),
        search=search,
        minimise=minimise == "1",
        target_precision=precision or None,
    )
    report = run_bisect(Path(model_dir), options)
    every = report["full_model"].get("every_tensor") or {}
    return {
        "found": report["culprits"][0]["index"] if report["culprits"] else None,
        "culprits": len(report["culprits"]),
        "verdict": report["verdict"],
        "runs": report["target_runs"],
        "by_phase": report["target_runs_by_phase"],
        "search_runs": report["search_probes"],
        "expected": report["expected_probes"],
        "seconds": report["seconds"],
        "engine_seconds": report["engine_seconds"],
        "strategy": report.get("search_strategy"),
        "strategy_reason": report.get("search_strategy_reason"),
        "reference": {k: v for k, v in report["reference"].items() if k != "facts"},
        "every_tensor": {k: every.get(k) for k in ("checked", "batches", "memory", "observed")} if every else None,
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
    found, verdict = None, result.status  # crash or timeout unless it ran
    if result.ok:
        cmp = compare_outputs(values, result.outputs, config, names=names)
        failing = set(cmp.failing)
        found = next((model.producers[t] for t in names if t in failing), None)
        verdict = "mismatch" if failing else "match"
    seconds = time.perf_counter() - t0
    runner.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "found": found,
        "verdict": verdict,
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


def run_child(kind: str, *args: str, cache: Path | None = None) -> dict[str, Any]:
    env = {**ENV, "BISECT_LITE_CACHE": str(cache)} if cache is not None else ENV
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), kind, *args], capture_output=True, text=True, env=env
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
        elif (ROOT / "fixtures" / name / "model.pdmodel").exists():
            dirs[name] = ROOT / "fixtures" / name
        else:
            dirs[name] = PPOCR / name
    return dirs


def planted_faults(model_dir: Path, depths: list[float]) -> list[tuple[float, int, str]]:
    from bisect_lite.model import load_model

    model = load_model(model_dir)
    # A scaled batch_norm output of an x2paddle model can be folded away by the reference's own conv; skip those.
    tensors = [(i, t) for i, t in model.data_tensors() if model.ops[i].type != "batch_norm"]
    return [(d, *tensors[int(d * (len(tensors) - 1))]) for d in depths]


def write_faults(tmp: Path, name: str, index: int, tensor: str) -> Path:
    faults = tmp / f"{name}-{index}.json"
    faults.write_text(json.dumps([{"kind": "scale", "tensor": tensor, "factor": 1.5}]))
    return faults


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in CHILDREN:
        print(json.dumps(CHILDREN[sys.argv[1]](*sys.argv[2:])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="det,rec,chain")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--max-memory", default="1G")
    parser.add_argument("--minimise", action="store_true", help="also shrink the repro's shapes (more runs)")
    parser.add_argument("--linear-samples", type=int, default=3)
    parser.add_argument("--methods", default="binary,multicut,multicut+cache,markall,linear")
    parser.add_argument("--ref", default="paddle")
    parser.add_argument("--target", default="faulty", help="faulty (the planted-fault cmd) or an engine spec")
    parser.add_argument("--target-precision", default="fp32", help="fp32, fp16, or '' (what the engine states)")
    parser.add_argument("--healthy", help="also run this target spec on each model with no fault")
    parser.add_argument(
        "--own-fault", action="store_true", help="no planted fault: the methods on the target's own (real) fault"
    )
    parser.add_argument("--corpus", action="store_true", help="20 cases with run's default options")
    parser.add_argument("--search", default="auto", help="--corpus: the search option of every case")
    parser.add_argument("--json", type=Path, help="append one JSON line per case and method")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp_name:
        tmp = Path(tmp_name)
        base_cache = tmp / "caches"  # one per method (cold), removed with the rest
        os.environ["BISECT_LITE_CACHE"] = ENV["BISECT_LITE_CACHE"] = str(base_cache / "shared")
        if args.corpus:
            corpus(args, tmp, base_cache)
        else:
            compare_methods(args, tmp, base_cache)


def compare_methods(args: argparse.Namespace, tmp: Path, base_cache: Path) -> None:
    depths = [float(d) for d in args.depths.split(",") if d]
    methods = args.methods.split(",")
    print(
        f"{'model':<6} {'ops':>5} {'fault':>5} {'method':<14} {'found':>5} {'runs':>6} {'c/su/s/i/m/d':>13} "
        f"{'log2N':>5} {'wall s':>8} {'outside':>7} {'ref s':>7} {'self MB':>7} {'ref MB':>6} {'tgt MB':>6}"
    )
    for name, model_dir in model_dirs(args.models.split(","), tmp).items():
        from bisect_lite.model import load_model

        n_ops = len(load_model(model_dir).ops)
        cases: list[tuple[float | None, int | None, str | None]] = list(planted_faults(model_dir, depths))
        if args.own_fault:
            cases = [(None, None, OWN)]  # the target's own fault: unknown until bisect-lite finds it
        if args.healthy:
            cases.append((None, None, None))
        for depth, index, tensor in cases:
            faults = write_faults(tmp, name, index, tensor) if tensor is not None and index is not None else None
            ref_dir = None
            found_by_bisect: int | None = None
            for method in methods if faults is not None or tensor == OWN else ["healthy"]:
                spec = args.target if tensor is not None else args.healthy
                target = Target(spec, tmp, faults)
                out = tmp / f"{name}-{index}-{method}"
                cache = base_cache / f"{name}-{index}-{method.split('+')[0]}"
                if method in ("binary", "multicut", "multicut+cache", "healthy"):
                    search = {"binary": "binary", "healthy": "auto"}.get(method, "multicut")
                    precision = "" if method == "healthy" else args.target_precision
                    row = run_child(
                        "_bisect", str(model_dir), str(out), args.ref, target.spec, args.max_memory, search,
                        "1" if args.minimise else "0", precision, cache=cache,
                    )  # fmt: skip
                    ref_dir = ref_dir or out / "reference"
                elif ref_dir is None:
                    row = {"error": "needs a bisect-lite run first (its reference dump)", "found": None}
                elif method == "markall":
                    row = run_child("_markall", str(model_dir), str(ref_dir), target.spec)
                elif index is None and found_by_bisect is None:
                    row = {"error": "the linear scan runs up to the op bisect-lite found: none", "found": None}
                else:
                    upto = index if index is not None else found_by_bisect
                    row = run_child("_linear", str(model_dir), str(ref_dir), target.spec, str(upto),
                                    str(args.linear_samples))  # fmt: skip
                if method in ("binary", "multicut") and found_by_bisect is None:
                    found_by_bisect = row.get("found")
                peak = target.stop()
                if peak is not None:
                    row.setdefault("peaks", {})["target engine"] = round(peak, 1)
                row.update(model=name, ops=n_ops, depth=depth, planted=index, method=method, own=tensor == OWN)
                print_row(row)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")


def print_row(row: dict[str, Any]) -> None:
    planted = "-" if row["planted"] is None else row["planted"]
    if "error" in row:
        print(f"{row['model']:<6} {row['ops']:>5} {planted:>5} {row['method']:<14} error: {row['error']}")
        return
    if row.get("own"):
        found = f"{row['found']}" if row["found"] is not None else row.get("verdict", "none")[:5]
    elif row["planted"] is None:
        found = row.get("verdict", "?")[:5]
    else:
        found = "yes" if row["found"] == row["planted"] else f"NO({row['found']})"
    phases = row.get("by_phase") or {}
    by_phase = "/".join(str(phases.get(k, 0)) for k in PHASES) if phases else "-"
    approx = "~" if row["method"] == "linear" else ""
    outside = (row["seconds"] - row["engine_seconds"]) / row["seconds"] if row["seconds"] else 0.0
    peaks = row["peaks"]
    ref = row.get("reference") or {}
    ref_s = f"{ref['seconds']:.1f}{'$' if ref.get('dump') == 'cache' else 'c'}" if "seconds" in ref else "-"
    print(
        f"{row['model']:<6} {row['ops']:>5} {planted:>5} {row['method']:<14} {found:>5} "
        f"{approx + str(row['runs']):>6} {by_phase:>13} {row.get('expected', '')!s:>5} "
        f"{approx + format(row['seconds'], '.1f'):>8} {100 * outside:>6.1f}% {ref_s:>7} "
        f"{peaks.get('bisect-lite', 0):>7.0f} {peaks.get('reference worker', 0):>6.0f} "
        f"{peaks.get('target engine', peaks.get('target worker', 0)):>6.0f}",
        flush=True,
    )


# ---- the corpus ----------------------------------------------------------------------------------------------------
CORPUS = [
    *((m, d) for m in ("det", "rec", "cls") for d in (0.1, 0.3, 0.5, 0.7, 0.9)),
    *((m, 0.5) for m in ("resnet", "mobilenetv3", "transformer", "unet", "two_io")),
]


def corpus(args: argparse.Namespace, tmp: Path, base_cache: Path) -> None:
    """Every case with `run`'s defaults (the repro's shapes minimised too) but --search: target runs / ceil(log2 N)."""
    ratios: list[float] = []
    missed: list[str] = []
    dirs = model_dirs(sorted({m for m, _ in CORPUS}), tmp)
    head = f"{'model':<12} {'ops':>5} {'fault':>5} {'found':>6} {'runs':>5} {'c/su/s/i/m/d':>13} {'log2N':>5}"
    print(f"{head} {'ratio':>6}")
    for name, depth in CORPUS:
        from bisect_lite.model import load_model

        n_ops = len(load_model(dirs[name]).ops)
        [(_, index, tensor)] = planted_faults(dirs[name], [depth])
        target = Target(args.target, tmp, write_faults(tmp, name, index, tensor))
        row = run_child(
            "_bisect", str(dirs[name]), str(tmp / f"corpus-{name}-{index}"), args.ref, target.spec, args.max_memory,
            args.search, "1", args.target_precision, cache=base_cache / "corpus",
        )  # fmt: skip
        target.stop()
        if "error" in row:
            print(f"{name:<12} {n_ops:>5} {index:>5} error: {row['error']}")
            continue
        bound = math.ceil(math.log2(n_ops))
        ratio = row["runs"] / bound
        phases = "/".join(str(row["by_phase"].get(k, 0)) for k in PHASES)
        found = "yes" if row["found"] == index else f"NO({row['found'] if row['culprits'] else row['verdict']})"
        if row["found"] == index:
            ratios.append(ratio)
        else:
            missed.append(f"{name} op {index}")
        print(f"{name:<12} {n_ops:>5} {index:>5} {found:>6} {row['runs']:>5} {phases:>13} {bound:>5} {ratio:>6.2f}")
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({**row, "model": name, "ops": n_ops, "planted": index, "corpus": True}) + "\n")
    if ratios:
        print(f"median target runs / ceil(log2 N) over the {len(ratios)} cases found: {statistics.median(ratios):.2f}")
    if missed:
        print(f"not found ({len(missed)}): {', '.join(missed)}")


if __name__ == "__main__":
    main()
