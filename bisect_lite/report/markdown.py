"""report.md: the report.json of a run, written for people (verdict first, then evidence, then the log)."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bisect_lite.report.kernels import kernel_lines

# Attributes that describe the program, not the computation: left out of op tables.
HIDDEN_ATTRS = frozenset({"op_callstack", "op_namescope", "op_device", "with_quant_attr"})
_MAX_CELL = 120

METRIC_COLUMNS = (
    ("max abs", "max_abs"),
    ("max rel", "max_rel"),
    ("rel L2", "rel_l2"),
    ("cosine", "cosine"),
    ("over tol", "mismatch_fraction"),
    ("min atol", "min_atol"),
    ("min rtol", "min_rtol"),
)


def render_report(report: Mapping[str, Any], plot_file: str | None) -> str:
    """Render the report.json dict as Markdown.  ``plot_file``: the PNG path relative to report.md, or None."""
    out: list[str] = []
    culprits = list(report.get("culprits") or [])
    probes = list(report.get("probes") or [])
    op_types = _op_types(report, culprits)

    out.append(f"# bisect-lite report: `{report.get('model', '?')}`")
    out.append("")
    out.append(_verdict_line(report, culprits))
    out.append("")
    out.extend(_context(report))
    out.extend(kernel_lines((report.get("target") or {}).get("kernels"), "## Target kernels"))

    if culprits:
        for n, c in enumerate(culprits, 1):
            out.extend(_culprit_section(n, len(culprits), c))
    elif report.get("verdict") not in ("match", "precision"):
        out += [
            "## Culprit",
            "",
            "No culprit op could be pinned down; the probe log and notes below show how far the search got.",
            "",
        ]

    if probes or (report.get("precision") or {}).get("depth"):
        out += ["## Error vs depth", ""]
        if plot_file:
            out.append(f"![worst rel L2 per probe against the cut op index]({plot_file})")
        else:
            out.append("_Plot skipped: matplotlib is not installed (`pip install matplotlib` to get it)._")
        out.append("")

    out.extend(_precision(report))
    out.extend(_fp16_range(report))
    out.extend(_full_model(report))
    out.extend(_probe_log(probes, op_types))
    out.extend(_statistics(report, probes))
    notes = [str(n) for n in report.get("notes") or []]
    if notes:
        out += ["## Notes", "", *[f"- {_one_line(n, 1000)}" for n in notes], ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------
# Sections


def _verdict_line(report: Mapping[str, Any], culprits: list[Mapping[str, Any]]) -> str:
    verdict = str(report.get("verdict", "?"))
    target = _engine(report, "target")
    reference = _engine(report, "reference")
    if verdict == "match":
        return (
            f"**Verdict: match** — `{target}` agrees with `{reference}` on the full model within tolerance; "
            "there was nothing to bisect."
        )
    if verdict == "precision":
        prec = report.get("precision") or {}
        return (
            f"**Verdict: precision** — `{target}` differs from `{reference}` only by half-precision rounding, "
            f"no kernel bug. {_esc(_one_line(str(prec.get('summary', '')), 1500))} "
            f"To confirm: {_esc(_one_line(str(prec.get('confirm', '')), 500))}."
        )
    what = "crashes on" if verdict == "crash" else "differs from the reference on"
    head = f"**Verdict: {verdict}** — `{target}` {what} the full model"
    if not culprits:
        return head + "; no culprit op was isolated."
    named = ", ".join(f"op #{c.get('index')} `{c.get('type', '?')}` ({_kind_of(c)})" for c in culprits)
    first = "the first op to blame is" if len(culprits) == 1 else f"{len(culprits)} culprits, in order:"
    return f"{head}; {first} {named}."


def _context(report: Mapping[str, Any]) -> list[str]:
    rows = [
        ("Model", f"`{report.get('model', '?')}` ({report.get('ops', '?')} ops)"),
        ("Reference", _engine_facts(report.get("reference"))),
        ("Target", _engine_facts(report.get("target"))),
        ("Inputs", _esc(str(report.get("inputs", "—")))),
        ("Judgement", _judgement(report)),
        ("Tool", _esc(str(report.get("tool", "bisect-lite")))),
    ]
    out = ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    for warning in report.get("warnings") or []:
        out += [f"> **Warning:** {_one_line(str(warning), 1000)}", ""]
    for side in ("target", "reference"):
        if report.get(f"{side}_nondeterministic"):
            out.append(
                f"> **Warning:** the {side} engine gave different outputs for the same inputs on repeated "
                "runs; probes near the tolerance may be flaky."
            )
            out.append("")
    return out


def _judgement(report: Mapping[str, Any]) -> str:
    """The rule that judged this run: the precision model (and when tolerances still apply), or tolerances."""
    prec = report.get("precision") or {}
    tol = report.get("tolerance") or {}
    tolerances = _esc(_kv({k: tol[k] for k in ("atol", "rtol") if k in tol}))
    if prec.get("model") != "precision":
        return f"tolerances: {tolerances}" + (f" ({_esc(str(prec['why']))})" if prec.get("why") else "")
    overrides = tol.get("overrides") or {}
    return (
        f"precision model, K = {prec.get('factor')}, {_esc(str(prec.get('accumulation')))} accumulation: each "
        "float tensor against the error of fp16 rounding alone; fp16 range failures (NaN/inf, ±65504, flushed "
        f"values) always fail. Tolerances ({tolerances}) judge only integer tensors and tensors without an "
        "expectation" + (f", and the --tol overrides ({_esc(', '.join(overrides))})" if overrides else "")
    )


def _culprit_section(n: int, total: int, c: Mapping[str, Any]) -> list[str]:
    idx, typ = c.get("index"), c.get("type", "?")
    title = f"## Culprit {n} of {total}: op #{idx} `{typ}`" if total > 1 else f"## Culprit: op #{idx} `{typ}`"
    out = [title, ""]
    kind = c.get("kind", "op")
    ops = list(c.get("ops") or [])
    if kind == "group":
        out.append(
            f"Blamed as a fused group ({_ops(ops)}): the target runs these ops as one kernel, so no cut can "
            "separate them without undoing the fusion; the group alone, fed with reference inputs, fails."
        )
    elif kind == "subgraph":
        out.append(f"Blamed as a subgraph of {len(ops)} ops ({_ops(ops)}): {_split_outcome(c)}")
    elif kind == "context":
        out.append(
            f"Blamed with its context ({_ops(ops) or 'this op'}): the op fails only inside the model, "
            "not when run alone on reference inputs."
        )
    else:
        out.append("Blamed as a single op.")
    out.append("")
    out += ["| | |", "|---|---|"]
    out.append(f"| inputs | {_slots(c.get('inputs'))} |")
    out.append(f"| outputs | {_slots(c.get('outputs'))} |")
    attrs = visible_attrs(c.get("attrs") or {})
    if attrs:
        out.append(f"| attributes | {_esc(_kv(attrs))} |")
    out.append("")

    diag = c.get("diagnosis") or {}
    if diag:
        out.append(f"**Diagnosis: `{diag.get('kind', '?')}`** — {_one_line(str(diag.get('summary', '')), 2000)}")
        out.append("")
        evidence = diag.get("evidence") or {}
        if evidence:
            out += ["| evidence | value |", "|---|---|"]
            out += [f"| {_esc(str(k))} | {_esc(_value(v))} |" for k, v in evidence.items()]
            out.append("")

    isolated = c.get("isolated")
    if isolated:
        what = "The op" if kind == "op" else f"These {len(ops)} ops" if ops else "The ops"
        out.append(f"{what} alone at full size, fed the reference engine's inputs:")
        out.append("")
        out.extend(_metrics_table(isolated.get("tensors") or [], isolated.get("missing") or []))

    for dup in c.get("duplicates") or []:
        out.append(
            f"- Same root cause (same op type, attributes and failure) also at {_ops(dup.get('ops') or [])} "
            f"(op #{dup.get('index')}); no separate repro."
        )
    if c.get("duplicates"):
        out.append("")

    repro = c.get("repro")
    if repro:
        out += [
            f"**Standalone repro:** `{repro}` (ISSUE.md inside is ready to file). Check it with:",
            "",
            "```sh",
            f"bisect-lite verify {_shell_quote(str(repro))}",
            "```",
            "",
        ]
    else:
        out += ["_No repro bundle was written for this culprit._", ""]
    notes = [str(x) for x in c.get("notes") or []]
    if notes:
        out += [*[f"- {_one_line(x, 1000)}" for x in notes], ""]
    return out


def _precision(report: Mapping[str, Any]) -> list[str]:
    """Which judgement was used (precision model or tolerances), what it assumes, and for a `precision` verdict
    the ops where the expected half-precision error grows most."""
    prec = report.get("precision") or {}
    if not prec:
        return []
    out = ["## Judgement", ""]
    if prec.get("model") != "precision":
        return [*out, f"Tolerances (atol/rtol) judge every tensor: {_esc(str(prec.get('why', '')))}.", ""]
    if prec.get("declared_by") == "undeclared":
        computes = (
            "the target does not state its precision: **treated as half precision** (pass --target-precision "
            "fp32 if it computes in fp32)"
        )
    else:
        how = "declared with --target-precision" if prec.get("declared_by") == "--target-precision" else "its engine"
        computes = f"the target computes in {_esc(str(prec.get('target_precision')))} ({how})"
    out += [
        f"Precision model: {computes}, "
        f"accumulation assumed {_esc(str(prec.get('accumulation')))}, K = {prec.get('factor')}. "
        f"{_esc(str(prec.get('rule', '')))}. Expected errors: {_esc(str(prec.get('expected_from', '')))}"
        + (f", {prec['tensors_with_expectation']} tensors" if prec.get("tensors_with_expectation") else "")
        + (f", {prec['expectation_seconds']:.1f} s" if prec.get("expectation_seconds") is not None else "")
        + ".",
        "",
    ]
    top = prec.get("contributors") or []
    if top:
        out += [
            "Where the half-precision error accumulates (expected rel L2 added by each op):",
            "",
            "| op | type | tensor | expected rel L2 | from its inputs | added |",
            "|---:|---|---|---:|---:|---:|",
        ]
        for c in top:
            out.append(
                f"| {c.get('index')} | {_esc(str(c.get('type')))} | {_esc(str(c.get('tensor')))} "
                f"| {_num(c.get('expected_rel_l2'))} | {_num(c.get('inputs_rel_l2'))} | {_num(c.get('added'))} |"
            )
        out.append("")
    return out


_MAX_RANGE_ROWS = 20


def _fp16_range(report: Mapping[str, Any]) -> list[str]:
    """The reference's fp16 range findings (half-precision targets): what will overflow or underflow, by op."""
    if "fp16_range" not in report:
        return []
    from bisect_lite.fp16_range import RangeFinding, summary_line

    findings = [RangeFinding(**f) for f in report.get("fp16_range") or []]
    out = ["## fp16 range", "", _esc(summary_line(findings)) + ".", ""]
    if not findings:
        return out
    out += [
        "From the fp32 reference alone: these tensors leave fp16's range on any half-precision device (an "
        "accumulator, on kernels that sum in half, as Paddle-Lite's OpenCL reductions, windowed average pooling and "
        "layer_norm do). A target that overflows (inf, NaN, ±65504) or flushes them fails, whatever the precision "
        "model.",
        "",
        "| tensor | op | type | kind | max \\|x\\| | share below 2^-14 | where |",
        "|---|---:|---|---|---:|---:|---|",
    ]
    for f in findings[:_MAX_RANGE_ROWS]:
        out.append(
            f"| `{_esc(f.tensor)}` | {'input' if f.op is None else f.op} | {_esc(f.op_type)} | {f.kind} "
            f"| {_num(f.max_abs)} | {_pct(f.share_below_min_normal)} | {_esc(f.location())} |"
        )
    if len(findings) > _MAX_RANGE_ROWS:
        out.append(f"| … {len(findings) - _MAX_RANGE_ROWS} more in report.json `fp16_range` | | | | | | |")
    out.append("")
    return out


