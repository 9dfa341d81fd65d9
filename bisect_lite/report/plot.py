"""Error-vs-depth plot of the probes: where the error starts, and whether it jumps or drifts."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bisect_lite.fsutil import atomic_write_bytes
from bisect_lite.precision import L2_FLOOR

ZERO_FLOOR = 1e-9  # a probe with no error at all is drawn here on the log axis
VERDICT_STYLE = {  # colour, marker, legend label
    "pass": ("#2ca02c", "o", "pass"),
    "fail": ("#d62728", "o", "fail"),
    "crash": ("#000000", "X", "crash (drawn at top)"),
    "skip": ("#9e9e9e", "s", "skip (drawn at bottom)"),
}


def _error(value: Any) -> float | None:
    """worst_rel_l2 as a float; None for missing or NaN. to_dict() may encode inf/nan as strings."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _probe_expected(probe: dict) -> float | None:
    """The precision model's expected rel L2 of the probe's worst tensor (None: not judged by it)."""
    metrics = list(probe.get("metrics") or [])
    worst = probe.get("worst_tensor")
    if worst is None and metrics:  # a passing probe: its largest error
        worst = max(metrics, key=lambda m: _error(m.get("rel_l2")) or 0.0).get("name")
    for m in metrics:
        if m.get("name") == worst:
            e = _error(m.get("expected_rel_l2"))
            return e if e is not None and math.isfinite(e) else None
    return None


def plot_error_vs_depth(
    probes: list[dict],
    culprits: list[int],
    n_ops: int,
    out_png: Path,
    title: str,
    *,
    tolerance: float | None = None,
    op_types: Sequence[str] | None = None,
    expected: Sequence[Sequence[float]] | None = None,
    factor: float | None = None,
    target_depth: Sequence[Sequence[float]] | None = None,
) -> Path | None:
    """Draw worst rel_l2 per probe against the cut op index and write a PNG atomically.

    Probe dicts need ``cut``, ``verdict`` and ``worst_rel_l2``; ``segment`` > 0 (searches after the first culprit)
    is drawn with hollow markers.  ``tolerance``: an rtol-like level drawn as a band below it (optional).
    ``expected``: the precision model's (op index, expected rel L2) along depth, drawn as a line with its bound
    ``factor`` x above it (floored as the rule floors it); each probe's worst tensor's own expected error is drawn
    under the probe (grey x). ``target_depth``: the target's error on every tensor (the every-tensor check).
    Returns the path, or None when matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401  (checked first: a blocked parent must fail even if submodules are cached)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    out_png = Path(out_png)
    curve = [(int(i), float(e)) for i, e in expected or [] if e is not None and math.isfinite(float(e))]
    observed = [(int(i), float(e)) for i, e in target_depth or [] if e is not None and math.isfinite(float(e))]
    probe_expected = [(int(p["cut"]), e) for p in probes if (e := _probe_expected(p)) is not None]
    finite = [e for p in probes if (e := _error(p.get("worst_rel_l2"))) is not None and math.isfinite(e) and e > 0]
    finite += [e for _, e in curve + observed + probe_expected if e > 0]
    lo = min([ZERO_FLOOR, *finite])
    hi = max([1.0, *finite, *([tolerance] if tolerance else [])])
    top = hi * 10  # crashes and inf errors sit above every real value
    bottom = lo / 3  # skips sit below every real value

    # Object API with an explicit Agg canvas: no pyplot global state, safe in threads and headless.
    fig = Figure(figsize=(9, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_yscale("log")
    if tolerance and tolerance > 0:
        ax.axhspan(bottom / 3, tolerance, color="#2ca02c", alpha=0.07, lw=0)
        ax.axhline(tolerance, color="#2ca02c", ls=":", lw=1)
        ax.text(
            0.005,
            tolerance,
            f" tolerance {tolerance:g}",
            transform=ax.get_yaxis_transform(),
            va="bottom",
            fontsize=8,
            color="#2ca02c",
        )

    if curve:
        xs = [i for i, _ in curve]
        ys = [max(e, ZERO_FLOOR) for _, e in curve]
        ax.plot(xs, ys, color="#1f77b4", lw=1, alpha=0.8, zorder=1, label="expected fp16 error (rounding alone)")
        if factor:
            bound = [factor * max(y, L2_FLOOR) for y in ys]
            ax.plot(xs, bound, color="#1f77b4", lw=0.8, ls="--", alpha=0.6, zorder=1, label=f"bound ({factor:g}x)")
    if observed:
        ax.plot(
            [i for i, _ in observed],
            [max(e, ZERO_FLOOR) for _, e in observed],
            color="#ff7f0e",
            lw=1,
            alpha=0.9,
            zorder=1,
            label="target error, every tensor",
        )
    if probe_expected:
        ax.scatter(
            [i for i, _ in probe_expected],
            [max(e, ZERO_FLOOR) for _, e in probe_expected],
            marker="x",
            s=30,
            color="#555555",
            zorder=2,
            label="probe's expected fp16 error",
        )
    for verdict, (colour, marker, label) in VERDICT_STYLE.items():
        for main in (True, False):
            pts = [p for p in probes if p.get("verdict") == verdict and (int(p.get("segment") or 0) == 0) == main]
            if not pts:
                continue
            xs, ys = [], []
            for p in pts:
                e = _error(p.get("worst_rel_l2"))
                if verdict == "crash" or (e is not None and math.isinf(e)):
                    y = top
                elif e is None:
                    y = bottom if verdict == "skip" else ZERO_FLOOR
                else:
                    y = max(e, ZERO_FLOOR)
                xs.append(int(p["cut"]))
                ys.append(y)
            ax.scatter(
                xs,
                ys,
                marker=marker,
                s=46,
                zorder=3,
                facecolors=colour if main else "none",
                edgecolors=colour,
                linewidths=1.2,
                label=label if main else f"{label}, later segment",
            )

    for c in culprits:
        ax.axvline(c, color="#d62728", ls="--", lw=1, alpha=0.8, zorder=2)
        name = f"op {c}" + (f" {op_types[c]}" if op_types and 0 <= c < len(op_types) else "")
        ax.text(
            c,
            0.98,
            f" {name}",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
            color="#d62728",
        )

    ax.set_xlim(-1, max(n_ops, 1))
    ax.set_ylim(bottom / 3, top * 3)
    ax.set_xlabel("cut (op index in execution order)")
    ax.set_ylabel("worst rel L2 of the probe")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    if probes or curve or observed:
        ax.legend(loc="lower right", fontsize=8, framealpha=0.8)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(out_png, buf.getvalue())  # temp file + os.replace: a reader never sees half a PNG
    return out_png
