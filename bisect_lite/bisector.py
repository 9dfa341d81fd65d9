"""`bisect-lite run`: bisect to the first divergent op, confirm it in isolation, minimise it, write a repro.

The job runs the phases of `bisect_lite.phases` over one `RunContext` (each step journalled, so `--resume`
continues an interrupted run):
1. reference: fix the inputs; the reference runs once on every intermediate tensor (spilled to disk), twice for
   determinism;
2. confirm: the target runs the whole model twice: a match ends the job, a difference between its runs is reported;
3. search: probes at cut points (the frontier at k: tensors made at or before k that are still needed later),
   each compared with its reference value, locate the first failing op or fused group;
4. isolate: the culprit alone, fed with reference values; if it passes alone, a window of neighbours is grown
   until it fails and shrunk back by delta debugging;
5. minimise: the repro's input shapes are shrunk while the target still fails;
6. bundle: the repro bundles and the report are written.
With --all the search continues past each culprit on segments fed with reference values.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bisect_lite import __version__
from bisect_lite.cache import Cache, inputs_hash
from bisect_lite.compare import CompareConfig
from bisect_lite.engines.runner import EngineRunner
from bisect_lite.errors import InputError
from bisect_lite.fp16_range import predict as predict_range
from bisect_lite.fp16_range import reader as range_reader
from bisect_lite.fsutil import OutputDir, claim_output_dir
from bisect_lite.inputs import prepare_inputs, read_npz, save_npz
from bisect_lite.journal import Journal
from bisect_lite.model import Model, load_model
from bisect_lite.options import RunOptions
from bisect_lite.phases.bundle import culprit_entry, tolerance_dict, write_outputs
from bisect_lite.phases.confirm import confirm_failure, decide_determinism
from bisect_lite.phases.context import Events, RunContext
from bisect_lite.phases.isolate import isolate_culprit
from bisect_lite.phases.minimise import minimise_shapes
from bisect_lite.phases.observe import search_runs
from bisect_lite.phases.reference import compute_reference
from bisect_lite.phases.search import placement_search, search_segment, segment_outcome, target_groups
from bisect_lite.precision import EMULATION_SPEC, PrecisionRule, explain_within, resolve_rule
from bisect_lite.preflight import check_comparable, check_spec_fits_model
from bisect_lite.reference import ReferenceValues
from bisect_lite.search import Status, expected_probes


# ---- the job ----------------------------------------------------------------------------------------------------
def prepare_out_dir(
    out: Path, model: Model, resume: bool, force: bool = False, params: Path | None = None
) -> OutputDir:
    """The output-path policy of fsutil; the returned claim holds the directory's lock until closed."""
    return claim_output_dir(out, protected=[model.source, params], force=force, resume=resume, option="--out")


