"""Fused groups and placement read from REAL Paddle-Lite opt (2.13-rc), on every fixture and the PP-OCRv5 models.

Real opt converts for ARM and OpenCL on this x86 host (only the kernels need a device). These tests need the
provisioned Paddle-Lite (`bisect-lite setup lite`); in CI (env CI set) they fail when it is missing, locally they
skip. Every conversion goes through `bisect-lite ops MODEL --target SPEC --json` once per model and target and is
cached for the session (the test cache of conftest), so the engine API reads the same files afterwards.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import FIXTURE_NAMES, FIXTURES, ROOT, ppocr_model, require, run_cli

from bisect_lite.cache import Cache
from bisect_lite.engines.registry import create_engine
from bisect_lite.model import Model, load_model
from bisect_lite.model.fusion import (
    GLUE_OPS,
    ReusedNames,
    cpu_placement_config,
    cut_positions,
    fusion_groups,
    glue_ops,
    optimized_ops,
    placement_misses,
)
from bisect_lite.model.graph import decode_attr

PPOCR_NAMES = ["det", "rec", "cls"]
PLACES = ["arm", "opencl"]


@dataclass(frozen=True)
class RealOpt:
    spec_options: str  # appended to `lite:PLACE`: "" for the provisioned environment, ",opt=PATH" otherwise
    command: list[str]  # how to start opt directly
    python: str = ""  # the wheel's interpreter: `python=` makes lite:opencl convert as for a phone or board

    def spec(self, place: str) -> str:
        """The engine spec of a place, converting as on a phone or board (valid targets `arm`, `opencl,arm`): here
        `lite:opencl` alone converts for this machine's OpenCL library (`x86_opencl`, x86 host fallbacks)."""
        board = f",python={self.python}" if place == "opencl" and self.python else ""
        return f"lite:{place}{self.spec_options}{board}"


def real_opt() -> RealOpt | None:
    """Real Paddle-Lite's opt: the environment `bisect-lite setup lite` made (the lite engines use it with no flag),
    or BISECT_LITE_REAL_OPT=PATH (a paddle_lite_opt of the real wheel) for a checkout without one."""
    if os.environ.get("BISECT_LITE_REAL_OPT"):
        path = os.environ["BISECT_LITE_REAL_OPT"]
        return RealOpt(f",opt={path}", [path])
    from bisect_lite.lite_env import find_lite_env

    env = find_lite_env()
    # opt is a Python script of the wheel: start it with the environment's interpreter.
    return RealOpt("", [str(env.python), str(env.opt)], str(env.python)) if env is not None else None


@pytest.fixture(scope="module")
def opt() -> RealOpt:
    found = real_opt()
    require(found is not None, "real Paddle-Lite is not provisioned (run `bisect-lite setup lite`)")
    assert found is not None
    return found


_zoo_dir: list[Path] = []


def model_dir(name: str) -> Path:
    if name in ZOO_NAMES:  # held-out models built with Paddle on first use (tests/sim/zoo.py)
        spec = importlib.util.spec_from_file_location("zoo", ROOT / "tests" / "sim" / "zoo.py")
        assert spec and spec.loader
        zoo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(zoo)
        if not _zoo_dir:
            _zoo_dir.append(Path(tempfile.mkdtemp(prefix="bisect-lite-zoo-")))
        path = _zoo_dir[0] / name
        return path if (path / "model.pdmodel").exists() else zoo.build(name, _zoo_dir[0])
    if name in PPOCR_NAMES:
        return ppocr_model(name)
    return FIXTURES / name


ZOO_NAMES = ["zoo_squeezenet", "zoo_activations", "zoo_residual_tree", "zoo_attention"]
MODELS = [*FIXTURE_NAMES, *PPOCR_NAMES, *ZOO_NAMES]


# ------------------------------------------------------------------------------------------------ conversions


_views: dict[tuple[str, str], tuple[int, dict, str]] = {}


