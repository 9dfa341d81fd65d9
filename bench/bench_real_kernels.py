"""Real ARM kernels (QEMU) against real OpenCL kernels (PoCL, fp32): healthy runs, cost, the sigmoid NaN, a faulty
library (issue 14, studies a, c and e).

Sections (all by default; `--sections` picks some):
- `cost` (study c): seconds per target run of `lite:opencl` and `lite:arm` on PP-OCRv5 det/rec/cls through the
  engines bisect-lite uses (no result cache). OpenCL's first run in a fresh cache root compiles every kernel
  (cold); later runs find PoCL's and Paddle-Lite's kernel caches warm. Seconds are the runner process's own
  (conversion with opt excluded: cached per model); "first wall" is the first call including opt.
- `healthy` (study a): `bisect-lite run MODEL --ref lite:arm --target lite:opencl` on every fixture and on det/rec/cls
  with their inputs.npz, in a child process with `--no-cache` (no stored results or conversions, as on a model's
  first run; kernel caches stay warm): exit code, verdict, culprit and diagnosis, target runs by phase, wall time. A
  fixture with known Paddle 3.x schema drift is run on its `bisect-lite lite-compat` copy (real opt segfaults on it
  as exported for `x86_opencl`, whose host fallbacks are x86 kernels); `--raw` also runs those as exported.
- `sigmoid`: one `sigmoid` op on [-200, -100, -89, -88.8, -88.7, -88, 0, 88, 100] on both engines. Paddle-Lite's
  OpenCL sigmoid computes 1 / (1 + pow(e, -x)) under `-cl-fast-relaxed-math`: past x = -ln(FLT_MAX) = -88.72, pow
  overflows to inf, which the flag lets the compiler assume away; PoCL returns NaN there (ARM: 0).
- `detnan`: healthy det on OpenCL: which output pixels are NaN, and the reference's (Paddle Inference) value of the
  sigmoid's input there.
- `faulty` (study e): tests/faulty_lib.py's library (OpenCL bilinear_interp weighs the wrong row) on the unet
  fixture: `run` against real ARM, then `verify` of its repro on the healthy library (0) and the faulty one (1).

The machine may be shared: every row records the 1-minute load average when it ended. Medians of few runs.

    .venv/bin/python bench/bench_real_kernels.py [--sections cost,healthy,sigmoid,detnan,faulty]
                                                 [--models det,rec,cls,...] [--runs 3] [--raw] [--json FILE]
                                                 [--keep DIR]
PP-OCRv5 models come from $PPOCR_DIR (default ../shared/models/ppocrv5 beside the checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bisect_lite.cache import Cache  # noqa: E402
from bisect_lite.engines.runner import EngineRunner  # noqa: E402
from bisect_lite.inputs import save_npz  # noqa: E402
from bisect_lite.lite_compat import find_drift  # noqa: E402
from bisect_lite.model import load_model, truncate  # noqa: E402

FIXTURES = ["mobilenetv3", "resnet", "transformer", "unet", "two_io", "argmax_classifier", "fp16_overflow"]
REAL = ["cls", "rec", "det"]  # det last: ~20 s per ARM run under QEMU
PPOCR = Path(os.environ.get("PPOCR_DIR", ROOT.parent / "shared" / "models" / "ppocrv5"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "GLOG_minloglevel": "3", "PYTHONWARNINGS": "ignore"}
SIGMOID_X = [-200.0, -100.0, -89.0, -88.8, -88.7, -88.0, 0.0, 88.0, 100.0]


def load() -> float:
    return round(os.getloadavg()[0], 1)


def model_dir(name: str) -> Path:
    return PPOCR / name if name in REAL else ROOT / "fixtures" / name


def cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bisect_lite", *args], capture_output=True, text=True, env=env or ENV, cwd=ROOT
    )
    return done.returncode, (done.stdout + done.stderr).strip(), time.perf_counter() - start


# ---- study c: seconds per target run ---------------------------------------------------------------------------
def cost(name: str, runs: int, scratch: Path) -> list[dict[str, Any]]:
    directory = model_dir(name)
    model = load_model(directory)
    inputs = dict(np.load(directory / "inputs.npz"))
    rows = []
    for spec in ("lite:opencl", "lite:arm"):
        # A fresh cache root: conversions, PoCL's kernel cache and Paddle-Lite's binary cache start empty (cold).
        os.environ["BISECT_LITE_CACHE"] = str(scratch / f"cache-{name}-{spec.replace(':', '-')}")
        try:
            with EngineRunner(spec, Cache(results=False)) as runner:
                start = time.perf_counter()
                first = runner.run(model, inputs)
                first_wall = time.perf_counter() - start
                later = [runner.run(model, inputs) for _ in range(runs - 1)]
                facts = runner.facts()
        finally:
            os.environ.pop("BISECT_LITE_CACHE")
        warm = [r.seconds for r in later]
        statuses = sorted({r.status for r in [first, *later]})
        rows.append(
            {
                "model": name,
                "engine": spec,
                # A crash (rec's classifier on OpenCL: an image wider than the device allows) still costs a run.
                "status": statuses[0] if len(statuses) == 1 else "/".join(statuses),
                "first_s": round(first.seconds, 2),
                "first_wall_s": round(first_wall, 2),
                "later_median_s": round(statistics.median(warm), 2) if warm else None,
                "later_runs": len(warm),
                "programs_compiled": facts.get("kernel_programs_compiled"),
                "load": load(),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ---- study a: healthy runs ----------------------------------------------------------------------------------------
def healthy(name: str, scratch: Path, raw: bool) -> list[dict[str, Any]]:
    directory = model_dir(name)
    variants = [("as exported", directory)]
    if find_drift(load_model(directory, with_params=False)):
        repaired = scratch / f"compat-{name}"
        code, text, _ = cli(["lite-compat", str(directory), "-o", str(repaired), "--force"])
        assert code == 0, text
        variants = ([("as exported", directory)] if raw else []) + [("lite-compat", repaired)]
    rows = []
    for variant, path in variants:
        out = scratch / f"run-{name}-{variant.replace(' ', '-')}"
        args = ["run", str(path), "--inputs", str(directory / "inputs.npz"), "--ref", "lite:arm"]
        code, text, wall = cli([*args, "--target", "lite:opencl", "--out", str(out), "--force", "--no-cache"])
        row: dict[str, Any] = {"model": name, "variant": variant, "exit": code, "wall_s": round(wall, 1)}
        report = out / "report.json"
        if report.exists():
            data = json.loads(report.read_text())
            row["verdict"] = data["verdict"]
            row["run_s"] = round(data["seconds"], 1)
            row["target_runs"] = data["target_runs"]
            row["by_phase"] = data["target_runs_by_phase"]
            row["culprits"] = [
                {"ops": c.get("ops") or [c["op"]], "type": c["type"], "diagnosis": c["diagnosis"]["kind"]}
                for c in data["culprits"]
            ]
        else:
            row["line"] = text.splitlines()[-1] if text else ""
        row["load"] = load()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


# ---- the sigmoid threshold ---------------------------------------------------------------------------------------
def sigmoid_model(directory: Path) -> None:
    """One sigmoid op on a [1, 1, 1, 9] input, written with Paddle's legacy static program (what opt reads)."""
    os.environ.setdefault("FLAGS_enable_pir_api", "0")
    import paddle

    paddle.enable_static()
    main, startup = paddle.static.Program(), paddle.static.Program()
    with paddle.static.program_guard(main, startup):
        x = paddle.static.data("x", [1, 1, 1, len(SIGMOID_X)], "float32")
        block = main.global_block()
        y = block.create_var(name="sigmoid_0.tmp_0", shape=x.shape, dtype="float32")
        block.append_op(type="sigmoid", inputs={"X": [x]}, outputs={"Out": [y]})
    exe = paddle.static.Executor(paddle.CPUPlace())
    exe.run(startup)
    paddle.static.save_inference_model(str(directory / "model"), [x], [y], exe, program=main)
    (directory / "model.pdiparams").touch()  # no parameters; loaders want the file all the same


