"""Search algorithms against synthetic predicates: no engine, no I/O."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bisect_lite.search import (
    BisectResult,
    ProbeOutcome,
    Status,
    bisect_first_failure,
    ddmin,
    expected_probes,
    grow_window,
    shrink_dims,
)
from bisect_lite.search.multicut import expected_runs, multicut_first_failure, spread, widest_fitting

PASS = ProbeOutcome(Status.PASS)
SKIP = ProbeOutcome(Status.SKIP)


class Recorder:
    """Wraps a probe function and records every call."""

    def __init__(self, fn: Callable[[int], ProbeOutcome]) -> None:
        self.fn = fn
        self.calls: list[int] = []

    def __call__(self, k: int) -> ProbeOutcome:
        self.calls.append(k)
        return self.fn(k)


def single_fault(f: int, *, blame: bool = False, status: Status = Status.FAIL) -> Recorder:
    """Cut k fails iff it includes op f; with blame the probe also names op f."""
    return Recorder(lambda k: ProbeOutcome(status, f if blame else None) if k >= f else PASS)


def check_exact(res: BisectResult, f: int) -> None:
    assert res.first_bad == f
    assert res.last_good == f - 1
    assert res.culprit_range == (f, f)
    assert res.ambiguous is None and res.exact
    assert not res.contradictions and not res.flaky and not res.linear_refined


# --- bisect ---------------------------------------------------------------------------------------------


def test_expected_probes() -> None:
    assert [expected_probes(n) for n in (0, 1, 2, 3, 4, 5, 8, 9, 64, 65)] == [0, 0, 1, 2, 2, 3, 3, 4, 6, 7]


@pytest.mark.parametrize("blame", [False, True])
def test_single_fault_every_position(blame: bool) -> None:
    for n in range(1, 71):
        for f in range(n):
            probe = single_fault(f, blame=blame)
            res = bisect_first_failure(n, probe)
            check_exact(res, f)
            assert res.runs == len(probe.calls) <= expected_probes(n), (n, f)
            assert n - 1 not in probe.calls  # the whole model is the caller's job
            assert len(set(probe.calls)) == len(probe.calls)
            assert [k for k, _ in res.probes] == probe.calls


def test_blame_reduces_probes() -> None:
    n = 64
    plain = sum(bisect_first_failure(n, single_fault(f)).runs for f in range(n))
    blamed = sum(bisect_first_failure(n, single_fault(f, blame=True)).runs for f in range(n))
    assert blamed < plain
    # f=5: the first probe (cut 31) blames op 5, leaving only 0..5 to search.
    res = bisect_first_failure(n, single_fault(5, blame=True))
    check_exact(res, 5)
    assert res.runs == 1 + expected_probes(6) < expected_probes(n)


def test_blame_on_whole_model_from_known() -> None:
    probe = single_fault(3, blame=True)
    res = bisect_first_failure(100, probe, known={99: ProbeOutcome(Status.FAIL, blame=3)})
    check_exact(res, 3)
    assert all(k <= 3 for k in probe.calls)
    assert res.runs <= expected_probes(4)


def test_crash_hunt_treats_mismatch_as_inconclusive() -> None:
    # Ops 10.. mismatch, ops 20.. crash: hunting the crash must never stop at a FAIL.
    def fn(k: int) -> ProbeOutcome:
        if k >= 20:
            return ProbeOutcome(Status.CRASH)
        return ProbeOutcome(Status.FAIL, blame=10) if k >= 10 else PASS

    res = bisect_first_failure(40, Recorder(fn), failing=Status.CRASH)
    assert res.first_bad == 20
    assert res.last_good == 9
    assert res.ambiguous == (10, 20)  # every cut 10..19 was a mismatch, so the crash op is not pinned
    assert set(res.skipped) == set(range(10, 20))
    assert not res.exact


def test_crash_hunt_sparse_mismatches_still_exact() -> None:
    def fn(k: int) -> ProbeOutcome:
        if k in (11, 19, 25):
            return ProbeOutcome(Status.FAIL, blame=0)  # blame from the wrong failure class: must be ignored
        return ProbeOutcome(Status.CRASH) if k >= 22 else PASS

    probe = Recorder(fn)
    res = bisect_first_failure(40, probe, failing=Status.CRASH)
    check_exact(res, 22)
    assert res.skipped and set(res.skipped) <= {11, 19, 25}


def test_fail_hunt_treats_crash_as_inconclusive() -> None:
    def fn(k: int) -> ProbeOutcome:
        if k == 15:
            return ProbeOutcome(Status.CRASH)
        return ProbeOutcome(Status.FAIL) if k >= 9 else PASS

    res = bisect_first_failure(32, Recorder(fn))
    check_exact(res, 9)
    assert res.skipped == [15]


def test_skip_band_outside_answer() -> None:
    def fn(k: int) -> ProbeOutcome:
        return SKIP if 30 <= k <= 35 else (ProbeOutcome(Status.FAIL) if k >= 40 else PASS)

    res = bisect_first_failure(64, Recorder(fn))
    assert res.first_bad == 40 and res.last_good == 39 and res.ambiguous is None
    assert set(res.skipped) <= set(range(30, 36)) and res.skipped


def test_skip_band_around_answer_is_ambiguous() -> None:
    def fn(k: int) -> ProbeOutcome:
        return SKIP if 30 <= k <= 35 else (ProbeOutcome(Status.FAIL) if k >= 33 else PASS)

    res = bisect_first_failure(64, Recorder(fn))
    assert res.first_bad == 36 and res.last_good == 29
    assert res.ambiguous == res.culprit_range == (30, 36)
    assert sorted(res.skipped) == list(range(30, 36))
    assert any("ambiguous" in note for note in res.notes)


def test_everything_skipped() -> None:
    probe = Recorder(lambda k: SKIP)
    res = bisect_first_failure(10, probe)
    assert res.first_bad is None and res.last_good is None
    assert res.ambiguous == (0, 9)
    assert sorted(probe.calls) == list(range(9))


def test_flaky_probe_recheck() -> None:
    seen: dict[int, int] = {}

    def fn(k: int) -> ProbeOutcome:
        seen[k] = seen.get(k, 0) + 1
        if k == 15 and seen[k] == 1:
            return PASS  # wrong the first time
        return ProbeOutcome(Status.FAIL, blame=10) if k >= 10 else PASS

    probe = Recorder(fn)
    res = bisect_first_failure(32, probe)
    assert probe.calls[0] == 15 and probe.calls.count(15) == 2
    assert res.first_bad == 10 and res.last_good == 9
    assert res.flaky and not res.linear_refined
    assert res.contradictions and "flaky" in res.contradictions[0]


def test_cut_dependent_contradiction_goes_linear() -> None:
    # Cutting at 12..17 splits a fusion and hides the fault; everywhere else it shows, blaming op 10.
    def fn(k: int) -> ProbeOutcome:
        if k >= 10 and not 12 <= k <= 17:
            return ProbeOutcome(Status.FAIL, blame=10)
        return PASS

    probe = Recorder(fn)
    res = bisect_first_failure(32, probe)
    assert res.linear_refined and not res.flaky
    assert len(res.contradictions) == 1 and "depend on where the model is cut" in res.contradictions[0]
    assert probe.calls.count(15) == 2  # one recheck
    # Linear scan from the confirmed pass (15) up to the failing cut (23): 16, 17 pass, 18 fails.
    assert probe.calls[-3:] == [16, 17, 18]
    assert res.first_bad == 18 and res.last_good == 17


def test_known_replay_and_on_probe() -> None:
    n, f = 50, 37
    journal: dict[int, ProbeOutcome] = {}
    seen: list[tuple[int, ProbeOutcome]] = []

    def log(k: int, o: ProbeOutcome) -> None:
        journal[k] = o
        seen.append((k, o))

    full = bisect_first_failure(n, single_fault(f), on_probe=log)
    check_exact(full, f)
    assert seen == full.probes and len(seen) == full.runs > 2

    # Resume after two probes: only the rest are run, none of the journaled cuts again.
    first_two = dict(full.probes[:2])
    probe = single_fault(f)
    resumed = bisect_first_failure(n, probe, known=first_two)
    check_exact(resumed, f)
    assert not set(probe.calls) & set(first_two)
    assert resumed.runs == full.runs - 2
    assert resumed.probes == full.probes[2:]

    # Everything journaled: no probe at all.
    probe = single_fault(f)
    again = bisect_first_failure(n, probe, known=journal)
    check_exact(again, f)
    assert probe.calls == [] and again.runs == 0


def test_known_whole_model_passes() -> None:
    probe = single_fault(3)
    res = bisect_first_failure(10, probe, known={9: PASS})
    assert res.first_bad is None and res.last_good == 9 and res.contradictions
    assert probe.calls == []


def test_restricted_cuts() -> None:
    n, cuts = 50, [3, 7, 12, 20, 33, 41]
    pts = [*cuts, n - 1]
    for f in range(n):
        probe = single_fault(f)
        res = bisect_first_failure(n, probe, cuts=cuts)
        first = next(c for c in pts if c >= f)
        prev = max((c for c in pts if c < first), default=-1)
        assert res.first_bad == first and res.last_good == prev
        assert res.culprit_range == (prev + 1, first)
        assert res.ambiguous is None
        assert set(probe.calls) <= set(cuts)
        assert res.runs <= expected_probes(len(pts))
    res = bisect_first_failure(n, single_fault(15), cuts=cuts)
    assert res.culprit_range == (13, 20)


def test_restricted_cuts_with_blame_between_cuts() -> None:
    probe = single_fault(15, blame=True)
    res = bisect_first_failure(50, probe, cuts=[3, 7, 12, 20, 33, 41])
    assert res.first_bad == 20 and res.culprit_range == (13, 20) and not res.contradictions


def test_max_probes_budget() -> None:
    probe = single_fault(40)
    res = bisect_first_failure(64, probe, max_probes=2)
    assert res.exhausted and res.runs == 2
    assert res.ambiguous is not None and res.ambiguous[0] <= 40 <= res.ambiguous[1]
    assert res.culprit_range == res.ambiguous


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        bisect_first_failure(0, single_fault(0))
    with pytest.raises(ValueError):
        bisect_first_failure(5, single_fault(0), failing=Status.SKIP)
    with pytest.raises(ValueError):
        bisect_first_failure(5, single_fault(0), cuts=[3, 1])


# --- ddmin / grow_window -------------------------------------------------------------------------------


def pair_predicate(a: int, b: int) -> tuple[Callable[[tuple[int, ...]], bool], list[tuple[int, ...]]]:
    calls: list[tuple[int, ...]] = []

    def fails(s: tuple[int, ...]) -> bool:
        calls.append(s)
        return a in s and b in s

    return fails, calls


def test_ddmin_finds_pair_and_is_one_minimal() -> None:
    fails, calls = pair_predicate(3, 11)
    res = ddmin(range(16), fails)
    assert res.items == (3, 11) and res.one_minimal
    assert res.calls == len(calls)
    assert len(set(calls)) == len(calls)  # memoised
    assert tuple(range(16)) not in calls  # the whole set is the caller's
    # 1-minimality was actually checked: both single removals were asked about.
    assert (3,) in calls and (11,) in calls


def test_ddmin_respects_budget() -> None:
    fails, calls = pair_predicate(3, 11)
    res = ddmin(range(16), fails, max_calls=3)
    assert res.calls == len(calls) <= 3
    assert not res.one_minimal
    assert 3 in res.items and 11 in res.items


def test_ddmin_unresolved_counts_as_passing() -> None:
    # Any subset without item 0 cannot be built (None); the pair {0, 9} fails.
    def fails(s: tuple[int, ...]) -> bool | None:
        if 0 not in s:
            return None
        return 9 in s

    res = ddmin(range(12), fails)
    assert res.items == (0, 9) and res.one_minimal


def test_ddmin_single_item() -> None:
    res = ddmin([7], lambda s: True)
    assert res.items == (7,) and res.one_minimal and res.calls == 0


@pytest.mark.parametrize("center", [5, 6, 7])
def test_grow_window_minimal(center: int) -> None:
    calls: list[tuple[int, int]] = []

    def fails(lo: int, hi: int) -> bool:
        calls.append((lo, hi))
        return lo <= 5 and hi >= 7

    assert grow_window(center, 20, fails) == (5, 7)
    assert len(set(calls)) == len(calls)
    assert all(lo <= center <= hi for lo, hi in calls)


def test_grow_window_none_and_radius_cap() -> None:
    def fails(lo: int, hi: int) -> bool:
        return lo <= 5 and hi >= 7

    assert grow_window(15, 20, fails, max_radius=3) is None
    assert grow_window(15, 20, fails) == (5, 15)  # must reach back to 5 and still contain the center
    assert grow_window(2, 5, lambda lo, hi: False) is None
    assert grow_window(0, 1, lambda lo, hi: True) == (0, 0)


# --- shrink_dims -----------------------------------------------------------------------------------------


def test_shrink_dims_threshold() -> None:
    calls: list[tuple[int, ...]] = []

    def fails(d: tuple[int, ...]) -> bool:
        calls.append(d)
        return d[1] >= 8

    res = shrink_dims([4, 64, 64], fails)
    assert res.dims == (1, 8, 1)
    assert res.calls == len(calls) <= 40
    assert len(set(calls)) == len(calls)
    assert calls[0] == (4, 1, 64)  # largest dimension first, ties by position, minimum tried first


def test_shrink_dims_fixed_and_non_power_of_two() -> None:
    res = shrink_dims([4, 64, 64], lambda d: d[1] >= 8, minimum=[4, 1, 1])
    assert res.dims == (4, 8, 1)
    assert shrink_dims([60], lambda d: d[0] >= 7).dims == (7,)
    # Fails only for odd sizes: never keeps a passing value.
    res = shrink_dims([9, 3], lambda d: d[0] % 2 == 1)
    assert res.dims[0] % 2 == 1 and res.dims[1] == 1


def test_shrink_dims_interacting_dims_and_budget() -> None:
    # Fails when the product is large: shrinking one dim leaves the other at its threshold.
    res = shrink_dims([16, 16], lambda d: d[0] * d[1] >= 64)
    assert res.dims[0] * res.dims[1] >= 64 and res.dims in {(1, 64), (4, 16), (16, 4), (8, 8)}
    res = shrink_dims([4, 64, 64], lambda d: d[1] >= 8, max_calls=2)
    assert res.calls == 2 and res.dims[1] >= 8
    with pytest.raises(ValueError):
        shrink_dims([4], lambda d: True, minimum=[5])


# --- multi-cut (k-ary) search ---------------------------------------------------------------------------


class Observer:
    """One 'target run' observing several cuts: cut k fails iff it includes op f (blame names f if asked)."""

    def __init__(self, f: int, *, blame: bool = False, plain: Callable[[int], ProbeOutcome] | None = None) -> None:
        self.f, self.blame = f, blame
        self.runs: list[list[int]] = []
        self.plain_calls: list[int] = []
        self.plain = plain

    def outcome(self, k: int) -> ProbeOutcome:
        return ProbeOutcome(Status.FAIL, self.f if self.blame else None) if k >= self.f else PASS

    def observe(self, positions: list[int]) -> dict[int, ProbeOutcome]:
        self.runs.append(list(positions))
        return {p: self.outcome(p) for p in positions}

    def confirm(self, k: int) -> ProbeOutcome:
        self.plain_calls.append(k)
        return self.plain(k) if self.plain else self.outcome(k)


@pytest.mark.parametrize("k", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("blame", [False, True])
def test_multicut_finds_every_fault_within_its_run_bound(k: int, blame: bool) -> None:
    for n in (1, 2, 3, 10, 64, 101):
        for f in range(n):
            obs = Observer(f, blame=blame)
            res = multicut_first_failure(n, obs.observe, confirm=obs.confirm, max_cuts_per_run=k)
            check_exact(res, f)
            assert res.confirmed and not res.fallback
            assert all(len(run) <= k for run in obs.runs)
            # k-ary bound plus at most one plain confirmation; never worse than the binary bound
            assert res.runs <= expected_runs(n, k) + 1, (n, f, k, obs.runs)
            assert res.runs <= max(expected_probes(n), 1) or n <= 2
            assert len(obs.plain_calls) <= 1 and set(obs.plain_calls) <= {f}
            if k == 1:
                assert not obs.plain_calls  # every run is a plain probe already


def test_multicut_beats_binary_search_on_average() -> None:
    n = 375  # PP-OCRv5 det
    multi = binary = 0
    for f in range(0, n, 7):
        obs = Observer(f)
        multi += multicut_first_failure(n, obs.observe, confirm=obs.confirm, max_cuts_per_run=15).runs
        binary += bisect_first_failure(n, single_fault(f)).runs
    assert multi * 2 < binary


def test_multicut_one_run_observes_everything_then_one_confirmation() -> None:
    obs = Observer(123)
    res = multicut_first_failure(375, obs.observe, confirm=obs.confirm)
    check_exact(res, 123)
    assert obs.runs == [list(range(374))]
    assert obs.plain_calls == [123] and res.runs == 2
    assert [p for p, _ in res.probes][:374] == list(range(374))  # every cut's outcome is reported


def test_multicut_respects_fits() -> None:
    obs = Observer(50)
    res = multicut_first_failure(200, obs.observe, confirm=obs.confirm, fits=lambda positions: len(positions) <= 4)
    check_exact(res, 50)
    assert max(len(r) for r in obs.runs) == 4
    assert res.runs <= expected_runs(200, 4) + 1


def test_multicut_with_cuts_blames_a_group() -> None:
    cuts = [2, 5, 9, 14, 19]
    obs = Observer(7)
    res = multicut_first_failure(20, obs.observe, confirm=obs.confirm, cuts=cuts)
    assert res.first_bad == 9 and res.last_good == 5 and res.culprit_range == (6, 9)
    assert all(set(r) <= set(cuts) for r in obs.runs)


def test_multicut_falls_back_when_the_plain_probe_disagrees() -> None:
    # observation says cut 40 fails, but the plain truncated model passes there: fetching changed the result
    obs = Observer(40, plain=lambda k: PASS)
    res = multicut_first_failure(100, obs.observe, confirm=obs.confirm)
    assert res.fallback and not res.confirmed and res.first_bad is None
    assert res.plain == {40: PASS}
    assert any("disagrees" in note for note in res.notes)


def test_multicut_falls_back_when_the_plain_probe_blames_an_earlier_op() -> None:
    obs = Observer(40, plain=lambda k: ProbeOutcome(Status.FAIL, blame=10))
    res = multicut_first_failure(100, obs.observe, confirm=obs.confirm, max_cuts_per_run=3)
    assert res.fallback and res.first_bad is None


def test_multicut_falls_back_on_non_monotone_observations() -> None:
    def observe(positions: list[int]) -> dict[int, ProbeOutcome]:
        return {p: (ProbeOutcome(Status.FAIL) if 30 <= p < 50 else PASS) for p in positions}

    res = multicut_first_failure(100, observe, confirm=lambda k: ProbeOutcome(Status.FAIL))
    assert res.fallback and any("not monotone" in note for note in res.notes)


def test_multicut_falls_back_on_a_crashing_run_and_keeps_plain_results() -> None:
    def observe(positions: list[int]) -> dict[int, ProbeOutcome]:
        status = Status.CRASH if len(positions) > 1 else Status.PASS
        return {p: ProbeOutcome(status) for p in positions}

    res = multicut_first_failure(
        100, observe, confirm=lambda k: PASS, known={10: PASS}, fits=lambda positions: len(positions) <= 5
    )
    assert res.fallback and res.runs == 1 and res.plain == {10: PASS}


def test_multicut_skips_unjudgeable_cuts_and_reports_ambiguity() -> None:
    obs = Observer(30)

    def observe(positions: list[int]) -> dict[int, ProbeOutcome]:
        return {p: (SKIP if 25 <= p < 30 else obs.outcome(p)) for p in positions}

    res = multicut_first_failure(100, observe, confirm=obs.confirm, max_cuts_per_run=3)
    assert res.first_bad == 30 and res.ambiguous is not None
    assert res.culprit_range[0] <= 25 and not res.fallback


def test_multicut_uses_replayed_probes() -> None:
    obs = Observer(60)
    known = {50: PASS, 70: ProbeOutcome(Status.FAIL)}
    res = multicut_first_failure(100, obs.observe, confirm=obs.confirm, known=known)
    check_exact(res, 60)
    assert all(50 < p < 70 for r in obs.runs for p in r)


def test_spread_and_widest_fitting() -> None:
    assert spread(list(range(7)), 3) == [1, 3, 5]
    assert spread(list(range(7)), 1) == [3]
    assert spread([4, 8], 5) == [4, 8]
    cands = list(range(100))
    chosen = widest_fitting(cands, lambda idx: sum(idx) < 500, None)
    assert sum(chosen) < 500 and sum(spread(cands, len(chosen) + 1)) >= 500 and chosen == spread(cands, len(chosen))
    assert widest_fitting(cands, lambda idx: True, 6) == spread(cands, 6)
    assert widest_fitting(list(range(100)), lambda idx: False, None) == [49]  # one cut always


def test_multicut_confirms_an_answer_resting_on_replayed_observations() -> None:
    obs = Observer(60)
    observed = {p: obs.outcome(p) for p in (50, 59, 60, 70)}
    res = multicut_first_failure(100, obs.observe, confirm=obs.confirm, observed=observed)
    check_exact(res, 60)
    assert obs.runs == [] and obs.plain_calls == [60] and res.runs == 1  # bracket closed: only the plain check
    res = multicut_first_failure(100, obs.observe, confirm=obs.confirm, known=observed)
    assert res.runs == 0  # the same outcomes as plain probes need no confirmation