def _full_model(report: Mapping[str, Any]) -> list[str]:
    full = report.get("full_model") or {}
    comp = full.get("comparison") if isinstance(full, Mapping) else None
    out = ["## Full-model comparison", ""]
    if not comp:
        reason = "the target crashed" if report.get("verdict") == "crash" else "not available"
        return [*out, f"_No comparison: {reason}._", ""]
    status = "all outputs pass" if comp.get("passed") else f"failing: {', '.join(comp.get('failing') or [])}"
    out += [_esc(status), ""]
    out.extend(_metrics_table(comp.get("tensors") or [], comp.get("missing") or []))
    return out


def _probe_log(probes: list[Mapping[str, Any]], op_types: Mapping[int, str]) -> list[str]:
    out = ["## Probe log", ""]
    if not probes:
        return [*out, "_No probes were run._", ""]
    out += [
        "Each probe runs the model cut after op `cut` on both engines (like `git bisect`: pass = good, "
        "fail/crash = bad, skip = could not be evaluated). Segment > 0: a search resumed after an earlier "
        "culprit.",
        "",
    ]
    out += [
        "| # | segment | cut | op at cut | verdict | blame | worst tensor | worst rel L2 | expected (fp16) | s "
        "| message |",
        "|---:|---:|---:|---|---|---:|---|---:|---:|---:|---|",
    ]
    for n, p in enumerate(probes, 1):
        cut = p.get("cut")
        verdict = str(p.get("verdict", "?"))
        shown = {"fail": "**fail**", "crash": "**crash**"}.get(verdict, verdict)
        worst = _worst_tensor(p.get("metrics") or [])
        blame = p.get("blame")
        out.append(
            f"| {n} | {p.get('segment', 0)} | {cut} | {_esc(op_types.get(cut, '')) if isinstance(cut, int) else ''} "
            f"| {shown} | {'' if blame is None else blame} | {_esc(worst)} | {_num(p.get('worst_rel_l2'))} "
            f"| {_expected_cell(p.get('metrics') or [], worst)} "
            f"| {_num(p.get('seconds'), 3)} | {_esc(_one_line(str(p.get('message') or ''), 80))} |"
        )
    out.append("")
    return out


