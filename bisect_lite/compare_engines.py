"""`bisect-lite compare`: run two engines on the whole model and compare every output."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bisect_lite.cache import Cache, default_root, inputs_hash
from bisect_lite.compare import CompareConfig, compare_outputs
from bisect_lite.engines.runner import DEFAULT_TIMEOUT, EngineRunner
from bisect_lite.errors import EngineUnavailable
from bisect_lite.inputs import prepare_inputs, save_npz
from bisect_lite.model import Model, load_model
from bisect_lite.precision import EMULATION_SPEC, ExpectedError, PrecisionRule, error_stats
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

    With a precision `rule` (a half-precision target, no explicit --atol/--rtol) each output is judged as `run`
    judges it: against the error the fp16 emulation makes on it, times K; "precision" means every difference is
    within that model (exit 0), as in `run`.
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
            judged = rule.judge_comparison(
                cmp, _emulation_errors(model, feeds, ref_result.outputs, store, timeout), keep=config.overrides
            )
            if judged.passed and not cmp.passed:
                verdict = "precision"
            elif not judged.passed:
                verdict = "mismatch"
            cmp = judged
        report.update(verdict=verdict, comparison=cmp.to_dict())
        return report
    finally:
        for r in runners:
            r.close()
        store.close()


def _emulation_errors(
    model: Model, feeds: dict[str, Any], expected: dict[str, Any], store: Cache, timeout: float
) -> dict[str, ExpectedError]:
    """The fp16 emulation's error on each output: what half precision alone makes of this model on these inputs."""
    with EngineRunner(EMULATION_SPEC, store, timeout=timeout) as emulation:
        result = emulation.run(model, feeds)
    if not result.ok:
        raise EngineUnavailable(
            f"the {EMULATION_SPEC} emulation (the precision model) failed on this model: {one_line(result.message)}; "
            "pass --atol/--rtol to judge by tolerances instead"
        )
    errors = {}
    for name in model.fetches:
        if name in expected and name in result.outputs:
            e = error_stats(expected[name], result.outputs[name])
            if e is not None:
                errors[name] = e
    return errors
