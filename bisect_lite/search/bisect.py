"""Binary search for the first cut point whose truncated model fails, over an abstract probe.

A cut point is an op position 0..n-1 in execution order; probing cut k runs the model truncated after op k on
both engines. The search knows nothing about engines: it calls `probe(k)` and reads the status it returns.

Semantics, in the spirit of `git bisect`:
- the whole model (cut n-1) is assumed bad and the inputs (cut -1) good, so the answer always lies in 0..n-1;
- a probe that returns the hunted status is bad, PASS is good, anything else is inconclusive and handled
  like `git bisect skip` (try the nearest untried neighbour, alternating above and below the midpoint);
- a bad probe may carry `blame`, the smallest op whose own output failed: the culprit is at or before it,
  so the upper bound drops there without a probe;
- contradictions (a bad probe blaming an op at or before a cut that passed, or a recheck that disagrees)
  get one recheck of the good cut; if it now fails the probe is flaky and the search goes on, otherwise the
  outcome depends on where the model is cut (a cut can change fusion), blame is no longer trusted and the
  bracket is scanned linearly from low to high.
"""

from __future__ import annotations

import bisect as _bisect
import enum
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


class Status(enum.Enum):
    """What one probe found."""

    PASS = "pass"
    FAIL = "fail"  # numeric mismatch between the engines
    CRASH = "crash"  # an engine crashed or timed out
    SKIP = "skip"  # the probe could not be evaluated (e.g. the cut model could not be built)


@dataclass(frozen=True)
class ProbeOutcome:
    """The result of probing one cut.

    `blame`: for a failing probe, the smallest op index whose output failed in it (the culprit is at or before
    it). `detail`: an opaque payload for the caller (diff statistics, log path, ...); the search ignores it.
    """

    status: Status
    blame: int | None = None
    detail: object = None


@dataclass
class BisectResult:
    """Outcome of `bisect_first_failure`. All positions are op indices, not indices into `cuts`.

    first_bad:   the first cut whose truncated model fails (None when nothing could be established).
    last_good:   the last cut known to pass below first_bad; -1 means "before the first op" (the inputs).
    culprit_range: ops (last_good + 1, first_bad), inclusive: where the fault is. With every position a cut
                 and no ambiguity this is (first_bad, first_bad).
    ambiguous:   set when cuts inside culprit_range could not be evaluated (skipped or out of budget), so the
                 exact op is unknown; equal to culprit_range then, else None.
    probes:      new probes in the order run, rechecks included (replayed `known` probes are not listed).
    skipped:     cuts whose probe was inconclusive (replayed ones first, then new ones in order).
    contradictions: human-readable descriptions of inconsistent probes and how they were resolved.
    notes:       other human-readable remarks (ambiguity, budget, ignored input).
    flaky:       a recheck disagreed with an earlier probe of the same cut.
    linear_refined: the search fell back to a low-to-high linear scan because results depended on the cut.
    exhausted:   `max_probes` stopped the search before it finished.
    """

    first_bad: int | None
    last_good: int | None
    culprit_range: tuple[int, int] | None = None
    ambiguous: tuple[int, int] | None = None
    probes: list[tuple[int, ProbeOutcome]] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    flaky: bool = False
    linear_refined: bool = False
    exhausted: bool = False

    @property
    def runs(self) -> int:
        """Number of new probes run (rechecks included)."""
        return len(self.probes)

    @property
    def exact(self) -> bool:
        """The culprit range is pinned down with no cut left unevaluated inside it."""
        return self.first_bad is not None and self.ambiguous is None


def expected_probes(n: int) -> int:
    """Probes a clean binary search needs over n cut points: ceil(log2(n)), 0 for n <= 1."""
    return max(n - 1, 0).bit_length()


_GOOD, _BAD, _SKIP = "good", "bad", "skip"


class _BudgetExhausted(Exception):
    pass


