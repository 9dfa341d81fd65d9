"""Phase 1: the reference engine's value of every tensor (spilled to disk, batched under the memory budget)."""

from __future__ import annotations

from typing import Any

from bisect_lite.phases.context import RunContext


def compute_reference(ctx: RunContext, report: dict[str, Any]) -> None:
    ctx.events("phase", {"name": "reference", "detail": f"{ctx.ref.spec} on every tensor"})
    values = ctx.values
    if not values.complete:
        values.compute(
            ctx.model,
            ctx.ref,
            ctx.options.max_memory,
            on_batch=lambda i, total: ctx.events("batch", {"done": i, "total": total}),
        )
    else:
        values.load_flags()
    if ctx.precision is not None and ctx.emulation is not None:
        from bisect_lite.precision import Expectations

        expectations = Expectations(values.directory)
        if not expectations.complete:
            ctx.events("phase", {"name": "precision", "detail": f"{ctx.emulation.spec} on every tensor"})
            expectations.compute(
                ctx.model,
                values,
                ctx.emulation,
                on_batch=lambda i, total: ctx.events("batch", {"done": i, "total": total}),
            )
        ctx.expectations = expectations.errors
        from bisect_lite.precision import depth_curve

        report["precision"]["depth"] = depth_curve(ctx.model, expectations.errors)
        report["precision"]["expectation_seconds"] = round(expectations.seconds, 3)
        report["precision"]["tensors_with_expectation"] = len(expectations.errors)
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
