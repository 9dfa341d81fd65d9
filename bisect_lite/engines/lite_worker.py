#!/usr/bin/env python3
"""Self-contained Paddle-Lite worker: needs only numpy and `paddlelite`, so it can be copied to an ARM board.

It runs optimised `.nb` models with Paddle-Lite's Python API (MobileConfig + create_paddle_predictor) and speaks
bisect-lite's worker protocol (JSON lines; see bisect_lite/engines/worker.py):
    worker -> {"ready": true, "info": {"python", "pid", "machine", "numpy", "arm_build", "native_targets", ...}}
    parent -> {"cmd": "run", "nb": PATH, "inputs": NPZ, "outputs": NPZ, "feeds": [...], "fetches": [...],
               "precision": "auto|fp16|fp32", "tune": "none|rapid|normal|exhaustive", "cache_dir": DIR,
               "cache_name": NAME, "threads": N, "runs": N}
    worker -> {"ok": true, "seconds": s, "load_seconds": s, "info": {"paddle_lite_version": ...}} | {"ok": false, ...}
Outputs are matched to the fetch names by index: Paddle-Lite renames them (`x/target_trans` on OpenCL) and drops
identity scales in front of fetches, but keeps the fetch order.

Every input tensor is read back after it is fed and must equal what was fed: with numpy 2 the 2.13 wheel feeds
garbage without an error, and no result of such an environment may be trusted (the error starts with
READBACK_ERROR). Before building a predictor and before running it the worker writes a `[bisect-lite] stage=`
line to stderr, and a fatal signal prints the native stack there: the parent reads both to say where and why
Paddle-Lite died.

Usage: python lite_worker.py                                     (the protocol on stdin/stdout)
       python lite_worker.py --trace SCRIPT ARGS...              (run a Python program, e.g. paddle_lite_opt,
                                                                  printing the native stack on a fatal signal)
       python lite_worker.py --self-check INPUTS.npz MODEL.nb... (one JSON line: runtime facts, read-back, outputs)
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

READBACK_ERROR = "input read-back mismatch"
STAGE_MARK = "[bisect-lite] stage="
NATIVE_STACK_MARK = "*** native stack at signal"
_handlers: list = []  # keeps the ctypes callbacks alive


def install_native_stack_dump() -> None:
    """On SIGSEGV/SIGBUS/SIGFPE/SIGILL/SIGABRT print the C++ frames to stderr, then die of the same signal.
    Paddle-Lite prints nothing on a segfault; its frames (e.g. FlattenContiguousRangeOp::InferType) say where."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None)
        libc.backtrace  # noqa: B018 (glibc only: elsewhere the crash is reported without frames)
    except (OSError, AttributeError):
        return
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int)
    set_handler = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, handler_type)(("signal", libc))
    set_default = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)(("signal", libc))

    def on_fatal(signum: int) -> None:
        set_default(signum, None)  # returning re-executes the fault (or abort re-raises) with the default action
        frames = (ctypes.c_void_p * 48)()
        count = libc.backtrace(frames, 48)
        os.write(2, f"{NATIVE_STACK_MARK} {signum} ***\n".encode())
        libc.backtrace_symbols_fd(frames, count, 2)

    handler = handler_type(on_fatal)
    _handlers.append(handler)
    for sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL, signal.SIGABRT):
        set_handler(int(sig), handler)


def mark(stage: str, detail: str = "") -> None:
    sys.stderr.write(f"{STAGE_MARK}{stage} {detail}\n")
    sys.stderr.flush()


def runtime_facts(lite) -> dict:
    """What this runtime is built for. ARM builds have MobileConfig.set_threads (LITE_WITH_ARM); the x86 wheel
    registers ARM and OpenCL kernels for opt but cannot execute them (it returns garbage)."""
    import numpy as np

    arm_build = hasattr(lite.MobileConfig, "set_threads")
    # An ARM build runs ARM kernels (and OpenCL ones where the device has a driver: the runtime checks that);
    # any other build is the x86 wheel, whose ARM/OpenCL kernels are registered for opt only.
    native = ["arm", "opencl"] if arm_build else ["x86"]
    package = os.path.dirname(os.path.abspath(lite.__file__))
    return {
        "python": sys.version.split()[0],
        "pid": os.getpid(),
        "machine": platform.machine(),
        "numpy": np.__version__,
        "arm_build": arm_build,
        "native_targets": native,
        "lite_so": os.path.abspath(lite.__file__),
        "site_packages": os.path.dirname(package),
    }


