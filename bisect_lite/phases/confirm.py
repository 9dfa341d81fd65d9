"""Phase 2: the target on the whole model, twice: does it fail at all, and is it deterministic?"""

from __future__ import annotations

from typing import Any

import numpy as np

from bisect_lite.engines.base import RunResult
from bisect_lite.model import Model
from bisect_lite.phases.context import RunContext
from bisect_lite.preflight import check_target_runs, garbage_output, nonfinite_warnings
from bisect_lite.search import ProbeOutcome, Status

# The detail of a whole-model outcome whose blame comes from judging every tensor: the search checks it first.
EVERY_TENSOR = "every tensor judged"


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
    if whole.status in (Status.CRASH, Status.FAIL):
        # Before any search: a target that cannot run every single op of the model alone, or answers each with
        # garbage (wrong shapes, errors as large as the values), is a setup error, not the fault of op 0.
        def wrong(result: RunResult, sub: Model) -> str | None:
            if whole.status == Status.CRASH or any(f not in ctx.values for f in sub.fetches):
                return None if result.ok else result.message
            feeds = ctx.values.get_many(sub.feeds)
            outcome, single = ctx.judge(result, ctx.values.get_many(sub.fetches), list(sub.fetches), sub, feeds)
            return None if outcome.status == Status.PASS else garbage_output(single)

        # Counted apart: these runs check the environment, they do not localise (issue 10's confirm + search bound).
        with ctx.phase("setup"):
            check_target_runs(ctx.target, model, ctx.values.get_many, ctx.values.__contains__, wrong)
    report.setdefault("warnings", []).extend(nonfinite_warnings(expected, inputs, model.params))
    report["full_model"] = {
        "comparison": cmp.to_dict() if cmp else None,
        "status": first.status,
        "message": first.message,
    }
    if whole.status in (Status.PASS, Status.FAIL) and ctx.precision is not None:
        whole = check_every_tensor(ctx, report, whole)
    nondet = first.ok and second.ok and any(not same_values(first.outputs[k], second.outputs[k]) for k in model.fetches)
    report["target_nondeterministic"] = bool(nondet)
    if nondet:
        ctx.notes.append(
            "the target gives different results on two runs of the same model (non-deterministic "
            "kernel or memory reuse); the search uses the first run"
        )
    return whole, bool(nondet)


def check_every_tensor(ctx: RunContext, report: dict[str, Any], whole: ProbeOutcome) -> ProbeOutcome:
    """Judge every dumped tensor under the precision model (a saturating softmax or a normalisation can hide a
    kernel fault at the output) and measure how quiet the target is, which then holds for the whole run. FAIL
    blames the earliest tensor beyond precision: the search starts there."""
    from dataclasses import replace

    from bisect_lite.precision import deep_check, fused_away

    hidden = fused_away(ctx.model, ctx.target)
    ctx.events("phase", {"name": "target", "detail": "judging every tensor under the precision model"})
    assert ctx.precision is not None and ctx.options.compare is not None
    with ctx.phase("confirm"):
        deep = deep_check(
            ctx.model, ctx.values, ctx.target, ctx.precision, ctx.expectations, ctx.options.compare, skip=hidden
        )
    report["full_model"]["every_tensor"] = {
        "checked": deep.checked,
        "runs": deep.runs,
        "beyond_precision": deep.failing,
        "crashed": deep.crashed or None,
        "comparison": deep.comparison.to_dict() if deep.comparison and deep.failing else None,
    }
    report["precision"]["tensors_checked"] = deep.checked
    report["precision"]["target_depth"] = deep.depth
    if deep.noise_scale < 1.0:
        # From here on (search, isolation) the same scaled expectations judge, so the probes agree with this check.
        ctx.precision = replace(ctx.precision, noise_scale=deep.noise_scale)
        report["precision"]["noise_scale"] = deep.noise_scale
        ctx.notes.append(
            f"the target is much quieter than fp16 storage rounding (median error well under the emulation's): "
            f"expected errors scaled by {deep.noise_scale:.3g} (floors kept); declare --target-precision fp32 if "
            "it computes in fp32"
        )
    if deep.blame is None:
        return whole
    if whole.status == Status.PASS:
        ctx.notes.append(
            f"the outputs are within the precision model but {len(deep.failing)} inner tensors are beyond it "
            f"(first: {deep.failing[0]}, made by op {deep.blame}); the search starts there"
        )
    blame = deep.blame if whole.blame is None else min(deep.blame, whole.blame)
    return ProbeOutcome(Status.FAIL, blame=blame, detail=EVERY_TENSOR)


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise-equal results (NaN equals NaN: a deterministic NaN is not non-determinism)."""
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
