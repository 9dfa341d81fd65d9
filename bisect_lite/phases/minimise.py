"""Phase 5: shrink the repro's input shapes while the target still fails and the reference still runs."""

from __future__ import annotations

from typing import Any

import numpy as np

from bisect_lite.errors import InputError
from bisect_lite.model import Model
from bisect_lite.model.slicing import with_feed_shapes, with_var_shapes
from bisect_lite.phases.context import RunContext
from bisect_lite.phases.isolate import isolate
from bisect_lite.search import Status
from bisect_lite.search.shrink import shrink_dims, tied_dims


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

    full_shapes = {k: np.shape(v) for k, v in found["expected"].items()}

    def fails(flat: tuple[int, ...]) -> bool | None:
        shapes = split(flat)
        cropped = {n: np.ascontiguousarray(feeds[n][tuple(slice(0, d) for d in shapes[n])]) for n in names}
        try:
            model = with_feed_shapes(sub, shapes)
        except InputError:
            return None
        res = isolate(ctx, found["ops"], hunted, model=model, inputs=cropped)
        if res is not None and not same_function(full_shapes, res["expected"]):
            res = None  # the crop changed what the ops compute (an output grew or changed rank): not the same fault
        attempts[flat] = res
        return None if res is None else res["fails"]

    # Equal dims of different feeds are cropped together, so broadcasting stays what it was in the model.
    shrunk = shrink_dims(dims, fails, max_calls=30, ties=tied_dims([feeds[n].shape for n in names]))
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
    # The repro records the shapes it really has (feeds and outputs), not the model's.
    known = {**{n: a.shape for n, a in best["inputs"].items()}, **{n: np.shape(a) for n, a in best["expected"].items()}}
    best = {**best, "model": with_var_shapes(best["model"], known)}
    return {**found, **best, "kind": found["kind"], "tried": [*found.get("tried", []), f"shrunk inputs: {note}"]}


def same_function(full: dict[str, tuple[int, ...]], shrunk: dict[str, np.ndarray]) -> bool:
    """Whether a shrunk run's outputs are crops of the full-size ones: same names and ranks, no dim larger."""
    if set(full) != set(shrunk):
        return False
    for name, shape in full.items():
        got = np.shape(shrunk[name])
        if len(got) != len(shape) or any(g > f for g, f in zip(got, shape, strict=True)):
            return False
    return True
