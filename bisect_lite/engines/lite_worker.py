#!/usr/bin/env python3
"""Self-contained Paddle-Lite worker: needs only numpy and `paddlelite`, so it can be copied to an ARM board.

It runs optimised `.nb` models with Paddle-Lite's Python API (MobileConfig + create_paddle_predictor) and speaks
bisect-lite's worker protocol (JSON lines; see bisect_lite/engines/worker.py):
    worker -> {"ready": true, "info": {"paddle_lite_version": ..., "python": ...}}
    parent -> {"cmd": "run", "nb": PATH, "inputs": NPZ, "outputs": NPZ, "feeds": [...], "fetches": [...],
               "precision": "auto|fp16|fp32", "tune": "none|rapid|normal|exhaustive", "cache_dir": DIR,
               "cache_name": NAME, "threads": N, "runs": N}
    worker -> {"ok": true, "seconds": s, "load_seconds": s, "info": {"paddle_lite_version": ...}} | {"ok": false, ...}
Outputs are matched to the fetch names by index: Paddle-Lite renames them (`x/target_trans` on OpenCL) and drops
identity scales in front of fetches, but keeps the fetch order.
Usage: python lite_worker.py
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Paddle-Lite's logging must not garble the protocol channel
    sys.stdout = sys.stderr
    import numpy as np
    from paddlelite import lite

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    predictors: dict[tuple, object] = {}
    send({"ready": True, "info": {"python": sys.version.split()[0], "pid": os.getpid()}})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            t0 = time.perf_counter()
            key = (req["nb"], req.get("precision"), req.get("tune"), req.get("threads"))
            if key not in predictors:
                config = lite.MobileConfig()
                config.set_model_from_file(req["nb"])
                precision = {"auto": "CL_PRECISION_AUTO", "fp16": "CL_PRECISION_FP16", "fp32": "CL_PRECISION_FP32"}
                if req.get("opencl"):
                    config.set_opencl_precision(getattr(lite.CLPrecisionType, precision[req.get("precision", "auto")]))
                    cache_dir, cache_name = req.get("cache_dir"), req.get("cache_name", "model")
                    if cache_dir:
                        # Per-model kernel-binary and tuning files: stale caches must never leak between models.
                        os.makedirs(cache_dir, exist_ok=True)
                        config.set_opencl_binary_path_name(cache_dir, cache_name + ".bin")
                        tune = req.get("tune", "none")
                        if tune != "none":
                            mode = getattr(lite.CLTuneMode, "CL_TUNE_" + tune.upper())
                            config.set_opencl_tune(mode, cache_dir, cache_name + ".tune", 4)
                if req.get("threads") and hasattr(config, "set_threads"):
                    config.set_threads(int(req["threads"]))
                while len(predictors) >= 8:
                    predictors.pop(next(iter(predictors)))
                predictors[key] = lite.create_paddle_predictor(config)
            predictor = predictors[key]
            t1 = time.perf_counter()
            with np.load(req["inputs"], allow_pickle=False) as data:
                inputs = {k: data[k] for k in data.files}
            names = list(predictor.get_input_names())
            for i, name in enumerate(names):
                if name not in inputs:
                    raise RuntimeError(f"the model wants input {name!r}; given {sorted(inputs)}")
                predictor.get_input(i).from_numpy(np.ascontiguousarray(inputs[name]))
            for _ in range(max(1, int(req.get("runs", 1)))):
                predictor.run()
            fetches = list(req["fetches"])
            count = len(predictor.get_output_names())
            if count != len(fetches):
                raise RuntimeError(f"the model has {count} outputs, expected {len(fetches)} ({fetches})")
            outputs = {name: np.array(predictor.get_output(i).numpy(), copy=True) for i, name in enumerate(fetches)}
            t2 = time.perf_counter()
            tmp = req["outputs"] + ".part.npz"
            np.savez(tmp, **outputs)
            os.replace(tmp, req["outputs"])
            version = predictor.get_version() if hasattr(predictor, "get_version") else None
            send({"ok": True, "seconds": t2 - t1, "load_seconds": t1 - t0, "info": {"paddle_lite_version": version}})
        except Exception as exc:  # a verdict for this run; a CHECK failure aborts the process instead
            send({"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()[-1500:]}"})


if __name__ == "__main__":
    main()
