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


HOST_HINT = "--ref paddle --target fp16 emulates OpenCL fp16 storage on this machine"


def resolve_engines(ref: str | None, target: str | None) -> tuple[str, str]:
    """Default to the Paddle-Lite pair (ARM reference, OpenCL target) when a Paddle-Lite runtime is reachable."""
    if ref and target:
        return ref, target
    from bisect_lite.errors import EngineUnavailable

    reason = create_engine("lite:opencl").problem()
    if reason is None:
        return ref or "lite:arm", target or "lite:opencl"
    if target:
        return "paddle", target
    usable = [row["name"] for row in list_engines() if row["available"]]
    raise EngineUnavailable(
        f"no --target given and no Paddle-Lite runtime is reachable ({reason}); available engines: "
        f"{', '.join(usable)}. Pass --ref/--target, e.g. {HOST_HINT}, or see `bisect-lite engines`"
    )


def default_tolerance(target: str, declared: str | None = None) -> Tolerance:
    """fp16-suited tolerances for half-precision (or unknown) targets, tight ones for fp32 targets.
    `declared`: the precision the user declared (--target-precision), which wins over the engine's."""
    precision = declared or create_engine(target).declared_precision
    return FP32_TOLERANCE if precision == "fp32" else FP16_TOLERANCE