def run_bisect(model_path: Path, options: RunOptions, events: Events | None = None) -> dict[str, Any]:
    """The whole `run` job; returns the report (also written to OUT/report.json and OUT/report.md)."""
    emit = events or (lambda kind, data: None)
    t_start = time.perf_counter()
    if options.compare is None:
        from bisect_lite.engines.registry import default_tolerance

        options.compare = CompareConfig(default=default_tolerance(options.target, options.target_precision))
    model = load_model(model_path, options.params)
    check_comparable(model)
    for spec in (options.ref, options.target):
        check_spec_fits_model(spec, model)
    # Inputs are checked before --out is touched: a bad value leaves the user's paths as they were.
    fresh_inputs = (
        None
        if options.resume
        else prepare_inputs(
            model, options.inputs, shapes=options.shapes, seed=options.seed, int_range=options.int_range
        )
    )
    out = Path(options.out)
    claim = prepare_out_dir(out, model, options.resume, options.force, options.params)
    journal = Journal(out / "journal.jsonl")
    header = journal.header()
    if options.resume:
        if header is None:
            raise InputError(f"--resume: {out} holds no journal header; start over with --force")
        inputs = read_npz(out / "inputs.npz", "the interrupted run's inputs")
        if inputs_hash(inputs) != header["inputs"]:
            raise InputError(f"--resume: {out}/inputs.npz is not the run's inputs any more; start over with --force")
        if header and header["model"] != model.fingerprint:
            raise InputError(f"--resume: {out} was made for another model (fingerprint {header['model']})")
        if header and (header["ref"], header["target"]) != (options.ref, options.target):
            raise InputError(f"--resume: {out} was made with --ref {header['ref']} --target {header['target']}")
    else:
        assert fresh_inputs is not None
        inputs = fresh_inputs
        save_npz(out / "inputs.npz", inputs)
    if header is None:
        journal.append(
            {
                "type": "start",
                "model": model.fingerprint,
                "ref": options.ref,
                "target": options.target,
                "inputs": inputs_hash(inputs),
                "tool": __version__,
            }
        )

    cache = Cache(results=options.cache)
    scratch = out / ".scratch"
    ref = EngineRunner(options.ref, cache, timeout=options.timeout, verbose=options.verbose, scratch=scratch)
    target = EngineRunner(options.target, cache, timeout=options.timeout, verbose=options.verbose, scratch=scratch)
    values = ReferenceValues(out / "reference", inputs)
    rule = precision_rule(options, target.engine.declared_precision)
    # The emulation's results are read once for their error scalars: caching them would write every tensor to disk.
    emulation_cache = Cache(results=False)
    emulation = (
        EngineRunner(
            EMULATION_SPEC, emulation_cache, timeout=options.timeout, verbose=options.verbose, scratch=scratch
        )
        if rule is not None
        else None
    )
    try:
        ctx = RunContext(model, options, ref, target, inputs, journal, values, emit)
        ctx.precision, ctx.emulation = rule, emulation
        if options.engines_note:
            ctx.notes.append(options.engines_note)
        report, found = _run(ctx)
        report["seconds"] = round(time.perf_counter() - t_start, 3)
        # The precision model's fp16 emulation is an engine too: its runs are not bisect-lite's overhead.
        engines = [ref, target, *([emulation] if emulation is not None else [])]
        report["engine_seconds"] = round(sum(r.engine_seconds for r in engines), 3)
        report["target_runs"] = target.runs
        report["target_runs_by_phase"] = dict(target.runs_by_phase)
        report["search_strategy"] = ctx.search_strategy
        report["search_strategy_reason"] = ctx.search_strategy_reason
        report["peak_rss_mb"] = peak_rss_mb(ref, target, emulation)
        report["reference_runs"] = ref.runs
        report["target_cache_hits"] = target.cache_hits
        # Runs add facts (the library's release, the OpenCL device, what the kernel caches saved): take them now.
        report["reference"]["facts"], report["target"]["facts"] = ref.facts(), target.facts()
        culprit_ops = sorted({i for c in report["culprits"] for i in c.get("ops") or [c["index"]]})
        kernels = target.kernels(model, culprit_ops)
        if kernels:
            report["target"]["kernels"] = kernels
        write_outputs(ctx, report, found)
        return report
    finally:
        ref.close()
        target.close()
        if emulation is not None:
            emulation.close()
        emulation_cache.close()
        cache.close()
        values.close()
        _remove_tree(scratch)
        claim.close()


