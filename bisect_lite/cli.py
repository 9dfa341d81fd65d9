"""The `bisect-lite` command line: a thin typer layer over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from bisect_lite.errors import BisectLiteError, InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find the first op whose output differs between a reference engine and a target engine.",
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show engine logs (Paddle's glog) on stderr.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
ModelArg = Annotated[Path, typer.Argument(help="Model directory or .pdmodel file (legacy Paddle inference format).")]
ParamsOpt = Annotated[
    Path | None, typer.Option("--params", help="Params file, when it cannot be found next to the model.")
]


def _print_json(data: Any) -> None:
    out.print_json(json.dumps(data, allow_nan=False), highlight=False)


# ---- model commands ------------------------------------------------------------------------------------
@app.command()
def ops(model: ModelArg, params: ParamsOpt = None, as_json: Json = False) -> None:
    """List the ops (index, type, inputs -> outputs with shapes), op types, feeds, fetches and params size."""
    from bisect_lite.model import load_model
    from bisect_lite.model.describe import describe, format_tensor

    info = describe(load_model(model, params))
    if as_json:
        _print_json(info)
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


@app.command()
def truncate(
    model: ModelArg,
    at: Annotated[list[str], typer.Option("--at", help="Tensor to make an output (repeatable, kept in order).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the cut model into.")],
    params: ParamsOpt = None,
) -> None:
    """Cut the model so that the given tensors are its outputs (the backward slice that computes them)."""
    from bisect_lite.model import load_model, save_model
    from bisect_lite.model import truncate as do_truncate

    cut = do_truncate(load_model(model, params), at)
    save_model(cut, output)
    out.print(f"wrote {output} ({len(cut.ops)} ops, fetches: {', '.join(cut.fetches)})")


@app.command()
def extract(
    model: ModelArg,
    op: Annotated[str, typer.Option("--op", help="Op index N or inclusive range N..M (see `ops`).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the extracted model into.")],
    params: ParamsOpt = None,
) -> None:
    """Make a standalone model of one op or a range of ops; outside tensors become feeds."""
    from bisect_lite.model import extract as do_extract
    from bisect_lite.model import load_model, save_model

    sub = do_extract(load_model(model, params), parse_op_range(op))
    save_model(sub, output)
    out.print(f"wrote {output} ({len(sub.ops)} ops, feeds: {', '.join(sub.feeds)}, fetches: {', '.join(sub.fetches)})")


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
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)


def main() -> None:
    try:
        app(standalone_mode=False)
    except BisectLiteError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as exc:  # typer's (vendored click's) usage errors: one line, exit 2
        if type(exc).__name__ == "Exit":
            sys.exit(getattr(exc, "exit_code", 0))
        if type(exc).__name__ == "Abort":
            err.print("aborted", markup=False)
            sys.exit(130)
        if hasattr(exc, "format_message"):
            hint = f" (see `bisect-lite {exc.ctx.info_name} --help`)" if getattr(exc, "ctx", None) else ""
            _fail(f"{exc.format_message()}{hint}", 2)
        raise
