"""Phase 3, multi-cut: one target run observes the frontiers of several cuts (a k-ary search over cut points).

When the target computes the same values whatever it is asked to return (`Engine.fetch_invariant`: host engines,
Paddle-Lite fetching only tensors that survive its fusion; a `cmd:` program whose whole-model runs showed it), a
run of the model truncated at the highest of k cuts that also fetches the frontiers of the lower ones answers all
k cuts. k is as large as the memory budget allows
(the fetched tensors of one run are held by the engine worker and by this process, so their estimated size stays
under half of --max-memory, as for the reference batches) and as judging them costs about one target run at most.
The answer is confirmed by one plain probe; when that disagrees, or the target crashes while observing, the plain
binary search takes over with what is known.
A crash is always hunted by the binary search: a crashing run says nothing about its lower cuts.
On segment 0 the whole-model runs have usually observed every tensor already (phases/confirm.py): the search then
starts from the bracket they give and only confirms it with the plain probe.
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from bisect_lite.compare import Comparison
from bisect_lite.phases.context import Probe, RunContext
from bisect_lite.reference import estimated_bytes
from bisect_lite.search import BisectResult, ProbeOutcome, Status, bisect_first_failure, multicut_first_failure

OBSERVED = "observed with"  # starts the message of every probe answered by a run of several cuts
# Judging fetched tensors costs 100-600 ns per float32 element on the shared 2-core development machine (a
# bit-identical one ~20x less): the first guess of the cost per fetched byte, replaced by measurement.
JUDGE_SECONDS_PER_BYTE = 50e-9


class _LazyValues(Mapping[str, np.ndarray]):
    """Reference values of `names`, read from the spilled dump one tensor at a time (the comparison streams
    through them, so a run fetching hundreds of tensors never holds all their reference values at once)."""

    def __init__(self, ctx: RunContext, names: Sequence[str]) -> None:
        self._values, self._names = ctx.values, dict.fromkeys(names)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._names:
            raise KeyError(name)
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def choose_strategy(ctx: RunContext, hunted: Status) -> tuple[str, str]:
    """("multicut" | "binary", why) for this run's search."""
    wanted = ctx.options.search
    engine = ctx.target.engine
    if hunted is not Status.FAIL:
        return "binary", "a crash is hunted by truncation: a crashing run cannot tell which of its cuts crashes"
    if wanted == "binary":
        return "binary", "--search binary"
    if wanted == "multicut":
        return "multicut", "--search multicut"
    if engine.fetch_invariant:
        return "multicut", f"the {engine.name} target computes the same values whatever tensors it returns"
    if engine.fetch_invariant is None and ctx.fetch_invariance_shown:
        return "multicut", (
            f"the {engine.name} target returned bit-identical outputs with and without every tensor fetched "
            "(tested on the second whole-model run)"
        )
    if engine.fetch_invariant is None and ctx.fetch_invariance_shown is False:
        why = (
            f"the {engine.name} target did not return the same outputs when the second whole-model run fetched "
            "every tensor (they changed, or it failed)"
        )
    elif engine.fetch_invariant is None:
        why = f"the {engine.name} target was not tested for fetching more tensors (the second run did not fetch them)"
    else:
        why = f"the {engine.name} target may compute differently when asked for more tensors"
    return "binary", f"{why} (--search multicut opts in)"


class FrontierIndex:
    """The comparable frontier of every cut of a segment, from one pass over the model.

    A tensor belongs to the frontier of cut c when it is made at or before c and still needed after c
    (`bisect_lite.model.frontier`), i.e. when c lies in its live interval; the probe keeps those made in the
    segment and known to the reference. Intervals turn the frontiers of k cuts into a sweep (not k scans of
    the model: 5,000 cuts of a 5,000-op chain took minutes that way) and their union's size into k bisections.
    """

    def __init__(self, ctx: RunContext, start: int) -> None:
        model = ctx.model
        self.names: list[str] = []
        self.lo: list[int] = []  # first cut whose frontier holds the tensor
        self.hi: list[int] = []  # last such cut
        self.nbytes: list[int] = []
        for index, name in model.data_tensors():
            lo, hi = max(index, model.producers.get(name, index)), model.last_use.get(name, -1) - 1
            if lo > hi or model.producers.get(name, -1) < start or name not in ctx.values:
                continue
            self.names.append(name)
            self.lo.append(lo)
            self.hi.append(hi)
            self.nbytes.append(estimated_bytes(model, name))
        self.by_lo = sorted(range(len(self.names)), key=lambda i: (self.lo[i], i))

    def at_many(self, cuts: Sequence[int]) -> dict[int, list[str]]:
        """Frontier of each cut (ascending op indices), in the model's order, as `frontier` lists it."""
        out: dict[int, list[str]] = {}
        alive: list[tuple[int, int]] = []  # (hi, row) heap
        nxt = 0
        for cut in cuts:
            while nxt < len(self.by_lo) and self.lo[self.by_lo[nxt]] <= cut:
                row = self.by_lo[nxt]
                heapq.heappush(alive, (self.hi[row], row))
                nxt += 1
            while alive and alive[0][0] < cut:
                heapq.heappop(alive)
            out[cut] = [self.names[row] for row in sorted(row for _, row in alive)]
        return out

    def union_bytes(self, cuts: Sequence[int]) -> int:
        """Estimated size of the union of the frontiers of `cuts` (ascending)."""
        total = 0
        for lo, hi, nbytes in zip(self.lo, self.hi, self.nbytes, strict=True):
            k = bisect.bisect_left(cuts, lo)
            if k < len(cuts) and cuts[k] <= hi:
                total += nbytes
        return total


