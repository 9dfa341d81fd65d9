"""Phase 3: find the first failing op (or fused group) by probing cut models, or by moving ops off the GPU."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from bisect_lite.errors import InputError
from bisect_lite.fsutil import atomic_write_text
from bisect_lite.model import frontier, truncate
from bisect_lite.model.fusion import (
    FusedGroup,
    OptimizedOp,
    cpu_placement_config,
    cut_positions,
    describe_group,
    fusion_groups,
    group_of,
    optimized_ops,
    placement_misses,
)
from bisect_lite.phases.confirm import EVERY_TENSOR, check_setup
from bisect_lite.phases.context import STATUS_WORD, WORD_STATUS, Probe, RunContext
from bisect_lite.phases.observe import locate
from bisect_lite.search import ProbeOutcome, Status, bisect_first_failure, expected_probes


def probe(ctx: RunContext, start: int, cut: int) -> Probe:
    """Run the target on the model cut after op `cut` (from op `start`, fed with reference values) and judge it."""
    model = ctx.model
    targets = [t for t in frontier(model, cut) if model.producers.get(t, -1) >= start and t in ctx.values]
    if not targets:
        return Probe(start, cut, [], ProbeOutcome(Status.SKIP, detail="nothing to fetch"), None, 0.0)
    sub = ctx.segment_model(start, targets)
    t0 = time.perf_counter()
    feeds = ctx.values.get_many(sub.feeds)
    result = ctx.target.run(sub, feeds)
    outcome, cmp = ctx.judge(result, ctx.values.get_many(targets), targets, sub, feeds)
    return ctx.record(Probe(start, cut, targets, outcome, cmp, time.perf_counter() - t0, result.message))


def replayed(ctx: RunContext, start: int) -> dict[int, ProbeOutcome]:
    """Probes of this segment finished by an earlier, interrupted run (positions relative to `start`)."""
    known: dict[int, ProbeOutcome] = {}
    seen = {(p.segment, p.cut) for p in ctx.probes}  # made in this session (e.g. the whole segment)
    for entry in ctx.journal.find(type="probe", segment=start):
        old = Probe.from_journal(entry)
        known[old.cut - start] = old.outcome
        if (start, old.cut) not in seen:
            ctx.probes.append(old)
    return known


def segment_outcome(ctx: RunContext, start: int) -> ProbeOutcome:
    """The outcome of the whole segment from op `start` on (journalled, so --resume does not repeat it)."""
    n = len(ctx.model.ops)
    for entry in ctx.journal.find(type="probe", segment=start, cut=n - 1):
        return ProbeOutcome(WORD_STATUS[entry["verdict"]], blame=entry.get("blame"))
    return probe(ctx, start, n - 1).outcome


def search_segment(ctx: RunContext, start: int, whole: ProbeOutcome) -> dict[str, Any] | None:
    """Find the first failing op at or after `start`, given the outcome of the whole segment."""
    n = len(ctx.model.ops)
    hunted = whole.status
    known = replayed(ctx, start)
    # The whole model's plain run is a probe of the last cut. A blame from every tensor observed on the second
    # whole-model run is an observation (like a run of many cuts): the search confirms it with a plain probe.
    observed_blame = ctx.observed_blame if start == 0 else None
    known.setdefault(n - 1 - start, whole if observed_blame is None else ProbeOutcome(whole.status))

    def relative(outcome: ProbeOutcome) -> ProbeOutcome:
        """Blame is an op index; the search works on positions relative to `start`."""
        if outcome.blame is None or outcome.blame < start:
            return outcome
        return ProbeOutcome(outcome.status, blame=outcome.blame - start, detail=outcome.detail)

    def probe_at(pos: int) -> ProbeOutcome:
        return relative(probe(ctx, start, start + pos).outcome)

    known = {p: relative(o) for p, o in known.items()}
    cuts = None
    if ctx.groups:
        # Cut only where the target's fused groups end: a cut inside a group undoes the fusion.
        cuts = sorted({p - start for p in cut_positions(ctx.groups, start)} | {n - 1 - start})
        known = {p: o for p, o in known.items() if p in cuts}
    ctx.events(
        "search", {"segment": start, "ops": n - start, "expected": expected_probes(len(cuts or range(n - start)))}
    )
    observed: dict[int, ProbeOutcome] = {}
    if observed_blame is not None:
        observed = observed_bracket(observed_blame, cuts or range(n))
    elif whole.detail == EVERY_TENSOR and whole.blame is not None and whole.blame >= start:
        check_observed_blame(whole.blame - start, cuts or range(n - start), probe_at, known)
    result = locate(ctx, start, hunted, probe_at, known, cuts, observed)
    if ctx.setup_pending and start == 0:
        ctx.setup_pending = False
        if not any(p.outcome.status is Status.PASS for p in ctx.probes if p.segment == 0):
            with ctx.phase("setup"):
                check_setup(ctx, whole)
    ctx.notes.extend(result.contradictions)
    ctx.notes.extend(getattr(result, "notes", []) or [])
    if result.first_bad is None:
        ctx.notes.append(f"segment from op {start}: the search could not locate a failing op")
        return None
    culprit = start + result.first_bad
    lo, hi = (start + result.culprit_range[0], start + result.culprit_range[1])
    info: dict[str, Any] = {
        "index": lo,
        "ops": list(range(lo, hi + 1)),
        "segment": start,
        "status": STATUS_WORD[hunted],
        "flaky": result.flaky,
        "linear_refined": result.linear_refined,
    }
    if result.ambiguous:
        a, b = (start + result.ambiguous[0], start + result.ambiguous[1])
        info["ambiguous"] = [a, b]
        ctx.notes.append(f"probes between ops {a} and {b} could not be evaluated; the culprit is in that range")
    if hi > lo and ctx.groups:
        group = group_of(ctx.groups, culprit)
        # The bracket between two cuts holds the culprit's fused group, and possibly ops of other groups that sit
        # between the group's own ops (cuts there would split it): blame the group that ends at the failing cut.
        if group is not None and group.last == hi and set(group.ops) <= set(info["ops"]) and len(group.ops) > 1:
            info["index"], info["ops"] = group.ops[0], list(group.ops)
            info["group"] = describe_group(ctx.model, group)
    info["fusion_note"] = fusion_change(ctx, culprit)
    return info


def observed_bracket(blame: int, cuts: Sequence[int]) -> dict[int, ProbeOutcome]:
    """What every tensor observed says of the cuts around the first op beyond the judgement (op `blame`): the cut
    below it passes (its frontier was made before that op) and the cut holding it fails."""
    below = max((c for c in cuts if c < blame), default=None)
    at = min((c for c in cuts if c >= blame), default=max(cuts))
    observed = {at: ProbeOutcome(Status.FAIL, blame=blame, detail=EVERY_TENSOR)}
    if below is not None:
        observed[below] = ProbeOutcome(Status.PASS)
    return observed


def check_observed_blame(
    blame: int, cuts: Sequence[int], probe_at: Callable[[int], ProbeOutcome], known: dict[int, ProbeOutcome]
) -> None:
    """The full-model check judged every tensor and found the first one beyond precision, made by op `blame`.
    Two plain probes test that answer under truncation: the cut below its op and the cut holding it. When the
    first passes and the second fails the search has its bracket; otherwise it goes on from what they showed."""
    below = max((c for c in cuts if c < blame), default=None)
    at = min((c for c in cuts if c >= blame), default=None)
    for cut in (below, at):
        if cut is not None and cut not in known:
            known[cut] = probe_at(cut)


def placement_search(ctx: RunContext, whole: ProbeOutcome) -> dict[str, Any] | None:
    """Keep the graph whole; move the first k OpenCL ops to the CPU (OPENCL_MEMORY_CONFIG_FILE) and binary-search
    the smallest k that fixes the output: op k is the culprit. No cut changes any fusion."""
    engine = ctx.target.engine
    place = getattr(engine, "place_on_cpu", None)
    if place is None or getattr(engine, "place", None) != "opencl":
        raise InputError("--strategy placement needs a Paddle-Lite OpenCL target (e.g. --target lite:opencl)")
    model = ctx.model
    optimized = ctx.target.optimized_program(model)
    assert optimized is not None
    gpu = [op for op in optimized_ops(optimized) if op.place == "opencl"]
    if not gpu:
        ctx.notes.append("the target places no op on OpenCL: nothing to move back to the CPU")
        return None
    config_dir = ctx.options.out / "placement"
    config_dir.mkdir(exist_ok=True)
    expected = ctx.values.get_many(model.fetches)
    inputs = ctx.values.get_many(model.feeds)

    def original_op(op: OptimizedOp) -> int | None:
        """The last original op whose output this kernel writes (None: it writes none)."""
        return max((model.producers[t] for t in op.outputs if t in model.producers), default=None)

    def probe_first(k: int) -> ProbeOutcome:
        moved = gpu[: k + 1]
        config = config_dir / f"cpu-first-{k + 1}.txt"
        # Rules name tensors of the program without memory reuse: the names opt's placement pass matches.
        atomic_write_text(config, cpu_placement_config(moved))
        place(config)
        t0 = time.perf_counter()
        try:
            placed = ctx.target.optimized_program(model)
            # Check in the re-optimised program that every op really left OpenCL (users report that it
            # sometimes does not): a probe whose placement did not take effect tells nothing.
            still = placement_misses(moved, placed) if placed is not None else ["no optimised program to check"]
            if still:
                message = f"skipped: placement did not take effect for {len(still)} op(s): {', '.join(still[:3])}"
                outcome, cmp = ProbeOutcome(Status.SKIP, detail=message), None
                ctx.notes.append(f"placement probe moving the first {k + 1} OpenCL ops: {message}")
            else:
                result = ctx.target.run(model, inputs)
                judged, cmp = ctx.judge(result, expected, list(model.fetches))
                # Hunted status: "fixed". FAIL here means the output is right once ops 0..k left the GPU.
                fixed = judged.status == Status.PASS
                outcome = ProbeOutcome(Status.FAIL if fixed else Status.PASS)
                message = f"{k + 1} OpenCL kernels moved to the CPU: " + (
                    "output fixed" if fixed else (result.message or "still wrong")
                )
        finally:
            place(None)
        seconds = time.perf_counter() - t0
        # `cut`: the original op of the last moved kernel, so that the probe log and the error-vs-depth plot
        # place the probe where the moved prefix ends (k itself counts OpenCL kernels, not ops).
        last = original_op(moved[-1])
        ctx.record(Probe(-1, k if last is None else last, list(moved[-1].outputs), outcome, cmp, seconds, message))
        return outcome

    ctx.events("search", {"segment": -1, "ops": len(gpu), "expected": expected_probes(len(gpu))})
    everything = probe_first(len(gpu) - 1)
    if everything.status != Status.FAIL:
        ctx.notes.append(
            f"moving all {len(gpu)} OpenCL ops to the CPU does not fix the output "
            "(or the placement did not take effect): the fault is not in one OpenCL kernel"
        )
        return None
    result = bisect_first_failure(len(gpu), probe_first, failing=Status.FAIL, known={len(gpu) - 1: everything})
    ctx.notes.extend(result.contradictions)
    if result.first_bad is None:
        return None
    culprit_op = gpu[result.first_bad]
    group = next(
        (g for g in ctx.groups or [] if g.optimized and set(g.optimized.outputs) & set(culprit_op.outputs)), None
    )
    if group is None:
        producers = [model.producers[t] for t in culprit_op.outputs if t in model.producers]
        if not producers:
            ctx.notes.append(f"the culprit {culprit_op.type} -> {culprit_op.outputs} has no original op")
            return None
        ops = [min(producers)]
    else:
        ops = group.ops
    ctx.notes.append(
        f"placement search: moving OpenCL op #{result.first_bad} ({culprit_op.type} -> "
        f"{', '.join(culprit_op.outputs)}) and the ones before it to the CPU fixes the output"
    )
    info: dict[str, Any] = {
        "index": ops[0],
        "ops": ops,
        "segment": 0,
        "status": STATUS_WORD[whole.status],
        "flaky": result.flaky,
        "linear_refined": result.linear_refined,
    }
    if len(ops) > 1 and group is not None:
        info["group"] = describe_group(model, group)
    return info


def target_groups(ctx: RunContext) -> list[FusedGroup] | None:
    """The target's fused groups for the whole model, from its optimised program (None: no such view)."""
    try:
        optimized = ctx.target.optimized_program(ctx.model)
    except (RuntimeError, InputError) as exc:
        ctx.notes.append(f"could not read the target's optimised program ({exc}); cutting at every op")
        return None
    if optimized is None:
        return None
    groups = fusion_groups(ctx.model, optimized)
    fused = [g for g in groups if len(g.ops) > 1]
    if fused:
        ctx.notes.append(f"the target fuses {len(fused)} groups of ops; probes cut only between groups")
    return groups


def fusion_change(ctx: RunContext, culprit: int) -> str | None:
    """Compare the fusion around the culprit in the whole model and in the failing probe's cut model."""
    if not ctx.groups:
        return None
    model = ctx.model
    full = group_of(ctx.groups, culprit)
    try:
        cut_model = truncate(model, [t for t in frontier(model, culprit) if t in ctx.values])
        optimized = ctx.target.optimized_program(cut_model)
    except (RuntimeError, InputError):
        return None
    if optimized is None or full is None:
        return None
    cut_groups = fusion_groups(cut_model, optimized)
    names = {t for i in full.ops for t in model.ops[i].data_outputs()}
    mine = next((g for g in cut_groups if names & {t for i in g.ops for t in cut_model.ops[i].data_outputs()}), None)
    if mine is None or set(mine.internal) == set(full.internal):
        return None
    return (
        f"cutting after op {culprit} changed the fusion around it: in the whole model "
        f"{describe_group(model, full)}, in the cut model {describe_group(cut_model, mine)}"
    )
