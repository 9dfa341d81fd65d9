"""Paddle-Lite: `lite:arm`, `lite:opencl`, `lite:x86`, on this machine, an ARM board or an Android phone.

Conversion: Paddle-Lite's opt program (`paddle_lite_opt` from the `paddlelite` wheel, or `opt=PATH` for a release
binary) turns each model into a naive-buffer `.nb` for the place's valid targets (`arm`, `opencl,arm`, `x86`), and
once more into protobuf: the optimised program tells which ops were fused and which io_copy/layout glue ops were
inserted. Both are cached with the model's hash, the opt version and the targets. opt runs in a child process: a
model it cannot handle aborts opt, not the search.

Where Paddle-Lite comes from: `opt=PATH` and `python=PATH` when given; otherwise the environment that
`bisect-lite setup lite` built (bisect_lite/lite_env.py: its opt, and its interpreter for the worker); otherwise
`paddle_lite_opt` on PATH and this interpreter.

Runtimes (one engine, several transports):
- default: a worker process running `lite_worker.py` with the environment's interpreter (or this one);
- `python=PATH`: the same worker with another interpreter (e.g. a Python 3.10 venv holding the wheel);
- `ssh=USER@HOST` (+ `python=` on the board, default python3): the worker runs on an ARM board over ssh, files
  are copied with scp (the board needs numpy and paddlelite, nothing else);
- `adb` (+ `serial=`, `runner=`, `libs=`): the native runner of runners/android on a phone: the engine pushes the
  runner and libpaddle_light_api_shared.so once, then per run the .nb and inputs to a fresh directory, runs it,
  pulls the outputs and removes the directory.
Every model gets its own OpenCL kernel-binary and tuning file names, so stale caches never leak between probes,
and the runtime's version must equal opt's.

Guards: a runtime runs only the kernels it is built for (the x86 wheel loads ARM/OpenCL `.nb` files and returns
garbage without an error), so `lite:arm`/`lite:opencl` on it stop with exit 3; every fed input must read back
equal (lite_worker.py), or the environment is refused. A crash keeps its reason: the signal, Paddle-Lite's
`Check failed`/fatal line, the top native frames and whether it happened while building the program (opt or
predictor creation) or while running it (`RunResult.info`: stage, signal, fatal, frames).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.engines.base import Engine, Job, RunResult
from bisect_lite.engines.worker import Worker, WorkerDied, describe_exit
from bisect_lite.errors import EngineUnavailable, InputError
from bisect_lite.fsutil import atomic_write_text
from bisect_lite.lite_env import LiteEnv, find_lite_env

VALID_TARGETS = {"arm": "arm", "opencl": "opencl,arm", "x86": "x86"}
WORKER_SCRIPT = Path(__file__).with_name("lite_worker.py")
OPT_TIMEOUT = 600.0
VERSION_WARNING = "not consistent with current Paddle-Lite version"  # what the runtime logs before it dies
READBACK_ERROR = "input read-back mismatch"  # lite_worker.READBACK_ERROR: the environment garbles inputs
STAGE_MARK = "[bisect-lite] stage="  # lite_worker.STAGE_MARK
NATIVE_STACK_MARK = "*** native stack at signal"  # lite_worker.NATIVE_STACK_MARK
# Frames of the crash handler itself and of the interpreter: never where Paddle-Lite died.
HANDLER_FRAMES = ("libc.so", "libffi", "_ctypes", "libpython", "python3", "ld-linux", "libpthread")
# Any non-empty OPENCL_MEMORY_CONFIG_FILE turns off opt's memory_optimize_pass (ARM and OpenCL), whose tensor
# renaming would hide what was fused; a section header alone moves nothing. An EMPTY file makes opt throw.
NO_REUSE_CONFIG = "device:cpu\n"


def _tail(text: str, lines: int = 8) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])


class LiteEngine(Engine):
    name = "lite"
    summary = "Paddle-Lite (opt + runtime): lite:arm | lite:opencl | lite:x86, locally, over ssh or adb"
    words = {
        "arm": "ARM CPU kernels (valid targets: arm)",
        "opencl": "OpenCL GPU kernels with ARM fallback (valid targets: opencl,arm)",
        "x86": "x86 kernels (valid targets: x86)",
        "adb": "run on an Android phone with the native runner",
    }
    option_help = {
        "precision": "OpenCL precision: auto (default, fp16 on nearly every phone) | fp16 | fp32",
        "tune": "OpenCL local-work-size tuning: none (default) | rapid | normal | exhaustive",
        "opt": "the opt program (default: the one `bisect-lite setup lite` installed, else paddle_lite_opt on PATH)",
        "python": "interpreter for the worker (locally, or on the board with ssh=; default: the setup's)",
        "ssh": "USER@HOST of an ARM board",
        "serial": "adb device serial",
        "runner": "the built native runner (default: runners/android/build/android-arm64-v8a/dist/bisect_lite_runner)",
        "libs": "directory of libpaddle_light_api_shared.so and libc++_shared.so (default: the runner's directory)",
        "device_dir": "working directory on the phone (default /data/local/tmp/bisect-lite)",
        "threads": "CPU threads",
        "runs": "runs per inference; results of the last (catches second-run memory-reuse bugs)",
        "memory_config": "OPENCL_MEMORY_CONFIG_FILE for opt (ops forced onto the CPU)",
    }
    isolated = False
    cache_results = False
    # Measured with real opt 2.13-rc (squeezenet, PP-OCRv5 det/rec/cls): fetching every fused group's output
    # leaves the kernel sequence unchanged on arm and opencl (only glue is added); the search cuts at group ends.
    fetch_invariant = True

    def __init__(self, spec) -> None:
        super().__init__(spec)
        places = [w for w in spec.words if w in VALID_TARGETS]
        if len(places) != 1:
            raise InputError(f"engine {spec}: name exactly one place: lite:arm, lite:opencl or lite:x86")
        self.place = places[0]
        self.adb = "adb" in spec.words
        self.ssh = self.option("ssh")
        if self.adb and self.ssh:
            raise InputError(f"engine {spec}: choose adb or ssh=, not both")
        self.precision = self.option("precision", "auto", ("auto", "fp16", "fp32"))
        self.tune = self.option("tune", "none", ("none", "rapid", "normal", "exhaustive"))
        self.threads = self.int_option("threads", 1)
        self.runs = self.int_option("runs", 1)
        self.device_dir = self.option("device_dir", "/data/local/tmp/bisect-lite")
        self._worker: Worker | None = None
        self._log_dir: Path | None = None  # made by the first worker: engines built only to ask questions leave nothing
        self._opt_version: str | None = None
        self._runtime: dict[str, Any] = {}
        self._remote_ready = False
        self.placement: str | None = None

    @property
    def half_precision(self) -> bool:
        return self.place == "opencl" and self.precision != "fp32"

    @property
    def declared_precision(self) -> str:
        return "fp16" if self.half_precision else "fp32"  # OpenCL precision=auto is fp16 on nearly every phone

    # ---- availability ----------------------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls) -> str | None:
        if find_lite_env() is None and shutil.which("paddle_lite_opt") is None:
            return (
                "real Paddle-Lite is not set up: run `bisect-lite setup lite` (it builds a private environment "
                "from a CPython 3.10 or 3.8 on this machine), or pass opt=PATH to a release's opt binary"
            )
        return None

    @property
    def lite_env(self) -> LiteEnv | None:
        """The provisioned environment, when it is what this engine uses (python= and ssh/adb use others)."""
        if not hasattr(self, "_lite_env"):
            self._lite_env = find_lite_env()
        return self._lite_env

    def _opt_program(self) -> str | None:
        opt = self.option("opt")
        if opt:
            return opt if (Path(opt).exists() or shutil.which(opt)) else None
        if self.lite_env is not None:
            return str(self.lite_env.opt)
        return shutil.which("paddle_lite_opt")

    def _opt_argv(self, program: str) -> list[str]:
        """opt's command line: a Python opt script (the wheel's paddle_lite_opt) runs under lite_worker.py's
        --trace, which prints the native stack if opt dies of a signal (opt itself prints nothing then)."""
        try:
            with open(program, "rb") as f:
                first = f.readline(256).decode(errors="replace")
        except OSError:
            return [program]
        interpreter = first[2:].strip().split()[0] if first.startswith("#!") and "python" in first else ""
        if not interpreter or interpreter.endswith("/env") or not Path(interpreter).exists():
            return [program]
        return [interpreter, str(WORKER_SCRIPT), "--trace", program]

    def _worker_python(self) -> str:
        if self.option("python"):
            return str(self.option("python"))
        if self.ssh:
            return "python3"
        return str(self.lite_env.python) if self.lite_env is not None else sys.executable

    def _native_problem(self, where: str, runs: list[str]) -> str | None:
        """Why this place cannot run on a runtime that executes only `runs` (None when it can)."""
        if self.place in runs:
            return None
        kernels = {"arm": "ARM", "opencl": "OpenCL", "x86": "x86"}[self.place]
        return (
            f"lite:{self.place} needs a Paddle-Lite runtime with {kernels} kernels, and {where} runs only "
            f"{', '.join(runs) or 'no'} .nb files here (it would load this one and return garbage without an error): "
            f"use lite:{self.place},adb (an Android phone with runners/android) or lite:{self.place},ssh=USER@BOARD "
            f"(an ARM board with the paddlelite wheel); `bisect-lite ops MODEL --target lite:{self.place}` still "
            "shows what opt makes of the model"
        )

    def problem(self) -> str | None:
        if self._opt_program() is None:
            if self.option("opt"):
                return f"opt program {self.option('opt')!r} not found"
            return self.unavailable_reason()
        if self.adb:
            if shutil.which("adb") is None:
                return "adb is not on PATH (install Android platform-tools)"
            if not Path(self._runner_path()).exists():
                return (
                    f"native runner {self._runner_path()} not found: build it with runners/android/build.sh "
                    "or pass runner=PATH"
                )
            if not list(self._libs_dir().glob("libpaddle_light_api_shared.so")):
                return (
                    f"libpaddle_light_api_shared.so not found in {self._libs_dir()}: pass libs=DIR (the "
                    "inference_lite_lib cxx/lib directory, plus the NDK's libc++_shared.so)"
                )
        elif self.ssh:
            if shutil.which("ssh") is None or shutil.which("scp") is None:
                return "ssh and scp are needed for ssh="
        elif not self.option("python") and self.lite_env is not None:
            env = self.lite_env
            return self._native_problem(f"the Paddle-Lite {env.version} set up in {env.root}", env.runs)
        else:
            python = self._worker_python()
            probe = subprocess.run([python, "-c", "import paddlelite.lite"], capture_output=True, text=True)
            if probe.returncode != 0:
                return f"{python} cannot import paddlelite ({_tail(probe.stderr, 1) or 'not installed'})"
        return None

    def version(self) -> str:
        return f"opt {self.opt_version()}"

    def cache_key(self) -> str:
        """Conversions depend on the opt program, not only on its version string: another opt of the same release
        (a rebuilt one with a fixed pass, another environment's) must not reuse these conversions."""
        program = self._opt_program()
        if program is None:
            return super().cache_key()
        path = Path(shutil.which(program) or program).resolve()
        try:
            stat = path.stat()
            identity = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            identity = str(path)
        return f"{super().cache_key()}|{identity}"

    def facts(self) -> dict[str, Any]:
        return {
            "engine": str(self.spec),
            "place": self.place,
            "valid_targets": VALID_TARGETS[self.place],
            "precision": self.precision if self.place == "opencl" else "fp32",
            "tune": self.tune,
            "opt_version": self.opt_version(),
            "transport": "adb" if self.adb else ("ssh" if self.ssh else "python"),
            **({"lite_env": str(self.lite_env.root)} if self.lite_env and not (self.adb or self.ssh) else {}),
            **self._runtime,
        }

    # ---- conversion ------------------------------------------------------------------------------------
    def opt_version(self) -> str:
        if self._opt_version is None:
            program = self._opt_program()
            if program is None:
                return "unavailable"
            try:
                proc = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=120)
                text = (proc.stdout + proc.stderr).strip().splitlines()
                self._opt_version = text[-1].strip() if text else "unknown"
            except (OSError, subprocess.TimeoutExpired):
                self._opt_version = "unknown"
        return self._opt_version

    def _memory_config(self) -> str | None:
        config = self.placement or self.option("memory_config")
        return str(Path(config).resolve()) if config else None

    def place_on_cpu(self, config_file: Path | None) -> None:
        """Use this OPENCL_MEMORY_CONFIG_FILE (ops forced onto the CPU) for the next conversions; None resets.
        Each placement converts into its own cache directory."""
        self.placement = str(config_file) if config_file else None

    def convert(self, model_dir: Path, work_dir: Path, kind: str = "naive_buffer") -> Path:
        """opt -> `model.nb` (naive_buffer, what runs) or `optimized/` (protobuf, what it fused), cached in work_dir
        (per model and engine key; per placement when ops are forced onto the CPU)."""
        memory_config = self._memory_config()
        if memory_config:
            tag = hashlib.sha256(Path(memory_config).read_bytes()).hexdigest()[:12]
            work_dir = work_dir / f"placement-{tag}"
        work_dir.mkdir(parents=True, exist_ok=True)
        if kind == "naive_buffer":
            out, done = work_dir / "model", work_dir / "model.nb"
        else:
            # The protobuf view is made without memory reuse, so every surviving tensor keeps its own name.
            out = done = work_dir / "optimized-noreuse"
            memory_config = memory_config or self._no_reuse_config(work_dir)
        if not done.exists():
            self._run_opt(model_dir, kind, out, memory_config)
        return done

    @staticmethod
    def _no_reuse_config(work_dir: Path) -> str:
        path = work_dir / "no-reuse-memory-config.txt"
        if not path.exists():
            atomic_write_text(path, NO_REUSE_CONFIG)
        return str(path)

    def _run_opt(self, model_dir: Path, kind: str, out: Path, memory_config: str | None) -> None:
        program = self._opt_program()
        if program is None:
            raise EngineUnavailable(self.problem() or "opt not found")
        tmp = out.with_name(f".{out.name}-{uuid.uuid4().hex[:8]}")
        argv = [
            *self._opt_argv(program),
            f"--model_file={model_dir / 'model.pdmodel'}",
            f"--param_file={model_dir / 'model.pdiparams'}",
            f"--valid_targets={VALID_TARGETS[self.place]}",
            f"--optimize_out_type={kind}",
            f"--optimize_out={tmp}",
        ]
        env = dict(os.environ)
        env.pop("OPENCL_MEMORY_CONFIG_FILE", None)
        if memory_config:
            env["OPENCL_MEMORY_CONFIG_FILE"] = memory_config
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=OPT_TIMEOUT, env=env)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"opt did not finish within {OPT_TIMEOUT:g} s") from None
        produced = Path(f"{tmp}.nb") if kind == "naive_buffer" else tmp
        if proc.returncode != 0 or not produced.exists():
            raise OptCrash(crash_details(proc.stderr + proc.stdout, proc.returncode, "build", "opt"))
        final = Path(f"{out}.nb") if kind == "naive_buffer" else out
        os.replace(produced, final)

    def optimized_program(self, model_dir: Path, work_dir: Path) -> Path | None:
        return self.convert(model_dir, work_dir, "protobuf")

    # ---- running -----------------------------------------------------------------------------------------
    def execute(self, job: Job, timeout: float) -> RunResult:
        start = time.perf_counter()
        try:
            nb = self.convert(job.model_dir, job.work_dir)
        except OptCrash as exc:
            return RunResult("crash", seconds=time.perf_counter() - start, message=str(exc), info=dict(exc.details))
        except RuntimeError as exc:
            return RunResult("crash", seconds=time.perf_counter() - start, message=f"conversion: {exc}")
        left = max(timeout - (time.perf_counter() - start), 1.0)
        cache_name = job.work_dir.name  # unique per model and engine: per-model OpenCL caches
        result = self._run_adb(nb, job, left, cache_name) if self.adb else self._run_worker(nb, job, left, cache_name)
        if result.ok:
            self._check_version(result.info.get("paddle_lite_version"))
        elif VERSION_WARNING in result.message:
            # The runtime logs "version of current Paddle-Lite:vX" right after the warning.
            found = re.search(r"version of current Paddle-Lite:\s*(\S+)", result.message)
            runtime = found.group(1) if found else "of another release"
            raise EngineUnavailable(
                f"the Paddle-Lite runtime {runtime} refuses .nb files from opt {self.opt_version()} (it warns: "
                f"'{VERSION_WARNING}' and then fails): use the opt of the runtime's release (opt=PATH)"
            )
        return result

    def _check_version(self, runtime: str | None) -> None:
        if not runtime:
            return
        self._runtime["paddle_lite_version"] = runtime
        opt = self.opt_version()
        if opt not in ("unknown", "unavailable") and runtime.strip() != opt.strip():
            raise EngineUnavailable(
                f"Paddle-Lite runtime {runtime} differs from opt {opt}: .nb files only load in the runtime of the "
                "same version; use the opt of the same release (opt=PATH)"
            )

    # -- python worker, locally or over ssh
    def _check_runtime(self, info: dict[str, Any]) -> None:
        """Refuse a runtime that cannot execute this place's kernels (older workers do not say: trusted)."""
        runs = info.get("native_targets")
        if isinstance(runs, list):
            where = f"the Paddle-Lite runtime of {self._worker_python()}" + (f" on {self.ssh}" if self.ssh else "")
            problem = self._native_problem(where, runs)
            if problem:
                raise EngineUnavailable(f"engine {self.spec}: {problem}")

    def _explain_crash(self, result: RunResult, log: Path, offset: int) -> RunResult:
        """The worker died: rebuild the verdict from its whole log of this run (stage, fatal line, frames)."""
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return result
        if VERSION_WARNING in text:  # execute() turns this into a version-mismatch error
            kept = [ln for ln in text.splitlines() if VERSION_WARNING in ln or "version of current" in ln]
            return RunResult("crash", seconds=result.seconds, message="\n".join(kept), info=result.info)
        found = re.search(r"\((killed by signal \w+|exit code -?\d+)\)", result.message)
        if STAGE_MARK not in text and NATIVE_STACK_MARK not in text and not found:
            return result
        code = _exit_code(found.group(1)) if found else None
        if code is not None and 128 < code < 160:  # through a shell or ssh, death by signal N is status 128 + N
            code = -(code - 128)
        details = crash_details(text, code, "run", "runtime")
        return RunResult("crash", seconds=result.seconds, message=details["message"], info={**result.info, **details})

    def _worker_command(self) -> list[str]:
        python = self._worker_python()
        if not self.ssh:
            return [python, str(WORKER_SCRIPT)]
        return ["ssh", "-o", "BatchMode=yes", self.ssh, shlex.join([python, f"{self.device_dir}/lite_worker.py"])]

    def _ssh(self, command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-o", "BatchMode=yes", self.ssh or "", command], capture_output=True, text=True, timeout=timeout
        )

    def _scp(self, sources: list[str], dest: str, timeout: float = 300) -> None:
        proc = subprocess.run(["scp", "-q", "-r", *sources, dest], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"scp failed: {_tail(proc.stderr)}")

    def _run_worker(self, nb: Path, job: Job, timeout: float, cache_name: str) -> RunResult:
        request = {
            "nb": str(nb),
            "inputs": str(job.inputs_file),
            "outputs": str(job.outputs_file),
            "feeds": job.feeds,
            "opencl": self.place == "opencl",
            "precision": self.precision,
            "tune": self.tune,
            "cache_dir": str(job.work_dir / "opencl-cache"),
            "cache_name": cache_name,
            "threads": self.threads,
            "runs": self.runs,
        }
        remote_job = None
        try:
            if self.ssh:
                remote_job = f"{self.device_dir}/{job.outputs_file.parent.name}"
                self._prepare_remote()
                self._ssh(f"mkdir -p {shlex.quote(remote_job)}")
                self._scp([str(nb), str(job.inputs_file)], f"{self.ssh}:{remote_job}/")
                request.update(
                    nb=f"{remote_job}/{nb.name}",
                    inputs=f"{remote_job}/{job.inputs_file.name}",
                    outputs=f"{remote_job}/outputs.npz",
                    cache_dir=f"{self.device_dir}/opencl-cache",
                )
            if self._worker is None:
                self._log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="bisect-lite-lite-"))
                self._worker = Worker(str(self.spec), self._log_dir / "worker.log", command=self._worker_command())
            log = self._log_dir / "worker.log" if self._log_dir else None
            log_offset = log.stat().st_size if log is not None and log.exists() else 0
            result = self._worker.run(job, timeout, extra=request)
            self._check_runtime(self._worker.info)
            if READBACK_ERROR in result.message:
                raise EngineUnavailable(
                    f"engine {self.spec}: the Paddle-Lite environment ({self._worker_python()}) garbles inputs, so "
                    f"none of its results can be trusted: {result.message.split(READBACK_ERROR, 1)[1].strip(': ')}"
                )
            if result.status == "crash" and log is not None:
                result = self._explain_crash(result, log, log_offset)
            if result.ok and remote_job:
                self._scp([f"{self.ssh}:{remote_job}/outputs.npz"], str(job.outputs_file))
            return result
        except WorkerDied as exc:
            raise EngineUnavailable(f"engine {self.spec} cannot start its worker: {exc}") from None
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return RunResult("crash", message=str(exc))
        finally:
            if remote_job:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._ssh(f"rm -rf {shlex.quote(remote_job)}")

    def _prepare_remote(self) -> None:
        if self._remote_ready:
            return
        proc = self._ssh(f"mkdir -p {shlex.quote(self.device_dir)}")
        if proc.returncode != 0:  # an unreachable board is no verdict on the model
            raise EngineUnavailable(f"engine {self.spec}: cannot use the board {self.ssh}: {_tail(proc.stderr)}")
        self._scp([str(WORKER_SCRIPT)], f"{self.ssh}:{self.device_dir}/lite_worker.py")
        self._remote_ready = True

    # -- Android over adb
    def _runner_path(self) -> str:
        # Where runners/android/build.sh leaves the runner and the libraries it needs.
        dist = Path(__file__).resolve().parents[2] / "runners" / "android" / "build" / "android-arm64-v8a" / "dist"
        return self.option("runner") or str(dist / "bisect_lite_runner")

    def _libs_dir(self) -> Path:
        return Path(self.option("libs") or Path(self._runner_path()).parent)

    def _adb(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        serial = ["-s", self.option("serial") or ""] if self.option("serial") else []
        return subprocess.run(["adb", *serial, *args], capture_output=True, text=True, timeout=timeout)

    def _adb_ok(self, *args: str, timeout: float = 120) -> str:
        proc = self._adb(*args, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"adb {' '.join(args[:2])} failed: {_tail(proc.stderr + proc.stdout)}")
        return proc.stdout

    def _prepare_device(self) -> None:
        if self._remote_ready:
            return
        d = self.device_dir
        self._adb_ok("shell", f"mkdir -p {d}")
        self._adb_ok("push", self._runner_path(), f"{d}/bisect_lite_runner")
        self._adb_ok("shell", f"chmod 755 {d}/bisect_lite_runner")
        for lib in sorted(self._libs_dir().glob("*.so")):
            self._adb_ok("push", str(lib), f"{d}/{lib.name}")
        model = self._adb("shell", "getprop ro.product.model").stdout.strip()
        release = self._adb("shell", "getprop ro.build.version.release").stdout.strip()
        info = self._adb("shell", f"cd {d} && LD_LIBRARY_PATH=. ./bisect_lite_runner --info")
        self._runtime.update(device_model=model, android=release)
        with contextlib.suppress(ValueError):
            self._runtime.update(
                {
                    k: v
                    for k, v in json.loads(info.stdout.strip().splitlines()[-1]).items()
                    if k in ("opencl_valid", "opencl_fp16_valid", "device", "gpu", "driver")
                }
            )
        self._remote_ready = True

    def _run_adb(self, nb: Path, job: Job, timeout: float, cache_name: str) -> RunResult:
        start = time.perf_counter()
        try:
            self._prepare_device()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise EngineUnavailable(f"engine {self.spec}: the phone is not usable: {exc}") from None
        local_in = job.outputs_file.parent / "in"
        local_out = job.outputs_file.parent / "out"
        for stale in (local_in, local_out):  # a job directory retried by the runner: never pull into old files
            shutil.rmtree(stale, ignore_errors=True)
        local_in.mkdir()
        with np.load(job.inputs_file, allow_pickle=False) as data:
            for i, name in enumerate(job.feeds):
                np.save(local_in / f"{i}.npy", data[name])
        (local_in / "names.txt").write_text("".join(f"{n}\n" for n in job.feeds))
        run_dir = f"{self.device_dir}/run-{uuid.uuid4().hex[:12]}"
        d = self.device_dir
        command = (
            f"cd {d} && LD_LIBRARY_PATH=. ./bisect_lite_runner --model {run_dir}/model.nb --inputs {run_dir}/in "
            f"--outputs {run_dir}/out --precision {self.precision} --tune {self.tune} --threads {self.threads} "
            f"--runs {self.runs} --cl-cache {d}/opencl-cache/{cache_name}.bin"
            + (f" --tune-file {d}/opencl-cache/{cache_name}.tune" if self.tune != "none" else "")
        )
        try:
            self._adb_ok("shell", f"mkdir -p {run_dir} {d}/opencl-cache")
            self._adb_ok("push", str(nb), f"{run_dir}/model.nb")
            self._adb_ok("push", str(local_in), f"{run_dir}/in")
            try:
                proc = self._adb("shell", command, timeout=timeout)
            except subprocess.TimeoutExpired:
                self._adb("shell", "pkill -f bisect_lite_runner")
                return RunResult(
                    "timeout", seconds=time.perf_counter() - start, message=f"no result within {timeout:g} s"
                )
            if proc.returncode != 0:
                # adb shell returns the remote status; the shell reports death by signal N as 128 + N.
                code = proc.returncode
                what = describe_exit(-(code - 128) if 128 < code < 160 else code)
                return RunResult(
                    "crash",
                    seconds=time.perf_counter() - start,
                    message=f"runner {what}: {_tail(proc.stderr + proc.stdout)}",
                )
            self._adb_ok("pull", f"{run_dir}/out", str(local_out))
        except RuntimeError as exc:
            return RunResult("crash", seconds=time.perf_counter() - start, message=str(exc))
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._adb("shell", f"rm -rf {run_dir}")
        return self._collect_adb(local_out, job, time.perf_counter() - start)

    @staticmethod
    def _collect_adb(out: Path, job: Job, seconds: float) -> RunResult:
        try:
            info = json.loads((out / "info.json").read_text())
            names = (out / "names.txt").read_text().splitlines()
            arrays = [np.load(out / f"{i}.npy", allow_pickle=False) for i in range(len(names))]
        except (OSError, ValueError) as exc:
            return RunResult("crash", seconds=seconds, message=f"incomplete runner outputs ({exc})")
        if len(arrays) != len(job.fetches):
            return RunResult(
                "crash", seconds=seconds, message=f"runner returned {len(arrays)} outputs, expected {len(job.fetches)}"
            )
        np.savez(job.outputs_file, **dict(zip(job.fetches, arrays, strict=True)))
        return RunResult("ok", seconds=seconds, info={"paddle_lite_version": info.get("paddle_lite_version")})

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


# ---- crash reasons -----------------------------------------------------------------------------------------
class OptCrash(RuntimeError):
    """opt failed on a model: the message is one line; `details` has stage, signal, fatal line and frames."""

    def __init__(self, details: dict[str, Any]) -> None:
        super().__init__(details["message"])
        self.details = details


def _exit_code(text: str) -> int | None:
    import signal

    match = re.match(r"killed by signal (\w+)", text)
    if match:
        name = match.group(1)
        return -int(name) if name.isdigit() else -int(getattr(signal.Signals, name, 0))
    match = re.match(r"exit code (-?\d+)", text)
    return int(match.group(1)) if match else None


# A Paddle-Lite log line: `[F 12/ 7 21: 0:45.549 ...lite/core/program.h:248 Init] message`. Its logger pads every
# field (month, day, hour, minute, second, even milliseconds: `51. 32`) with spaces, not zeros, so a field is one or
# two digits after optional spaces; the source location may be missing. glog's own form
# (`F1207 21:00:45.549 1234 file.cc:12] message`) pads with zeros.
LITE_LOG_LINE = re.compile(
    r"^\[(?P<severity>[IWEF])\s*\d{1,2}/\s*\d{1,2}\s+\s*\d{1,2}:\s*\d{1,2}:\s*\d{1,2}(?:\.\s*\d+)?"
    r"(?:\s+(?P<where>[^\]]*?))?\s*\]\s?(?P<message>.*)$"
)
GLOG_LINE = re.compile(
    r"^(?P<severity>[IWEF])\d{4}\s+\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\s+\d+\s+(?P<where>[^\]]*?)\]\s?(?P<message>.*)$"
)


def parse_log_line(line: str) -> tuple[str, str] | None:
    """(severity letter, `message (file:line Function)`) of a Paddle-Lite or glog log line; None otherwise."""
    match = LITE_LOG_LINE.match(line.strip()) or GLOG_LINE.match(line.strip())
    if match is None:
        return None
    where = (match["where"] or "").strip().rsplit("/", 1)[-1]
    message = match["message"].strip()
    return match["severity"], f"{message} ({where})" if where and message else message


def _fatal_line(lines: list[str]) -> str | None:
    """Paddle-Lite's own reason: a fatal log line (`[F 12/ 7 ... file.h:118 Fn] Check failed: ...` or glog's
    `F1207 ... ] ...`), a `Check failed`, or a Python error raised by opt's script."""
    for line in reversed(lines):
        parsed = parse_log_line(line)
        if parsed and parsed[0] == "F" and parsed[1]:
            return parsed[1]
    for line in reversed(lines):
        if "Check failed" in line or line.startswith(("Error", "RuntimeError", "ValueError", "terminate called")):
            parsed = parse_log_line(line)
            return parsed[1] if parsed else line.strip()
    return None


def _frames(lines: list[str], limit: int = 6) -> list[str]:
    """The top native frames printed by lite_worker's handler, demangled, without the handler's own."""
    start = max((i for i, ln in enumerate(lines) if ln.startswith(NATIVE_STACK_MARK)), default=None)
    if start is None:
        return []
    symbols = []
    for line in lines[start + 1 :]:
        match = re.match(r"(\S+)\(([^)+]*)\+0x[0-9a-f]+\)\s*\[0x[0-9a-f]+\]$", line.strip())
        if not match:
            if not re.match(r"\S+\(.*\)\s*\[0x", line.strip()):
                break  # the end of the stack
            continue
        library, symbol = match.groups()
        if not symbol or any(tag in Path(library).name for tag in HANDLER_FRAMES):
            continue
        symbols.append(symbol)
        if len(symbols) >= limit:
            break
    return [_short(name) for name in _demangle(symbols)]


def _demangle(symbols: list[str]) -> list[str]:
    if symbols and shutil.which("c++filt"):
        try:
            proc = subprocess.run(["c++filt"], input="\n".join(symbols), capture_output=True, text=True, timeout=10)
            names = proc.stdout.splitlines()
            if len(names) == len(symbols):
                return names
        except (OSError, subprocess.TimeoutExpired):
            pass
    return symbols


def _short(name: str) -> str:
    """`paddle::lite::operators::FlattenContiguousRangeOp::InferType()` rather than every template argument."""
    head, paren, _ = name.partition("(")
    return f"{head}()" if paren else head


def crash_details(text: str, code: int | None, stage: str, where: str) -> dict[str, Any]:
    """What a dead opt or runtime process left: `stage` (build | run: the worker's last stage mark wins), the
    signal or exit code, the fatal line, the top frames, and a one-line message built from them (never a tail
    cut mid-word)."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    marks = [ln[len(STAGE_MARK) :].split()[0] for ln in lines if ln.startswith(STAGE_MARK)]
    if marks:
        stage = marks[-1]
    fatal = _fatal_line(lines)
    frames = _frames(lines)
    how = describe_exit(code) if code is not None else "failed"
    doing = {
        "build": "while building the program" + (" (opt)" if where == "opt" else " (predictor creation)"),
        "run": "while running the program",
    }.get(stage, stage)
    message = f"Paddle-Lite {where} {how} {doing}"
    if fatal:
        message += f": {fatal}"
    if frames:
        message += f"; in {' <- '.join(frames[:3])}"
    if not fatal and not frames:
        last = next((ln.strip() for ln in reversed(lines) if not ln.startswith(STAGE_MARK)), "")
        message += f": {last}" if last else " without a message"
    details: dict[str, Any] = {"stage": stage, "crashed_in": where, "fatal": fatal, "frames": frames}
    if code is not None and code < 0:
        details["signal"] = describe_exit(code).removeprefix("killed by signal ")
    elif code is not None:
        details["exit_code"] = code
    details["message"] = message
    return details
