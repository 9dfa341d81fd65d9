"""The engine registry: engine names users type, and how to build an engine from a spec string."""

from __future__ import annotations

import importlib
from typing import Any

from bisect_lite.compare import FP16_TOLERANCE, FP32_TOLERANCE, Tolerance
from bisect_lite.engines.base import Engine
from bisect_lite.engines.spec import EngineSpec, parse_spec
from bisect_lite.errors import InputError

# name -> "module:Class"; modules are imported only when the engine is used.
ENGINES: dict[str, str] = {
    "paddle": "bisect_lite.engines.paddle_inference:PaddleEngine",
    "paddle-opt": "bisect_lite.engines.paddle_inference:PaddleOptEngine",
    "fp16": "bisect_lite.engines.fp16:Fp16Engine",
    "onnxruntime": "bisect_lite.engines.onnxruntime:OnnxRuntimeEngine",
    "cmd": "bisect_lite.engines.command:CommandEngine",
    "lite": "bisect_lite.engines.lite:LiteEngine",
}


# Specs used to describe engines that need arguments.
EXAMPLE_SPECS = {"cmd": "cmd:true", "lite": "lite:arm"}


def engine_class(name: str) -> type[Engine]:
    target = ENGINES.get(name)
    if target is None:
        raise InputError(f"unknown engine {name!r}; available: {', '.join(ENGINES)} (see `bisect-lite engines`)")
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


def create_engine(spec: str | EngineSpec) -> Engine:
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    return engine_class(parsed.name)(parsed)


def list_engines() -> list[dict[str, Any]]:
    rows = []
    for name in ENGINES:
        cls = engine_class(name)
        reason = cls.unavailable_reason()
        try:
            version = create_engine(EXAMPLE_SPECS.get(name, name)).version()
        except Exception:
            version = "?"
        rows.append(
            {
                "name": name,
                "summary": cls.summary,
                "available": reason is None,
                "why_not": reason,
                "version": version if reason is None else None,
                "words": cls.words,
                "options": cls.option_help,
                **({"paddle_lite": _paddle_lite_facts()} if name == "lite" else {}),
            }
        )
    return rows


def _paddle_lite_facts() -> dict[str, Any]:
    """The provisioned real Paddle-Lite: version, where it lives, targets it converts vs runs here."""
    from bisect_lite.lite_env import describe_lite_env, find_lite_env

    return describe_lite_env(find_lite_env())


REAL_KERNELS = ("lite:arm", "lite:opencl")  # the defaults where real ARM and OpenCL kernels run
HOST_DEFAULTS = ("paddle", "fp16")  # otherwise: Paddle Inference against the fp16 emulation of OpenCL storage


def check_spec(spec: str) -> None:
    """Parse an engine spec and validate its options now (exit 2 on a bad one), before anything runs."""
    create_engine(spec).close()


def resolve_engines(ref: str | None, target: str | None) -> tuple[str, str, str | None]:
    """The engines of `run`/`compare` and, when a default filled one in, a line saying which and why. Real ARM
    kernels (QEMU) against real OpenCL kernels when `bisect-lite setup lite` provisioned both and they work here;
    otherwise Paddle Inference against the fp16 emulation. Given specs are validated here, before any run."""
    for spec in (ref, target):
        if spec:
            check_spec(spec)
    if ref and target:
        return ref, target, None
    why_not = real_kernels_problem()
    pair = HOST_DEFAULTS if why_not else REAL_KERNELS
    chosen_target = target or pair[1]
    # Real ARM is the reference of a Paddle-Lite target; any other target (fp16, cmd:, onnxruntime) is held
    # against Paddle Inference, as before real kernels ran here.
    chosen_ref = ref or (REAL_KERNELS[0] if not why_not and chosen_target.startswith("lite:") else HOST_DEFAULTS[0])
    filled = " ".join(
        f"{flag} {spec}"
        for flag, spec, given in zip(("--ref", "--target"), (chosen_ref, chosen_target), (ref, target), strict=True)
        if not given
    )
    if why_not:
        note = f"defaults {filled}: real ARM and OpenCL kernels are not available here ({why_not})"
    elif {chosen_ref, chosen_target} == set(REAL_KERNELS):
        note = f"defaults {filled}: real ARM kernels under QEMU against real OpenCL kernels on this machine"
    else:
        note = f"defaults {filled}: Paddle Inference is the reference of a target that is not Paddle-Lite"
    return chosen_ref, chosen_target, note


def real_kernels_problem() -> str | None:
    """Why `lite:arm` and `lite:opencl` do not both run on real kernels here (None when they do)."""
    from bisect_lite.engines.lite import LiteEngine
    from bisect_lite.lite_env import find_lite_env

    env = find_lite_env()
    if env is None or not {"arm", "opencl"} <= set(env.runs):
        return "not provisioned: `bisect-lite setup lite`"
    for spec in REAL_KERNELS:
        engine = create_engine(spec)
        try:
            assert isinstance(engine, LiteEngine)
            reason = None if engine.runs_native_here else "no native runner recorded"
            reason = reason or engine.problem()
        finally:
            engine.close()
        if reason:
            return f"{spec}: {reason}"
    return None


def default_tolerance(target: str, declared: str | None = None) -> Tolerance:
    """fp16-suited tolerances for half-precision (or unknown) targets, tight ones for fp32 targets.
    `declared`: the precision the user declared (--target-precision), which wins over the engine's."""
    precision = declared or create_engine(target).declared_precision
    return FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE
