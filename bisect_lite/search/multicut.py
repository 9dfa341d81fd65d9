"""k-ary search for the first failing cut when one target run can observe several cut points at once.

When the target computes the same values whatever tensors it is asked to return (a host engine, or a device
engine fetching only tensors that survive its own fusion), one run of the model truncated after cut `c_k` that
also fetches the frontiers of cuts `c_1 < ... < c_k` answers all k cuts: the first failing one brackets the
culprit between it and the last passing cut below it. Each run then shrinks the bracket (k + 1)-fold, so the
search needs about log_(k+1)(N) runs instead of log2(N); with k covering the whole bracket one run suffices.

The caller chooses how many cuts fit in one run (`fits`, e.g. a memory budget on the fetched bytes). The
answer is confirmed by one plain probe of the answer's cut (the model truncated there, fetching that frontier
only), because fetching more tensors changes memory planning and may add glue that could hide or create a
fault. If the confirmation disagrees, or the observations are not monotone, the result says so (`fallback`)
and the caller continues with the plain binary search, handing it the plain probes made here as `known`.

Like `bisect_first_failure`, the whole model (the last cut) is assumed to fail and the inputs to pass; a blame
(the earliest op whose own output failed) lowers the upper bound without a run.
"""

from __future__ import annotations

import bisect as _bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bisect_lite.search.bisect import BisectResult, ProbeOutcome, Status, _cut_points


@dataclass
class MulticutResult(BisectResult):
    """A `BisectResult` whose `probes` list every observed cut (several per run); plus:

    observations: the cut positions observed by each target run, in order (the confirmation is a run of one).
    plain:        outcomes of single-cut runs (plain truncated probes), by position: safe to hand to the
                  binary search as `known` after a fallback.
    confirmed:    the answer was checked by a plain probe of its cut (or was itself observed alone).
    fallback:     the answer could not be trusted (confirmation or monotonicity failed, a run crashed):
                  the caller must run the plain binary search; `notes` say why.
    """

    observations: list[list[int]] = field(default_factory=list)
    plain: dict[int, ProbeOutcome] = field(default_factory=dict)
    confirmed: bool = False
    fallback: bool = False

    @property
    def runs(self) -> int:
        """Target runs made (each observation is one run, whatever the number of cuts it answered)."""
        return len(self.observations)


