"""Phase 2: the target on the whole model, twice: does it fail at all, and is it deterministic?"""

from __future__ import annotations

from typing import Any

import numpy as np

from bisect_lite.phases.context import RunContext
from bisect_lite.search import ProbeOutcome


def confirm_failure(ctx: RunContext, report: dict[str, Any]) -> tuple[ProbeOutcome, bool]:
    """The whole model's outcome and whether two target runs differ (fills report["full_model"])."""
    model = ctx.model
    ctx.events("phase", {"name": "target", "detail": f"{ctx.target.spec} on the whole model, twice"})
    expected = ctx.values.get_many(model.fetches)
    inputs = ctx.values.get_many(model.feeds)
    with ctx.phase("confirm"):
        first = ctx.target.run(model, inputs)
        second = ctx.target.run(model, inputs, use_cache=False)
    whole, cmp = ctx.judge(first, expected, list(model.fetches))
    report["full_model"] = {
        "comparison": cmp.to_dict() if cmp else None,
        "status": first.status,
        "message": first.message,
    }
    nondet = first.ok and second.ok and any(not same_values(first.outputs[k], second.outputs[k]) for k in model.fetches)
    report["target_nondeterministic"] = bool(nondet)
    if nondet:
        ctx.notes.append(
            "the target gives different results on two runs of the same model (non-deterministic "
            "kernel or memory reuse); the search uses the first run"
        )
    return whole, bool(nondet)


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise-equal results (NaN equals NaN: a deterministic NaN is not non-determinism)."""
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