def _run(ctx: RunContext) -> tuple[dict[str, Any], list[tuple[dict[str, Any], dict[str, Any]]]]:
    """The phases in order; returns the report and the confirmed culprits to bundle."""
    model, options = ctx.model, ctx.options
    assert options.compare is not None
    n = len(model.ops)
    report: dict[str, Any] = {
        "tool": f"bisect-lite {__version__}",
        "model": str(model.source),
        "ops": n,
        "reference": {"engine": ctx.ref.spec, "facts": ctx.ref.facts()},
        "target": {"engine": ctx.target.spec, "facts": ctx.target.facts()},
        "inputs": "inputs.npz",
        "tolerance": tolerance_dict(options.compare),
        "expected_probes": expected_probes(n),
        "op_types": [op.type for op in model.ops],
        "culprits": [],
        "notes": ctx.notes,
        "precision": precision_section(ctx),
    }
    found: list[tuple[dict[str, Any], dict[str, Any]]] = []
    compute_reference(ctx, report)
    if ctx.precision is not None:  # a half-precision target: where fp16's range fails the model, from the reference
        report["fp16_range"] = [f.to_dict() for f in predict_range(model, range_reader(ctx.values))]
    whole, nondet = confirm_failure(ctx, report)
    if whole.status == Status.PASS:
        decide_determinism(ctx, report)
        report["verdict"] = within_precision(ctx, report)
        report["probes"] = []
        report["search_probes"] = 0
        return report, found
    report["verdict"] = "crash" if whole.status == Status.CRASH else "mismatch"

    ctx.groups = target_groups(ctx)
    start, outcome = 0, whole
    located_total = 0  # culprits located, duplicates of an earlier root cause included
    while True:
        with ctx.phase("search" if start == 0 else "all"):
            located = (
                placement_search(ctx, whole) if options.strategy == "placement" else search_segment(ctx, start, outcome)
            )
        if located is None:
            break
        culprit = located["index"]
        ctx.events("phase", {"name": "confirm", "detail": f"op {culprit} ({model.ops[culprit].type}) in isolation"})
        hunted = outcome.status
        with ctx.phase("isolate"):
            confirmed = isolate_culprit(ctx, located["ops"], hunted, start)
        if len(confirmed.get("ops", [])) == 1 and confirmed["ops"][0] != culprit:
            located["index"] = culprit = confirmed["ops"][0]  # delta debugging pinned another op
        located_total += 1
        nondet = decide_determinism(ctx, report)
        # The diagnosis reads the full-size evidence; shrunk inputs only make the bundle small.
        entry = culprit_entry(ctx, located, confirmed, nondet)
        twin = same_root_cause(report["culprits"], entry)
        if twin is not None:
            twin.setdefault("duplicates", []).append({"index": entry["index"], "ops": entry["ops"]})
            ctx.notes.append(
                f"op {entry['index']} {entry['type']} (ops {entry['ops']}): same root cause as culprit op "
                f"{twin['index']} ({_repro_name(found, twin)}): same op type, attributes and failure; no separate repro"
            )
        else:
            repro = confirmed
            if options.minimise and confirmed["kind"] in ("op", "group", "subgraph"):
                ctx.events("phase", {"name": "minimise", "detail": "shrinking input shapes"})
                with ctx.phase("minimise"):
                    repro = minimise_shapes(ctx, confirmed, hunted)
                entry = culprit_entry(ctx, located, confirmed, nondet, repro=repro)
            report["culprits"].append(entry)
            if confirmed["kind"] != "context":
                found.append((repro, entry))
        last = max(located["ops"])
        if options.strategy != "bisect" or not options.find_all or last >= n - 1:
            break
        if len(report["culprits"]) >= options.max_culprits or located_total >= 4 * options.max_culprits:
            report["stopped_at_limit"] = True
            ctx.notes.append(
                f"--all stopped at --max-culprits {options.max_culprits} ({len(report['culprits'])} distinct "
                f"culprits, {located_total - len(report['culprits'])} duplicates): ops {last + 1}..{n - 1} were "
                "not searched; raise --max-culprits to go on"
            )
            break
        start = last + 1
        ctx.events("phase", {"name": "continue", "detail": f"ops {start}..{n - 1} fed with reference values"})
        with ctx.phase("all"):
            outcome = segment_outcome(ctx, start)
        if outcome.status == Status.PASS:
            break
    decide_determinism(ctx, report)  # when nothing was located
    report["probes"] = [p.to_dict() for p in ctx.probes]
    # Target runs of the search (a run observing several cuts counts once); -1: placement probes
    report["search_probes"] = search_runs(ctx, 0) + search_runs(ctx, -1)
    return report, found


