"""Which kernel ran each op on the target: one of the target's own (OpenCL, ARM, x86) or a host fallback.

Read from the target's optimised program (`describe_target`: opt's protobuf output, each op's kernel record
`op/alias/target/precision/layout`). An op fused into another's kernel is listed with that kernel. "Fallback" means
a kernel of another place than the engine's own: on `lite:opencl` the x86, ARM or host kernels of ops the OpenCL
backend does not cover, on `lite:arm` the host kernels (reshape2, feed and the like).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any


def kernel_facts(
    described: Mapping[str, Any], place: str, ops: Iterable[int] | None = None, opencl_precision: str | None = None
) -> dict[str, Any]:
    """Counts for the whole program and, for `ops` (op indices of the original model), the kernels that ran
    them: {"place", "kernels", "on_place", "fallback", "by_place", "glue_ops", "ops": [rows]}. An OpenCL kernel
    record names the precision the kernel is registered for (image kernels: fp16); what it computed in is set at
    run time: `opencl_precision` (fp32 on a device without cl_khr_fp16), shown beside the record's."""
    rows = [r for r in described.get("optimized_ops") or [] if not r.get("glue")]
    by_place = Counter(str(r.get("place") or "unknown") for r in rows)
    wanted = set(ops or ())
    listed = []
    for row in rows:
        covered = [int(i) for i in row.get("ops") or []]
        if wanted and wanted & set(covered):
            listed.append(
                {
                    "ops": covered,
                    "type": row.get("type"),
                    "place": row.get("place"),
                    "precision": opencl_precision
                    if opencl_precision and row.get("place") == "opencl"
                    else row.get("precision"),
                    "registered_precision": row.get("precision"),
                    "layout": row.get("layout"),
                    "fallback": row.get("place") != place,
                }
            )
    return {
        "place": place,
        "kernels": len(rows),
        "on_place": by_place.get(place, 0),
        "fallback": len(rows) - by_place.get(place, 0),
        "by_place": dict(by_place.most_common()),
        "glue_ops": sum(1 for r in described.get("optimized_ops") or [] if r.get("glue")),
        "ops": listed,
    }


def kernel_lines(kernels: Mapping[str, Any] | None, heading: str = "") -> list[str]:
    """Markdown: the counts in one line and the table of listed kernels (empty when nothing is known)."""
    if not kernels:
        return []
    place = kernels.get("place", "?")
    where = ", ".join(f"{n} {p}" for p, n in (kernels.get("by_place") or {}).items())
    out = [heading, ""] if heading else []
    out += [
        f"The target's optimised program: {kernels.get('kernels', '?')} kernels, {kernels.get('on_place', '?')} on "
        f"{place} and {kernels.get('fallback', '?')} host fallbacks ({where}), plus {kernels.get('glue_ops', 0)} "
        "glue ops (io_copy, layout).",
        "",
    ]
    rows = kernels.get("ops") or []
    if rows:
        out += ["| ops | kernel | ran on | precision | layout |", "|---|---|---|---|---|"]
        for row in rows:
            ran = f"{row.get('place')}" + (" (host fallback)" if row.get("fallback") else "")
            ops = ", ".join(f"#{i}" for i in row.get("ops") or [])
            out.append(f"| {ops} | `{row.get('type')}` | {ran} | {row.get('precision')} | {row.get('layout')} |")
        out.append("")
    return out
