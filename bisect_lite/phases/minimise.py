"""Phase 5: shrink the repro's input shapes while the target still fails and the reference still runs."""

from __future__ import annotations

from typing import Any

import numpy as np

from bisect_lite.errors import InputError
from bisect_lite.model import Model
from bisect_lite.model.slicing import with_feed_shapes
from bisect_lite.phases.context import RunContext
from bisect_lite.phases.isolate import isolate
from bisect_lite.search import Status
from bisect_lite.search.shrink import shrink_dims


def minimise_shapes(ctx: RunContext, found: dict[str, Any], hunted: Status) -> dict[str, Any]:
    sub: Model = found["model"]
    feeds: dict[str, np.ndarray] = found["inputs"]
    names = list(sub.feeds)
    dims = [d for n in names for d in feeds[n].shape]
    if not dims:
        return found
    ranks = [feeds[n].ndim for n in names]
    attempts: dict[tuple[int, ...], dict[str, Any] | None] = {}

    def split(flat: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        out, i = {}, 0
        for name, rank in zip(names, ranks, strict=True):
            out[name] = flat[i : i + rank]
            i += rank
        return out

    def fails(flat: tuple[int, ...]) -> bool | None:
        shapes = split(flat)
        cropped = {n: np.ascontiguousarray(feeds[n][tuple(slice(0, d) for d in shapes[n])]) for n in names}
        try:
            model = with_feed_shapes(sub, shapes)
        except InputError:
            return None
        res = isolate(ctx, found["ops"], hunted, model=model, inputs=cropped)
        attempts[flat] = res
        return None if res is None else res["fails"]

    shrunk = shrink_dims(dims, fails, max_calls=30)
    final = tuple(shrunk.dims)
    if final == tuple(dims) or not (attempts.get(final) or {}).get("fails"):
        return found
    best = attempts[final]
    assert best is not None
    note = ", ".join(
        f"{n} {list(feeds[n].shape)} -> {list(best['inputs'][n].shape)}"
        for n in names
        if feeds[n].shape != best["inputs"][n].shape
    )
    return {**found, **best, "kind": found["kind"], "tried": [*found.get("tried", []), f"shrunk inputs: {note}"]}
