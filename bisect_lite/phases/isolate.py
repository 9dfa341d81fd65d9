"""Phase 4: the culprit alone, fed with reference values; else the smallest failing window, shrunk by ddmin."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bisect_lite.errors import InputError
from bisect_lite.model import Model, extract
from bisect_lite.phases.context import STATUS_WORD, RunContext
from bisect_lite.search import Status, ddmin, grow_window

DDMIN_BUDGET = 40  # target runs delta debugging may spend on one culprit's window


def isolate(
    ctx: RunContext,
    ops: Sequence[int],
    hunted: Status,
    model: Model | None = None,
    inputs: dict[str, np.ndarray] | None = None,
) -> dict[str, Any] | None:
    """Run ops alone, fed with reference values; None when the reference cannot run them."""
    sub = model or extract(ctx.model, ops)
    if inputs is None and any(f not in ctx.values for f in sub.feeds):
        return None  # fed by a tensor the reference cannot return
    feeds = inputs or ctx.values.get_many(sub.feeds)
    ref = ctx.ref.run(sub, feeds)
    if not ref.ok:
        return None
    tgt = ctx.target.run(sub, feeds)
    outcome, cmp = ctx.judge(tgt, ref.outputs, list(sub.fetches), sub, feeds)
    return {
        "model": sub,
        "inputs": feeds,
        "expected": ref.outputs,
        "actual": tgt.outputs,
        "fails": outcome.status == hunted,
        "comparison": cmp,
        "status": STATUS_WORD[outcome.status],
        "message": tgt.message,
        "stage": tgt.info.get("stage"),  # "load": the target never ran the ops (e.g. a conversion failed)
        "ops": list(ops),
    }


def isolate_culprit(ctx: RunContext, culprit_ops: list[int], hunted: Status, start: int) -> dict[str, Any]:
    """The culprit op (or fused group) alone, else the smallest failing window, else the whole model ("context")."""
    n = len(ctx.model.ops)
    culprit = culprit_ops[0]
    tried: list[str] = []
    what = f"op {culprit}" if len(culprit_ops) == 1 else f"fused group ops {culprit}..{culprit_ops[-1]}"
    alone = isolate(ctx, culprit_ops, hunted)
    if alone and alone["fails"]:
        return {"kind": "op" if len(culprit_ops) == 1 else "group", **alone, "tried": tried}
    tried.append(
        f"{what} alone, fed with reference values: " + ("passes" if alone else "the reference cannot run it alone")
    )
    cache: dict[tuple[int, ...], dict[str, Any] | None] = {}

    def run_ops(ops: tuple[int, ...]) -> dict[str, Any] | None:
        if ops not in cache:
            try:
                result = isolate(ctx, list(ops), hunted)
            except InputError:
                result = None
            # Bounded memory: only the newest failing result keeps its arrays (ddmin's answer is the last failure
            # it saw); every other result keeps its verdict. Holding all of them reached 1.25 GB on PP-OCRv5 det.
            if result is not None and result["fails"]:
                for key, old in cache.items():
                    if old is not None and "model" in old:
                        cache[key] = _verdict_only(old)
            elif result is not None:
                result = _verdict_only(result)
            cache[ops] = result
        return cache[ops]

    def window_fails(lo: int, hi: int) -> bool | None:
        res = run_ops(tuple(range(start + lo, start + hi + 1)))
        return None if res is None else res["fails"]

    window = grow_window(culprit - start, n - start, window_fails)
    if window is None:
        tried.append(f"windows around op {culprit} up to ops {start}..{n - 1}: all pass when fed with reference values")
        return {"kind": "context", "tried": tried, "ops": list(range(start, n))}
    ops = tuple(range(start + window[0], start + window[1] + 1))
    tried.append(f"smallest failing window: ops {ops[0]}..{ops[-1]}")
    minimal = ddmin(list(ops), lambda subset: (run_ops(tuple(subset)) or {}).get("fails"), max_calls=DDMIN_BUDGET)
    best = run_ops(tuple(minimal.items)) or run_ops(ops)
    assert best is not None
    if "model" not in best:  # a memoised answer whose arrays were dropped: run it again for the evidence
        best = isolate(ctx, best["ops"], hunted) or best
    finished = "finished" if minimal.one_minimal else f"stopped at its budget of {DDMIN_BUDGET} runs"
    tried.append(f"delta debugging kept ops {list(minimal.items)} ({minimal.calls} runs, {finished})")
    ddmin_info = {"one_minimal": minimal.one_minimal, "calls": minimal.calls, "budget": DDMIN_BUDGET}
    return {"kind": "op" if len(best["ops"]) == 1 else "subgraph", **best, "tried": tried, "ddmin": ddmin_info}


def _verdict_only(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("fails", "status", "ops", "message")}