def ops_view(name: str, place: str, opt: RealOpt, capsys) -> tuple[int, dict, str]:
    """`bisect-lite ops MODEL --target lite:PLACE --json` (once per session): exit code, JSON, stderr."""
    key = (name, place)
    if key not in _views:
        spec = opt.spec(place)
        code, out, err = run_cli(["ops", str(model_dir(name)), "--target", spec, "--json"], capsys)
        _views[key] = (code, json.loads(out) if code == 0 else {}, err)
    return _views[key]


def optimized_program(name: str, place: str, opt: RealOpt, placement: Path | None = None) -> Model:
    """The real optimised program (no memory reuse) through the engine API: a cache hit after ops_view."""
    engine = create_engine(opt.spec(place))
    engine.place_on_cpu(placement)
    model, cache = load_model(model_dir(name)), Cache()
    directory = engine.optimized_program(cache.model_dir(model), cache.prepared_dir(model, engine.cache_key()))
    assert directory is not None
    return load_model(directory, with_params=False)


# ------------------------------------------------------------------------------------------------ independent check

# What one real kernel may compute, as the types of its original ops in index order. Optional leading reshape2:
# a weight reshape opt computed offline; optional trailing scale: an identity scale opt eliminated.
CONV = r"(conv2d|depthwise_conv2d|conv2d_transpose)"
ACT = r"(relu|relu6|leaky_relu|hard_swish|hard_sigmoid|prelu|sigmoid|tanh|swish|abs|sigmoid\+elementwise_mul)"
KERNEL_PATTERNS = {
    "conv": rf"(reshape2\+)*{CONV}(\+batch_norm)?(\+{CONV}(\+batch_norm)?)?(\+elementwise_add)?(\+{ACT})?(\+scale)?",
    "fc": r"(flatten_contiguous_range\+|reshape2\+)?(matmul_v2|matmul|mul)\+elementwise_add(\+(relu|relu6))?(\+scale)?",
    "swish": r"sigmoid\+elementwise_mul(\+scale)?",
}


def check_group_is_one_kernel(model: Model, ops: list[int], kernel_type: str, attrs: dict, inputs: set[str]) -> None:
    """The group's ops are what this real kernel is documented to fuse, and everything its attributes say it fused
    (activation, SecondInput residual add, fc's add) is in the group: no invented group, no real group split."""
    types = "+".join(model.ops[i].type for i in ops)
    for i in ops:
        if model.ops[i].type == "scale" and len(ops) > 1:
            a = model.op_attrs(i)
            assert (a.get("scale"), a.get("bias")) == (1.0, 0.0), f"scale {i} is not an identity: {a}"
    if kernel_type in ("conv2d", "depthwise_conv2d", "conv2d_transpose"):
        assert re.fullmatch(KERNEL_PATTERNS["conv"], types), (kernel_type, types, ops)
        act = attrs.get("act_type") if attrs.get("with_act") else None
        if act:
            assert types.endswith(act) or (act == "swish" and "sigmoid+elementwise_mul" in types), (act, types)
        if "SecondInput" in inputs or attrs.get("fuse_elementwise_op_type"):
            assert "elementwise_add" in types, types
    elif kernel_type == "fc":
        assert re.fullmatch(KERNEL_PATTERNS["fc"], types), types
        assert model.ops[ops[0]].type != "elementwise_add"
        if attrs.get("activation_type"):
            assert attrs["activation_type"] in types, (attrs, types)
    elif kernel_type.startswith("fusion_elementwise_") and kernel_type.endswith("_activation"):
        elementwise = kernel_type.removeprefix("fusion_").removesuffix("_activation")
        assert re.fullmatch(rf"(reshape2\+)*{elementwise}\+{attrs['act_type']}(\+scale)?", types), types
    elif kernel_type == "swish" and len(ops) > 1:
        assert re.fullmatch(KERNEL_PATTERNS["swish"], types), types
    else:
        assert re.fullmatch(rf"(reshape2\+)*{kernel_type}(\+scale)?", types), (kernel_type, types, ops)


