"""Search cost of `bisect-lite run`: target runs against ceil(log2 N), and wall time spent outside the engines.

Plants one fault (a scaled op output) at several depths of a 300-op ResNet-style model and of the bundled
fixtures, using the tests' fault-planting `cmd` engine, and prints per case: ops, search probes, ceil(log2 N),
all target runs (search + isolation + shape minimisation), the search's wall time, time inside engine runs and
the share outside them (goal: under 10 %), and the total including writing the repro (paddle2onnx) and report.
Usage: python bench/bench_run.py [--no-minimise]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
FAULTY = ROOT / "tests" / "engines" / "faulty_target.py"


def build_deep_model(out: Path) -> None:
    from bench_model import BUILD

    subprocess.run([sys.executable, "-c", BUILD, str(out)], check=True, capture_output=True)
    # bench_model saves model.pdmodel/.pdiparams under out/
    assert (out / "model.pdmodel").exists()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-minimise", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("BISECT_LITE_CACHE", tempfile.mkdtemp(prefix="bisect-lite-bench-cache-"))
    from bisect_lite.bisector import RunOptions, run_bisect
    from bisect_lite.model import load_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        deep = tmp_path / "deep"
        build_deep_model(deep)
        sock = str(tmp_path / "s.sock")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        server = subprocess.Popen([sys.executable, str(FAULTY), "serve", sock], stdout=subprocess.PIPE, text=True,
                                  env=env)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        cases = []
        for name, model_dir in (("deep-resnet", deep), ("mobilenetv3", ROOT / "fixtures" / "mobilenetv3"),
                                ("resnet", ROOT / "fixtures" / "resnet")):
            model = load_model(model_dir)
            tensors = [(i, t) for i, t in model.data_tensors() if model.ops[i].type != "batch_norm"]
            for frac in (0.1, 0.5, 0.9):
                index, tensor = tensors[int(frac * (len(tensors) - 1))]
                cases.append((name, model_dir, len(model.ops), index, tensor))
        print(f"{'model':<12} {'ops':>4} {'fault@':>6} {'found':>6} {'probes':>6} {'log2N':>5} {'runs':>5} "
              f"{'search s':>8} {'engine s':>8} {'outside':>8} {'total s':>7}")
        try:
            for i, (name, model_dir, n_ops, index, tensor) in enumerate(cases):
                faults = tmp_path / f"f{i}.json"
                faults.write_text(json.dumps([{"kind": "scale", "tensor": tensor, "factor": 1.5}]))
                target = f"cmd:{sys.executable} {FAULTY} run {sock} {faults} {{model_dir}} {{inputs}} {{outputs}}"
                options = RunOptions(ref="paddle", target=target, out=tmp_path / f"out{i}",
                                     minimise=not args.no_minimise)
                t0 = time.perf_counter()
                report = run_bisect(model_dir, options)
                wall = time.perf_counter() - t0
                found = report["culprits"][0]["index"] if report["culprits"] else None
                # The search (report["seconds"]) against its engine time; repro/report writing comes after it.
                outside = (report["seconds"] - report["engine_seconds"]) / report["seconds"]
                print(f"{name:<12} {n_ops:>4} {index:>6} {found!s:>6} {report['search_probes']:>6} "
                      f"{report['expected_probes']:>5} {report['target_runs']:>5} {report['seconds']:>8.2f} "
                      f"{report['engine_seconds']:>8.2f} {100 * outside:>7.1f}% {wall:>7.2f}")
        finally:
            server.kill()
        # Peak memory of this process (the bisect-lite side; engines run in their own processes).
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of the bisect-lite process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
