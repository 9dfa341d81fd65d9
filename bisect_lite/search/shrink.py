"""Shape minimisation: make a failing op's tensor dimensions as small as possible while it still fails."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bisect_lite.search.ddmin import _Memo, _OutOfCalls


@dataclass(frozen=True)
class ShrinkResult:
    """dims: the smallest failing dims found. calls: predicate calls made (the start is not re-tested)."""

    dims: tuple[int, ...]
    calls: int


def shrink_dims(
    dims: Sequence[int],
    fails: Callable[[tuple[int, ...]], bool | None],
    *,
    minimum: Sequence[int] | None = None,
    max_calls: int = 40,
) -> ShrinkResult:
    """Greedily shrink each dimension of `dims` (assumed to fail) while `fails` stays True.

    Order: largest dimension first (ties by position), so the biggest savings come before the budget runs
    out. Per dimension: try its minimum (default 1); else halve while it still fails; then binary-search
    between the last failing value and the first passing one (a threshold like "fails when >= 8" lands
    exactly on 8; for non-monotone predicates it still only ever keeps failing values). Dims with
    minimum == dims[i] are fixed. Passes repeat while shrinking one dimension may have unlocked another.
    None from `fails` counts as passing.
    """
    cur = list(dims)
    lows = [1] * len(cur) if minimum is None else list(minimum)
    if len(lows) != len(cur):
        raise ValueError(f"minimum has {len(lows)} entries for {len(cur)} dims")
    for i, (d, lo) in enumerate(zip(cur, lows, strict=True)):
        if lo < 0 or lo > d:
            raise ValueError(f"dim {i}: minimum {lo} must lie in 0..{d}")
    test = _Memo(fails, max_calls)
    test.cache[(tuple(cur),)] = True  # the caller vouches for the starting shape

    def trial(i: int, v: int) -> bool:
        return test((*cur[:i], v, *cur[i + 1 :]))

    def shrink_one(i: int) -> None:
        v, lo = cur[i], lows[i]
        if trial(i, lo):
            cur[i] = lo
            return
        passing = lo  # largest value known not to fail
        while v // 2 > passing:
            if not trial(i, v // 2):
                passing = v // 2
                break
            v //= 2
            cur[i] = v
        a, b = passing + 1, v  # b fails; look for a smaller failing value above `passing`
        while a < b:
            mid = (a + b) // 2
            if trial(i, mid):
                b = mid
            else:
                a = mid + 1
        cur[i] = b

    order = sorted(range(len(cur)), key=lambda i: (-cur[i], i))
    version = 0  # bumped on every change; a dim is retried only if something changed after it settled
    settled = [-1] * len(cur)
    try:
        while any(settled[i] < version and cur[i] > lows[i] for i in order):
            for i in order:
                if settled[i] == version or cur[i] <= lows[i]:
                    continue
                before = cur[i]
                shrink_one(i)
                if cur[i] != before:
                    version += 1
                settled[i] = version
    except _OutOfCalls:
        pass
    return ShrinkResult(tuple(cur), test.calls)
