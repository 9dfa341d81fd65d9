"""Phase 2: the target on the whole model, twice: does it fail at all, is it deterministic, and where does it start
to go wrong?

The first run is the plain model: its outputs give the whole-model verdict. When the target's values do not depend
on what it fetches (the multi-cut search's condition, phases/observe.py), the second run fetches every tensor that
survives its fusion: its outputs against the first run's show determinism, and every tensor judged (streamed from
disk, one at a time) names the first op beyond the judgement, which the search then confirms with one plain probe.
A program of unknown nature (`cmd:`) is tested by the same run: bit-identical outputs show both determinism and
that fetching more does not change what it computes; outputs that changed leave it to the plain binary search,
and one more plain run after it tells non-determinism from fetch-dependent values (localisation keeps the binary
search's bound).
The tensors observed in one run stay under --max-memory; more are observed in several runs, and the report says
how many and why. Other targets run the plain model twice; under the precision model every tensor is then judged
on further runs, one per batch of the reference dump.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np

from bisect_lite.compare import Comparison, Scratch, compare_tensor, quick_compare
from bisect_lite.engines.base import RunResult
from bisect_lite.engines.runner import Observed
from bisect_lite.model import Model
from bisect_lite.phases.context import RunContext
from bisect_lite.precision import DeepCheck, deep_check, fused_away
from bisect_lite.preflight import check_target_runs, garbage_output, nonfinite_warnings, one_line
from bisect_lite.reference import estimated_bytes, plan_batches
from bisect_lite.search import ProbeOutcome, Status, expected_probes

# The detail of a whole-model outcome whose blame comes from judging every tensor: the search checks it first.
EVERY_TENSOR = "every tensor judged"


def confirm_failure(ctx: RunContext, report: dict[str, Any]) -> tuple[ProbeOutcome, bool]:
    """The whole model's outcome and whether two target runs differ (fills report["full_model"])."""
    model = ctx.model
    fetches = list(model.fetches)
    ctx.events("phase", {"name": "target", "detail": f"{ctx.target.spec} on the whole model, twice"})
    expected = ctx.values.get_many(fetches)
    inputs = ctx.values.get_many(model.feeds)
    report.setdefault("warnings", []).extend(nonfinite_warnings(expected, inputs, model.params))
    with ctx.phase("confirm"):
        first = ctx.target.run(model, inputs)
    whole, cmp = ctx.judge(first, expected, fetches)
    report["full_model"] = {
        "comparison": cmp.to_dict() if cmp else None,
        "status": first.status,
        "message": first.message,
    }
    if first.ok and observes_every_tensor(ctx):
        observed = observe_every_tensor(ctx, report, whole, first)
        if observed is not None:
            return observed
    # A crash has no values to compare: no second run.
    with ctx.phase("confirm"):
        second = ctx.target.run(model, inputs, use_cache=False) if first.ok else None
    if whole.status == Status.CRASH or (whole.status == Status.FAIL and ctx.options.strategy == "placement"):
        with ctx.phase("setup"):
            check_setup(ctx, whole)
    check = None
    if whole.status in (Status.PASS, Status.FAIL) and ctx.precision is not None:
        whole, check = check_every_tensor(ctx, report, whole)
    if whole.status == Status.FAIL and ctx.options.strategy != "placement":
        # A wrong whole model: a tensor judged right proves the engine works; else any passing probe of the
        # search will, and the check runs only when none did (phases/search.py), before op 0 is blamed.
        ctx.setup_pending = check is None or not proves_engine_works(ctx, check)
    differ = []
    if second is not None and second.ok:
        differ = [k for k in fetches if not same_values(first.outputs[k], second.outputs[k])]
    _note_nondeterminism(ctx, report, differ)
    return whole, bool(differ)


def observes_every_tensor(ctx: RunContext) -> bool:
    """Whether the target's second whole-model run may fetch every tensor: when its search may observe several
    cuts per run (the same condition; --search binary turns both off), and under --search auto to test a target
    of unknown nature."""
    from bisect_lite.phases.observe import choose_strategy

    return tests_fetch_invariance(ctx) or choose_strategy(ctx, Status.FAIL)[0] == "multicut"


