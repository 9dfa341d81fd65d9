"""Checks before any search: is there something to compare, does the engine spec fit the model, does the target
run at all, and are the reference's answers meaningful?

They exist so that bisect-lite never turns the tool's or the environment's failure into an op's fault: a target
that cannot run even one op of the model is a setup problem (exit 3), not a crash of op 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from bisect_lite.compare import Comparison
from bisect_lite.engines.base import RunResult
from bisect_lite.engines.lite import parse_log_line
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.errors import EngineUnavailable, InputError
from bisect_lite.model import Model, extract

_ERROR_WORDS = re.compile(r"error|check failed|failed|unsupported|exception|not found|no such", re.I)
SETUP_PROBES = 3  # distinct op types tried alone before the target is declared unable to run anything
GARBAGE_REL_L2 = 0.5  # a single op this far off computes something else, not the op imprecisely


def check_comparable(model: Model) -> None:
    """A model without ops or without fetch targets would always "match": refuse it (exit 2)."""
    where = f"the model {model.source}" if model.source is not None else "the model"
    if not model.fetches:
        raise InputError(f"{where} has no fetch targets (outputs): there is nothing to compare")
    if not model.ops:
        raise InputError(f"{where} has no ops (its outputs are its inputs): there is nothing to compare")


def check_spec_fits_model(spec: str, model: Model) -> None:
    """An fp16 `ops=`/`skip=` list naming an op type the model lacks is a typo that would silently round nothing
    (or everything): refuse it (exit 2) rather than report a vacuous match."""
    from bisect_lite.engines.fp16 import Fp16Engine
    from bisect_lite.engines.registry import create_engine
    from bisect_lite.engines.spec import parse_spec

    if parse_spec(spec).name != Fp16Engine.name:
        return
    engine = create_engine(spec)
    assert isinstance(engine, Fp16Engine)
    present = {op.type for op in model.ops} | {"feed"}
    for key, named in (("ops", engine.only), ("skip", engine.skip)):
        unknown = sorted(set(named or ()) - present)
        if unknown:
            raise InputError(
                f"engine {spec}: {key}= names op types this model does not have: {', '.join(unknown)} "
                f"(its op types: {', '.join(sorted(present - {'feed'}))})"
            )


def setup_ops(model: Model, available: Callable[[str], bool]) -> Iterator[int]:
    """Ops to run alone for the setup check: op 0 first, then the first op of each further type, each only when
    every tensor it reads is at hand (a param, or a value `available` vouches for)."""
    seen: set[str] = set()
    for op in model.ops:
        if op.type in seen:
            continue
        if all(model.is_param(n) or available(n) for n in op.reads):
            seen.add(op.type)
            yield op.index


def check_target_runs(
    target: EngineRunner,
    model: Model,
    values: Callable[[list[str]], dict[str, np.ndarray]],
    available: Callable[[str], bool],
    judge: Callable[[RunResult, Model], str | None] | None = None,
) -> None:
    """After the target failed on the whole model: run single ops of it (distinct types, op 0 first) on the
    target. One that works proves the engine works, so the failure belongs to the model; none working means the
    engine cannot run here (a runner that cannot start, a bad option, a missing device, a runner returning garbage):
    EngineUnavailable, and nobody is blamed.

    Without `judge`, an op works when the target returns a result; `judge(result, sub)` may also demand a right
    one: it returns None when the op works, else what was wrong ("" when it cannot tell: the op is not counted).
    """
    failures: list[tuple[str, str]] = []
    for index in setup_ops(model, available):
        try:
            sub = extract(model, [index])
        except InputError:
            continue
        result = target.run(sub, values(list(sub.feeds)))
        wrong = (None if result.ok else result.message) if judge is None or not result.ok else judge(result, sub)
        if wrong is None:
            return
        if not wrong:
            continue
        failures.append((model.ops[index].type, wrong))
        if len(failures) >= SETUP_PROBES:
            break
    if failures:
        types = ", ".join(t for t, _ in failures)
        message = one_line(failures[0][1]) or "no message"
        raise EngineUnavailable(
            f"the target {target.spec} fails on every op of this model tried alone ({types}): {message} -- it "
            "cannot run here (a setup problem, or no op of this model it supports); nothing was blamed"
        )


def garbage_output(cmp: Comparison | None) -> str | None:
    """What makes a single op's result garbage rather than imprecise: a missing output, a wrong shape, or an error
    of the order of the values themselves (rel L2 >= GARBAGE_REL_L2, NaN/Inf). None: the engine computed the op,
    perhaps not precisely enough (a tight tolerance is not a broken engine)."""
    if cmp is None:
        return "no comparable output"
    if cmp.missing:
        return f"no output {cmp.missing[0]}"
    for m in cmp.tensors:
        if m.passed:
            continue
        if m.ref_shape is not None and tuple(m.ref_shape) != tuple(m.target_shape or ()):
            return f"{m.name} has shape {list(m.target_shape or ())} instead of {list(m.ref_shape)}"
        if m.rel_l2 is None or not math.isfinite(m.rel_l2) or m.rel_l2 >= GARBAGE_REL_L2:
            return f"{m.name} is wrong: {m.reason}"
    return None


def nonfinite_warnings(
    reference: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    params: Mapping[str, np.ndarray] | None = None,
) -> list[str]:
    """A warning when the reference's outputs hold NaN/Inf: a match there means both sides agree on garbage, and
    the elements cannot be compared. Names the NaN/Inf inputs or params that likely caused it."""
    bad = {name: _count(a) for name, a in reference.items()}
    bad = {k: v for k, v in bad.items() if v}
    if not bad:
        return []
    shown = "; ".join(f"{k}: {nan} NaN, {inf} inf" for k, (nan, inf) in list(bad.items())[:4])
    causes = [f"input {k}" for k, a in inputs.items() if _count(a)]
    causes += [f"param {k}" for k, a in (params or {}).items() if _count(a)][:4]
    because = f"; NaN/Inf already in {', '.join(causes[:6])}" if causes else ""
    return [
        f"the reference's outputs hold NaN/Inf ({shown}){because}: those elements cannot be compared, so "
        "agreement there proves nothing"
    ]


def _count(array: np.ndarray) -> tuple[int, int] | None:
    a = np.asarray(array)
    if a.dtype.kind not in "fc" or a.size == 0:
        return None
    nan = int(np.isnan(a).sum())
    inf = int(np.isinf(a).sum())
    return (nan, inf) if nan or inf else None


def _without_log_prefix(line: str) -> str:
    """A Paddle-Lite/glog log line as its message and source: the prefix's padded date means nothing here."""
    parsed = parse_log_line(line)
    return parsed[1] if parsed else line


def one_line(text: str) -> str:
    """An engine's message on one line: its first line (what happened, e.g. "worker died (SIGABRT)") and the first
    later line that states an error (the engine's own words), at most 300 characters."""
    lines = [_without_log_prefix(ln.strip()) for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return ""
    said = next((ln for ln in lines[1:] if _ERROR_WORDS.search(ln)), None)
    line = f"{lines[0]} {said}" if said else lines[0]
    return line if len(line) <= 300 else line[:299] + "…"
