"""Phase 6: describe each culprit (with its diagnosis) and write the repro bundles and the report."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bisect_lite.compare import CompareConfig, Comparison
from bisect_lite.phases.context import RunContext, worst_error


def culprit_entry(
    ctx: RunContext,
    found: dict[str, Any],
    confirmed: dict[str, Any],
    nondet: bool,
    repro: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's description of a culprit. `confirmed`: the isolated failing ops at full size (the diagnosis
    and the isolated metrics read it); `repro`: what the bundle holds (shrunk inputs; default `confirmed`), whose
    ops, kind and notes the entry describes -- after delta debugging they may differ from where the search
    pointed."""
    from bisect_lite.fp16_range import op_range, reader
    from bisect_lite.report.diagnose import diagnose

    repro = repro or confirmed
    model = ctx.model
    op = model.ops[described_op(ctx, found["index"], repro)]
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
    # What the culprit's true values reach (its reference inputs and outputs at full size): tells an fp16 overflow
    # or underflow from a NaN/inf or kernel bug.
    known = {**(confirmed.get("inputs") or {}), **(confirmed.get("expected") or {})}
    diag = diagnose(
        ref_arr,
        tgt_arr,
        status=status,
        metrics=worst,
        depth_errors=depth,
        culprit_index=op.index,
        isolated_rel_l2=worst.rel_l2 if worst else None,
        nondeterministic=nondet,
        message=confirmed.get("message") or last_message(ctx),
        op={"type": op.type, "inputs": op.inputs, "outputs": op.outputs, "attrs": model.op_attrs(op.index)},
        fp16_range=op_range(model, op.index, reader(known)) if status == "ok" else None,
    )
    ops = list(repro.get("ops") or [op.index])
    notes = list(repro.get("tried", []))
    if found.get("group") and sorted(found["ops"]) == sorted(ops):
        notes.insert(0, f"the culprit lies inside a group the target fuses, {found['group']}: blamed the group")
    if op.index != found["index"]:
        notes.insert(
            0,
            f"the search pointed at op {found['index']} ({model.ops[found['index']].type}); the repro holds ops "
            f"{ops}, and op {op.index} ({op.type}) makes its failing output",
        )
    if confirmed.get("stage") == "load":
        notes.insert(0, "the target never ran this op: it failed while loading (converting) the model that holds it")
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
        "kind": repro["kind"],
        "ops": ops,
        "ddmin": repro.get("ddmin"),
        "diagnosis": diag.to_dict(),
        "repro": None,
        "isolated": cmp.to_dict() if cmp else None,
        "notes": notes,
        "status": found["status"],
        "ambiguous": found.get("ambiguous"),
    }


def described_op(ctx: RunContext, pointed: int, repro: dict[str, Any]) -> int:
    """The op an entry names: where the search pointed if the repro holds it, else the repro op that makes its
    worst failing output, else its first op."""
    ops = list(repro.get("ops") or [pointed])
    if pointed in ops:
        return pointed
    cmp: Comparison | None = repro.get("comparison")
    producers = ctx.model.producers
    failing = [cmp.worst().name] if cmp and cmp.worst() else []
    failing += list(cmp.failing) if cmp else []
    made = [producers[t] for t in failing if producers.get(t) in ops]
    return made[0] if made else ops[0]


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
