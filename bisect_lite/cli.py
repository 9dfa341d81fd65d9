"""The `bisect-lite` command line: a thin typer layer over the library."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bisect_lite.errors import BisectLiteError, EngineUnavailable, InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find the first op whose output differs between a reference engine and a target engine.",
)
# markup=False: engine messages, tensor and file names are shown as they are ("[/dims]" is text, not a tag).
out = Console(highlight=False, soft_wrap=True, markup=False)
if not out.is_terminal and "COLUMNS" not in os.environ:
    out.width = 160  # piped output: wide tables rather than folded cells
err = Console(stderr=True, highlight=False, markup=False)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show engine logs (Paddle's glog) on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
ModelArg = Annotated[Path, typer.Argument(help="Model directory or .pdmodel file (legacy Paddle inference format).")]
ParamsOpt = Annotated[
    Path | None, typer.Option("--params", help="Params file, when it cannot be found next to the model.")
]


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, allow_nan=False), highlight=False)


def _show_version(value: bool) -> None:
    if value:
        from bisect_lite import __version__

        out.print(f"bisect-lite {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Find the first op whose output differs between a reference engine and a target engine."""


# ---- model commands ------------------------------------------------------------------------------------
@app.command()
def ops(
    model: ModelArg,
    params: ParamsOpt = None,
    target: Annotated[
        str | None,
        typer.Option(
            "--target",
            help="Show what this engine's optimiser makes of the model (e.g. lite:opencl): its optimised program "
            "and fused groups (JSON key `groups`: lists of original op indices).",
        ),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not reuse cached conversions.")] = False,
    fp16_range: Annotated[
        bool,
        typer.Option(
            "--fp16-range",
            help="From one fp32 reference run (paddle) on --inputs, list the tensors fp16 cannot hold: values "
            "beyond 65504 (or a half-precision accumulator beyond it), significant values below 2^-14 (JSON key "
            "`fp16_range`).",
        ),
    ] = False,
    inputs: InputsOpt = None,
    shape: ShapeOpt = [],
    seed: SeedOpt = None,
    as_json: Json = False,
) -> None:
    """List the ops (index, type, inputs -> outputs with shapes), op types, feeds, fetches and params size."""
    from bisect_lite.model import load_model
    from bisect_lite.model.describe import describe, format_tensor

    loaded = load_model(model, params)
    if fp16_range:
        _fp16_range(loaded, inputs, shape, check_seed(seed), not no_cache, as_json)
        return
    info = describe(loaded)
    if target:
        info["target"] = _target_view(loaded, target, no_cache)
        info["groups"] = info["target"]["groups"]
    if as_json:
        _print_json(info)
        return
    if target:
        _print_target_view(info["target"])
        return
    table = Table(title=f"{len(info['ops'])} ops", show_lines=False)
    for col in ("#", "type", "inputs", "outputs"):
        table.add_column(col, overflow="fold")
    for op in info["ops"]:
        ins = ", ".join(format_tensor(t) for ts in op["inputs"].values() for t in ts)
        outs = ", ".join(format_tensor(t) for slot, ts in op["outputs"].items() if slot != "XShape" for t in ts)
        table.add_row(str(op["index"]), op["type"], ins, outs)
    out.print(table)
    hist = ", ".join(f"{k} {v}" for k, v in info["op_types"].items())
    out.print(f"op types: {hist}")
    out.print("feeds:   " + ", ".join(format_tensor(t) + f" {t['dtype']}" for t in info["feeds"]))
    out.print("fetches: " + ", ".join(format_tensor(t) + f" {t['dtype']}" for t in info["fetches"]))
    out.print(f"params:  {info['params']['count']} tensors, {info['params']['bytes'] / 1e6:.2f} MB")


def _fp16_range(model: Any, inputs: Path | None, shape: list[str], seed: int, cache: bool, as_json: bool) -> None:
    from bisect_lite.fp16_range import model_range, summary_line
    from bisect_lite.inputs import prepare_inputs
    from bisect_lite.preflight import check_comparable

    check_comparable(model)
    findings = model_range(model, prepare_inputs(model, inputs, shapes=shape, seed=seed), cache=cache)
    if as_json:
        _print_json({"fp16_range": [f.to_dict() for f in findings], "summary": summary_line(findings)})
        return
    if findings:
        table = Table(title="tensors fp16 cannot hold (fp32 reference: paddle)", show_lines=False)
        for col in ("tensor", "op", "type", "kind", "max |x|", "share < 2^-14", "where"):
            table.add_column(col, overflow="fold")
        for f in findings:
            op = "input" if f.op is None else str(f.op)
            share = f"{100 * f.share_below_min_normal:.3g}%"
            table.add_row(f.tensor, op, f.op_type, f.kind, f"{f.max_abs:.4g}", share, f.location())
        out.print(table)
    out.print(summary_line(findings))


ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace bisect-lite's own earlier output at this path (nothing else).")
]


