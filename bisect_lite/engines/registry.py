"""The engine registry: engine names users type, and how to build an engine from a spec string."""

from __future__ import annotations

import importlib
from typing import Any

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
}


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
            version = cls(EngineSpec(name, (), (("template", "true"),) if name == "cmd" else ())).version()
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
            }
        )
    return rows


HOST_HINT = "--ref paddle --target fp16 emulates OpenCL fp16 storage on this machine"


def resolve_engines(ref: str | None, target: str | None) -> tuple[str, str]:
    """Default to the Paddle-Lite pair (ARM reference, OpenCL target) when a Paddle-Lite runtime is reachable."""
    if ref and target:
        return ref, target
    from bisect_lite.errors import EngineUnavailable

    reason = engine_class("lite").unavailable_reason() if "lite" in ENGINES else "no Paddle-Lite engine installed"
    if reason is None:
        return ref or "lite:arm", target or "lite:opencl"
    if target:
        return "paddle", target
    usable = [row["name"] for row in list_engines() if row["available"]]
    raise EngineUnavailable(
        f"no --target given and no Paddle-Lite runtime is reachable ({reason}); available engines: "
        f"{', '.join(usable)}. Pass --ref/--target, e.g. {HOST_HINT}, or see `bisect-lite engines`"
    )