def tests_fetch_invariance(ctx: RunContext) -> bool:
    """A target of unknown nature (a `cmd:` program) under --search auto: the every-tensor run tests it."""
    return ctx.options.search == "auto" and ctx.target.engine.fetch_invariant is None


# ---- a fetch-invariant target: the second run returns every tensor --------------------------------------------------
def observe_every_tensor(
    ctx: RunContext, report: dict[str, Any], whole: ProbeOutcome, first: RunResult
) -> tuple[ProbeOutcome, bool] | None:
    """The second whole-model run fetches every tensor that survives the target's fusion (several runs when they
    exceed --max-memory): its outputs against the first run's show determinism, every tensor judged names the
    first op beyond the judgement. None when observing would take more runs than a search, or crashed (the plain
    runs then decide: a target that crashes only when asked for more is not what the search assumes)."""
    model, budget = ctx.model, ctx.options.max_memory
    fetches = list(model.fetches)
    hidden = set(fused_away(ctx.model, ctx.target))
    inner = [t for _, t in model.data_tensors() if t in ctx.values and t not in hidden and t not in model.fetches]
    names = [*inner, *fetches]  # the outputs last, so one file holds them
    total = sum(estimated_bytes(model, t) for t in names)
    batches = plan_batches(model, names, budget)
    if len(batches) > expected_probes(len(model.ops)):
        # Localisation (this first run, the observation, one confirming probe) must stay within the binary
        # search's ceil(log2 N) + 2: far more tensors than the budget holds are left to the multi-cut search.
        ctx.notes.append(
            f"every-tensor check skipped: the {len(names)} tensors take {total / (1 << 20):.0f} MB, "
            f"{len(batches)} runs under --max-memory {budget / (1 << 20):.0f} MB, more than a search needs"
        )
        return None
    ctx.events("phase", {"name": "target", "detail": f"{ctx.target.spec} observing every tensor"})
    with ctx.phase("confirm"):
        observed = ctx.target.observe(ctx.model, batches, ctx.values, "every")
    testing = tests_fetch_invariance(ctx)
    if observed.crashed:
        observed.remove()
        if testing:
            ctx.fetch_invariance_shown = False
        ctx.notes.append(
            f"the target crashed when asked for every tensor ({one_line(observed.crashed)}); the plain model decides"
        )
        return None
    try:
        check = judge_every_tensor(ctx, observed)
        outputs = observed.batches[-1][1]
        differ = [f for f in fetches if not same_values(first.outputs[f], outputs[f])]
    finally:
        observed.remove()
    check.runs = len(batches)
    memory = None
    if len(batches) > 1:
        memory = (
            f"the {len(names)} observed tensors take {total / (1 << 20):.0f} MB, more than --max-memory "
            f"{budget / (1 << 20):.0f} MB: observed in {len(batches)} runs"
        )
        ctx.notes.append(f"every-tensor check: {memory}; raise --max-memory to observe them in one run")
    every = every_tensor_section(ctx, report, check)
    every.update(observed=True, batches=len(batches), observed_mb=round(total / (1 << 20), 1), memory=memory)
    if testing:
        ctx.fetch_invariance_shown = not differ
        every["fetch_invariance"] = "changed outputs" if differ else "bit-identical outputs"
        if differ:
            ctx.undecided_determinism = {f: first.outputs[f] for f in fetches}
            return fetch_dependent(ctx, report, whole, check, differ[0])
    _note_nondeterminism(ctx, report, differ, observing=True)
    outcome = outcome_of_every_tensor(ctx, whole, check)
    if outcome.status is Status.FAIL and not proves_engine_works(ctx, check):
        with ctx.phase("setup"):
            check_setup(ctx, whole)
    if outcome.detail == EVERY_TENSOR and outcome.blame is not None:
        ctx.observed_blame = outcome.blame
    return outcome, bool(differ)