def _save_model_output(model: Any, output: Path, source: Any, params: Path | None, force: bool) -> None:
    from bisect_lite.fsutil import check_output_dir
    from bisect_lite.model import save_model

    output = Path(os.path.abspath(output))
    check_output_dir(output, protected=[source.source, params], force=force, option="-o")
    save_model(model, output, marker=True)


def _target_view(model: Any, target: str, no_cache: bool) -> dict[str, Any]:
    from bisect_lite.cache import Cache
    from bisect_lite.engines.registry import create_engine
    from bisect_lite.errors import EngineUnavailable
    from bisect_lite.model import load_model
    from bisect_lite.model.describe import describe_target

    # Only the engine's optimiser is needed (opt converts for ARM and OpenCL anywhere): no runtime, no runner.
    engine = create_engine(target)
    cache = Cache(results=not no_cache)
    try:
        directory = engine.optimized_program(cache.model_dir(model), cache.prepared_dir(model, engine.cache_key()))
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
        raise EngineUnavailable(f"engine {target} cannot optimise this model: {reason}") from None
    finally:
        engine.close()
    if directory is None:
        raise InputError(f"engine {target} has no optimised program to show (only lite:* engines have one)")
    return describe_target(model, load_model(directory, with_params=False), str(engine.spec))


def _print_target_view(view: dict[str, Any]) -> None:
    table = Table(title=f"{view['engine']}: {view['kernels']} kernels, {view['glue_ops']} glue ops", show_lines=False)
    for col in ("kernel", "place", "original ops", "inputs -> outputs"):
        table.add_column(col, overflow="fold")
    for op in view["optimized_ops"]:
        where = "/".join(str(op[k]) for k in ("place", "precision", "layout") if op[k])
        covers = "glue" if op["glue"] else ", ".join(map(str, op["ops"]))
        kernel = f"{op['type']}/{op['kernel']}" if op["kernel"] else op["type"]
        table.add_row(kernel, where, covers, f"{', '.join(op['inputs'])} -> {', '.join(op['outputs'])}")
    out.print(table)
    fused = view["fused_groups"]
    out.print(f"fused groups: {len(fused)} of {len(view['groups'])} groups")
    for g in fused:
        out.print(f"  ops {', '.join(map(str, g['ops']))}: {'+'.join(g['types'])} -> {g['into']} on {g['place']}")
    out.print("places: " + ", ".join(f"{k} {v}" for k, v in view["places"].items()))


@app.command()
def truncate(
    model: ModelArg,
    at: Annotated[list[str], typer.Option("--at", help="Tensor to make an output (repeatable, kept in order).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the cut model into.")],
    params: ParamsOpt = None,
    force: ForceOpt = False,
) -> None:
    """Cut the model so that the given tensors are its outputs (the backward slice that computes them)."""
    from bisect_lite.model import load_model
    from bisect_lite.model import truncate as do_truncate

    source = load_model(model, params)
    cut = do_truncate(source, at)
    _save_model_output(cut, output, source, params, force)
    out.print(f"wrote {output} ({len(cut.ops)} ops, fetches: {', '.join(cut.fetches)})")


@app.command()
def extract(
    model: ModelArg,
    op: Annotated[str, typer.Option("--op", help="Op index N or inclusive range N..M (see `ops`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the extracted model into.")],
    params: ParamsOpt = None,
    force: ForceOpt = False,
) -> None:
    """Make a standalone model of one op or a range of ops; outside tensors become feeds."""
    from bisect_lite.model import extract as do_extract
    from bisect_lite.model import load_model

    source = load_model(model, params)
    sub = do_extract(source, parse_op_range(op))
    _save_model_output(sub, output, source, params, force)
    out.print(f"wrote {output} ({len(sub.ops)} ops, feeds: {', '.join(sub.feeds)}, fetches: {', '.join(sub.fetches)})")


@app.command("lite-compat")
def lite_compat(
    model: ModelArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the repaired copy into.")],
    params: ParamsOpt = None,
    force: ForceOpt = False,
    as_json: Json = False,
) -> None:
    """Write a copy of a Paddle 3.x model that Paddle-Lite 2.13 loads (known schema drift repaired), checked by
    converting it with real opt for every target."""
    from bisect_lite.lite_compat import check_with_real_opt, repaired
    from bisect_lite.model import load_model

    source = load_model(model, params)
    fixed, drift = repaired(source)
    if not drift:
        message = "no known schema drift between this model and Paddle-Lite 2.13: nothing to repair, nothing written"
        if as_json:
            _print_json({"drift": [], "written": None})
        else:
            out.print(message)
        return
    try:
        targets = check_with_real_opt(fixed)
    except RuntimeError as exc:  # opt still fails: say so and write nothing
        raise EngineUnavailable(f"the repaired copy still fails in real opt: {exc}") from None
    _save_model_output(fixed, output, source, params, force)
    if as_json:
        _print_json({"drift": [d.describe() for d in drift], "written": str(output), "opt_checked": targets})
        return
    for d in drift:
        out.print(f"repaired: {d.describe()}")
    out.print(f"wrote {output}: real opt converts it for {', '.join(targets)}")