def same_root_cause(culprits: list[dict[str, Any]], entry: dict[str, Any]) -> dict[str, Any] | None:
    """An earlier culprit with the same op type, attributes and failure signature (status and diagnosis kind)."""
    from bisect_lite.report.markdown import visible_attrs

    def signature(c: dict[str, Any]) -> tuple[Any, ...]:
        attrs = json.dumps(visible_attrs(c.get("attrs") or {}), sort_keys=True, default=str)
        kinds = (c.get("kind"), len(c.get("ops") or []), c.get("status"), (c.get("diagnosis") or {}).get("kind"))
        return (c.get("type"), attrs, *kinds)

    mine = signature(entry)
    return next((c for c in culprits if signature(c) == mine and c.get("kind") != "context"), None)


def _repro_name(found: list[tuple[dict[str, Any], dict[str, Any]]], culprit: dict[str, Any]) -> str:
    """The repro directory the culprit will get (write_outputs names them in this order)."""
    for i, (_, entry) in enumerate(found):
        if entry is culprit:
            return "repro" if i == 0 else f"repro-{i + 1}"
    return "no repro"


def precision_rule(options: RunOptions, declared: str) -> PrecisionRule | None:
    """The precision model for this target, or None when tolerances judge (fp32 target, explicit --atol/--rtol)."""
    if options.explicit_tolerance:
        return None
    try:
        return resolve_rule(declared, options.target_precision, options.precision_factor, options.accumulation)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def precision_section(ctx: RunContext) -> dict[str, Any]:
    """report.json `precision`: which judgement was used and what it assumes."""
    rule = ctx.precision
    if rule is None:
        why = "explicit --atol/--rtol" if ctx.options.explicit_tolerance else "the target computes in fp32"
        return {"model": "tolerance", "why": why}
    if rule.declared_by == "undeclared":
        ctx.notes.append(
            f"the target {ctx.target.spec} does not state its precision: treated as half precision (fp16); "
            "pass --target-precision fp32 if it computes in fp32"
        )
    return {"model": "precision", **rule.to_dict()}


def within_precision(ctx: RunContext, report: dict[str, Any]) -> str:
    """The verdict of a run with no tensor beyond its judgement: `precision` (with the explanation) when the
    precision model judged a difference, else `match`."""
    cmp = report["full_model"].get("comparison")
    if ctx.precision is None or cmp is None:
        return "match"
    from bisect_lite.compare import Comparison

    comparison = Comparison.from_dict(cmp)
    if all((m.max_abs or 0.0) == 0.0 for m in comparison.tensors):
        return "match"
    checked = report["precision"].get("tensors_checked", len(comparison.tensors))
    report["precision"].update(
        explain_within(ctx.model, ctx.precision, comparison, ctx.expectations, ctx.target.spec, checked)
    )
    return "precision"


def peak_rss_mb(*runners: EngineRunner | None) -> dict[str, float]:
    """Peak resident memory of this process and of each engine's worker (MB); `children` is the largest child
    process that has exited (cmd: runs, restarted workers), from getrusage."""
    import resource

    from bisect_lite.engines.worker import peak_rss

    to_mb = 1 / (1 << 20)
    # VmHWM, not getrusage: Linux carries ru_maxrss across exec, so a bisect-lite started from a large process
    # (a test runner, a notebook) would report its parent's peak as its own.
    own = peak_rss(os.getpid()) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peaks = {"bisect-lite": own * to_mb}
    for role, runner in zip(("reference", "target", "emulation"), runners, strict=True):
        if runner is not None and runner.peak_rss:
            peaks[f"{role} worker"] = runner.peak_rss * to_mb
    peaks["children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 * to_mb
    return {k: round(v, 1) for k, v in peaks.items()}


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