def kernel_region(model: Model, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> list[int]:
    """The original ops a kernel must compute, from dataflow alone: the ancestors of its outputs that are not
    ancestors of its inputs (independent of the surviving-name rule that fusion_groups uses)."""

    def ancestors(names: tuple[str, ...]) -> set[int]:
        seen: set[int] = set()
        stack = [model.producers[n] for n in names if n in model.producers]
        while stack:
            i = stack.pop()
            if i not in seen:
                seen.add(i)
                stack.extend(model.producers[n] for n in model.ops[i].reads if n in model.producers)
        return seen

    return sorted(ancestors(outputs) - ancestors(inputs))


# ------------------------------------------------------------------------------------------------ groups


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", MODELS)
def test_groups_of_ops_target_json_are_real_opts_kernels(opt, capsys, name, place):
    code, view, err = ops_view(name, place, opt, capsys)
    if code != 0:
        # Paddle 3.x writes flatten_contiguous_range without XShape; real opt 2.13-rc segfaults on it unless the
        # flatten is fused into an fc (two_io's flatten also feeds a concat). A one-line engine error, exit 3.
        assert (name, code) == ("two_io", 3), err
        assert err.startswith("error: engine lite:") and "SIGSEGV" in err and len(err.strip().splitlines()) == 1
        return
    model = load_model(model_dir(name))
    groups = view["groups"]
    # A partition of bisect-lite's op indices, in order (a group's ops need not be adjacent: det's first conv has
    # its batch_norm 55 ops later).
    assert sorted(i for g in groups for i in g) == list(range(len(model.ops)))
    assert all(g == sorted(g) for g in groups) and [g[0] for g in groups] == sorted(g[0] for g in groups)
    # One group per real kernel and one kernel per group.
    kernels = [row for row in view["target"]["optimized_ops"] if not row["glue"]]
    assert sorted(row["ops"] for row in kernels) == sorted(groups)
    optimized = optimized_program(name, place, opt)
    real = [op for op in optimized.ops if op.type not in GLUE_OPS]
    assert [op.type for op in real] == [row["type"] for row in kernels]
    for op, row in zip(real, kernels, strict=True):
        attrs = {a.name: decode_attr(a) for a in optimized.block.ops[op.desc_index].attrs}
        check_group_is_one_kernel(model, row["ops"], op.type, attrs, {s for s, a in op.inputs.items() if a})
    # Each group is the dataflow region between its kernel's inputs and outputs, plus ops opt eliminated whose
    # output nothing reads any more (an identity scale in front of a fetch that now reads the producer).
    everything_read = {t for k in optimized_ops(optimized) for t in k.inputs}
    for kernel in optimized_ops(optimized):
        group, region = kernels[kernel.index]["ops"], kernel_region(model, kernel.inputs, kernel.outputs)
        assert set(region) <= set(group), (kernel, group, region)
        for extra in set(group) - set(region):
            assert not set(model.ops[extra].data_outputs()) & everything_read, (kernel, group, extra)
    # Placement and glue as real opt decided them.
    if place == "arm":
        assert {row["place"] for row in kernels} <= {"arm", "host"} and view["target"]["glue_ops"] == 0
        # ARM runs these on Host kernels (reshape_calc_offline_pass only binds to NNAdapter in 2.13-rc).
        on_host = {"reshape2", "squeeze2", "unsqueeze2", "assign", "split"}
        assert all(row["place"] == "host" for row in kernels if row["type"] in on_host)
    else:
        assert "opencl" in {row["place"] for row in kernels}
        assert view["target"]["glue_ops"] >= 2  # at least the input's and the output's io_copy


def test_real_fusions_are_single_groups(opt, capsys):
    """The fusions named in issue 8, each seen on real opt as ONE group."""
    seen: dict[str, set[str]] = {}
    for name in ("resnet", "mobilenetv3", "cls", "rec"):
        for place in PLACES:
            _, view, _ = ops_view(name, place, opt, capsys)
            for g in view["target"]["fused_groups"]:
                seen.setdefault(f"{'+'.join(g['types'])}->{g['into']}", set()).add(f"{name}:{place}")
    assert "flatten_contiguous_range+matmul_v2+elementwise_add+scale->fc" in seen  # resnet: fc + identity scale
    assert "flatten_contiguous_range+matmul_v2+elementwise_add->fc" in seen  # mobilenetv3
    assert "conv2d+batch_norm+conv2d+batch_norm+relu->conv2d" in seen  # lite_conv_conv_fuse_pass
    assert "conv2d+batch_norm+hard_swish->conv2d" in seen  # conv+bn+act
    tree = seen.get("conv2d+batch_norm+elementwise_add->conv2d", set())  # OpenCL conv_elementwise_tree
    assert tree and all(where.endswith(":opencl") for where in tree), tree
    assert "sigmoid+elementwise_mul->swish" in seen


def test_resnet_groups_are_exactly_the_kernels(opt, capsys):
    _, view, _ = ops_view("resnet", "opencl", opt, capsys)
    expected_fused = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9], [10, 11, 12], [13, 14], [15, 16], [17, 18, 19]]
    assert view["groups"][: len(expected_fused)] == expected_fused
    assert view["groups"][-2:] == [[42], [43, 44, 45, 46]]  # pool2d alone; flatten+matmul+add+scale -> fc
    fc = next(row for row in view["target"]["optimized_ops"] if row["type"] == "fc")
    assert (fc["place"], fc["layout"]) == ("opencl", "ImageFolder")
    glue = [(row["type"], row["kernel"], row["outputs"][0]) for row in view["target"]["optimized_ops"] if row["glue"]]
    assert glue[-2:] == [
        ("layout", "ImageFolder_to_NCHW", "linear_0.tmp_1/layout_trans"),
        ("io_copy", "device_to_host", "linear_0.tmp_1/target_trans"),
    ]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", PPOCR_NAMES)