# ---- engine commands -----------------------------------------------------------------------------------
RefOpt = Annotated[str | None, typer.Option("--ref", help="Reference engine spec (default: lite:arm when reachable).")]
TargetOpt = Annotated[
    str | None, typer.Option("--target", help="Target engine spec (default: lite:opencl when reachable).")
]
InputsOpt = Annotated[Path | None, typer.Option("--inputs", help=".npz with one array per model input (by name).")]
ShapeOpt = Annotated[list[str], typer.Option("--shape", help="NAME=D1,D2,... for dynamic input dims (repeatable).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed of generated inputs (default 0).")]
IntRangeOpt = Annotated[str | None, typer.Option("--int-range", help="LOW,HIGH for generated integer inputs.")]
AtolOpt = Annotated[
    float | None,
    typer.Option("--atol", help="Absolute tolerance (default by target precision: 5e-2 half, 1e-4 fp32)."),
]
RtolOpt = Annotated[
    float | None,
    typer.Option("--rtol", help="Relative tolerance (default by target precision: 5e-2 half, 1e-4 fp32)."),
]
TolOpt = Annotated[list[str], typer.Option("--tol", help="Per-tensor NAME:atol=X,rtol=Y (repeatable).")]
AllowInfOpt = Annotated[bool, typer.Option("--allow-inf", help="Matching infs of the same sign pass.")]
StatOpt = Annotated[str, typer.Option("--check-error-stat", help="elementwise | max | mean | median.")]
AbsAtolOpt = Annotated[bool, typer.Option("--absolute-atol", help="Do not scale atol by a tensor's RMS when > 1.")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds one engine run may take.")]
TargetPrecisionOpt = Annotated[
    str | None,
    typer.Option(
        "--target-precision",
        help="fp16 | fp32: the precision the target computes in (default: what the engine states; cmd: engines "
        "state none and are judged as fp16, which the report says).",
    ),
]
PrecisionFactorOpt = Annotated[
    float | None,
    typer.Option(
        "--precision-factor",
        help="K of the precision model for half-precision targets: a tensor is beyond precision when its error "
        "exceeds K x the error of fp16 rounding alone (floored). Default 5 (real GPUs measured at <= 4x it).",
    ),
]
AccumulationOpt = Annotated[
    str | None,
    typer.Option(
        "--accumulation",
        help="fp32 | half: how the half-precision target accumulates inside kernels (default fp32; half: many "
        "mobile OpenCL kernels, judged with a wider, reduction-length-aware bound).",
    ),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not reuse cached results or conversions.")]


def _compare_config(
    target: str,
    atol: float | None,
    rtol: float | None,
    tol: list[str],
    allow_inf: bool,
    stat: str,
    absolute_atol: bool = False,
    target_precision: str | None = None,
):
    """Tolerances from the command line; what is not given follows the target's precision (fp16 or fp32)."""
    from bisect_lite.compare import CompareConfig, Tolerance, parse_tolerance_override
    from bisect_lite.engines.registry import default_tolerance

    base = default_tolerance(target, target_precision)
    try:
        default = Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol)
        overrides = dict(parse_tolerance_override(t, default) for t in tol)
        return CompareConfig(
            default=default,
            overrides=overrides,
            allow_inf=allow_inf,
            check_error_stat=stat,
            scale_atol=not absolute_atol,
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None


@app.command()
def engines(as_json: Json = False) -> None:
    """List every engine, whether it can run here (and why not), its version and options."""
    from bisect_lite.engines.registry import list_engines

    rows = list_engines()
    if as_json:
        _print_json(rows)
        return
    table = Table(title="engines (spec grammar: NAME or NAME:WORD,KEY=VALUE,...; cmd:TEMPLATE)")
    for col in ("name", "available", "version / why not", "options", "what it is"):
        table.add_column(col, overflow="fold")
    for r in rows:
        opts = ", ".join([*r["words"], *(f"{k}=" for k in r["options"] if k != "template")])
        table.add_row(r["name"], "yes" if r["available"] else "no", r["version"] or r["why_not"], opts, r["summary"])
    out.print(table)
    lite = next((r["paddle_lite"] for r in rows if "paddle_lite" in r), None)
    if lite and lite["installed"]:
        out.print(
            f"Paddle-Lite {lite['version']} in {lite['root']}: converts for {', '.join(lite['converts'])}; "
            f"runs here: {', '.join(lite['runs']) or 'nothing'}"
        )
    elif lite:
        out.print("Paddle-Lite: not set up (bisect-lite setup lite)")


def _check_setup_target() -> None:
    """The output-path policy for `setup`: its directory is new, empty, or one setup made (it holds the manifest)."""
    from bisect_lite.fsutil import check_output_dir
    from bisect_lite.lite_env import manifest_path

    manifest = manifest_path()
    if manifest.is_file():
        return  # an environment setup made: it replaces its own venv there
    check_output_dir(manifest.parent, option="setup: the environment directory (BISECT_LITE_LITE_ENV)")


@app.command()
def setup(
    what: Annotated[str, typer.Argument(help="What to provision: lite (real Paddle-Lite: opt and runtime).")],
    python: Annotated[
        Path | None, typer.Option("--python", help="A CPython 3.10 or 3.8 to build from (default: searched).")
    ] = None,
    libs: Annotated[
        Path | None,
        typer.Option(
            "--libs",
            help="Paddle-Lite light-API libraries for lite:arm (QEMU) and lite:opencl, laid out like "
            "shared/paddle-lite: armv8/{lib,include}, x86-opencl/{lib,include} (default: "
            "$BISECT_LITE_PADDLE_LITE_LIBS, the last setup's, shared/paddle-lite beside the checkout).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a working environment exists.")] = False,
    as_json: Json = False,
) -> None:
    """Build a private environment holding real Paddle-Lite (paddlelite 2.13rc0, numpy<2) and verify it; build and
    verify the native runner for each Paddle-Lite library found (lite:arm under QEMU, lite:opencl). Exit 3 when a
    library is found but cannot be made to work (one line naming what to install)."""
    from bisect_lite.lite_env import describe_lite_env, setup_lite_env
    from bisect_lite.lite_native import setup_native

    if what != "lite":
        raise InputError(f"setup {what!r}: the only thing to set up is `lite` (real Paddle-Lite)")
    _check_setup_target()
    say = (lambda _: None) if as_json else err.print
    env, reused = setup_lite_env(python, force=force, say=say)
    native = setup_native(env, libs=libs, force=force, say=say)
    env = native.env
    if as_json:
        libraries = {"path": str(native.libraries) if native.libraries else None, "source": native.source}
        _print_json({**describe_lite_env(env), "reused": reused, "libraries": libraries, "problems": native.problems})
    else:
        state = "already set up" if reused else "set up"
        out.print(
            f"Paddle-Lite {env.version} {state} in {env.root} (manifest {env.manifest}): converts for "
            f"{', '.join(env.converts)}; runs here: {', '.join(env.runs) or 'nothing'}"
        )
        for place, t in env.native.items():
            where = " ".join(t.launcher) + " " if t.launcher else ""
            device = ", ".join(f"{k} {v}" for k, v in t.device.items())
            out.print(
                f"lite:{place}: {where}{t.runner} on {t.lib} (sha256 {t.lib_sha256[:12]}, "
                f"version {t.version or 'not reported by the library'}, .nb from opt --valid_targets="
                f"{t.valid_targets}); {device}"
            )
    if native.problems:
        raise EngineUnavailable("; ".join(native.problems.values()))


@app.command()
def compare(
    model: ModelArg,
    ref: RefOpt = None,
    target: TargetOpt = None,
    inputs: InputsOpt = None,
    shape: ShapeOpt = [],
    seed: SeedOpt = None,
    int_range: IntRangeOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    tol: TolOpt = [],
    allow_inf: AllowInfOpt = False,
    check_error_stat: StatOpt = "elementwise",
    absolute_atol: AbsAtolOpt = False,
    timeout: TimeoutOpt = 120.0,
    no_cache: NoCacheOpt = False,
    params: ParamsOpt = None,
    save_inputs: Annotated[Path | None, typer.Option("--save-inputs", help="Write the inputs used here.")] = None,
    target_precision: TargetPrecisionOpt = None,
    precision_factor: PrecisionFactorOpt = None,
    accumulation: AccumulationOpt = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> None:
    """Run both engines on the whole model; per-output table and verdict (exit 0 match or precision, 1 mismatch).

    Half-precision targets are judged by the precision model, as in `run` (see --precision-factor)."""
    from bisect_lite.compare_engines import compare_engines
    from bisect_lite.engines.registry import resolve_engines

    check_timeout(timeout)
    seed = check_seed(seed)
    check_cache_root(_model_paths(model, params))
    if save_inputs is not None:
        from bisect_lite.fsutil import check_output_file

        save_inputs = Path(os.path.abspath(save_inputs))
        check_output_file(save_inputs, protected=_model_paths(model, params), option="--save-inputs")
    ref_spec, target_spec, engines_note = resolve_engines(ref, target)
    config = _compare_config(target_spec, atol, rtol, tol, allow_inf, check_error_stat, absolute_atol, target_precision)
    rule = _precision_rule(target_spec, atol, rtol, target_precision, precision_factor, accumulation)
    if engines_note and not as_json:
        err.print(engines_note)
    report = compare_engines(
        model,
        ref_spec,
        target_spec,
        inputs=inputs,
        shapes=shape,
        seed=seed,
        int_range=int_range,
        compare=config,
        timeout=timeout,
        cache=not no_cache,
        save_inputs=save_inputs,
        params=params,
        verbose=verbose,
        rule=rule,
    )
    if engines_note:
        report["engines_note"] = engines_note
    if as_json:
        _print_json(report)
    else:
        if report["comparison"]:
            _print_comparison(report["comparison"])
        verdict = report["verdict"]
        detail = f": {report.get('message', '')}" if verdict == "crash" else ""
        out.print(f"{verdict.upper()}: {target_spec} vs {ref_spec}{detail}")
        _print_every_tensor(report)
        _print_warnings(report)
        out.print(f"inputs: {report['inputs_file']} (repeat with --inputs)")
    raise typer.Exit(0 if report["verdict"] in ("match", "precision") else 1)


def _print_every_tensor(report: dict[str, Any]) -> None:
    """compare of a half-precision target: what the every-tensor check and the reference's fp16 range found."""
    from bisect_lite.fp16_range import RangeFinding, summary_line

    every = report.get("every_tensor")
    if every is None:
        return
    failing = every["beyond_precision"]
    skipped = sum(every["not_checked"].values())
    out.print(
        f"every tensor: {every['checked']} checked"
        + (f" ({skipped} not observable on the target)" if skipped else "")
        + (f", {len(failing)} beyond precision, first made by op {every['first_op']}" if failing else ", all within")
    )
    diagnosis = report.get("diagnosis")
    if diagnosis:
        where = f"{diagnosis['tensor']} (op {diagnosis['op']} {diagnosis['op_type']})"
        out.print(f"  diagnosis at {where}: {diagnosis['kind']}: {diagnosis['summary']}")
    if every.get("crashed"):
        out.print(f"  a cut of the model crashed on the target: {every['crashed']}")
    out.print(summary_line([RangeFinding(**f) for f in report.get("fp16_range") or []]))
    if failing:
        out.print("localise it and write a repro: bisect-lite run with the same model, --inputs and --target")


def _precision_rule(
    target: str,
    atol: float | None,
    rtol: float | None,
    target_precision: str | None,
    factor: float | None,
    accumulation: str | None,
):
    """The precision model that judges a half-precision target (None: tolerances judge: an fp32 target, or
    explicit --atol/--rtol)."""
    from bisect_lite.engines.registry import create_engine
    from bisect_lite.precision import resolve_rule

    if atol is not None or rtol is not None:
        return None
    try:
        return resolve_rule(create_engine(target).declared_precision, target_precision, factor, accumulation)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:.3g}"


def _err(m: dict[str, Any], key: str) -> str:
    """An error statistic; "inf" where it is missing because the target made NaN/Inf the reference did not."""
    if m.get(key) is None and any((m.get(f"{k}_target") or 0) > (m.get(f"{k}_ref") or 0) for k in ("nan", "inf")):
        return "inf"
    return _fmt(m.get(key))


def _print_comparison(cmp: dict[str, Any]) -> None:
    table = Table()
    for col in ("tensor", "shape", "max abs", "max rel", "rel L2", "cosine", "mismatch", "NaN/Inf t", "verdict"):
        table.add_column(col, overflow="fold")
    for m in cmp["tensors"]:
        table.add_row(
            m["name"],
            "x".join(map(str, m["target_shape"])),
            _err(m, "max_abs"),
            _err(m, "max_rel"),
            _err(m, "rel_l2"),
            _fmt(m["cosine"]),
            f"{100 * (_num(m['mismatch_fraction'])):.1f}%",
            f"{m['nan_target']}/{m['inf_target']}",
            "pass" if m["passed"] else f"FAIL {m['reason']}",
        )
    for name in cmp.get("missing", []):
        table.add_row(name, "-", "-", "-", "-", "-", "-", "-", "FAIL missing in target")
    out.print(table)


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ---- run / verify ---------------------------------------------------------------------------------------
@app.command()
def run(
    model: ModelArg,
    ref: RefOpt = None,
    target: TargetOpt = None,
    inputs: InputsOpt = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Output directory (report, repro, journal).")] = Path(
        "bisect-out"
    ),
    find_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Keep searching past each culprit (fed with reference values) and report every independent faulty op.",
        ),
    ] = False,
    max_culprits: Annotated[
        int, typer.Option("--max-culprits", min=1, help="With --all: stop after this many distinct culprits.")
    ] = 8,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in --out.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace the output of an earlier run in --out.")] = False,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="bisect: cut the graph (default); placement: keep it whole and move OpenCL ops back to the CPU "
            "(Paddle-Lite OpenCL targets).",
        ),
    ] = "bisect",
    search: Annotated[
        str,
        typer.Option(
            "--search",
            help="auto: observe several cuts per target run when the target allows it (default; a cmd: runner "
            "when its second whole-model run, fetching every tensor, returns bit-identical outputs); multicut: "
            "always, without that test; binary: one cut per run.",
        ),
    ] = "auto",
    max_memory: Annotated[
        str, typer.Option("--max-memory", help="Memory budget for the tensors one engine run returns, e.g. 2G.")
    ] = "1G",
    no_minimise: Annotated[bool, typer.Option("--no-minimise", help="Keep the repro's input shapes.")] = False,
    shape: ShapeOpt = [],
    seed: SeedOpt = None,
    int_range: IntRangeOpt = None,
    atol: AtolOpt = None,
    rtol: RtolOpt = None,
    tol: TolOpt = [],
    allow_inf: AllowInfOpt = False,
    check_error_stat: StatOpt = "elementwise",
    absolute_atol: AbsAtolOpt = False,
    target_precision: TargetPrecisionOpt = None,
    precision_factor: PrecisionFactorOpt = None,
    accumulation: AccumulationOpt = None,
    timeout: TimeoutOpt = 120.0,
    no_cache: NoCacheOpt = False,
    params: ParamsOpt = None,
    as_json: Json = False,
    verbose: Verbose = False,
) -> None:
    """Bisect to the first op whose output diverges, confirm it alone, and write a standalone repro.

    Exit 0: no mismatch (verdict match, or precision: every difference is within the half-precision model);
    1: mismatch or crash found; 2: bad input; 3: engine unavailable; 4: internal error."""
    from bisect_lite.bisector import RunOptions, run_bisect
    from bisect_lite.engines.registry import resolve_engines

    check_timeout(timeout)
    check_cache_root(_model_paths(model, params))
    if resume:
        ref, target = _check_resume(model, params, out_dir, ref, target, inputs, shape, seed, int_range)
    seed = check_seed(seed)
    ref_spec, target_spec, engines_note = resolve_engines(ref, target)
    if target_precision not in (None, "fp16", "fp32"):
        raise InputError(f"--target-precision {target_precision!r}: expected fp16 or fp32")
    if accumulation not in (None, "fp32", "half"):
        raise InputError(f"--accumulation {accumulation!r}: expected fp32 or half")
    if precision_factor is not None and not precision_factor > 1:
        raise InputError(f"--precision-factor {precision_factor:g}: expected a number above 1")
    config = _compare_config(target_spec, atol, rtol, tol, allow_inf, check_error_stat, absolute_atol, target_precision)
    if search not in ("auto", "multicut", "binary"):
        raise InputError(f"--search {search!r}: expected auto, multicut or binary")
    if strategy not in ("bisect", "placement"):
        raise InputError(f"--strategy {strategy!r}: expected bisect or placement")
    if engines_note and not as_json:
        err.print(engines_note)
    options = RunOptions(
        ref=ref_spec,
        target=target_spec,
        inputs=inputs,
        shapes=shape,
        seed=seed,
        int_range=int_range,
        out=out_dir,
        find_all=find_all,
        max_culprits=max_culprits,
        compare=config,
        timeout=timeout,
        max_memory=parse_size(max_memory),
        cache=not no_cache,
        resume=resume,
        minimise=not no_minimise,
        verbose=verbose,
        params=params,
        force=force,
        strategy=strategy,
        search=search,
        explicit_tolerance=atol is not None or rtol is not None,
        target_precision=target_precision,
        precision_factor=precision_factor,
        accumulation=accumulation,
        engines_note=engines_note,
    )
    from bisect_lite.progress import RunProgress

    try:
        with RunProgress(err, enabled=not as_json) as progress:
            report = run_bisect(model, options, progress.event)
    except (KeyboardInterrupt, Stopped) as exc:
        stop = exc if isinstance(exc, Stopped) else Stopped(signal.SIGINT)
        sys.stderr.write(f"{stop.word}; continue with: bisect-lite run {model} --out {out_dir} --resume\n")
        raise typer.Exit(stop.exit_code) from None
    if as_json:
        _print_json(report)
    else:
        _print_run_summary(report, out_dir)
    raise typer.Exit(0 if report["verdict"] in ("match", "precision") else 1)