def sigmoid(scratch: Path) -> list[dict[str, Any]]:
    directory = scratch / "sigmoid"
    directory.mkdir()
    sigmoid_model(directory)
    model = load_model(directory)
    feeds = {"x": np.array(SIGMOID_X, np.float32).reshape(1, 1, 1, -1)}
    save_npz(directory / "inputs.npz", feeds)
    outputs = {}
    for spec in ("lite:arm", "lite:opencl"):
        with EngineRunner(spec, Cache(results=False)) as runner:
            result = runner.run(model, feeds)
        assert result.ok, result.message
        outputs[spec] = next(iter(result.outputs.values())).ravel()
    rows = [
        {"x": x, "arm": float(outputs["lite:arm"][i]), "opencl": float(outputs["lite:opencl"][i])}
        for i, x in enumerate(SIGMOID_X)
    ]
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def det_nan() -> dict[str, Any]:
    """Where healthy det on OpenCL gives NaN: the pre-sigmoid reference values (Paddle Inference) at those pixels."""
    directory = model_dir("det")
    model = load_model(directory)
    inputs = dict(np.load(directory / "inputs.npz"))
    [sigmoid_op] = [op for op in model.ops if op.type == "sigmoid"]
    [pre] = [name for names in sigmoid_op.inputs.values() for name in names]
    with EngineRunner("lite:opencl", Cache(results=False)) as runner:
        result = runner.run(model, inputs)
    assert result.ok, result.message
    [output] = result.outputs.values()
    nan = np.argwhere(np.isnan(output))
    with EngineRunner("paddle", Cache(results=False)) as runner:
        reference = runner.run(truncate(model, [pre, *model.fetches]), inputs)
    assert reference.ok, reference.message
    values = reference.outputs[pre][tuple(nan.T)]
    final = reference.outputs[model.fetches[0]][tuple(nan.T)]
    row = {
        "sigmoid_op": sigmoid_op.index,
        "pre_sigmoid": pre,
        "nan_pixels": [list(map(int, p)) for p in nan],
        "pre_sigmoid_ref": [round(float(v), 2) for v in values],
        "reference_output": [float(v) for v in final],
        "min_pre_sigmoid_ref": round(float(reference.outputs[pre].min()), 2),
        "pixels_below_-88.72": int((reference.outputs[pre] < -88.72).sum()),
        "load": load(),
    }
    print(json.dumps(row), flush=True)
    return row