def test_search_cuts_never_split_a_real_group(opt, capsys, name, place):
    ops_view(name, place, opt, capsys)
    model = load_model(model_dir(name))
    groups = fusion_groups(model, optimized_program(name, place, opt))
    cuts = cut_positions(groups)
    for g in groups:
        first, last = g.kernel_ops[0], g.kernel_ops[-1]
        assert not [c for c in cuts if first <= c < last], (g.ops, g.folded)
    # Weight reshapes folded into an add (OpenCL) do not block cuts; only real kernels' spans do.
    assert len(cuts) > 0.8 * len(groups), (len(cuts), len(groups))
    if (name, place) == ("det", "arm"):
        assert [0, 55] in [g.ops for g in groups] and min(cuts) == 55  # x2paddle: conv 0 and its batch_norm 55


def resnet_with_memory_reuse(opt: RealOpt, targets: str, out: Path) -> None:
    """resnet as opt's default makes it: protobuf, memory reuse on (no memory config)."""
    proc = subprocess.run(
        [
            *opt.command,
            f"--model_file={FIXTURES / 'resnet' / 'model.pdmodel'}",
            f"--param_file={FIXTURES / 'resnet' / 'model.pdiparams'}",
            f"--valid_targets={targets}",
            "--optimize_out_type=protobuf",
            f"--optimize_out={out}",
        ],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OPENCL_MEMORY_CONFIG_FILE"},
    )
    assert proc.returncode == 0, proc.stderr[-500:]


def test_a_program_with_memory_reuse_is_refused(opt, tmp_path):
    """opt's default (memory reuse on) renames tensors; groups read from that program would be invented."""
    model = load_model(FIXTURES / "resnet")
    out = tmp_path / "reused"
    resnet_with_memory_reuse(opt, "arm", out)
    with pytest.raises(ReusedNames, match="memory_optimize_pass"):
        fusion_groups(model, load_model(out, with_params=False))


# ------------------------------------------------------------------------------------------------ placement


