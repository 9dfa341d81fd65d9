"""Phase 1: the reference engine's value of every tensor (spilled to disk, batched under the memory budget).

The dump is deterministic for a model, its inputs, the reference engine and the budget (its batches): it is kept
in the cache (bisect_lite.cache) and a later run of the same four links it instead of running the reference again,
which matters when the reference is slow (Paddle-Lite under QEMU: 15-21 s per run of PP-OCRv5 det). The precision
model's expectations, measured on that dump with the fp16 emulation, are cached with it.
"""

from __future__ import annotations

import time
from typing import Any

from bisect_lite.fsutil import atomic_write_bytes
from bisect_lite.phases.context import RunContext


def compute_reference(ctx: RunContext, report: dict[str, Any]) -> None:
    ctx.events("phase", {"name": "reference", "detail": f"{ctx.ref.spec} on every tensor"})
    values, cache = ctx.values, ctx.ref.cache
    key = cache.reference_key(ctx.model, ctx.ref.cache_key, ctx.inputs, ctx.options.max_memory)
    section = report["reference"]
    if values.complete:
        section["dump"] = "resumed"  # the interrupted run's own dump
    else:
        t0 = time.perf_counter()
        meta = cache.get_reference(key, values.directory)
        if meta is not None:
            values.load()
        if values.complete and meta is not None:
            loaded = time.perf_counter() - t0
            seconds = float(meta.get("seconds", 0.0))
            section.update(
                dump="cache",
                seconds=round(seconds, 3),
                runs=int(meta.get("runs", 0)),
                load_seconds=round(loaded, 3),
                saved_seconds=round(max(seconds - loaded, 0.0), 3),
            )
        else:
            runs = ctx.ref.runs
            values.compute(
                ctx.model,
                ctx.ref,
                ctx.options.max_memory,
                on_batch=lambda i, total: ctx.events("batch", {"done": i, "total": total}),
            )
            seconds = time.perf_counter() - t0
            section.update(dump="computed", seconds=round(seconds, 3), runs=ctx.ref.runs - runs)
            if cache.use_results:  # not with --no-cache
                t1 = time.perf_counter()
                cache.put_reference(key, values.directory, {"seconds": seconds, "runs": ctx.ref.runs - runs})
                section["cache_seconds"] = round(time.perf_counter() - t1, 3)
    if ctx.precision is not None and ctx.emulation is not None:
        _expectations(ctx, report, cache.expectations_key(key, ctx.emulation.cache_key))
    report["reference_nondeterministic"] = bool(values.nondeterministic)
    if values.unobservable:
        ctx.notes.append(
            f"the reference cannot return {len(values.unobservable)} tensors "
            f"({', '.join(values.unobservable[:4])}); probes never compare them"
        )
    if values.nondeterministic:
        ctx.notes.append(
            f"the reference differs between two runs at {len(values.nondeterministic)} tensors "
            f"(first: {values.nondeterministic[0]}); its values are taken from the first run"
        )


def _expectations(ctx: RunContext, report: dict[str, Any], key: str) -> None:
    """The precision model's expected error of every tensor (the fp16 emulation against the dump), cached by the
    dump's key and the emulation's."""
    from bisect_lite.precision import Expectations, depth_curve

    assert ctx.emulation is not None
    values, cache = ctx.values, ctx.ref.cache
    expectations = Expectations(values.directory)
    cached = False
    if not expectations.complete:
        body = cache.get_expectations(key)
        if body is not None:
            atomic_write_bytes(expectations.file, body)
            expectations = Expectations(values.directory)
            cached = expectations.complete
    if not expectations.complete:
        ctx.events("phase", {"name": "precision", "detail": f"{ctx.emulation.spec} on every tensor"})
        expectations.compute(
            ctx.model,
            values,
            ctx.emulation,
            on_batch=lambda i, total: ctx.events("batch", {"done": i, "total": total}),
        )
        cache.put_expectations(key, expectations.file.read_bytes())
    ctx.expectations = expectations.errors
    precision = report["precision"]
    precision["depth"] = depth_curve(ctx.model, expectations.errors)
    precision["expectation_seconds"] = round(expectations.seconds, 3)
    precision["tensors_with_expectation"] = len(expectations.errors)
    if cached:
        precision["expectations_from_cache"] = True
        reference = report["reference"]
        reference["saved_seconds"] = round(reference.get("saved_seconds", 0.0) + expectations.seconds, 3)