def _expected_cell(metrics: Sequence[Mapping[str, Any]], worst: str) -> str:
    """The precision model's expected rel L2 (and bound) of the probe's worst tensor; blank under tolerances."""
    if not worst and metrics:  # a passing probe: its largest error
        worst = str(max(metrics, key=lambda m: _as_float(m.get("rel_l2"), 0.0)).get("name", ""))
    for m in metrics:
        if m.get("name") == worst and m.get("judged_by") == "precision":
            return f"{_num(m.get('expected_rel_l2'))} (bound {_num(m.get('bound_rel_l2'))})"
    return ""


def _statistics(report: Mapping[str, Any], probes: list[Mapping[str, Any]]) -> list[str]:
    n_ops = report.get("ops")
    bound = math.ceil(math.log2(n_ops)) if isinstance(n_ops, int) and n_ops > 1 else None
    expected = report.get("expected_probes", bound)
    out = ["## Run statistics", ""]
    out.append(
        f"- Target engine runs: {report.get('target_runs', '?')} (a plain bisection over {n_ops} ops needs "
        f"about {expected}"
        + (f"; ceil(log2 {n_ops}) = {bound}" if bound is not None and bound != expected else "")
        + ")"
    )
    out.append(f"- Reference engine runs: {report.get('reference_runs', '?')}")
    dump = reference_dump_line(report)
    if dump:
        out.append(f"- Reference dump: {dump}")
    every = (report.get("full_model") or {}).get("every_tensor") or {}
    if every.get("observed"):
        runs = every.get("batches", 1)
        out.append(
            f"- Every tensor: {every.get('checked')} judged, fetched by the target's second whole-model run"
            + (f" in {runs} runs: {_esc(str(every['memory']))}" if every.get("memory") else "")
        )
    verdicts: dict[str, int] = {}
    for p in probes:
        verdicts[str(p.get("verdict"))] = verdicts.get(str(p.get("verdict")), 0) + 1
    if probes:
        out.append(f"- Probes: {len(probes)} (" + ", ".join(f"{v} {k}" for k, v in verdicts.items()) + ")")
    total, engines = report.get("seconds"), report.get("engine_seconds")
    if isinstance(total, (int, float)) and isinstance(engines, (int, float)) and total > 0:
        out.append(
            f"- Time: {engines:.1f} s in the engines of {total:.1f} s total ({100 * engines / total:.0f}%), "
            f"{max(total - engines, 0.0):.1f} s in bisect-lite itself"
        )
    elif isinstance(total, (int, float)):
        out.append(f"- Time: {total:.1f} s total")
    out.append("")
    return out


