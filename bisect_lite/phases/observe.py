"""Phase 3, multi-cut: one target run observes the frontiers of several cuts (a k-ary search over cut points).

When the target computes the same values whatever it is asked to return (`Engine.fetch_invariant`: host engines,
Paddle-Lite fetching only tensors that survive its fusion), a run of the model truncated at the highest of k cuts
that also fetches the frontiers of the lower ones answers all k cuts. k is as large as the memory budget allows:
the fetched tensors of one run are held by the engine worker and by this process, so their estimated size stays
under half of --max-memory (as for the reference batches). The answer is confirmed by one plain probe; when that
disagrees, or the target crashes while observing, the plain binary search takes over with what is known.
A crash is always hunted by the binary search: a crashing run says nothing about its lower cuts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from bisect_lite.compare import Comparison
from bisect_lite.model import frontier
from bisect_lite.phases.context import Probe, RunContext
from bisect_lite.reference import estimated_bytes
from bisect_lite.search import BisectResult, ProbeOutcome, Status, bisect_first_failure, multicut_first_failure

STRATEGIES = ("auto", "multicut", "binary")
OBSERVED = "observed with"  # starts the message of every probe answered by a run of several cuts


class _LazyValues(Mapping[str, np.ndarray]):
    """Reference values of `names`, read from the spilled dump one tensor at a time (the comparison streams
    through them, so a run fetching hundreds of tensors never holds all their reference values at once)."""

    def __init__(self, ctx: RunContext, names: Sequence[str]) -> None:
        self._values, self._names = ctx.values, list(names)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def choose_strategy(ctx: RunContext, hunted: Status) -> tuple[str, str]:
    """("multicut" | "binary", why) for this run's search."""
    wanted = getattr(ctx.options, "search", "auto")
    engine = ctx.target.engine
    if hunted is not Status.FAIL:
        return "binary", "a crash is hunted by truncation: a crashing run cannot tell which of its cuts crashes"
    if wanted == "binary":
        return "binary", "--search binary"
    if wanted == "multicut":
        return "multicut", "--search multicut"
    if getattr(engine, "fetch_invariant", False):
        return "multicut", f"{engine.spec} computes the same values whatever tensors it returns"
    return "binary", (f"{engine.spec} may compute differently when asked for more tensors (--search multicut opts in)")


def locate(
    ctx: RunContext,
    start: int,
    hunted: Status,
    probe_at: Callable[[int], ProbeOutcome],
    known: Mapping[int, ProbeOutcome],
    cuts: Sequence[int] | None,
) -> BisectResult:
    """The first failing cut of the segment from op `start` (positions relative to `start`), by the strategy
    `choose_strategy` picks; ctx.search_strategy records what was used."""
    n = len(ctx.model.ops) - start
    strategy, why = choose_strategy(ctx, hunted)
    if strategy == "binary":
        ctx.search_strategy = "binary"
        ctx.search_strategy_reason = why
        return bisect_first_failure(n, probe_at, failing=hunted, known=known, cuts=cuts)

    model = ctx.model
    frontiers: dict[int, list[str]] = {}

    def targets(pos: int) -> list[str]:
        """The comparable frontier of cut `pos` (relative), as a plain probe fetches it."""
        if pos not in frontiers:
            frontiers[pos] = [
                t for t in frontier(model, start + pos) if model.producers.get(t, -1) >= start and t in ctx.values
            ]
        return frontiers[pos]

    budget = max(ctx.options.max_memory // 2, 1)

    def fits(positions: Sequence[int]) -> bool:
        union = {t for p in positions for t in targets(p)}
        return sum(estimated_bytes(model, t) for t in union) <= budget

    def observe_at(positions: Sequence[int]) -> dict[int, ProbeOutcome]:
        probes = observe(ctx, start, [start + p for p in positions], [targets(p) for p in positions])
        return {p - start: _relative(pr.outcome, start) for p, pr in probes.items()}

    result = multicut_first_failure(n, observe_at, confirm=probe_at, fits=fits, known=known, cuts=cuts)
    ctx.notes.extend(result.notes)
    widths = [len(o) for o in result.observations]
    if not result.fallback:
        ctx.search_strategy = "multicut"
        ctx.search_strategy_reason = f"{why}; cuts observed per run: {widths}, answer confirmed by a plain probe"
        return result
    ctx.search_strategy = "multicut, then binary"
    ctx.search_strategy_reason = f"{why}; cuts observed per run: {widths}; fell back to the plain binary search"
    fallback = bisect_first_failure(n, probe_at, failing=hunted, known={**known, **result.plain}, cuts=cuts)
    fallback.notes[:0] = result.notes
    return fallback


def _relative(outcome: ProbeOutcome, start: int) -> ProbeOutcome:
    if outcome.blame is None or outcome.blame < start:
        return outcome
    return ProbeOutcome(outcome.status, blame=outcome.blame - start, detail=outcome.detail)


def search_runs(ctx: RunContext, segment: int) -> int:
    """Target runs the search of a segment made: plain probes plus runs that observed several cuts."""
    plain = sum(1 for p in ctx.probes if p.segment == segment and not p.message.startswith(OBSERVED))
    return plain + ctx.observation_runs.get(segment, 0)


def observe(ctx: RunContext, start: int, cuts: Sequence[int], targets: Sequence[list[str]]) -> dict[int, Probe]:
    """One target run fetching the frontiers of every cut in `cuts` (op indices, ascending; `targets` are their
    comparable frontiers), judged once per tensor and reported per cut: one recorded Probe per cut."""
    union = list(dict.fromkeys(t for names in targets for t in names))
    probes: dict[int, Probe] = {}
    if not union:
        for cut in cuts:
            probes[cut] = Probe(start, cut, [], ProbeOutcome(Status.SKIP, detail="nothing to fetch"), None, 0.0)
        return probes
    sub = ctx.segment_model(start, union)
    t0 = time.perf_counter()
    feeds = ctx.values.get_many(sub.feeds)
    result = ctx.target.run(sub, feeds)
    outcome, cmp = ctx.judge(result, _LazyValues(ctx, union), union, sub, feeds)  # type: ignore[arg-type]
    seconds = (time.perf_counter() - t0) / len(cuts)
    producers = ctx.model.producers
    note = f"{OBSERVED} {len(cuts)} cuts in one run" if len(cuts) > 1 else ""
    if len(cuts) > 1:
        ctx.observation_runs[start] = ctx.observation_runs.get(start, 0) + 1
    for cut, names in zip(cuts, targets, strict=True):
        if not names:
            probes[cut] = Probe(start, cut, [], ProbeOutcome(Status.SKIP, detail="nothing to fetch"), None, 0.0)
            continue
        if cmp is None:
            part, verdict = None, ProbeOutcome(Status.CRASH, detail=outcome.detail)
        else:
            mine = set(names)
            part = Comparison(
                tensors=[m for m in cmp.tensors if m.name in mine], missing=[x for x in cmp.missing if x in mine]
            )
            if part.passed:
                verdict = ProbeOutcome(Status.PASS)
            else:
                verdict = ProbeOutcome(
                    Status.FAIL, blame=min(producers.get(x, len(ctx.model.ops)) for x in part.failing)
                )
        message = "; ".join(m for m in (note, result.message) if m)
        probes[cut] = ctx.record(Probe(start, cut, list(names), verdict, part, seconds, message))
    return probes