def fetch_dependent(
    ctx: RunContext, report: dict[str, Any], whole: ProbeOutcome, check: DeepCheck, output: str
) -> tuple[ProbeOutcome, bool]:
    """A program of unknown nature whose outputs changed when it fetched every tensor: it computes differently
    when asked for more (a fusion that fetched tensors break) or is non-deterministic. The binary search's plain
    probes go on from the first run, and a third run after the search tells which (decide_determinism). Under the
    precision model the tensors judged point the search at the first one beyond it, checked by two plain probes as
    on other targets; under tolerances they are not used."""
    report["target_nondeterministic"] = None  # decided after the search
    ctx.notes.append(
        f"the target's outputs changed when the second whole-model run fetched every tensor (first: {output}): it "
        "computes differently when asked for more tensors, or it is non-deterministic; the search probes plain "
        "cuts (binary) from the first run"
    )
    outcome = whole if ctx.precision is None else outcome_of_every_tensor(ctx, whole, check)
    if outcome.status is Status.FAIL and not proves_engine_works(ctx, check):
        if ctx.options.strategy == "placement":
            with ctx.phase("setup"):
                check_setup(ctx, whole)
        else:
            ctx.setup_pending = True
    return outcome, False


def decide_determinism(ctx: RunContext, report: dict[str, Any]) -> bool:
    """Whether the target is non-deterministic: as the whole-model runs showed it, or, where they left it open (a
    program whose outputs changed when it fetched every tensor), by one more plain run of the whole model, counted
    under `determinism` (it does not localise: it labels the run)."""
    first = ctx.undecided_determinism
    if first is None:
        return bool(report.get("target_nondeterministic"))
    ctx.undecided_determinism = None
    model = ctx.model
    ctx.events("phase", {"name": "target", "detail": f"{ctx.target.spec} on the whole model once more (determinism)"})
    with ctx.phase("determinism"):
        again = ctx.target.run(model, ctx.values.get_many(model.feeds), use_cache=False)
    if not again.ok:
        ctx.notes.append(f"the determinism check's run failed ({one_line(again.message)}); determinism not decided")
        return False
    differ = [k for k in model.fetches if not same_values(first[k], again.outputs[k])]
    _note_nondeterminism(ctx, report, differ)
    if not differ:
        ctx.notes.append(
            "a third, plain run of the whole model matched the first: the target is deterministic, and what it "
            "computes depends on which tensors it fetches"
        )
    return bool(differ)


def proves_engine_works(ctx: RunContext, check: DeepCheck) -> bool:
    """An op's output judged right on the target shows the engine runs here: no setup check is needed."""
    producers = ctx.model.producers
    return check.comparison is not None and any(m.passed and m.name in producers for m in check.comparison.tensors)


# ---- the setup check, and every tensor on other targets -----------------------------------------------------
def check_setup(ctx: RunContext, whole: ProbeOutcome) -> None:
    """Before any search: a target that cannot run every single op of the model alone, or answers each with
    garbage (wrong shapes, errors as large as the values), is a setup error, not the fault of op 0. Counted apart
    (phase "setup"): these runs check the environment, they do not localise."""

    def wrong(result: RunResult, sub: Model) -> str | None:
        if whole.status == Status.CRASH or any(f not in ctx.values for f in sub.fetches):
            return None if result.ok else result.message
        feeds = ctx.values.get_many(sub.feeds)
        outcome, single = ctx.judge(result, ctx.values.get_many(sub.fetches), list(sub.fetches), sub, feeds)
        return None if outcome.status == Status.PASS else garbage_output(single)

    check_target_runs(ctx.target, ctx.model, ctx.values.get_many, ctx.values.__contains__, wrong)


def check_every_tensor(ctx: RunContext, report: dict[str, Any], whole: ProbeOutcome) -> tuple[ProbeOutcome, DeepCheck]:
    """Judge every dumped tensor under the precision model on one target run per batch of the reference dump (a
    saturating softmax or a normalisation can hide a kernel fault at the output). FAIL blames the earliest tensor
    beyond precision: the search starts there."""
    batches = ctx.values.batches(skip=fused_away(ctx.model, ctx.target))
    ctx.events("phase", {"name": "target", "detail": "judging every tensor under the precision model"})
    with ctx.phase("confirm"):
        observed = ctx.target.observe(ctx.model, batches, ctx.values, "every")
    try:
        check = judge_every_tensor(ctx, observed)
    finally:
        observed.remove()
    check.runs = len(batches)
    # the whole model ran; a crash of a cut is not a numeric finding: the search deals with it
    check.crashed = observed.crashed[:300]
    every_tensor_section(ctx, report, check)
    return outcome_of_every_tensor(ctx, whole, check), check