def _check_resume(
    model_path: Path,
    params: Path | None,
    out_dir: Path,
    ref: str | None,
    target: str | None,
    inputs: Path | None,
    shape: list[str],
    seed: int | None,
    int_range: str | None,
) -> tuple[str, str]:
    """--resume continues exactly the recorded run: options that would change it are refused, never ignored."""
    from bisect_lite.fsutil import check_output_dir
    from bisect_lite.journal import read_header

    check_output_dir(out_dir, resume=True, option="--out")
    header = read_header(out_dir)
    for option, given, recorded in (("--ref", ref, header["ref"]), ("--target", target, header["target"])):
        if given is not None and given != recorded:
            raise InputError(
                f"--resume: {out_dir} was made with {option} {recorded}, not {given}; "
                "drop the option to continue, or start over with --force"
            )
    if inputs is not None or shape or seed is not None or int_range is not None:
        from bisect_lite.cache import inputs_hash
        from bisect_lite.inputs import prepare_inputs
        from bisect_lite.model import load_model

        model = load_model(model_path, params)
        feeds = prepare_inputs(model, inputs, shapes=shape, seed=check_seed(seed), int_range=int_range)
        if inputs_hash(feeds) != header["inputs"]:
            given = "--inputs" if inputs is not None else "--seed/--shape/--int-range"
            raise InputError(
                f"--resume: {given} give other inputs than the run in {out_dir} used; drop them to continue, or "
                "start over with --force"
            )
    return header["ref"], header["target"]