def bisect_first_failure(
    n: int,
    probe: Callable[[int], ProbeOutcome],
    *,
    failing: Status = Status.FAIL,
    known: Mapping[int, ProbeOutcome] | None = None,
    on_probe: Callable[[int, ProbeOutcome], None] | None = None,
    max_probes: int | None = None,
    cuts: Sequence[int] | None = None,
) -> BisectResult:
    """Find the first cut in 0..n-1 (or in `cuts`) whose probe returns `failing`.

    n: number of ops; cut n-1 (the whole model) is assumed bad and is not probed unless `known` holds it.
    probe: runs one cut (an op position) and reports its status.
    failing: the status hunted, FAIL or CRASH; the other failure class is inconclusive, never a hit.
    known: finished probes keyed by op position (journal replay); they are never probed again, except once as
        a recheck when they contradict a later probe.
    on_probe: called after every new probe, e.g. to journal it.
    max_probes: budget of new probes; when it runs out the result is the current bracket, marked exhausted.
    cuts: sorted positions that may be probed (e.g. tensors that survive fusion); n-1 is always added since
        the whole model's outputs are always observable. The answer is then a cut, and culprit_range spans
        the ops between the previous cut and it.
    With no contradictions and no skips it runs at most expected_probes(len(cuts)) probes.
    """
    if n < 1:
        raise ValueError(f"bisect needs at least one op, got n={n}")
    if failing not in (Status.FAIL, Status.CRASH):
        raise ValueError(f"failing must be Status.FAIL or Status.CRASH, not {failing}")
    if max_probes is not None and max_probes < 0:
        raise ValueError("max_probes must be >= 0")
    pts = _cut_points(n, cuts)
    return _Search(pts, probe, failing, on_probe, max_probes).run(known or {})


def _cut_points(n: int, cuts: Sequence[int] | None) -> list[int]:
    if cuts is None:
        return list(range(n))
    pts = list(cuts)
    if any(b <= a for a, b in itertools.pairwise(pts)):
        raise ValueError("cuts must be strictly increasing")
    if pts and not 0 <= pts[0] <= pts[-1] <= n - 1:
        raise ValueError(f"cuts must lie in 0..{n - 1}")
    if not pts or pts[-1] != n - 1:
        pts.append(n - 1)
    return pts