def reference_dump_line(report: Mapping[str, Any]) -> str:
    """Where the reference dump came from and what it cost (also the CLI's summary); "" when not known."""
    ref = report.get("reference") or {}
    seconds = ref.get("seconds")
    if ref.get("dump") == "cache" and isinstance(seconds, (int, float)):
        prec = report.get("precision") or {}
        expectations = (
            f", the precision model's expectations {prec['expectation_seconds']:.1f} s"
            if prec.get("expectations_from_cache") and isinstance(prec.get("expectation_seconds"), (int, float))
            else ""
        )
        return (
            f"from the cache (it took {seconds:.1f} s and {ref.get('runs', '?')} reference runs when computed"
            f"{expectations}; {ref.get('saved_seconds', 0.0):.1f} s saved)"
        )
    if ref.get("dump") == "computed" and isinstance(seconds, (int, float)):
        kept = ", kept in the cache" if "cache_seconds" in ref else ""
        return f"computed in {seconds:.1f} s ({ref.get('runs', '?')} reference runs){kept}"
    if ref.get("dump") == "resumed":
        return "the interrupted run's"
    return ""


# ----------------------------------------------------------------------------------------------------
# Pieces


def _metrics_table(tensors: Sequence[Mapping[str, Any]], missing: Iterable[str]) -> list[str]:
    head = (
        "| tensor | result | judged by | "
        + " | ".join(c for c, _ in METRIC_COLUMNS)
        + " | NaN t/r | inf t/r | reason |"
    )
    sep = "|---|---|---|" + "---:|" * len(METRIC_COLUMNS) + "---:|---:|---|"
    out = [head, sep]
    for t in tensors:
        cells = [f"`{_esc(str(t.get('name', '?')))}`", "pass" if t.get("passed") else "**FAIL**", _judged_by(t)]
        for _, key in METRIC_COLUMNS:
            v = t.get(key)
            if v is None and key in _ERROR_KEYS and _target_nonfinite(t):
                v = "inf"  # the statistics skip non-finite pairs: an error that is infinite, not unknown
            cells.append(_pct(v) if key == "mismatch_fraction" else _num(v))
        cells.append(f"{t.get('nan_target', 0)}/{t.get('nan_ref', 0)}")
        cells.append(f"{t.get('inf_target', 0)}/{t.get('inf_ref', 0)}")
        cells.append(_esc(_one_line(str(t.get("reason") or ""), _MAX_CELL)))
        out.append("| " + " | ".join(cells) + " |")
    for name in missing:
        out.append(f"| `{_esc(str(name))}` | **missing** |" + " |" * (len(METRIC_COLUMNS) + 4))
    out.append("")
    return out


