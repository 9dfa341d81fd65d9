"""Phase 6: describe each culprit (with its diagnosis) and write the repro bundles and the report."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bisect_lite.compare import CompareConfig, Comparison
from bisect_lite.phases.context import RunContext, worst_error


def culprit_entry(ctx: RunContext, found: dict[str, Any], confirmed: dict[str, Any], nondet: bool) -> dict[str, Any]:
    from bisect_lite.report.diagnose import diagnose

    model = ctx.model
    op = model.ops[found["index"]]
    cmp: Comparison | None = confirmed.get("comparison")
    worst = cmp.worst() if cmp else None
    ref_arr = tgt_arr = None
    if worst is not None:
        ref_arr = confirmed["expected"].get(worst.name)
        tgt_arr = confirmed["actual"].get(worst.name)
    depth = [
        (p.cut, float(e))
        for p in ctx.probes
        if p.segment == found["segment"] and (e := worst_error(p.comparison)) is not None
    ]
    status = "crash" if found["status"] == "crash" else "ok"
    diag = diagnose(
        ref_arr,
        tgt_arr,
        status=status,
        metrics=worst,
        depth_errors=depth,
        culprit_index=found["index"],
        isolated_rel_l2=worst.rel_l2 if worst else None,
        nondeterministic=nondet,
        message=confirmed.get("message") or last_message(ctx),
    )
    notes = list(confirmed.get("tried", []))
    if found.get("group"):
        notes.insert(0, f"the culprit lies inside a group the target fuses, {found['group']}: blamed the group")
    if found.get("fusion_note"):
        notes.append(found["fusion_note"])
    if found.get("flaky"):
        notes.append("a probe gave different answers when repeated (flaky target)")
    if found.get("linear_refined"):
        notes.append("probes contradicted each other (a cut changed the result); the bracket was refined linearly")
    return {
        "index": op.index,
        "type": op.type,
        "inputs": op.inputs,
        "outputs": op.outputs,
        "attrs": json_safe(model.op_attrs(op.index)),
        "kind": confirmed["kind"],
        "ops": confirmed.get("ops", [op.index]),
        "diagnosis": diag.to_dict(),
        "repro": None,
        "isolated": cmp.to_dict() if cmp else None,
        "notes": notes,
        "status": found["status"],
        "ambiguous": found.get("ambiguous"),
    }


def write_outputs(ctx: RunContext, report: dict[str, Any], found: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    """One repro directory per confirmed culprit (repro/, repro-2/, ...), then report.json/report.md."""
    from bisect_lite.report.write import write_run_report
    from bisect_lite.repro.bundle import write_bundle

    out = ctx.options.out
    ctx.events("phase", {"name": "repro", "detail": "writing repro bundles and the report"})
    for i, (_, entry) in enumerate(found):
        entry["repro"] = "repro" if i == 0 else f"repro-{i + 1}"
    # Bundles wait on paddle2onnx child processes: write them while this thread draws the report's plot.
    with ThreadPoolExecutor(max_workers=2) as pool:
        bundles = [
            pool.submit(
                write_bundle, out / entry["repro"], f, entry, ctx.ref, ctx.target, ctx.model, report["tolerance"]
            )
            for f, entry in found
        ]
        write_run_report(out, report)
        for bundle in bundles:
            bundle.result()


def last_message(ctx: RunContext) -> str:
    """The newest engine message of the search (a crash's stderr tail), for the diagnosis."""
    for p in reversed(ctx.probes):
        if p.message:
            return p.message
    return ""


def tolerance_dict(config: CompareConfig) -> dict[str, Any]:
    return {
        "atol": config.default.atol,
        "rtol": config.default.rtol,
        "allow_inf": config.allow_inf,
        "check_error_stat": config.check_error_stat,
        "scale_atol": config.scale_atol,
        "overrides": {k: {"atol": v.atol, "rtol": v.rtol} for k, v in config.overrides.items()},
    }


def json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
