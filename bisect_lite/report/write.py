"""Write a run's report.json, report.md and error-versus-depth plot, each atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bisect_lite.fsutil import atomic_write_text


def write_run_report(out: Path, report: dict[str, Any]) -> None:
    from bisect_lite.report.markdown import render_report
    from bisect_lite.report.plot import plot_error_vs_depth

    plot = None
    precision = report.get("precision") or {}
    every = (report.get("full_model") or {}).get("every_tensor") or {}
    if report.get("probes") or precision.get("depth") or every.get("depth"):
        culprits = [c["index"] for c in report.get("culprits", [])]
        title = f"{Path(report['model']).name}: {report['target']['engine']} vs {report['reference']['engine']}"
        written = plot_error_vs_depth(
            report.get("probes") or [],
            culprits,
            report["ops"],
            out / "error-vs-depth.png",
            title,
            expected=precision.get("depth"),
            factor=precision.get("factor"),
            target_depth=every.get("depth"),
        )
        plot = written.name if written else None
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / "report.md", render_report(report, plot))
