"""`bisect-lite verify`: re-run repro bundles against a (new) build; a fix is verified when every one passes."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from bisect_lite.cache import Cache
from bisect_lite.compare import CompareConfig, Comparison, Tolerance, compare_outputs
from bisect_lite.engines.runner import DEFAULT_TIMEOUT, EngineRunner
from bisect_lite.errors import InputError
from bisect_lite.fsutil import atomic_write_text
from bisect_lite.model import load_model


@dataclass
class VerifyResult:
    repro: Path
    op: str
    target: str
    reference: str
    status: str  # "fixed" | "failing" | "crash"
    message: str = ""
    seconds: float = 0.0
    comparison: Comparison | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "fixed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "repro": str(self.repro),
            "op": self.op,
            "target": self.target,
            "reference": self.reference,
            "status": self.status,
            "passed": self.passed,
            "message": self.message,
            "seconds": round(self.seconds, 3),
            "comparison": self.comparison.to_dict() if self.comparison else None,
        }


def find_repros(paths: list[Path]) -> list[Path]:
    """Each path is a repro directory (holds repro.json) or a directory searched recursively for them."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file or directory")
        if path.is_file() and path.name == "repro.json":
            path = path.parent
        if (path / "repro.json").exists():
            found.append(path)
            continue
        nested = sorted(p.parent for p in path.rglob("repro.json"))
        if not nested:
            raise InputError(f"{path}: no repro bundle found (a repro directory holds repro.json)")
        found.extend(nested)
    return list(dict.fromkeys(found))


def _config(tolerance: dict[str, Any]) -> CompareConfig:
    return CompareConfig(
        default=Tolerance(tolerance.get("atol", 1e-2), tolerance.get("rtol", 1e-2)),
        overrides={k: Tolerance(v["atol"], v["rtol"]) for k, v in tolerance.get("overrides", {}).items()},
        allow_inf=bool(tolerance.get("allow_inf", False)),
        check_error_stat=tolerance.get("check_error_stat", "elementwise"),
        scale_atol=bool(tolerance.get("scale_atol", True)),
    )


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable ({exc})") from None


def verify_repros(
    paths: list[Path],
    *,
    ref: str | None = None,
    target: str | None = None,
    compare: CompareConfig | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    verbose: bool = False,
) -> list[VerifyResult]:
    """Run each repro's target (recorded, or `target`) against its expected outputs (recorded, or recomputed
    with `ref`). Never uses cached results: a verification must run the build under test."""
    repros = find_repros(paths)
    runners: dict[str, EngineRunner] = {}
    cache = Cache(results=False)

    def runner(spec: str) -> EngineRunner:
        if spec not in runners:
            runners[spec] = EngineRunner(spec, cache, timeout=timeout, verbose=verbose)
        return runners[spec]

    results: list[VerifyResult] = []
    try:
        for repro in repros:
            try:
                facts = json.loads((repro / "repro.json").read_text())
            except ValueError as exc:
                raise InputError(f"{repro / 'repro.json'}: not valid JSON ({exc})") from None
            model = load_model(repro)
            inputs = _load_npz(repro / "inputs.npz")
            missing = [f for f in model.feeds if f not in inputs]
            if missing:
                raise InputError(f"{repro / 'inputs.npz'}: lacks inputs {missing}")
            target_spec = target or facts["target"]["engine"]
            ref_spec = ref or facts["reference"]["engine"]
            config = compare or _config(facts.get("tolerance", {}))
            start = time.perf_counter()
            if ref:
                ref_result = runner(ref).run(model, inputs, use_cache=False)
                if not ref_result.ok:
                    raise InputError(f"{repro}: the reference {ref} fails on this repro ({ref_result.message})")
                expected = ref_result.outputs
            else:
                expected = _load_npz(repro / "expected.npz")
            result = runner(target_spec).run(model, inputs, use_cache=False)
            op = f"{facts['op']['type']} (op {facts['op']['index']})"
            if not result.ok:
                results.append(
                    VerifyResult(repro, op, target_spec, ref_spec, "crash", result.message, time.perf_counter() - start)
                )
                continue
            cmp = compare_outputs(expected, result.outputs, config, names=list(model.fetches))
            worst = cmp.worst()
            message = "" if cmp.passed else (worst.reason if worst else "missing outputs: " + ", ".join(cmp.missing))
            results.append(
                VerifyResult(
                    repro,
                    op,
                    target_spec,
                    ref_spec,
                    "fixed" if cmp.passed else "failing",
                    message,
                    time.perf_counter() - start,
                    cmp,
                )
            )
    finally:
        for r in runners.values():
            r.close()
        cache.close()
    return results


def write_junit(path: Path, results: list[VerifyResult]) -> None:
    failures = sum(r.status == "failing" for r in results)
    errors = sum(r.status == "crash" for r in results)
    total = sum(r.seconds for r in results)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name="bisect-lite verify" tests="{len(results)}" failures="{failures}" '
        f'errors="{errors}" time="{total:.3f}">',
    ]
    for r in results:
        name = quoteattr(f"{r.repro.name}: {r.op} on {r.target}")
        lines.append(f'  <testcase classname="bisect_lite.verify" name={name} time="{r.seconds:.3f}">')
        if r.status == "failing":
            lines.append(f"    <failure message={quoteattr(r.message[:500])}>{escape(r.message)}</failure>")
        elif r.status == "crash":
            lines.append(f"    <error message={quoteattr(r.message[:500])}>{escape(r.message)}</error>")
        lines.append("  </testcase>")
    lines.append("</testsuite>")
    atomic_write_text(path, "\n".join(lines) + "\n")