class _Search:
    """State of one search; cut points are handled by their index i into `pts` (sentinel -1 = inputs)."""

    def __init__(
        self,
        pts: list[int],
        probe: Callable[[int], ProbeOutcome],
        failing: Status,
        on_probe: Callable[[int, ProbeOutcome], None] | None,
        max_probes: int | None,
    ) -> None:
        self.pts = pts
        self.m = len(pts)
        self.index = {p: i for i, p in enumerate(pts)}
        self.probe_fn = probe
        self.failing = failing
        self.on_probe = on_probe
        self.max_probes = max_probes
        self.latest: dict[int, ProbeOutcome] = {}
        self.rechecked: set[int] = set()
        self.skipped: set[int] = set()
        self.result = BisectResult(first_bad=None, last_good=None)

    # --- evidence -------------------------------------------------------------------------------------------

    def kind(self, o: ProbeOutcome) -> str:
        if o.status is self.failing:
            return _BAD
        if o.status is Status.PASS:
            return _GOOD
        return _SKIP

    def effective(self, i: int, o: ProbeOutcome) -> int:
        """The lowest cut a bad probe at i vouches for: the first cut at or after its blamed op."""
        b = o.blame
        if b is None or b > self.pts[i]:  # a blame past the cut is nonsense; ignore it
            return i
        return _bisect.bisect_left(self.pts, b)

    def bracket(self, use_blame: bool) -> tuple[int, int, int | None]:
        """(lo, hi, bad_cut): highest good, lowest (effective) bad, and the probed cut that gave hi.

        With blame, lo is the highest good overall so that hi <= lo exposes a contradiction. Without blame
        (linear mode) lo is the highest good *below* hi: goods above the first bad are cut-dependent noise.
        """
        hi, src = self.m - 1, None
        for i, o in self.latest.items():
            if self.kind(o) == _BAD:
                e = self.effective(i, o) if use_blame else i
                if e < hi or (e == hi and src is None):
                    hi, src = e, i
        goods = [i for i, o in self.latest.items() if self.kind(o) == _GOOD]
        lo = max(goods, default=-1) if use_blame else max((g for g in goods if g < hi), default=-1)
        return lo, hi, src

    # --- probing --------------------------------------------------------------------------------------------

    def run_probe(self, i: int) -> ProbeOutcome:
        if self.max_probes is not None and self.result.runs >= self.max_probes:
            raise _BudgetExhausted
        pos = self.pts[i]
        o = self.probe_fn(pos)
        self.result.probes.append((pos, o))
        if self.on_probe is not None:
            self.on_probe(pos, o)
        return o

    def record(self, i: int, o: ProbeOutcome) -> None:
        self.latest[i] = o
        if self.kind(o) == _SKIP and i not in self.skipped:
            self.skipped.add(i)
            self.result.skipped.append(self.pts[i])

    # --- main loop ------------------------------------------------------------------------------------------

    def run(self, known: Mapping[int, ProbeOutcome]) -> BisectResult:
        res = self.result
        ignored = sorted(p for p in known if p not in self.index)
        if ignored:
            res.notes.append(f"ignored replayed probes at positions that are not cut points: {ignored}")
        for pos in sorted(p for p in known if p in self.index):
            self.record(self.index[pos], known[pos])
        top = self.latest.get(self.m - 1)
        if top is not None and self.kind(top) == _GOOD:
            res.last_good = self.pts[-1]
            res.contradictions.append(f"cut {self.pts[-1]} (the whole model) passed, so there is no failure to bisect")
            return res
        if top is not None and self.kind(top) == _SKIP:
            res.notes.append(f"the whole model's probe was {top.status.value}; assuming it fails anyway")

        linear = False
        try:
            while True:
                if not linear:
                    lo, hi, src = self.bracket(use_blame=True)
                    if hi <= lo:
                        linear = self.resolve_contradiction(lo, hi, src)
                        continue
                    todo = [i for i in range(lo + 1, hi) if i not in self.skipped]
                    if not todo:
                        break
                    i = self.pick_near((lo + hi) // 2, lo, hi)
                else:
                    lo, hi, _ = self.bracket(use_blame=False)
                    todo = [i for i in range(lo + 1, hi) if i not in self.skipped]
                    if not todo:
                        break
                    i = todo[0]
                self.record(i, self.run_probe(i))
        except _BudgetExhausted:
            res.exhausted = True
            res.notes.append(f"probe budget of {self.max_probes} exhausted before the search finished")
        self.finish(linear)
        return res

    def pick_near(self, mid: int, lo: int, hi: int) -> int:
        """The midpoint, or its nearest untried neighbour alternating above and below (git bisect skip)."""
        for d in range(hi - lo):
            for i in (mid + d, mid - d) if d else (mid,):
                if lo < i < hi and i not in self.skipped:
                    return i
        raise AssertionError("pick_near called with no candidate")  # the caller checks `todo` first

    def resolve_contradiction(self, lo: int, hi: int, src: int | None) -> bool:
        """Recheck the highest good cut once; return True when the search must go linear."""
        res, p = self.result, self.pts
        bad = self.latest[src] if src is not None else None
        if bad is not None and bad.blame is not None and src != hi:
            what = f"cut {p[src]} failed blaming op {bad.blame}, at or before cut {p[lo]} which passed"
        else:
            what = f"cut {p[hi]} failed but the later cut {p[lo]} passed"
        if lo in self.rechecked:
            res.contradictions.append(f"{what}; cut {p[lo]} was already rechecked, {self._linear_note()}")
            res.linear_refined = True
            return True
        self.rechecked.add(lo)
        o = self.run_probe(lo)
        k = self.kind(o)
        if k == _BAD:
            # The earlier pass was wrong; keep the fresh answer and carry on bisecting.
            self.latest[lo] = o
            res.flaky = True
            res.contradictions.append(f"{what}; recheck of cut {p[lo]} now {o.status.value}: flaky probe")
            return False
        verdict = "passed again" if k == _GOOD else f"was {o.status.value}, keeping the earlier pass"
        res.contradictions.append(f"{what}; recheck of cut {p[lo]} {verdict}: {self._linear_note()}")
        res.linear_refined = True
        return True

    @staticmethod
    def _linear_note() -> str:
        return (
            "results depend on where the model is cut (e.g. a cut changed a fusion); "
            "blame ignored, scanning the bracket linearly"
        )

    def finish(self, linear: bool) -> None:
        res, p = self.result, self.pts
        lo, hi, _ = self.bracket(use_blame=not linear)
        if hi <= lo:  # stopped (out of budget) mid-contradiction: report the conservative status-only bracket
            lo, hi, _ = self.bracket(use_blame=False)
        open_cuts = [i for i in range(lo + 1, hi)]
        lo_pos = p[lo] if lo >= 0 else -1
        if open_cuts and lo == -1 and hi == self.m - 1:
            res.ambiguous = (0, p[-1])
            res.notes.append("no probe inside the model could be evaluated; the fault is somewhere in it")
            return
        res.first_bad, res.last_good = p[hi], lo_pos
        res.culprit_range = (lo_pos + 1, p[hi])
        if open_cuts:
            res.ambiguous = res.culprit_range
            skipped = [p[i] for i in open_cuts if i in self.skipped]
            why = [f"{_brief(skipped)} inconclusive"] if skipped else []
            if len(skipped) < len(open_cuts):
                why.append(f"{len(open_cuts) - len(skipped)} not probed")
            res.notes.append(f"the exact op is ambiguous between {lo_pos + 1} and {p[hi]}: cuts {'; '.join(why)}")


def _brief(positions: list[int], limit: int = 8) -> str:
    """A list of positions, elided in the middle when long (notes are read by people)."""
    if len(positions) <= limit:
        return ", ".join(map(str, positions))
    head = ", ".join(map(str, positions[: limit // 2]))
    return f"{head}, ... ({len(positions) - limit // 2 - 1} more), {positions[-1]}"