# ---- study e: a faulty OpenCL library -------------------------------------------------------------------------------
def faulty(scratch: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from faulty_lib import make_faulty_opencl_lib

    from bisect_lite.engines.lite import native_targets
    from bisect_lite.lite_env import find_lite_env

    healthy_lib = Path(native_targets(find_lite_env())["opencl"]["lib"])
    lib = make_faulty_opencl_lib(healthy_lib, scratch / "faulty")
    out = scratch / "run-faulty"
    args = ["run", str(ROOT / "fixtures" / "unet"), "--ref", "lite:arm", "--out", str(out), "--force", "--no-cache"]
    code, _, wall = cli([*args, "--target", f"lite:opencl,lib={lib.path}"])
    data = json.loads((out / "report.json").read_text())
    culprit = data["culprits"][0] if data["culprits"] else {}
    row: dict[str, Any] = {
        "exit": code,
        "wall_s": round(wall, 1),
        "run_s": round(data["seconds"], 1),
        "target_runs": data["target_runs"],
        "by_phase": data["target_runs_by_phase"],
        "culprit": {"ops": culprit.get("ops") or [culprit.get("op")], "type": culprit.get("type")},
        "diagnosis": culprit.get("diagnosis", {}).get("kind"),
    }
    for label, library in (("verify_healthy", healthy_lib), ("verify_faulty", lib.path)):
        code, _, seconds = cli(["verify", str(out / "repro"), "--target", f"lite:opencl,lib={library}"])
        row[label] = {"exit": code, "wall_s": round(seconds, 1)}
    row["load"] = load()
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="cost,healthy,sigmoid,detnan,faulty")
    parser.add_argument("--models", default=",".join(FIXTURES + REAL), help="for healthy (cost uses det/rec/cls)")
    parser.add_argument("--runs", type=int, default=3, help="target runs per engine and model for cost")
    parser.add_argument("--raw", action="store_true", help="also run fixtures with schema drift as exported")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="an empty or new directory that keeps every run's output")
    args = parser.parse_args()
    sections = args.sections.split(",")
    models = args.models.split(",")
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_start": load()}
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep}: not empty")
    with tempfile.TemporaryDirectory(prefix="bench-real-kernels-") as tmp:
        scratch = args.keep or Path(tmp)
        scratch.mkdir(parents=True, exist_ok=True)
        if "cost" in sections:
            results["cost"] = [row for name in REAL if name in models for row in cost(name, args.runs, scratch)]
        if "sigmoid" in sections:
            results["sigmoid"] = sigmoid(scratch)
        if "detnan" in sections:
            results["det_nan"] = det_nan()
        if "faulty" in sections:
            results["faulty"] = faulty(scratch)
        if "healthy" in sections:
            ordered = [m for m in FIXTURES + REAL if m in models]  # det last
            results["healthy"] = [row for name in ordered for row in healthy(name, scratch, args.raw)]
        shutil.rmtree(scratch / "faulty", ignore_errors=True)
    results["load_end"] = load()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