def check_seed(seed: int | None) -> int:
    from bisect_lite.inputs import check_seed as check

    return check(0 if seed is None else seed)


MAX_TIMEOUT = 1e6  # about 11 days; beyond it the OS cannot wait (time_t overflow)


def check_timeout(timeout: float) -> float:
    if not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise InputError(f"--timeout {timeout:g}: expected a number of seconds above 0 and at most {MAX_TIMEOUT:g}")
    return timeout


def check_cache_root(protected: list[Path | None]) -> None:
    from bisect_lite.cache import check_root

    check_root(protected)


def _model_paths(model_path: Path, params: Path | None) -> list[Path | None]:
    """The model's directory (a .pdmodel's parent) and an explicit params file: outputs must stay clear of both."""
    path = Path(model_path)
    return [path if path.is_dir() else path.parent, params]


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        unit = t[-1] if t and t[-1] in units else ""
        value = float(t[: len(t) - len(unit)])
        if not math.isfinite(value) or value <= 0:
            raise ValueError
        return int(value * units[unit])
    except (ValueError, IndexError):
        raise InputError(f"--max-memory {text!r}: expected a size like 512M or 2G") from None


def _print_warnings(report: dict[str, Any]) -> None:
    # markup=False: engine text may hold [...] that rich would read as markup.
    for warning in report.get("warnings") or []:
        out.print(f"warning: {warning}", markup=False)


