"""`bisect-lite compare`: run two engines on the whole model and compare every output.

A half-precision target gets the judgement `run` gives it (one verdict for the same model, inputs and target):
the outputs and then every tensor of the reference dump are judged by the precision model, whose expectation is
fp16 rounding alone, and fp16 range failures always fail. So a saturating softmax or a normalisation that hides a
fault or an overflow at the outputs does not turn a `run` mismatch into a `compare` pass. It costs the reference
dump (two reference runs per batch), one `fp16:range=none` run and one target run per batch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.cache import Cache, default_root, inputs_hash
from bisect_lite.compare import CompareConfig, Comparison, compare_outputs
from bisect_lite.engines.runner import DEFAULT_TIMEOUT, EngineRunner
from bisect_lite.errors import EngineUnavailable
from bisect_lite.inputs import prepare_inputs, save_npz
from bisect_lite.model import Model, load_model, truncate
from bisect_lite.precision import EMULATION_SPEC, PrecisionRule
from bisect_lite.preflight import (
    check_comparable,
    check_spec_fits_model,
    check_target_runs,
    nonfinite_warnings,
    one_line,
)


def compare_engines(
    model_path: Path,
    ref: str,
    target: str,
    *,
    inputs: Path | None = None,
    shapes: Sequence[str] = (),
    seed: int = 0,
    int_range: str | None = None,
    compare: CompareConfig | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cache: bool = True,
    save_inputs: Path | None = None,
    params: Path | None = None,
    verbose: bool = False,
    rule: PrecisionRule | None = None,
) -> dict[str, Any]:
    """Returns {"verdict": match|precision|mismatch|crash, "comparison", "reference", "target", ...}.

    With a precision `rule` (a half-precision target, no explicit --atol/--rtol) the model is judged as `run`
    judges it (`_judge_every_tensor`): "precision" means every difference of every tensor is within that model
    (exit 0); any tensor beyond it, or any fp16 range failure of the target, is a mismatch. The report then also
    holds `every_tensor`, `fp16_range` (the reference's range findings) and the first failing tensor's
    `diagnosis`.
    """
    model = load_model(model_path, params)
    check_comparable(model)
    for spec in (ref, target):
        check_spec_fits_model(spec, model)
    feeds = prepare_inputs(model, inputs, shapes=shapes, seed=seed, int_range=int_range)
    # The inputs used are saved with every result, so any comparison can be repeated (--inputs FILE).
    if save_inputs is None:
        save_inputs = default_root() / "inputs" / f"{inputs_hash(feeds)}.npz"
    save_npz(save_inputs, feeds)
    if compare is None:
        from bisect_lite.engines.registry import default_tolerance

        compare = CompareConfig(default=default_tolerance(target))
    config = compare
    store = Cache(results=cache)
    runners = [EngineRunner(spec, store, timeout=timeout, verbose=verbose) for spec in (ref, target)]
    try:
        ref_result = runners[0].run(model, feeds)
        if not ref_result.ok:
            raise EngineUnavailable(
                f"the reference engine {ref} failed on this model: {ref_result.status}: {one_line(ref_result.message)}"
            )
        target_result = runners[1].run(model, feeds)
        if not target_result.ok:
            if target_result.info.get("stage") == "load":  # it never ran: the conversion (e.g. paddle2onnx) failed
                raise EngineUnavailable(f"engine {target} cannot run this model: {one_line(target_result.message)}")
            # A target that cannot run even single ops of the model is a setup problem, not the model's crash.
            check_target_runs(runners[1], model, lambda names: {n: feeds[n] for n in names}, feeds.__contains__)
        report: dict[str, Any] = {
            "model": str(model_path),
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()},
            "reference": {"engine": ref, "facts": runners[0].facts(), "seconds": round(ref_result.seconds, 4)},
            "target": {"engine": target, "facts": runners[1].facts(), "seconds": round(target_result.seconds, 4)},
            "tolerance": {"atol": config.default.atol, "rtol": config.default.rtol},
            "inputs_file": str(save_inputs),
            "warnings": nonfinite_warnings(ref_result.outputs, feeds, model.params),
        }
        if not target_result.ok:
            report.update(verdict="crash", status=target_result.status, message=target_result.message, comparison=None)
            return report
        cmp = compare_outputs(ref_result.outputs, target_result.outputs, config, names=list(model.fetches))
        verdict = "match" if cmp.passed else "mismatch"
        if rule is not None:
            report["precision"] = rule.to_dict()
            judged, deep = _judge_every_tensor(
                model, feeds, cmp, (ref_result.outputs, target_result.outputs), runners, rule, config, timeout
            )
            report.update(deep)
            if not judged.passed or deep["every_tensor"]["beyond_precision"]:
                verdict = "mismatch"
            elif any((m.max_abs or 0.0) > 0 for m in judged.tensors) or not cmp.passed:
                verdict = "precision"
            cmp = judged
        report.update(verdict=verdict, comparison=cmp.to_dict())
        return report
    finally:
        for r in runners:
            r.close()
        store.close()


def _judge_every_tensor(
    model: Model,
    feeds: dict[str, np.ndarray],
    outputs: Comparison,
    arrays: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    runners: list[EngineRunner],
    rule: PrecisionRule,
    config: CompareConfig,
    timeout: float,
    budget: int = 1 << 30,
) -> tuple[Comparison, dict[str, Any]]:
    """The outputs judged by `rule`, and every tensor as `run` judges it (precision.deep_check), from a reference
    dump in a temporary directory: (the judged outputs, the report's `every_tensor`, `fp16_range` and, when a
    tensor fails, `diagnosis`)."""
    from bisect_lite.fp16_range import op_range, predict, reader
    from bisect_lite.precision import Expectations, deep_check, fused_away
    from bisect_lite.reference import ReferenceValues
    from bisect_lite.report.diagnose import diagnose

    ref, target = runners
    with tempfile.TemporaryDirectory(prefix="bisect-lite-compare-") as tmp:
        values = ReferenceValues(Path(tmp) / "reference", feeds)
        values.compute(model, ref, budget)
        expectations = Expectations(values.directory)
        # The emulation's results are read once for their error scalars: no result cache (as in `run`).
        emulation_cache = Cache(results=False)
        try:
            with EngineRunner(EMULATION_SPEC, emulation_cache, timeout=timeout) as emulation:
                expectations.compute(model, values, emulation)
        finally:
            emulation_cache.close()
        judged = rule.judge_comparison(outputs, expectations.errors, keep=config.overrides, values=arrays)
        hidden = fused_away(model, target)
        batches = values.batches(skip=hidden)
        observed = target.observe(model, batches, values, "every")
        try:
            deep = deep_check(model, values, observed.stream(), rule, expectations.errors, config)
        finally:
            observed.remove()
        # the whole model ran; a crash of a cut is not a numeric finding
        deep.runs, deep.crashed = len(batches), observed.crashed[:300]
        findings = predict(model, reader(values))
        producers = model.producers
        failing = [m for m in (deep.comparison.tensors if deep.comparison else []) if not m.passed]
        failing += [m for m in judged.tensors if not m.passed and m.name not in {f.name for f in failing}]
        first = min(failing, key=lambda m: producers.get(m.name, len(model.ops)), default=None)
        report: dict[str, Any] = {
            "every_tensor": {
                "checked": deep.checked,
                "runs": deep.runs,
                "beyond_precision": [m.name for m in failing],
                "first_op": None if first is None else producers.get(first.name),
                "not_checked": {"fused_away_by_target": len(hidden), "unobservable": len(values.unobservable)},
                "crashed": deep.crashed or None,
                "noise_scale": deep.noise_scale,
            },
            "fp16_range": [f.to_dict() for f in findings],
        }
        if first is not None:
            index = producers.get(first.name)
            result = target.run(truncate(model, [first.name]), feeds)
            if index is not None and result.ok:
                op = model.ops[index]
                found = diagnose(
                    values[first.name],
                    result.outputs[first.name],
                    metrics=first,
                    op={"type": op.type, "inputs": op.inputs, "outputs": op.outputs, "attrs": model.op_attrs(index)},
                    fp16_range=op_range(model, index, reader(values)),
                )
                report["diagnosis"] = {"tensor": first.name, "op": index, "op_type": op.type, **found.to_dict()}
        values.close()
    return judged, report
