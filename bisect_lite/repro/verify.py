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
from bisect_lite.engines.spec import parse_spec
from bisect_lite.errors import InputError
from bisect_lite.fsutil import atomic_write_text
from bisect_lite.model import load_model
from bisect_lite.precision import judge_with_recorded_bounds


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
    from bisect_lite.inputs import read_npz

    return read_npz(path, "repro file")


def read_facts(repro: Path) -> dict[str, Any]:
    """repro.json, checked for what verify relies on: a shared repro may be damaged or hand-edited."""
    path = repro / "repro.json"
    try:
        facts = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable repro.json ({exc})") from None

    def text(*keys: str) -> str:
        value: Any = facts
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if not isinstance(value, str) or not value:
            raise InputError(f"{path}: damaged repro.json ({'.'.join(keys)} missing or not text)")
        return value

    if not isinstance(facts, dict):
        raise InputError(f"{path}: damaged repro.json (not an object)")
    text("target", "engine")
    text("reference", "engine")
    text("op", "type")
    tolerance = facts.get("tolerance", {})
    try:
        _config(tolerance if isinstance(tolerance, dict) else {})
    except (TypeError, ValueError, KeyError, AttributeError):
        raise InputError(f"{path}: damaged repro.json (tolerance)") from None
    return facts


# Engine options that name a program to run, a host to connect to, or a directory to remove on a device: from a
# shared repro they are a stranger's command (lite:arm,python=/tmp/x runs /tmp/x).
COMMAND_OPTIONS = ("python", "opt", "ssh", "runner", "libs", "device_dir")


def recorded_command_refusal(repro: Path, spec: str) -> str | None:
    """Why a repro's recorded engine is not run: a cmd: template (or a program path, host or device directory in
    the options) was written by whoever made the repro."""
    parsed = parse_spec(spec)
    named = [key for key in COMMAND_OPTIONS if parsed.option(key) is not None]
    if parsed.name != "cmd" and not named:
        return None
    what = "the command engine" if parsed.name == "cmd" else f"an engine with {', '.join(k + '=' for k in named)}"
    return (
        f"{repro}: the repro records {what} {spec!r}; bisect-lite does not run a recorded command: name the engine "
        "with --target (or pass --trust-recorded-command if you wrote this repro)"
    )


def is_junit_report(path: Path) -> bool:
    """An existing --junit file may be replaced only when it is an earlier report of ours."""
    try:
        with open(path, "rb") as f:
            head = f.read(400)
    except OSError:
        return False
    return head.startswith(b"<?xml") and b'<testsuite name="bisect-lite verify"' in head


def verify_repros(
    paths: list[Path],
    *,
    ref: str | None = None,
    target: str | None = None,
    compare: CompareConfig | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    verbose: bool = False,
    trust_recorded_command: bool = False,
) -> list[VerifyResult]:
    """Run each repro's target (recorded, or `target`) against its expected outputs (recorded, or recomputed
    with `ref`). Never uses cached results: a verification must run the build under test. A recorded `cmd:` engine
    runs only with `trust_recorded_command`; every repro is checked before any engine runs."""
    repros = find_repros(paths)
    all_facts = {repro: read_facts(repro) for repro in repros}
    if not trust_recorded_command and target is None:  # the recorded reference never runs: expected.npz is used
        for repro, facts in all_facts.items():
            refusal = recorded_command_refusal(repro, facts["target"]["engine"])
            if refusal:
                raise InputError(refusal)
    runners: dict[str, EngineRunner] = {}
    cache = Cache(results=False)

    def runner(spec: str) -> EngineRunner:
        if spec not in runners:
            runners[spec] = EngineRunner(spec, cache, timeout=timeout, verbose=verbose)
        return runners[spec]

    results: list[VerifyResult] = []
    try:
        for repro in repros:
            facts = all_facts[repro]
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
            op = f"{facts['op']['type']} (op {facts['op'].get('index', '?')})"
            extra = len(facts.get("ops") or []) - 1  # the repro's own ops: a subgraph or fused group says so
            if extra > 0:
                op += f" +{extra} {'fused ' if facts.get('kind') == 'group' else ''}ops"
            if not result.ok:
                results.append(
                    VerifyResult(repro, op, target_spec, ref_spec, "crash", result.message, time.perf_counter() - start)
                )
                continue
            cmp = compare_outputs(expected, result.outputs, config, names=list(model.fetches))
            if compare is None:  # judged as the run judged it: by the precision bounds recorded, if any
                cmp = judge_with_recorded_bounds(cmp, facts.get("metrics") or [])
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