def _print_run_summary(report: dict[str, Any], out_dir: Path) -> None:
    from bisect_lite.report.markdown import reference_dump_line

    verdict = report["verdict"]
    cached = f" + {report['target_cache_hits']} from cache" if report["target_cache_hits"] else ""
    by_phase = ", ".join(f"{k} {v}" for k, v in report.get("target_runs_by_phase", {}).items())
    runs = (
        f"{report['search_probes']} search probes (log2 bound {report['expected_probes']}), "
        f"{report['target_runs']} target runs in all{cached}"
        + (f" ({by_phase})" if by_phase else "")
        + (f", {report['search_strategy']} search" if report.get("search_strategy") else "")
        + f", {report['seconds']:.1f} s"
        + (f"; reference dump {dump}" if (dump := reference_dump_line(report)) else "")
    )
    if verdict == "match":
        out.print(
            f"MATCH: {report['target']['engine']} agrees with {report['reference']['engine']} on every "
            f"output ({runs}). Report: {out_dir / 'report.md'}"
        )
        _print_warnings(report)
        return
    if verdict == "precision":
        prec = report.get("precision", {})
        out.print(f"PRECISION: {report['target']['engine']} vs {report['reference']['engine']} ({runs})")
        out.print(f"  {prec.get('summary', '')}")
        out.print(f"  confirm: {prec.get('confirm', '')}")
        for note in report.get("notes", []):
            out.print(f"note: {note}")
        out.print(f"report: {out_dir / 'report.md'}")
        return
    out.print(f"{verdict.upper()}: {report['target']['engine']} vs {report['reference']['engine']} ({runs})")
    _print_warnings(report)
    for c in report["culprits"]:
        where = f"op {c['index']} {c['type']}" if c["kind"] == "op" else f"{c['kind']} ops {c['ops']}"
        out.print(f"  culprit: {where}  -> {', '.join(a for v in c['outputs'].values() for a in v)}")
        out.print(f"  diagnosis: {c['diagnosis']['kind']}: {c['diagnosis']['summary']}")
        if c.get("repro"):
            out.print(f"  repro: {out_dir / c['repro']}  (bisect-lite verify {out_dir / c['repro']})")
        for note in c.get("notes", []):
            out.print(f"  note: {note}")
    for note in report.get("notes", []):
        out.print(f"note: {note}")
    out.print(f"report: {out_dir / 'report.md'}")