def locate(
    ctx: RunContext,
    start: int,
    hunted: Status,
    probe_at: Callable[[int], ProbeOutcome],
    known: Mapping[int, ProbeOutcome],
    cuts: Sequence[int] | None,
    observed: Mapping[int, ProbeOutcome] | None = None,
) -> BisectResult:
    """The first failing cut of the segment from op `start` (positions relative to `start`), by the strategy
    `choose_strategy` picks; ctx.search_strategy records what was used. `observed`: outcomes of cuts seen by the
    whole-model run of every tensor (segment 0): the multi-cut search starts from them."""
    n = len(ctx.model.ops) - start
    strategy, why = choose_strategy(ctx, hunted)
    if strategy == "binary":
        ctx.search_strategy = "binary"
        ctx.search_strategy_reason = why
        return bisect_first_failure(n, probe_at, failing=hunted, known=known, cuts=cuts)

    index = FrontierIndex(ctx, start)
    budget = max(ctx.options.max_memory // 2, 1)
    judge_cost = [JUDGE_SECONDS_PER_BYTE]

    def run_seconds() -> float:
        target = ctx.target
        return target.engine_seconds / target.runs if target.runs else 1.0

    def fits(positions: Sequence[int]) -> bool:
        """Within half the memory budget, and judging the fetched tensors costs at most about one target run:
        k-ary search saves runs as log(k+1) while judging grows as k, so wider runs would cost more than they
        save (on a phone a run costs seconds, so runs there get wider)."""
        nbytes = index.union_bytes([start + p for p in positions])
        return nbytes <= budget and (len(positions) == 1 or nbytes * judge_cost[0] <= run_seconds())

    def observe_at(positions: Sequence[int]) -> dict[int, ProbeOutcome]:
        absolute = [start + p for p in positions]
        frontiers = index.at_many(absolute)
        t0, engine0 = time.perf_counter(), ctx.target.engine_seconds
        probes = observe(ctx, start, absolute, [frontiers[c] for c in absolute])
        nbytes = index.union_bytes(absolute)
        if nbytes > 1 << 20:  # measured cost of everything but the engine, per fetched byte
            judge_cost[0] = (time.perf_counter() - t0 - (ctx.target.engine_seconds - engine0)) / nbytes
        return {p - start: _relative(pr.outcome, start) for p, pr in probes.items()}

    # Replayed probes (--resume) that a run of several cuts answered are observations, not plain probes.
    replayed_observed = {
        e["cut"] - start
        for e in ctx.journal.find(type="probe", segment=start)
        if str(e.get("message", "")).startswith(OBSERVED)
    }
    seen = {**(observed or {}), **{p: o for p, o in known.items() if p in replayed_observed}}
    plain = {p: o for p, o in known.items() if p not in replayed_observed}
    result = multicut_first_failure(
        n, observe_at, confirm=probe_at, fits=fits, known=plain, observed=seen, cuts=cuts
    )
    ctx.notes.extend(result.notes)
    widths = [len(o) for o in result.observations]
    if not result.fallback:
        ctx.search_strategy = "multicut"
        ctx.search_strategy_reason = f"{why}; cuts observed per run: {widths}, answer confirmed by a plain probe"
        if observed:
            how = "by a plain probe of its cut" if widths else "by the plain whole model (its cut is the last)"
            ctx.search_strategy_reason = (
                f"{why}; the second whole-model run observed every tensor, the first op beyond the judgement was "
                f"confirmed {how}"
            )
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
    comparable frontiers), judged once per tensor and reported per cut: one Probe per cut, journalled together."""
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
    message = "; ".join(m for m in (note, result.message) if m)
    metrics = {m.name: m for m in cmp.tensors} if cmp is not None else {}
    missing = set(cmp.missing) if cmp is not None else set()
    for cut, names in zip(cuts, targets, strict=True):
        if not names:
            probes[cut] = Probe(start, cut, [], ProbeOutcome(Status.SKIP, detail="nothing to fetch"), None, 0.0)
            continue
        if cmp is None:
            part, verdict = None, ProbeOutcome(Status.CRASH, detail=outcome.detail)
        else:
            part = Comparison(
                tensors=[metrics[x] for x in names if x in metrics], missing=[x for x in names if x in missing]
            )
            failing = part.failing
            verdict = (
                ProbeOutcome(Status.FAIL, blame=min(producers.get(x, len(ctx.model.ops)) for x in failing))
                if failing
                else ProbeOutcome(Status.PASS)
            )
        probes[cut] = Probe(start, cut, list(names), verdict, part, seconds, message)
    if len(cuts) == 1:
        ctx.record(probes[cuts[0]])
        return probes
    # One journal write (one fsync) and one progress line per run, not per cut.
    ctx.observation_runs[start] = ctx.observation_runs.get(start, 0) + 1
    recorded = [p for p in probes.values() if p.fetched]
    ctx.probes.extend(recorded)
    ctx.journal.append_many([{"type": "probe", **p.to_dict()} for p in recorded])
    first_bad = next((p for p in recorded if p.outcome.status is not Status.PASS), recorded[-1] if recorded else None)
    if first_bad is not None:
        summary = first_bad.to_dict()
        summary["message"] = (
            f"{message}; first failing: cut {first_bad.cut}"
            if first_bad.outcome.status is not Status.PASS
            else f"{message}; all pass"
        )
        ctx.events("probe", summary)
    return probes
