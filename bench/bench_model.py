"""Model-core speed: load a ~200-op model without importing paddle, and truncate it at many cut points.

Targets (issue 2): load < 100 ms, one truncation well under 20 ms (load excluded).
Usage: python bench/bench_model.py [--model DIR]   (default: builds a 200+ op ResNet-style model with paddle)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

BUILD = textwrap.dedent("""
    import os, sys
    os.environ["FLAGS_enable_pir_api"] = "0"
    import numpy as np, paddle
    paddle.enable_static()
    paddle.seed(0)
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("image", [1, 16, 32, 32], "float32")
        h = x
        for i in range(30):  # 30 residual blocks of ~7 ops each
            y = paddle.nn.Conv2D(16, 16, 3, padding=1)(h)
            y = paddle.nn.BatchNorm2D(16)(y)
            y = paddle.nn.functional.relu(y)
            y = paddle.nn.Conv2D(16, 16, 1)(y)
            h = paddle.nn.functional.relu(h + y)
        out = paddle.mean(h, axis=[2, 3])
    exe = paddle.static.Executor()
    exe.run(startup)
    paddle.static.save_inference_model(sys.argv[1] + "/model", [x], [out], exe, program=main)
""")

MEASURE = textwrap.dedent("""
    import json, statistics, sys, time
    t0 = time.perf_counter()
    from bisect_lite.model import load_model, truncate, frontier
    t1 = time.perf_counter()
    model = load_model(sys.argv[1])
    n_ops = len(model.ops)
    t2 = time.perf_counter()
    model2 = load_model(sys.argv[1])
    _ = model2.ops
    t3 = time.perf_counter()
    tensors = [t for _, t in model.data_tensors()]
    times, fronts = [], []
    for k in range(0, n_ops, max(1, n_ops // 50)):
        s = time.perf_counter()
        targets = frontier(model, k)
        cut = truncate(model, targets)
        cut.program_bytes()
        times.append(time.perf_counter() - s)
    s = time.perf_counter()
    for k in range(n_ops):
        frontier(model, k)
    all_frontiers = time.perf_counter() - s
    print(json.dumps({
        "ops": n_ops, "import_s": t1 - t0, "first_load_s": t2 - t1, "warm_load_s": t3 - t2,
        "truncate_median_s": statistics.median(times), "truncate_max_s": max(times), "cuts": len(times),
        "all_frontiers_s": all_frontiers, "paddle_imported": "paddle" in sys.modules,
    }))
""")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, help="model directory (default: build a 200+ op model)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp)
            subprocess.run([sys.executable, "-c", BUILD, tmp], check=True, capture_output=True)
        res = json.loads(
            subprocess.run(
                [sys.executable, "-c", MEASURE, str(model)], check=True, capture_output=True, text=True
            ).stdout
        )
    print(f"model: {res['ops']} ops")
    print(f"import bisect_lite.model: {res['import_s'] * 1e3:7.1f} ms")
    print(f"load (cold, incl. schema): {res['first_load_s'] * 1e3:7.1f} ms   target < 100 ms")
    print(f"load (warm):               {res['warm_load_s'] * 1e3:7.1f} ms")
    print(
        f"truncate + serialise:      median {res['truncate_median_s'] * 1e3:.2f} ms, "
        f"max {res['truncate_max_s'] * 1e3:.2f} ms over {res['cuts']} cuts   target < 20 ms"
    )
    print(f"frontier at every cut:     {res['all_frontiers_s'] * 1e3:7.1f} ms total")
    print(f"paddle imported: {res['paddle_imported']}")


if __name__ == "__main__":
    main()