@app.command()
def verify(
    repros: Annotated[list[Path], typer.Argument(help="Repro directories, or directories holding repros.")],
    ref: Annotated[str | None, typer.Option("--ref", help="Recompute expected outputs with this engine.")] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Engine to verify (default: the recorded one).")
    ] = None,
    junit: Annotated[Path | None, typer.Option("--junit", help="Write a JUnit XML report for CI.")] = None,
    trust_command: Annotated[
        bool,
        typer.Option(
            "--trust-recorded-command",
            help="Run a cmd: engine recorded in the repro (off: such repros need --target).",
        ),
    ] = False,
    timeout: TimeoutOpt = 120.0,
    as_json: Json = False,
    verbose: Verbose = False,
) -> None:
    """Re-run repro bundles: exit 0 when every one now passes (fix verified), 1 when any still fails.

    A `cmd:` engine recorded in a repro is never run unless named with --target or allowed with
    --trust-recorded-command: repros are made to be shared, and a command from a stranger is not run blindly."""
    from bisect_lite.repro.verify import find_repros, is_junit_report, verify_repros, write_junit

    check_timeout(timeout)
    if junit is not None:
        from bisect_lite.fsutil import check_output_file

        junit = Path(os.path.abspath(junit))
        check_output_file(junit, protected=find_repros(repros), option="--junit", ours=is_junit_report)
    results = verify_repros(
        repros, ref=ref, target=target, timeout=timeout, verbose=verbose, trust_recorded_command=trust_command
    )
    if junit:
        write_junit(junit, results)
    if as_json:
        _print_json([r.to_dict() for r in results])
    else:
        table = Table(title=f"{len(results)} repro(s)")
        for col in ("repro", "op", "target", "result", "detail"):
            table.add_column(col, overflow="fold")
        for r in results:
            table.add_row(
                str(r.repro),
                r.op,
                r.target,
                {"fixed": "PASS (fixed)", "failing": "FAIL", "crash": "CRASH"}[r.status],
                r.message,
            )
        out.print(table)
        still = sum(not r.passed for r in results)
        out.print("all repros pass: fix verified" if not still else f"{still} of {len(results)} still fail")
    raise typer.Exit(0 if all(r.passed for r in results) else 1)