def feed_checked(predictor, index: int, name: str, array) -> None:
    """Feed one input and read it back: an environment that garbles inputs must stop the job, not blame an op."""
    import numpy as np

    tensor = predictor.get_input(index)
    tensor.from_numpy(array)
    back = np.asarray(tensor.numpy())
    floating = np.issubdtype(array.dtype, np.floating)
    same = back.shape == array.shape and back.dtype == array.dtype
    if not same or not (np.array_equal(back, array, equal_nan=True) if floating else np.array_equal(back, array)):
        raise RuntimeError(
            f"{READBACK_ERROR}: input {name!r} fed {array.dtype}{list(array.shape)} reads back as "
            f"{back.dtype}{list(back.shape)} with max |diff| "
            f"{float(np.max(np.abs(back.astype(np.float64) - array))) if back.shape == array.shape else 'n/a'} "
            f"(numpy {np.__version__}: paddlelite 2.13 needs numpy<2)"
        )


def self_check(inputs_file: str, models: list[str]) -> None:
    """One JSON line on stdout: runtime facts, whether an input reads back equal, and each model's first output
    (each model runs in a child process: a runtime that cannot run it may crash)."""
    try:
        import numpy as np
        from paddlelite import lite
    except Exception as exc:  # the environment is broken: say so in the one line
        print(json.dumps({"error": f"cannot import paddlelite: {type(exc).__name__}: {exc}"}))
        return
    facts = runtime_facts(lite)
    results: dict[str, object] = {}
    readback = None
    version = None
    for nb in models:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--self-check-one", inputs_file, nb],
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = proc.stdout.strip().splitlines()
        one = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"crash": proc.returncode}
        results[os.path.basename(nb)] = one.get("output")
        if one.get("readback_equal") is not None:
            readback = bool(readback if readback is False else one["readback_equal"])
        version = version or one.get("version")
    print(
        json.dumps(
            {**facts, "numpy": np.__version__, "readback_equal": readback, "version": version, "results": results}
        )
    )


def self_check_one(inputs_file: str, nb: str) -> None:
    import numpy as np
    from paddlelite import lite

    config = lite.MobileConfig()
    config.set_model_from_file(nb)
    predictor = lite.create_paddle_predictor(config)
    with np.load(inputs_file, allow_pickle=False) as data:
        array = np.ascontiguousarray(data[data.files[0]])
    tensor = predictor.get_input(0)
    tensor.from_numpy(array)
    equal = bool(np.array_equal(np.asarray(tensor.numpy()), array))
    predictor.run()
    output = np.asarray(predictor.get_output(0).numpy(), dtype=np.float64)
    print(json.dumps({"readback_equal": equal, "output": output.tolist(), "version": predictor.get_version()}))


def serve() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # Paddle-Lite's logging must not garble the protocol channel
    sys.stdout = sys.stderr
    import numpy as np
    from paddlelite import lite

    install_native_stack_dump()

    def send(msg: dict) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    predictors: dict[tuple, object] = {}
    send({"ready": True, "info": runtime_facts(lite)})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            t0 = time.perf_counter()
            key = (req["nb"], req.get("precision"), req.get("tune"), req.get("threads"))
            if key not in predictors:
                mark("build", req["nb"])
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
                feed_checked(predictor, i, name, np.ascontiguousarray(inputs[name]))
            mark("run", req["nb"])
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


def trace(argv: list[str]) -> None:
    import runpy

    install_native_stack_dump()
    sys.argv = list(argv)
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))  # as if the script were run directly
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--trace":
        trace(sys.argv[2:])
    elif len(sys.argv) > 2 and sys.argv[1] == "--self-check":
        self_check(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 4 and sys.argv[1] == "--self-check-one":
        self_check_one(sys.argv[2], sys.argv[3])
    else:
        serve()