def _judged_by(t: Mapping[str, Any]) -> str:
    """The rule that judged one tensor, with its numbers: the precision model's bounds, or the tolerances."""
    if t.get("judged_by") == "precision":
        return f"precision: rel L2 <= {_num(t.get('bound_rel_l2'))}, max abs <= {_num(t.get('bound_max_abs'))}"
    if t.get("atol") is None:
        return ""
    return f"tolerance: atol {_num(t.get('atol'))}, rtol {_num(t.get('rtol'))}"


_ERROR_KEYS = frozenset({"max_abs", "max_rel", "rel_l2", "min_atol", "min_rtol"})


def _target_nonfinite(t: Mapping[str, Any]) -> bool:
    """NaN or Inf in the target where the reference has fewer: the error there is infinite."""
    return any(int(t.get(f"{k}_target") or 0) > int(t.get(f"{k}_ref") or 0) for k in ("nan", "inf"))


def _split_outcome(c: Mapping[str, Any]) -> str:
    """Why a subgraph was not reduced further, from what delta debugging reported (never claimed blindly)."""
    ddmin = c.get("ddmin") or {}
    if ddmin.get("one_minimal"):
        return (
            f"delta debugging finished ({ddmin.get('calls', '?')} runs): removing any one of these ops makes "
            "the fault disappear."
        )
    if ddmin:
        return (
            f"delta debugging stopped at its budget of {ddmin.get('budget', '?')} runs, so a smaller failing "
            "subset may exist."
        )
    return "no delta debugging ran on it (a fused group, or cuts inside it could not be evaluated)."