@pytest.mark.parametrize("name", ["resnet", "cls"])
def test_placement_rules_really_move_ops(opt, capsys, tmp_path, name):
    """The first k OpenCL kernels named in a device:cpu config leave OpenCL in the real optimised program; the
    others stay; the kernels themselves (fusions) do not change."""
    ops_view(name, "opencl", opt, capsys)  # converts once (cached)
    base = optimized_ops(optimized_program(name, "opencl", opt))
    gpu = [op for op in base if op.place == "opencl"]
    for k in (1, len(gpu) // 2, len(gpu)):
        config = tmp_path / f"cpu-{k}.txt"
        config.write_text(cpu_placement_config(gpu[:k]))
        placed = optimized_program(name, "opencl", opt, placement=config)
        assert placement_misses(gpu[:k], placed) == []
        now = optimized_ops(placed)
        assert [op.type for op in now] == [op.type for op in base]
        moved = {t for op in gpu[:k] for t in op.outputs}
        kept = [op for op in now if op.place == "opencl"]
        assert all(not set(op.outputs) & moved for op in kept)
        assert len(kept) == len(gpu) - k


def test_placement_with_reused_names_does_not_take_effect_and_is_detected(opt, tmp_path):
    """The old way: rules from opt's default program (memory reuse renames tensors) name the wrong tensors."""
    out = tmp_path / "reused"
    resnet_with_memory_reuse(opt, "opencl,arm", out)
    reused = [op for op in optimized_ops(load_model(out, with_params=False)) if op.place == "opencl"]
    config = tmp_path / "cpu.txt"
    config.write_text(cpu_placement_config(reused))
    placed = optimized_program("resnet", "opencl", opt, placement=config)
    assert placement_misses(reused, placed)  # some ops did not move, and the check says which


def test_an_empty_placement_is_never_written():
    with pytest.raises(ValueError, match="empty"):
        cpu_placement_config([])


# ------------------------------------------------------------------------------------------------ the simulator
# The simulator in tests/sim stands in for a phone GPU's fp16 only (nothing here has fp16 OpenCL); which tensors it
# stores in half follows its optimised program, so that program is kept equal to real opt's for a phone.

SIM_OPT = Path(__file__).resolve().parent / "sim" / "bin" / "paddle_lite_opt"
TARGETS = {"arm": "arm", "opencl": "opencl,arm"}
# What still differs between the simulator's optimised program and real opt 2.13-rc, per model and place. The same
# list is in tests/sim/README.md ("Checked against real opt") and README.md ("Debug a phone"): change all three.
# Kernel order is not compared: real opt emits its graph in a depth-first topological order over node ids (fused
# nodes get new ids), the simulator keeps program order; both are valid schedules of the same kernels.
KNOWN_SIM_DIFFERENCES: dict[tuple[str, str], set[str]] = {
    # Paddle 3.x's flatten_contiguous_range without XShape, not fused into an fc: real opt segfaults.
    ("two_io", "arm"): {"real opt crashes"},
    ("two_io", "opencl"): {"real opt crashes"},
}


def sim_program(name: str, place: str, out: Path) -> Model:
    proc = subprocess.run(
        [
            str(SIM_OPT),
            f"--model_file={model_dir(name) / 'model.pdmodel'}",
            f"--param_file={model_dir(name) / 'model.pdiparams'}",
            f"--valid_targets={TARGETS[place]}",
            "--optimize_out_type=protobuf",
            f"--optimize_out={out}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0 and out.is_dir(), proc.stderr[-800:]
    return load_model(out, with_params=False)


def program_aspects(model: Model, optimized: Model) -> dict[str, list]:
    """What the comparison looks at, each as a sorted list (the order of kernels is not compared)."""
    kernels = optimized_ops(optimized)
    fetches = [a for op in optimized.block.ops if op.type == "fetch" for v in op.inputs for a in v.arguments]
    return {
        "op types": sorted((k.raw_outputs, k.type) for k in kernels),
        "fused groups": sorted(g.ops for g in fusion_groups(model, optimized)),
        "placements": sorted(
            (
                k.raw_outputs,
                k.place,
                k.kernel.alias if k.kernel else None,
                k.kernel.precision if k.kernel else None,
                k.kernel.layout if k.kernel else None,
            )
            for k in kernels
        ),
        "glue ops and names": sorted(
            (g.type, g.kernel.alias if g.kernel else None, g.input, g.output) for g in glue_ops(optimized)
        ),
        "output names": fetches,
    }


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("name", MODELS)
def test_simulator_agrees_with_real_opt(opt, capsys, tmp_path, name, place):
    """The simulator's optimised program against real opt's: op types, fused groups, glue ops and their names,
    placements (target, kernel alias, precision, layout), output names; only the documented differences remain."""
    model = load_model(model_dir(name))
    simulated = program_aspects(model, sim_program(name, place, tmp_path / "sim"))
    code, _, _ = ops_view(name, place, opt, capsys)
    if code != 0:
        differing = {"real opt crashes"}
    else:
        real = program_aspects(model, optimized_program(name, place, opt))
        differing = {aspect for aspect in real if real[aspect] != simulated[aspect]}
        for aspect in sorted(differing - KNOWN_SIM_DIFFERENCES.get((name, place), set())):
            only_real = [x for x in real[aspect] if x not in simulated[aspect]][:3]
            only_sim = [x for x in simulated[aspect] if x not in real[aspect]][:3]
            pytest.fail(f"{name} {place}: {aspect} differ: real opt {only_real} vs simulator {only_sim}")
    assert differing == KNOWN_SIM_DIFFERENCES.get((name, place), set())


# ------------------------------------------------------------------------------------------------ ops --target
# Whole runs on real kernels: tests/test_lite.py and tests/test_lite_native.py (ARM under QEMU, OpenCL on PoCL).


def test_ops_target_prints_program_and_groups(opt, capsys):
    """`ops --target` needs only opt: real opt's program, as a phone converts it (`opencl,arm`) and for `arm`."""
    code, out, err = run_cli(["ops", str(FIXTURES / "resnet"), "--target", opt.spec("opencl")], capsys)
    assert code == 0, err
    assert "fc/image2d" in out and "opencl/fp16/ImageFolder" in out and "layout/ImageFolder_to_NCHW" in out
    assert "ops 43, 44, 45, 46: flatten_contiguous_range+matmul_v2+elementwise_add+scale -> fc on opencl" in out
    code, out, err = run_cli(["ops", str(FIXTURES / "resnet"), "--target", opt.spec("arm"), "--json"], capsys)
    assert code == 0, err
    view = json.loads(out)
    assert view["groups"][-1] == [43, 44, 45, 46] and view["target"]["glue_ops"] == 0
    assert sorted(i for g in view["groups"] for i in g) == list(range(len(view["ops"])))


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("paddle", 2, "has no optimised program"),
        ("bogus", 2, "unknown engine"),
        ("lite:arm,opt=/nonexistent/paddle_lite_opt", 3, "not found"),
    ],
)
def test_ops_target_errors_are_one_line(capsys, spec, code, message):
    got, out, err = run_cli(["ops", str(FIXTURES / "resnet"), "--target", spec], capsys)
    assert (got, out) == (code, "") and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_ops_target_when_opt_crashes_is_one_line(capsys, tmp_path):
    crash = tmp_path / "crashing_opt"
    crash.write_text("#!/bin/sh\necho 'Check failed: boom' >&2\nkill -SEGV $$\n")
    crash.chmod(0o755)
    code, out, err = run_cli(["ops", str(FIXTURES / "resnet"), "--target", f"lite:arm,opt={crash}"], capsys)
    assert code == 3 and out == "" and "cannot optimise this model" in err and "SIGSEGV" in err
    assert len(err.strip().splitlines()) == 1


def test_reuse_is_judged_against_the_original_program():
    """A name written by two kernels is memory reuse only if the original program does not write it twice itself."""
    model = load_model(FIXTURES / "resnet")
    assert [g.ops for g in fusion_groups(model, model)] == [[i] for i in range(len(model.ops))]
    relus = [op for op in model.ops if op.type == "relu"]
    program = type(model.program)()
    program.CopyFrom(model.program)
    desc = program.blocks[0].ops[relus[1].desc_index]
    slot = next(v for v in desc.outputs if v.parameter == "Out")
    slot.arguments[0] = relus[0].outputs["Out"][0]  # the second relu now writes the first relu's tensor
    twice = Model.from_bytes(program.SerializeToString(), {})
    with pytest.raises(ReusedNames):
        fusion_groups(model, twice)
    assert len(fusion_groups(twice, twice)) == len(twice.ops)  # the original itself writes it twice: no reuse
