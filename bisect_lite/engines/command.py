"""`cmd:TEMPLATE`: any external program, which is how users plug in their own device runners.

Placeholders: {model_dir} (holds model.pdmodel and model.pdiparams), {model_file}, {params_file}, {inputs} (an
.npz with one array per feed, keyed by feed name), {outputs} (the .npz the program must write, one array per fetch,
keyed by the fetched tensor's name) and {io} (JSON {"feeds": [...], "fetches": [...]} in col order).
The template is split like a shell command line (shlex) and run without a shell. Exit 0 with a complete outputs
file is a result; anything else is a `crash` verdict; running longer than the timeout is a `timeout` verdict.
Every placeholder is an absolute path, and the program runs in the directory bisect-lite was started from (so
`cmd:python my_runner.py ...` finds my_runner.py there). It runs in its own process group, which is killed when
it exits: children it leaves behind do not outlive the run.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

from bisect_lite.engines.base import Engine, Job, RunResult
from bisect_lite.engines.worker import describe_exit, run_in_group, tail
from bisect_lite.errors import InputError

PLACEHOLDERS = ("model_dir", "model_file", "params_file", "inputs", "outputs", "io")


class CommandEngine(Engine):
    name = "cmd"
    summary = "any external program: cmd:PROGRAM ARGS with {model_dir} {inputs} {outputs} {io} placeholders"
    option_help = {"template": "the command template (everything after `cmd:`)"}
    isolated = False  # every run is its own process already
    cache_results = False
    fetch_invariant = None  # a user's program: the second whole-model run tests it

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.template = spec.option("template", "")
        try:
            self.argv = shlex.split(self.template)
        except ValueError as exc:
            raise InputError(f"engine cmd:{self.template}: cannot split the command line ({exc})") from None
        if not self.argv:
            raise InputError("engine cmd: empty command template")
        # The user's working directory at invocation: relative programs and arguments in the template mean that.
        self.cwd = Path.cwd()
        for part in self.argv:
            try:
                part.format(**{p: "" for p in PLACEHOLDERS})
            except (KeyError, IndexError, ValueError) as exc:
                raise InputError(
                    f"engine cmd:{self.template}: bad placeholder in {part!r} ({exc}); "
                    f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
                ) from None

    def _program(self) -> Path | None:
        program = self.argv[0]
        if os.sep in program and not os.path.isabs(program):
            program = str(self.cwd / program)
        found = shutil.which(program)
        return Path(found) if found else None

    def version(self) -> str:
        # The program's identity: a rebuilt runner must not reuse cached results of the old one.
        prog = self._program()
        if prog is None:
            return "program not found"
        st = prog.stat()
        tag = hashlib.sha256(f"{prog.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return f"{prog.name}@{tag}"

    def execute(self, job: Job, timeout: float) -> RunResult:
        model_dir = Path(os.path.abspath(job.model_dir))
        values = {
            "model_dir": str(model_dir),
            "model_file": str(model_dir / "model.pdmodel"),
            "params_file": str(model_dir / "model.pdiparams"),
            "inputs": os.path.abspath(job.inputs_file),
            "outputs": os.path.abspath(job.outputs_file),
            "io": os.path.abspath(job.io_file),
        }
        argv = [part.format(**values) for part in self.argv]
        log = job.outputs_file.with_name("stderr.log")
        start = time.perf_counter()
        try:
            code = run_in_group(argv, log, timeout, cwd=self.cwd)
        except OSError as exc:
            return RunResult("crash", message=f"cannot start {argv[0]!r}: {exc.strerror}")
        except subprocess.TimeoutExpired:
            return RunResult(
                "timeout",
                seconds=time.perf_counter() - start,
                message=f"no result within {timeout:g} s" + _with_tail(log),
            )
        seconds = time.perf_counter() - start
        if code != 0:
            return RunResult("crash", seconds=seconds, message=describe_exit(code) + _with_tail(log))
        return RunResult("ok", seconds=seconds)


def _with_tail(log: Path) -> str:
    text = tail(log)
    return f": {text}" if text else ""