def spread(candidates: Sequence[int], k: int) -> list[int]:
    """k of the sorted `candidates`, evenly spaced so that the k + 1 gaps around them are as equal as possible."""
    m = len(candidates)
    if k >= m:
        return list(candidates)
    picks = {candidates[min(m - 1, ((j + 1) * (m + 1)) // (k + 1) - 1)] for j in range(k)}
    return sorted(picks)


def expected_runs(m: int, k: int) -> int:
    """Runs a clean k-ary search needs over m cut points (the last cut is known to fail), confirmation excluded."""
    if m <= 1:
        return 0
    if k <= 1:
        return max(m - 1, 0).bit_length()
    return math.ceil(math.log(m, k + 1) - 1e-12)


def widest_fitting(candidates: Sequence[int], fits: Callable[[Sequence[int]], bool], limit: int | None) -> list[int]:
    """The largest evenly spread subset of `candidates` that `fits` accepts (at least one cut: a plain probe).

    `fits` is assumed monotone in the number of cuts (more cuts fetch more tensors); a binary search over k
    keeps the number of `fits` calls logarithmic."""
    hi = min(len(candidates), limit or len(candidates))
    lo = 1
    if fits(spread(candidates, hi)):
        return spread(candidates, hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(spread(candidates, mid)):
            lo = mid
        else:
            hi = mid
    return spread(candidates, lo)


def multicut_first_failure(
    n: int,
    observe: Callable[[Sequence[int]], Mapping[int, ProbeOutcome]],
    *,
    confirm: Callable[[int], ProbeOutcome],
    fits: Callable[[Sequence[int]], bool] = lambda positions: True,
    known: Mapping[int, ProbeOutcome] | None = None,
    cuts: Sequence[int] | None = None,
    max_cuts_per_run: int | None = None,
    on_observe: Callable[[Sequence[int], Mapping[int, ProbeOutcome]], None] | None = None,
    max_runs: int | None = None,
    observed: Mapping[int, ProbeOutcome] | None = None,
) -> MulticutResult:
    """Find the first failing cut in 0..n-1 (or in `cuts`), observing several cuts per target run.

    observe(positions): one target run observing every position (sorted op positions); returns an outcome per
        position. Status.FAIL is hunted (a crash cannot be located by observation: hunt it with the binary
        search); a CRASH of the run makes the result a fallback; SKIP marks a position it could not judge.
    confirm(position): one plain probe (the model truncated at that cut, fetching only its frontier).
    fits(positions): whether these cuts can be observed in one run (memory); one cut always may.
    known: outcomes of earlier plain probes by position (journal replay).
    observed: outcomes of earlier multi-cut observations (journal replay): they narrow the bracket but, unlike
        `known`, an answer resting on them is still confirmed by a plain probe.
    max_runs: budget of runs (observations plus the confirmation); exhausting it is a fallback.
    """
    if n < 1:
        raise ValueError(f"search needs at least one op, got n={n}")
    pts = _cut_points(n, cuts)
    m = len(pts)
    index = {p: i for i, p in enumerate(pts)}
    res = MulticutResult(first_bad=None, last_good=None)
    latest: dict[int, ProbeOutcome] = {}
    for pos, outcome in (observed or {}).items():
        if pos in index:
            latest[index[pos]] = outcome
    for pos, outcome in (known or {}).items():
        if pos in index:
            latest[index[pos]] = outcome
            res.plain[pos] = outcome

    def effective(i: int, o: ProbeOutcome) -> int:
        b = o.blame
        if b is None or b > pts[i]:
            return i
        return _bisect.bisect_left(pts, b)

    def bracket() -> tuple[int, int, int]:
        """(highest pass below hi, lowest effective fail, the cut whose outcome gave that fail)."""
        hi = src = m - 1
        for i, o in sorted(latest.items()):
            if o.status is Status.FAIL and effective(i, o) < hi:
                hi, src = effective(i, o), i
        lo = max((i for i, o in latest.items() if o.status is Status.PASS and i < hi), default=-1)
        return lo, hi, src

    def give_up(why: str) -> MulticutResult:
        res.fallback = True
        res.notes.append(why)
        return res

    skipped: set[int] = set()
    while True:
        lo, hi, _ = bracket()
        if any(o.status is Status.PASS and i >= hi for i, o in latest.items()):
            return give_up(
                "observed cuts are not monotone (a cut passed above a failing one): "
                "falling back to the plain binary search"
            )
        candidates = [i for i in range(lo + 1, hi) if i not in skipped]
        if not candidates:
            break
        if max_runs is not None and res.runs >= max_runs:
            res.exhausted = True
            return give_up(f"run budget of {max_runs} exhausted before the search finished")
        chosen = widest_fitting(candidates, lambda idx: fits([pts[i] for i in idx]), max_cuts_per_run)
        positions = [pts[i] for i in chosen]
        outcomes = observe(positions)
        res.observations.append(positions)
        if on_observe is not None:
            on_observe(positions, outcomes)
        if any(outcomes.get(p, ProbeOutcome(Status.SKIP)).status is Status.CRASH for p in positions):
            return give_up(
                f"a run observing cuts {positions[0]}..{positions[-1]} crashed: falling back to the plain binary search"
            )
        for i, p in zip(chosen, positions, strict=True):
            o = outcomes.get(p, ProbeOutcome(Status.SKIP, detail="not observed"))
            res.probes.append((p, o))
            if o.status is Status.SKIP:
                skipped.add(i)
                res.skipped.append(p)
                continue
            latest[i] = o
            if len(positions) == 1:
                res.plain[p] = o

    lo, hi, src = bracket()
    first_bad = pts[hi]
    # A plain probe (one cut per run) is what the binary search trusts, its blame included: no confirmation.
    if pts[src] not in res.plain and hi != m - 1:
        if max_runs is not None and res.runs >= max_runs:
            res.exhausted = True
            return give_up(f"run budget of {max_runs} exhausted before the confirmation")
        o = confirm(first_bad)
        res.observations.append([first_bad])
        res.plain[first_bad] = o
        res.probes.append((first_bad, o))
        agrees = o.status is Status.FAIL and effective(hi, o) > lo
        if not agrees:
            what = o.status.value if o.status is not Status.FAIL else f"fail blaming op {o.blame}"
            return give_up(
                f"the plain probe of cut {first_bad} ({what}) disagrees with the observation run "
                "(fetching more tensors changed the target's result): falling back to the plain binary search"
            )
    res.confirmed = True
    lo_pos = pts[lo] if lo >= 0 else -1
    res.first_bad, res.last_good = first_bad, lo_pos
    res.culprit_range = (lo_pos + 1, first_bad)
    inside = [pts[i] for i in range(lo + 1, hi)]
    if inside:
        res.ambiguous = res.culprit_range
        res.notes.append(
            f"the exact op is ambiguous between {lo_pos + 1} and {first_bad}: {len(inside)} cuts inconclusive"
        )
    return res