def parse_op_range(text: str) -> list[int]:
    try:
        if ".." in text:
            lo, hi = (int(p) for p in text.split("..", 1))
            if hi < lo:
                raise ValueError
            return list(range(lo, hi + 1))
        return [int(text)]
    except ValueError:
        raise InputError(f"--op {text!r}: expected an op index N or a range N..M with N <= M") from None


def _fail(message: str, code: int) -> None:
    # Plain write: one line, never wrapped or styled, whatever the terminal width.
    text = " ".join(str(message).split())
    sys.stderr.write(f"error: {text}\n")
    sys.exit(code)


class Stopped(BaseException):
    """SIGINT or SIGTERM, raised where the main thread is so that every `finally` runs (engine processes are
    stopped). A BaseException of our own: typer would turn a KeyboardInterrupt into a silent exit 130."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def word(self) -> str:
        return "terminated" if self.signum == signal.SIGTERM else "interrupted"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _on_signal(signum: int, frame: Any) -> None:
    raise Stopped(signum)


def _os_error(exc: OSError) -> tuple[str, int]:
    """A file system failure (read-only, full, missing, not permitted): the user's path is exit 2, the cache or
    temporary space (the environment) exit 3."""
    from bisect_lite.cache import default_root

    where = exc.filename or ""
    text = f"{where}: {exc.strerror or exc}" if where else f"{exc.strerror or exc}"
    environment = False
    if where:
        # The cache, or a private temporary directory of ours (they all start with "bisect-lite-").
        path = Path(os.path.abspath(where))
        environment = path.is_relative_to(Path(os.path.abspath(default_root()))) or any(
            part.startswith("bisect-lite-") for part in path.parts
        )
    if environment:
        return f"cannot use the cache or temporary space: {text} (set BISECT_LITE_CACHE or TMPDIR, or free space)", 3
    return f"cannot read or write {text}", 2


def main() -> None:
    from bisect_lite.engines.worker import kill_all_children

    handlers = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    verbose = "-v" in sys.argv or "--verbose" in sys.argv
    try:
        # Without standalone mode click returns a command's exit code instead of raising SystemExit.
        code = app(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except BisectLiteError as exc:
        _fail(str(exc), exc.exit_code)
    except Stopped as exc:
        sys.stderr.write(f"{exc.word}\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except OSError as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        _fail(*_os_error(exc))
    except Exception as exc:  # typer's (vendored click's) usage errors: one line, exit 2
        if type(exc).__name__ == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if type(exc).__name__ == "Abort":  # click's wrapper of an EOF on a prompt
            sys.stderr.write("aborted\n")
            sys.exit(130)
        if hasattr(exc, "format_message"):
            hint = f" (see `bisect-lite {exc.ctx.info_name} --help`)" if getattr(exc, "ctx", None) else ""
            _fail(f"{exc.format_message()}{hint}", 2)
        if verbose:  # the traceback for the bug report; the exit code stays 4
            import traceback

            traceback.print_exc()
        _fail(
            f"internal error ({type(exc).__name__}: {exc}); this is a bisect-lite bug: rerun with -v for the "
            "traceback and report it",
            4,
        )
    finally:
        kill_all_children()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
