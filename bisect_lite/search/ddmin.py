"""Delta debugging (Zeller's ddmin) over op indices, and growing the smallest failing window of ops.

Both work over predicates only. A predicate may answer None for a subset it could not evaluate (the sub-model
could not be built, the engine refused it); that counts as "does not fail", so the reduction never steps onto
an unverified subset. Answers are memoised: each distinct subset or window is asked about at most once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class MinimiseResult:
    """items: the smallest failing subset found, in the input order. calls: predicate calls made.

    one_minimal: every single-item removal from `items` was checked and passes (Zeller's 1-minimality); False
    when the budget stopped the reduction first.
    """

    items: tuple[int, ...]
    calls: int
    one_minimal: bool


class _Memo:
    """Memoised predicate with a call budget; over budget it raises instead of calling."""

    def __init__(self, fn: Callable[..., bool | None], max_calls: int | None) -> None:
        self.fn = fn
        self.max_calls = max_calls
        self.cache: dict[object, bool] = {}
        self.calls = 0

    def __call__(self, *key: object) -> bool:
        if key in self.cache:
            return self.cache[key]
        if self.max_calls is not None and self.calls >= self.max_calls:
            raise _OutOfCalls
        self.calls += 1
        verdict = self.fn(*key) is True  # None (unresolved) counts as passing
        self.cache[key] = verdict
        return verdict


class _OutOfCalls(Exception):
    pass


def _split(items: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """n contiguous chunks whose sizes differ by at most one (contiguous keeps neighbouring ops together)."""
    size, extra = divmod(len(items), n)
    chunks, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        chunks.append(items[start:end])
        start = end
    return chunks


def ddmin(
    items: Sequence[int],
    fails: Callable[[tuple[int, ...]], bool | None],
    *,
    max_calls: int | None = None,
) -> MinimiseResult:
    """Reduce `items` (assumed to fail as a whole; not re-checked) to a 1-minimal failing subset.

    Classic ddmin: split into n chunks; keep a failing chunk (n = 2), else a failing complement (n - 1), else
    double the granularity; stop once n reaches the subset size with nothing removable. The empty subset is
    assumed to pass, so a single item is 1-minimal. Subsets are passed as tuples in the input order.
    """
    if max_calls is not None and max_calls < 0:
        raise ValueError("max_calls must be >= 0")
    test = _Memo(fails, max_calls)
    cur = tuple(items)
    test.cache[(cur,)] = True  # the caller vouches for the whole set; never spend a call on it
    n = 2
    try:
        while len(cur) >= 2:
            chunks = _split(cur, n)
            nxt: tuple[int, ...] | None = None
            for c in chunks:
                if test(c):
                    nxt, n = c, 2
                    break
            else:
                for k in range(len(chunks)):
                    comp = tuple(x for j, c in enumerate(chunks) if j != k for x in c)
                    if test(comp):
                        nxt, n = comp, max(n - 1, 2)
                        break
            if nxt is not None:
                cur = nxt
            elif n >= len(cur):
                break  # every single-item removal was tried at this granularity: 1-minimal
            else:
                n = min(2 * n, len(cur))
    except _OutOfCalls:
        return MinimiseResult(cur, test.calls, False)
    return MinimiseResult(cur, test.calls, True)


def grow_window(
    center: int,
    n: int,
    fails: Callable[[int, int], bool | None],
    max_radius: int | None = None,
) -> tuple[int, int] | None:
    """The smallest window [lo, hi] (inclusive, lo <= center <= hi, within 0..n-1) whose ops fail together.

    Strategy: grow symmetrically with radius 0, 1, 2, 4, 8, ... (clipped to the model, capped at
    max_radius, the cap itself tried last) until a window fails; then, assuming any window containing a
    failing window also fails, pin it down with two binary searches: raise lo as far as it still fails, then
    lower hi likewise.
    Costs about 3*log2(size) calls. Returns None when even the largest window passes.
    """
    if not 0 <= center < n:
        raise ValueError(f"center {center} outside 0..{n - 1}")
    test = _Memo(fails, None)
    reach = max(center, n - 1 - center)
    limit = reach if max_radius is None else min(max(max_radius, 0), reach)

    def window(r: int) -> tuple[int, int]:
        return max(0, center - r), min(n - 1, center + r)

    r = 0
    while not test(*window(r)):
        if r >= limit:
            return None
        r = min(limit, max(1, 2 * r))
    lo, hi = window(r)
    # Largest lo in [lo, center] that still fails with hi: invariant test(a, hi) is True.
    a, b = lo, center
    while a < b:
        mid = (a + b + 1) // 2
        if test(mid, hi):
            a = mid
        else:
            b = mid - 1
    lo = a
    # Smallest hi in [center, hi] that still fails with lo: invariant test(lo, b) is True.
    a, b = center, hi
    while a < b:
        mid = (a + b) // 2
        if test(lo, mid):
            b = mid
        else:
            a = mid + 1
    return lo, b
