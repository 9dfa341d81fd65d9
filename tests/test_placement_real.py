"""`--strategy placement` on real kernels (issue 14, study d): real opt moves the listed OpenCL kernels to the host
(OPENCL_MEMORY_CONFIG_FILE, valid targets x86_opencl here), the real runtime then runs them as x86 kernels, and the
search names the op whose OpenCL kernel is wrong: unet op 27 (bilinear_interp_v2) on a copy of the real OpenCL
library whose bilinear_interp kernel is broken (tests/faulty_lib.py), against real ARM kernels under QEMU."""

from __future__ import annotations

import os
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import FIXTURES, load_fixture_inputs, require
from faulty_lib import HEALTHY_OPENCL_LIB, make_faulty_opencl_lib
from test_runner_native import write_inputs

from bisect_lite.cache import Cache
from bisect_lite.engines.registry import create_engine
from bisect_lite.model import Model, load_model
from bisect_lite.model.fusion import GLUE_OPS, TARGETS, optimized_ops

CULPRIT, CULPRIT_TYPE = 27, "bilinear_interp_v2"  # unet's only bilinear_interp_v2
# What the runtime logs (GLOG_v=3) for each op of the program it builds from the .nb: the kernel it instantiates.
RUNTIME_KERNEL = re.compile(r"Found the attr '__@kernel_type_attr@__': (\S+)/(\d+)/(\d+)/(\d+) for (\S+)")


def real_native_opencl() -> dict:
    from bisect_lite.engines.lite import native_targets
    from bisect_lite.lite_env import find_lite_env

    env = find_lite_env()
    require(env is not None, "real Paddle-Lite is not provisioned (run `bisect-lite setup lite`)")
    native = native_targets(env)
    require("opencl" in native and "arm" in native, "`bisect-lite setup lite` built no native ARM/OpenCL runners")
    require(HEALTHY_OPENCL_LIB.exists(), f"{HEALTHY_OPENCL_LIB} is missing (the real x86 OpenCL Paddle-Lite)")
    return native["opencl"]


@pytest.fixture(scope="module")
def placement_run(tmp_path_factory):
    """`run fixtures/unet --ref lite:arm --target lite:opencl,lib=FAULTY --strategy placement` (no minimisation)."""
    from bisect_lite.bisector import RunOptions, run_bisect

    native = real_native_opencl()
    base = tmp_path_factory.mktemp("placement")
    faulty = make_faulty_opencl_lib(HEALTHY_OPENCL_LIB, base / "faulty")
    target = f"lite:opencl,lib={faulty.path}"
    options = RunOptions(
        ref="lite:arm",
        target=target,
        out=base / "out",
        inputs=FIXTURES / "unet" / "inputs.npz",
        minimise=False,
        strategy="placement",
    )
    report = run_bisect(FIXTURES / "unet", options)
    return report, base / "out", target, faulty.path, native


def optimized(target: str, model: Model, config: Path | None) -> tuple[Model, Path]:
    """The real optimised program and the .nb that runs, with ops forced onto the CPU by `config`."""
    engine = create_engine(target)
    engine.place_on_cpu(config)
    cache = Cache()
    model_dir, work_dir = cache.model_dir(model), cache.prepared_dir(model, engine.cache_key())
    program = engine.optimized_program(model_dir, work_dir)
    assert program is not None
    return load_model(program, with_params=False), engine.convert(model_dir, work_dir)


def moved_outputs(config: Path) -> list[str]:
    """The output tensor of each `op_type:inputs:outputs` rule of a device:cpu config."""
    lines = config.read_text().splitlines()
    assert lines[0] == "device:cpu" and len(lines) > 1
    return [line.rsplit(":", 1)[1] for line in lines[1:]]


def test_placement_names_the_op_of_the_faulty_kernel(placement_run):
    report, out, _, _, _ = placement_run
    assert report["verdict"] == "mismatch"
    assert [(c["index"], c["type"], c["kind"]) for c in report["culprits"]] == [(CULPRIT, CULPRIT_TYPE, "op")]
    probes = report["probes"]
    placement = [p for p in probes if p["segment"] == -1]
    assert placement and not [p for p in placement if "did not take effect" in p["message"]]
    # The bracket: moving the kernels up to op 27's makes the output right, stopping one kernel earlier does not.
    fixed = {p["cut"] for p in placement if p["verdict"] == "fail"}
    wrong = {p["cut"] for p in placement if p["verdict"] == "pass"}
    assert min(fixed) == CULPRIT and max(wrong) < CULPRIT, placement
    assert all("moved to the CPU: output fixed" in p["message"] for p in placement if p["cut"] in fixed)
    assert any(f"moving OpenCL op #11 ({CULPRIT_TYPE} -> " in note for note in report["notes"]), report["notes"]
    # No cut model was run by the search: placement keeps the graph whole.
    assert report["target_runs_by_phase"].get("search") == len(placement)
    assert (out / "repro" / "ISSUE.md").exists()


def test_each_probe_really_moved_its_kernels_to_x86(placement_run):
    """In the real re-optimised program of every probe, the kernels the config lists run as x86 kernels and every
    other kernel stays on OpenCL; the kernels themselves (types, order) are those of the unplaced program."""
    report, out, target, _, _ = placement_run
    model = load_model(FIXTURES / "unet")
    base, _ = optimized(target, model, None)
    base_ops = optimized_ops(base)
    assert {op.place for op in base_ops} == {"opencl"} and len(base_ops) == 16
    configs = sorted((out / "placement").glob("cpu-first-*.txt"))
    assert len(configs) == len([p for p in report["probes"] if p["segment"] == -1])
    for config in configs:
        listed = moved_outputs(config)
        placed, _ = optimized(target, model, config)
        now = optimized_ops(placed)
        assert [op.type for op in now] == [op.type for op in base_ops]
        on = {t: op.place for op in now for t in op.outputs}
        assert {on[t] for t in listed} == {"x86"}, config.name
        kept = [op for op in now if not set(op.outputs) & set(listed)]
        assert len(listed) == int(config.stem.rsplit("-", 1)[1]) == len(base_ops) - len(kept)
        assert {op.place for op in kept} <= {"opencl"}, config.name


def test_moved_kernels_run_as_x86_kernels_at_run_time(placement_run, tmp_path):
    """The real runtime (GLOG_v=3 logs the kernel it builds for each op) runs the moved kernels as x86 kernels:
    with the fixing config op 27's bilinear_interp_v2 is an x86 kernel, one kernel fewer leaves it on OpenCL."""
    _, out, target, faulty, native = placement_run
    model = load_model(FIXTURES / "unet")
    inputs = write_inputs(tmp_path / "in", load_fixture_inputs("unet"))
    env = {**os.environ, "GLOG_v": "3", "LD_LIBRARY_PATH": str(faulty.parent)}
    for k, bilinear_on in ((12, "x86"), (11, "opencl")):
        _, nb = optimized(target, model, out / "placement" / f"cpu-first-{k}.txt")
        proc = subprocess.run(
            [native["runner"], "--model", str(nb), "--inputs", str(inputs), "--outputs", str(tmp_path / f"out{k}")],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        built = [
            (op, TARGETS.get(int(target_code), target_code))
            for _, target_code, _, _, op in RUNTIME_KERNEL.findall(proc.stderr)
            if op not in GLUE_OPS
        ]
        assert len(built) == 16, built
        assert Counter(place for _, place in built) == {"x86": k, "opencl": 16 - k}
        assert [place for _, place in built] == ["x86"] * k + ["opencl"] * (16 - k)
        assert dict(built)[CULPRIT_TYPE] == bilinear_on