def _op_types(report: Mapping[str, Any], culprits: list[Mapping[str, Any]]) -> dict[int, str]:
    """Op type per index: from an optional top-level ``op_types`` list, else only the culprits are known."""
    types = {i: str(t) for i, t in enumerate(report.get("op_types") or [])}
    for c in culprits:
        if isinstance(c.get("index"), int):
            types.setdefault(c["index"], str(c.get("type", "")))
    return types


def _worst_tensor(metrics: Sequence[Mapping[str, Any]]) -> str:
    failing = [m for m in metrics if not m.get("passed")]
    if not failing:
        return ""
    return str(max(failing, key=lambda m: _as_float(m.get("rel_l2"), math.inf)).get("name", ""))


def _kind_of(c: Mapping[str, Any]) -> str:
    return str((c.get("diagnosis") or {}).get("kind", "undiagnosed"))


def _engine(report: Mapping[str, Any], side: str) -> str:
    return str((report.get(side) or {}).get("engine", side))


def _engine_facts(side: Any) -> str:
    if not isinstance(side, Mapping):
        return "—"
    facts = side.get("facts") or {}
    text = f"`{side.get('engine', '?')}`"
    return text + (f" ({_esc(_kv(facts))})" if facts else "")


def visible_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes worth showing: program bookkeeping (callstack, role, namescope, device) left out."""
    return {k: v for k, v in sorted(attrs.items()) if k not in HIDDEN_ATTRS and not k.startswith("op_role")}


def _slots(slots: Any) -> str:
    if not isinstance(slots, Mapping) or not slots:
        return "—"
    parts = []
    for slot, names in slots.items():
        names = names if isinstance(names, (list, tuple)) else [names]
        parts.append(f"{_esc(str(slot))}: " + ", ".join(f"`{_esc(str(n))}`" for n in names))
    return "; ".join(parts)


def _ops(ops: Sequence[Any]) -> str:
    if not ops:
        return ""
    ints = [o for o in ops if isinstance(o, int)]
    if ints and len(ints) == len(ops) and ints == list(range(ints[0], ints[0] + len(ints))) and len(ints) > 2:
        return f"ops {ints[0]}–{ints[-1]}"
    return "ops " + ", ".join(str(o) for o in ops)


def _kv(d: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={_value(v)}" for k, v in d.items())


def _value(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return _num(v)
    if isinstance(v, (Mapping, list, tuple)):
        text = json.dumps(v, default=str, separators=(", ", ": "))
        return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"
    return _one_line(str(v), _MAX_CELL)


def _as_float(v: Any, default: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(f) else f


def _num(v: Any, digits: int = 3) -> str:
    """Short number; None -> dash; "nan"/"inf" strings (compare.py's JSON encoding) pass through."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "0" if v == 0 else (str(v) if not math.isfinite(v) else f"{v:.{digits}g}")
    return str(v)


def _pct(v: Any) -> str:
    return f"{100 * v:.3g}%" if isinstance(v, (int, float)) and not isinstance(v, bool) else _num(v)


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _esc(text: str) -> str:
    # A '|' would end a table cell; newlines would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def _shell_quote(path: str) -> str:
    return shlex.quote(path)
