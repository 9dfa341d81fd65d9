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


def tied_dims(shapes: Sequence[Sequence[int]]) -> list[list[int]]:
    """Groups of positions in the flattened dims of several tensors that must be cropped together.

    Two dims of different tensors with the same size (> 1) may be the same axis seen by both (a broadcast
    elementwise op, a matmul's contraction, a concat's other axes): cropping one and not the other makes the op
    broadcast a size-1 remainder, or compute over a different axis, i.e. a different function. Tying every such
    pair (transitively) can only forbid some shrinking, never change what the op computes. Size-1 dims are left
    free: they already broadcast. Returns the groups with more than one position, in order.
    """
    offsets, flat = [], 0
    for shape in shapes:
        offsets.append(flat)
        flat += len(shape)
    parent = list(range(flat))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, shape_a in enumerate(shapes):
        for b in range(a + 1, len(shapes)):
            for i, da in enumerate(shape_a):
                for j, db in enumerate(shapes[b]):
                    if da == db and da > 1:
                        parent[root(offsets[a] + i)] = root(offsets[b] + j)
    groups: dict[int, list[int]] = {}
    for i in range(flat):
        groups.setdefault(root(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]


def shrink_dims(
    dims: Sequence[int],
    fails: Callable[[tuple[int, ...]], bool | None],
    *,
    minimum: Sequence[int] | None = None,
    max_calls: int = 40,
    ties: Sequence[Sequence[int]] = (),
) -> ShrinkResult:
    """`shrink_dims_free` where the positions of each group in `ties` (equal dims) always keep one value."""
    if not ties:
        return shrink_dims_free(dims, fails, minimum=minimum, max_calls=max_calls)
    lows = [1] * len(dims) if minimum is None else list(minimum)
    owner = list(range(len(dims)))  # position -> the variable (first position of its group) it follows
    for group in ties:
        if len({dims[i] for i in group}) != 1:
            raise ValueError(f"tied dims {list(group)} differ: {[dims[i] for i in group]}")
        for i in group:
            owner[i] = group[0]
    variables = sorted(set(owner))
    index = {v: k for k, v in enumerate(variables)}
    var_lows = [max(lows[i] for i in range(len(dims)) if owner[i] == v) for v in variables]

    def expand(values: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(values[index[owner[i]]] for i in range(len(dims)))

    result = shrink_dims_free(
        [dims[v] for v in variables], lambda values: fails(expand(values)), minimum=var_lows, max_calls=max_calls
    )
    return ShrinkResult(expand(result.dims), result.calls)


def shrink_dims_free(
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