# ---- judging every tensor ------------------------------------------------------------------------------------------
def judge_every_tensor(ctx: RunContext, observed: Observed) -> DeepCheck:
    """Every observed tensor judged as the probes judge it, one at a time: by the precision model (which first
    measures how quiet the target is, then holds for the whole run), else by the tolerances."""
    assert ctx.options.compare is not None
    if ctx.precision is not None:
        check = deep_check(
            ctx.model, ctx.values, observed.stream(), ctx.precision, ctx.expectations, ctx.options.compare
        )
        if check.noise_scale < 1.0:
            # From here on (search, isolation) the same scaled expectations judge, so the probes agree with this.
            ctx.precision = replace(ctx.precision, noise_scale=check.noise_scale)
        return check
    config, producers = ctx.options.compare, ctx.model.producers
    check, cmp, scratch = DeepCheck(), Comparison(), Scratch()
    for name, out in observed.stream():
        ref = ctx.values[name]
        cmp.tensors.append(quick_compare(name, ref, out, config, scratch) or compare_tensor(name, ref, out, config))
    check.checked, check.comparison = len(cmp.tensors), cmp
    check.depth = [
        (producers[m.name], m.rel_l2)
        for m in cmp.tensors
        if m.rel_l2 is not None and math.isfinite(m.rel_l2) and m.name in producers
    ]
    if not cmp.passed:
        check.failing = cmp.failing
        check.blame = min(producers.get(n, len(ctx.model.ops)) for n in cmp.failing)
    return check


def every_tensor_section(ctx: RunContext, report: dict[str, Any], check: DeepCheck) -> dict[str, Any]:
    """report.json full_model.every_tensor (with the depth curve), and the precision section's count and noise scale."""
    by = "precision" if ctx.precision is not None else "tolerance"
    section = {
        "checked": check.checked,
        "runs": check.runs,
        f"beyond_{by}": check.failing,
        "crashed": check.crashed or None,
        "comparison": check.comparison.to_dict() if check.comparison and check.failing else None,
        "depth": check.depth,  # (op index, the target's rel L2) of every tensor: the error-vs-depth plot draws it
    }
    report["full_model"]["every_tensor"] = section
    if ctx.precision is None:
        return section
    report["precision"]["tensors_checked"] = check.checked
    if check.noise_scale < 1.0:
        report["precision"]["noise_scale"] = check.noise_scale
        ctx.notes.append(
            f"the target is much quieter than fp16 storage rounding (median error well under the emulation's): "
            f"expected errors scaled by {check.noise_scale:.3g} (floors kept); declare --target-precision fp32 if "
            "it computes in fp32"
        )
    return section


def outcome_of_every_tensor(ctx: RunContext, whole: ProbeOutcome, check: DeepCheck) -> ProbeOutcome:
    """The whole model's outcome given every tensor judged. Under the precision model a tensor beyond it fails the
    run even when the outputs pass (they can hide it); under tolerances the outputs decide and inner differences
    are noted. FAIL blames the earliest failing tensor: the search starts there."""
    if check.blame is None or whole.status is Status.CRASH:
        return whole
    first = f"first: {check.failing[0]}, made by op {check.blame}"
    if whole.status == Status.PASS:
        if ctx.precision is None:
            ctx.notes.append(
                f"the outputs are within tolerance but {len(check.failing)} inner tensors are not ({first}); "
                "the verdict follows the outputs"
            )
            return whole
        ctx.notes.append(
            f"the outputs are within the precision model but {len(check.failing)} inner tensors are beyond it "
            f"({first}); the search starts there"
        )
    blame = check.blame if whole.blame is None else min(check.blame, whole.blame)
    return ProbeOutcome(Status.FAIL, blame=blame, detail=EVERY_TENSOR)


def _note_nondeterminism(ctx: RunContext, report: dict[str, Any], differ: list[str], observing: bool = False) -> None:
    report["target_nondeterministic"] = bool(differ)
    if not differ:
        return
    why = "non-deterministic kernel or memory reuse"
    if observing:
        why += ", or values that depend on what the run fetches (the second run returned every tensor)"
    ctx.notes.append(
        f"the target gives different results on two runs of the same model ({why}; first differing output: "
        f"{differ[0]}); the search uses the first run"
    )


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise-equal results (NaN equals NaN: a deterministic NaN is not non-determinism)."""
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
