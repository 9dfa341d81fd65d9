"""Paddle-Lite: `lite:arm`, `lite:opencl`, `lite:x86`, on real kernels here, an ARM board or an Android phone.

Conversion: Paddle-Lite's opt program (`paddle_lite_opt` from the `paddlelite` wheel, or `opt=PATH` for a release
binary) turns each model into a naive-buffer `.nb` for the valid targets where it runs (`arm`; `x86_opencl` for
OpenCL here, `opencl,arm` on a phone or board; `x86`), and once more into protobuf: the optimised program tells
which ops were fused, which kernel (OpenCL, ARM, x86, host) runs each op, and which io_copy/layout glue ops were
inserted. Both are cached with the model's hash, the opt program and the targets. opt runs in a child process: a
model it cannot handle aborts opt, not the search.

Where Paddle-Lite comes from: `opt=PATH` and `python=PATH` when given; otherwise the environment that
`bisect-lite setup lite` built (bisect_lite/lite_env.py: its opt, its interpreter for the worker, and its native
runners); otherwise `paddle_lite_opt` on PATH and this interpreter.

Runtimes (one engine, several transports):
- `lite:arm` here: the native runner (runners/) cross-built for aarch64, on the real ARM kernels of Paddle-Lite's
  aarch64 library under QEMU (`transport: qemu`);
- `lite:opencl` here: the native runner built for x86-64 against Paddle-Lite's OpenCL library, on the real OpenCL
  kernels of this machine's OpenCL platform (PoCL) (`transport: local`); kernels compile once per machine
  (engines/kernel_cache.py);
- `lib=PATH`: the same runners with this `libpaddle_light_api_shared.so` (its ELF machine picks QEMU for aarch64,
  this machine for x86-64): how a kernel developer checks a fixed library. Its version must be opt's;
- `lite:x86` and `python=PATH`: a worker process running `lite_worker.py` on the wheel's Python API;
- `ssh=USER@HOST` (+ `python=` on the board, default python3): that worker on an ARM board over ssh, files copied
  with scp (the board needs numpy and paddlelite, nothing else);
- `adb` (+ `serial=`, `runner=`, `libs=` or `lib=`): the native runner on a phone (engines/native.py).
Every model gets its own OpenCL kernel-binary and tuning file names, so stale caches never leak between probes,
and the runtime's version must equal opt's.

Precision: OpenCL `precision=auto` is fp16 wherever the device has `cl_khr_fp16` (nearly every phone) and fp32
where it has not (PoCL): the engine declares what the device really computes in, and is judged accordingly;
`precision=fp16` on a device without fp16 is refused (Paddle-Lite would abort).

Guards: a runtime runs only the kernels it is built for (the x86 wheel loads ARM/OpenCL `.nb` files and returns
garbage without an error), so `lite:arm`/`lite:opencl` without a runner for them stop with exit 3; every fed input
must read back equal (lite_worker.py), or the environment is refused. What the environment lacks (QEMU, an OpenCL
platform, a library of opt's release) is exit 3 naming what to install, never a verdict on an op. A crash keeps
its reason: the signal, Paddle-Lite's `Check failed`/fatal line, the top native frames and whether it happened
while building the program (opt or predictor creation) or while running it (`RunResult.info`: stage, signal,
fatal, frames).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from bisect_lite.engines.base import Engine, Job, RunResult
from bisect_lite.engines.kernel_cache import KernelCache, kernel_cache_root
from bisect_lite.engines.native import (
    LIBRARY,
    RUNNER,
    AdbExecutor,
    Executor,
    LocalExecutor,
    RunnerExit,
    elf_machine,
    read_outputs,
    remembered_sha256,
    tail_lines,
    write_inputs,
)
from bisect_lite.engines.worker import Worker, WorkerDied, describe_exit
from bisect_lite.errors import EngineUnavailable, InputError
from bisect_lite.fsutil import atomic_write_text
from bisect_lite.lite_env import LiteEnv, find_lite_env

# opt's valid targets per place: on a phone or board (and in the wheel), and for the native runners here, where
# the OpenCL library has x86 host kernels: `opencl,arm` would give ARM fallback kernels it cannot run.
VALID_TARGETS = {"arm": "arm", "opencl": "opencl,arm", "x86": "x86"}
LOCAL_OPENCL_TARGETS = "x86_opencl"
# The ELF machine a `lib=` must have for each place (phones take aarch64 libraries).
LIB_MACHINES = {"arm": ("aarch64",), "opencl": ("x86_64",), "x86": ("x86_64",)}
PHONE_MACHINES = ("aarch64", "arm")
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
# What to install when a piece of the real-kernel environment is missing (Debian package names).
INSTALL_QEMU = "apt-get install qemu-user"
INSTALL_AARCH64_RUNTIME = "apt-get install g++-aarch64-linux-gnu"
INSTALL_OPENCL = "apt-get install pocl-opencl-icd ocl-icd-libopencl1"
# The runner's log when the machine, not the model, failed: a missing shared library or sysroot.
ENVIRONMENT_FAILURES = ("error while loading shared libraries", "Could not open '/lib", "cannot open shared object")


def native_targets(env: LiteEnv | None) -> dict[str, dict[str, Any]]:
    """The native runners `bisect-lite setup lite` provisioned (lite-env.json's "native"), as plain dicts:
    `arm` (the aarch64 runner and library, under QEMU here) and `opencl` (the x86-64 runner and OpenCL library).
    Fields: runner, lib, lib_sha256, version, valid_targets, launcher, machine, device."""
    if env is None:
        return {}
    native = getattr(env, "native", None)
    if native is None and env.manifest is not None:  # a LiteEnv that does not carry them itself
        with contextlib.suppress(OSError, ValueError, AttributeError):
            native = json.loads(Path(env.manifest).read_text()).get("native")
    found: dict[str, dict[str, Any]] = {}
    for key, value in (native or {}).items():
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        if isinstance(value, dict) and value.get("runner"):
            found[key] = {k: str(v) if isinstance(v, Path) else v for k, v in value.items()}
    return found


class LiteEngine(Engine):
    name = "lite"
    summary = "Paddle-Lite (opt + runtime): lite:arm | lite:opencl | lite:x86, on real kernels here, ssh or adb"
    words = {
        "arm": "ARM CPU kernels (valid targets: arm); here under QEMU",
        "opencl": "OpenCL GPU kernels (valid targets: x86_opencl here, opencl,arm on a phone or board)",
        "x86": "x86 kernels (valid targets: x86)",
        "adb": "run on an Android phone with the native runner",
    }
    option_help = {
        "precision": "OpenCL precision: auto (default: fp16 where the device has cl_khr_fp16, else fp32) | fp16 | fp32",
        "tune": "OpenCL local-work-size tuning: none (default) | rapid | normal | exhaustive",
        "lib": "run with this libpaddle_light_api_shared.so (aarch64: under QEMU or on the phone; x86-64: here)",
        "opt": "the opt program (default: the one `bisect-lite setup lite` installed, else paddle_lite_opt on PATH)",
        "python": "interpreter for the worker (locally, or on the board with ssh=; default: the setup's)",
        "ssh": "USER@HOST of an ARM board",
        "serial": "adb device serial",
        "runner": "the built native runner (default: runners/android/build/android-arm64-v8a/dist/bisect_lite_runner)",
        "libs": "directory of libpaddle_light_api_shared.so and libc++_shared.so (default: the runner's directory)",
        "device_dir": "working directory on the phone (default /data/local/tmp/bisect-lite)",
        "threads": "CPU threads (default 1; more are slower under QEMU)",
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
        self.threads = self.int_option("threads", 1, minimum=1)
        self.runs = self.int_option("runs", 1, minimum=1)
        self.device_dir = self.option("device_dir", "/data/local/tmp/bisect-lite")
        self.lib = self._lib_option()
        config = self.option("memory_config")
        if config and not Path(config).is_file():
            raise InputError(f"engine {spec}: memory_config={config} is not a file")
        self._worker: Worker | None = None
        self._log_dir: Path | None = None  # made by the first worker: engines built only to ask questions leave nothing
        self._opt_version: str | None = None
        self._runtime: dict[str, Any] = {}
        self._remote_ready = False
        self._executor: Executor | None = None
        self._info: tuple[dict[str, Any], str] | None = None  # the native runner's --info, and its log
        self._kernels: KernelCache | None = None
        self.placement: str | None = None

    def _lib_option(self) -> Path | None:
        """`lib=PATH`, checked when the spec is parsed: a file, ELF, and only where the native runner runs."""
        lib = self.option("lib")
        if not lib:
            return None
        path = Path(lib).expanduser()
        if not path.is_file():
            raise InputError(f"engine {self.spec}: lib={lib} is not a file")
        if elf_machine(path) is None:
            raise InputError(f"engine {self.spec}: lib={lib} is not an ELF shared library")
        if self.ssh or self.option("python"):
            raise InputError(
                f"engine {self.spec}: lib= runs the native runner (here or with adb); ssh= and python= run the "
                "Python wheel, whose library is its own"
            )
        return path.resolve()

    # ---- where it runs ---------------------------------------------------------------------------------------
    def _native(self) -> dict[str, Any] | None:
        """The provisioned native runner this engine runs on here (None: the Python worker, ssh or adb). With
        `lib=`, the runner built for the library's machine."""
        if self.adb or self.ssh or self.option("python"):
            return None
        if not hasattr(self, "_natives"):
            self._natives = native_targets(self.lite_env)
        natives = self._natives
        if self.lib is not None:
            machine = elf_machine(self.lib)
            return next((t for t in natives.values() if t.get("machine") == machine), None)
        return natives.get(self.place) if self.place in ("arm", "opencl") else None

    @property
    def runs_native_here(self) -> bool:
        return not (self.adb or self.ssh or self.option("python")) and (
            self.lib is not None or self._native() is not None
        )

    @property
    def transport(self) -> str:
        if self.adb:
            return "adb"
        if self.ssh:
            return "ssh"
        if self.runs_native_here:
            native = self._native()
            if native is not None:
                return "qemu" if native.get("launcher") else "local"
            return "qemu" if self.lib and elf_machine(self.lib) == "aarch64" else "local"  # problem() says what lacks
        return "python"

    @property
    def valid_targets(self) -> str:
        if self.place == "opencl" and self.runs_native_here:
            return str((self._native() or {}).get("valid_targets") or LOCAL_OPENCL_TARGETS)
        return VALID_TARGETS[self.place]

    def _device(self) -> dict[str, Any]:
        """What setup measured about the device the native runner uses (OpenCL platform, fp16, emulator, CPU)."""
        device = (self._native() or {}).get("device")
        return device if isinstance(device, dict) else {}

    @property
    def used_precision(self) -> str:
        """What the kernels compute in: ARM and x86 in fp32; OpenCL in fp16 where the device has cl_khr_fp16 and
        precision is not fp32, else fp32 (Paddle-Lite's AUTO falls back to fp32 without it)."""
        if self.place != "opencl" or self.precision == "fp32":
            return "fp32"
        if self.runs_native_here and self._device().get("opencl_fp16") is False:
            return "fp32"
        return "fp16"  # AUTO means fp16 on nearly every phone

    @property
    def half_precision(self) -> bool:
        return self.used_precision == "fp16"

    @property
    def declared_precision(self) -> str:
        return self.used_precision

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
            "`bisect-lite setup lite` provisions real ARM kernels (under QEMU) and OpenCL kernels (on this "
            f"machine's OpenCL platform); or use lite:{self.place},adb (an Android phone with runners/android) or "
            f"lite:{self.place},ssh=USER@BOARD (an ARM board with the paddlelite wheel); `bisect-lite ops MODEL "
            f"--target lite:{self.place}` still shows what opt makes of the model"
        )

    def problem(self) -> str | None:
        if self._opt_program() is None:
            if self.option("opt"):
                return f"opt program {self.option('opt')!r} not found"
            return self.unavailable_reason()
        if self.adb:
            return self._phone_problem()
        if self.ssh:
            if shutil.which("ssh") is None or shutil.which("scp") is None:
                return "ssh and scp are needed for ssh="
            return None
        if self.runs_native_here:
            return self._native_here_problem()
        if not self.option("python") and self.lite_env is not None:
            env = self.lite_env
            return self._native_problem(f"the Paddle-Lite {env.version} set up in {env.root}", env.runs)
        python = self._worker_python()
        probe = subprocess.run([python, "-c", "import paddlelite.lite"], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"{python} cannot import paddlelite ({tail_lines(probe.stderr, 1) or 'not installed'})"
        return None

    def _phone_problem(self) -> str | None:
        if shutil.which("adb") is None:
            return "adb is not on PATH (install Android platform-tools)"
        if not Path(self._runner_path()).exists():
            return (
                f"native runner {self._runner_path()} not found: build it with runners/android/build.sh "
                "or pass runner=PATH"
            )
        if self.lib is not None:
            machine = elf_machine(self.lib)
            if machine not in PHONE_MACHINES:
                return f"lib={self.lib} is an {machine} library; a phone runs aarch64 (or arm) ones"
        elif not (self._libs_dir() / LIBRARY).exists():
            return (
                f"{LIBRARY} not found in {self._libs_dir()}: pass libs=DIR (the inference_lite_lib cxx/lib "
                "directory, plus the NDK's libc++_shared.so) or lib=PATH"
            )
        return None

    def _native_here_problem(self) -> str | None:
        """Why the native runner cannot run this place here: the library's machine, a missing runner, QEMU or
        its aarch64 runtime, no OpenCL platform, a library of another release, fp16 on a device without it."""
        wanted = LIB_MACHINES[self.place]
        machine = elf_machine(self.lib) if self.lib else None
        if self.lib is not None and machine not in wanted:
            where = {
                "arm": "lite:arm runs ARM kernels, so lib= must be an aarch64 library (run under QEMU here)",
                "opencl": "lite:opencl runs OpenCL kernels on this machine's OpenCL platform, so lib= must be an "
                "x86-64 library (an aarch64 one runs only under QEMU, where no OpenCL platform is reachable)",
                "x86": "lite:x86 runs x86 kernels here, so lib= must be an x86-64 library",
            }[self.place]
            return f"{where}; {self.lib} is an {machine} library"
        native = self._native()
        if native is None:
            what = f"{machine} libraries" if machine else f"lite:{self.place}"
            return (
                f"no native runner for {what} is provisioned here: run `bisect-lite setup lite` (it builds the "
                "runner of runners/ for ARM kernels under QEMU and for OpenCL kernels on this machine)"
            )
        runner = Path(native["runner"])
        if not runner.is_file():
            return f"the native runner {runner} is missing: rerun `bisect-lite setup lite --force`"
        launcher = [str(a) for a in native.get("launcher") or []]
        if launcher:
            if not (Path(launcher[0]).is_file() if os.sep in launcher[0] else shutil.which(launcher[0])):
                return f"{launcher[0]} is missing: ARM kernels run under QEMU user-mode emulation here ({INSTALL_QEMU})"
            sysroot = launcher[launcher.index("-L") + 1] if "-L" in launcher[:-1] else None
            if sysroot and not Path(sysroot).is_dir():
                return f"the aarch64 C/C++ runtime {sysroot} that QEMU needs is missing ({INSTALL_AARCH64_RUNTIME})"
        info, log = self.runner_info()
        library = f" with lib={self.lib}" if self.lib else ""
        if not info:
            return f"the native runner {runner.name}{library} does not start: {_startup_failure(log)}"
        if self.place == "opencl" and not info.get("opencl_valid"):
            return f"no usable OpenCL platform here (the runner found none{library}): {INSTALL_OPENCL}"
        if self.lib is not None:
            stated = str(info.get("paddle_lite_version") or "")
            opt = self.opt_version()
            if stated and opt not in ("unknown", "unavailable") and stated != opt:
                return (
                    f"lib={self.lib} is Paddle-Lite {stated} and opt is {opt}: .nb files load only in a runtime of "
                    f"opt's release; build the library from {opt} (or pass opt=PATH of {stated})"
                )
        if self.place == "opencl" and self.precision == "fp16" and self.used_precision != "fp16":
            device = self._device().get("opencl_device") or info.get("opencl_device") or "this OpenCL device"
            return (
                f"precision=fp16: {device} has no cl_khr_fp16, and Paddle-Lite aborts when fp16 is asked for "
                "there; use precision=auto or fp32 here (fp16 kernels need a device with fp16)"
            )
        return None

    def runner_info(self) -> tuple[dict[str, Any], str]:
        """The native runner's `--info` here (with `lib=`: on a probe model, which states the library's
        release), once per engine: ({} and its log when it does not start)."""
        if self._info is None:
            executor = self._local_executor()
            if self.lib is None:
                self._info = executor.info()
            else:
                with tempfile.TemporaryDirectory(prefix="bisect-lite-probe-") as tmp:
                    try:
                        nb = self._probe_nb(Path(tmp))
                    except (OptCrash, RuntimeError) as exc:
                        return {}, f"opt cannot convert the probe model: {exc}"
                    self._info = executor.info(nb)
        return self._info

    def _probe_nb(self, directory: Path) -> Path:
        from bisect_lite.lite_env import write_probe_model

        write_probe_model(directory / "probe")
        self._run_opt(directory / "probe", "naive_buffer", directory / "probe-model", None)
        return directory / "probe-model.nb"

    def version(self) -> str:
        return f"opt {self.opt_version()}"

    def cache_key(self) -> str:
        """Conversions depend on the opt program, not only on its version string: another opt of the same release
        (a rebuilt one with a fixed pass, another environment's) must not reuse these conversions. The valid
        targets and the library (its sha256) are part of it: a fixed library never reuses a broken one's results."""
        program = self._opt_program()
        if program is None:
            return super().cache_key()
        path = Path(shutil.which(program) or program).resolve()
        try:
            stat = path.stat()
            identity = f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
        except OSError:
            identity = str(path)
        library = self._library()
        runtime = f"|{self.valid_targets}|{self.used_precision}"
        if library:
            runtime += f"|lib {remembered_sha256(library)}"
        return f"{super().cache_key()}|{identity}{runtime}"

    def _library(self) -> Path | None:
        """The library the native runner runs with here (None for the other transports)."""
        if self.lib is not None or not self.runs_native_here:
            return self.lib
        native = self._native() or {}
        return Path(native["lib"]) if native.get("lib") else None

    def facts(self) -> dict[str, Any]:
        facts: dict[str, Any] = {
            "engine": str(self.spec),
            "place": self.place,
            "valid_targets": self.valid_targets,
            "precision": self.precision if self.place == "opencl" else "fp32",
            "tune": self.tune,
            "opt_version": self.opt_version(),
            "transport": self.transport,
        }
        if self.lite_env and not (self.adb or self.ssh):
            facts["lite_env"] = str(self.lite_env.root)
        library = self._library()
        if library is not None and library.exists():
            facts.update(library=str(library), library_sha256=remembered_sha256(library))
        if self.runs_native_here:
            facts.update(self._native_facts())
        return {**facts, **self._runtime}

    def _native_facts(self) -> dict[str, Any]:
        """What the kernels ran on here: the precision used, the runner, QEMU and the CPU it showed, the OpenCL
        platform and device and their fp16 support, and what the kernel caches saved."""
        native = self._native() or {}
        device = self._device()
        facts: dict[str, Any] = {"precision_used": self.used_precision, "runner": native.get("runner")}
        if self.transport == "qemu":
            facts["emulator"] = device.get("emulator") or _tool_version(str((native.get("launcher") or ["?"])[0]))
            facts["cpu"] = device.get("cpu") or "unknown"
        if self.place == "opencl":
            for key in ("opencl_platform", "opencl_device", "opencl_fp16"):
                if key in device:
                    facts[key] = device[key]
        if self._kernels is not None:
            facts.update(self._kernels.facts())
        return facts

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
            f"--valid_targets={self.valid_targets}",
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
        if self.adb or self.runs_native_here:
            result = self._run_native(nb, job, left, cache_name)
        else:
            result = self._run_worker(nb, job, left, cache_name)
        if result.ok:
            self._check_version(result.info.get("paddle_lite_version"))
        else:
            refusal = self._version_refusal(result.message)
            if refusal:
                raise EngineUnavailable(refusal)
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

    def _version_refusal(self, text: str) -> str | None:
        """The runtime warned that opt is of another release and then failed: that is the environment, not an op.
        A library that states no release at all (an empty version, e.g. a source build) warns too: not a refusal."""
        if VERSION_WARNING not in text:
            return None
        # The runtime logs "version of current Paddle-Lite:vX" right after the warning.
        found = re.search(r"version of current Paddle-Lite:([^\n]*)", text)
        runtime = found.group(1).strip() if found else "of another release"
        if not runtime:
            return None
        return (
            f"the Paddle-Lite runtime {runtime} refuses .nb files from opt {self.opt_version()} (it warns: "
            f"'{VERSION_WARNING}' and then fails): use the opt of the runtime's release (opt=PATH)"
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
            raise RuntimeError(f"scp failed: {tail_lines(proc.stderr)}")

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
            raise EngineUnavailable(f"engine {self.spec}: cannot use the board {self.ssh}: {tail_lines(proc.stderr)}")
        self._scp([str(WORKER_SCRIPT)], f"{self.ssh}:{self.device_dir}/lite_worker.py")
        self._remote_ready = True

    # -- the native runner: here (QEMU, this machine's OpenCL) or on a phone over adb
    def _runner_path(self) -> str:
        # Where runners/android/build.sh leaves the runner and the libraries it needs.
        dist = Path(__file__).resolve().parents[2] / "runners" / "android" / "build" / "android-arm64-v8a" / "dist"
        return self.option("runner") or str(dist / "bisect_lite_runner")

    def _libs_dir(self) -> Path:
        return Path(self.option("libs") or Path(self._runner_path()).parent)

    def _local_executor(self) -> LocalExecutor:
        """The provisioned runner of this place (or of lib='s machine), with the library swapped in for lib=."""
        if not isinstance(self._executor, LocalExecutor):
            native = self._native()
            if native is None:
                raise EngineUnavailable(f"engine {self.spec}: {self._native_here_problem()}")
            lib_dir = None
            if self.lib is not None:
                # The runner's RUNPATH yields to LD_LIBRARY_PATH: a private directory holding only this library.
                self._log_dir = self._log_dir or Path(tempfile.mkdtemp(prefix="bisect-lite-lite-"))
                lib_dir = self._log_dir / "lib"
                lib_dir.mkdir(exist_ok=True)
                link = lib_dir / LIBRARY
                link.unlink(missing_ok=True)
                link.symlink_to(self.lib)
            env = self._kernel_cache().env() if self.place == "opencl" else {}
            self._executor = LocalExecutor(
                Path(native["runner"]), [str(a) for a in native.get("launcher") or []], lib_dir, env
            )
        return self._executor

    def _phone(self) -> AdbExecutor:
        if not isinstance(self._executor, AdbExecutor):
            libs = [(p, p.name) for p in sorted(self._libs_dir().glob("*.so"))]
            if self.lib is not None:  # lib= replaces the library; the rest of libs= (libc++_shared.so) still goes
                libs = [(self.lib, LIBRARY), *(lib for lib in libs if lib[1] != LIBRARY)]
            self._executor = AdbExecutor(Path(self._runner_path()), libs, self.device_dir, self.option("serial"))
        return self._executor

    def _kernel_cache(self) -> KernelCache:
        if self._kernels is None:
            library = self._library()
            device = self._device()
            tag = f"{device.get('opencl_platform')}|{device.get('opencl_device')}"
            owner = remembered_sha256(library)[:16] if library else "default"
            key = f"{owner}-{hashlib.sha256(tag.encode()).hexdigest()[:8]}"
            self._kernels = KernelCache(kernel_cache_root(), key)
        return self._kernels

    def _runner_options(self, device_cache: str | None) -> list[str]:
        # The requested precision: the runner decides auto from the device and reports what it used (checked).
        options = ["--precision", str(self.precision), "--tune", self.tune]
        options += ["--threads", str(self.threads), "--runs", str(self.runs)]
        if device_cache:
            options += ["--cl-cache", f"{device_cache}.bin"]
            if self.tune != "none":
                options += ["--tune-file", f"{device_cache}.tune"]
        return options

    def _run_native(self, nb: Path, job: Job, timeout: float, cache_name: str) -> RunResult:
        if self.adb:
            phone = self._phone()
            try:
                phone.prepare()
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                raise EngineUnavailable(f"engine {self.spec}: the phone is not usable: {exc}") from None
            self._runtime.update(phone.facts)
            if self.place == "opencl" and phone.facts.get("opencl_valid") is False:  # the phone, not an op
                raise EngineUnavailable(
                    f"engine {self.spec}: no usable OpenCL on the phone (the runner's --info: opencl_valid false; "
                    "a library built without OpenCL, or no GPU driver); lite:arm,adb runs its ARM kernels"
                )
            executor: Executor = phone
        else:
            executor = self._local_executor()
        in_dir, out_dir = job.outputs_file.parent / "in", job.outputs_file.parent / "out"
        write_inputs(job.inputs_file, job.feeds, in_dir)
        if self.adb or self.place != "opencl":
            device_cache = f"{self.device_dir}/opencl-cache/{cache_name}" if self.adb else None
            ended = executor.run(nb, in_dir, out_dir, self._runner_options(device_cache), timeout)
            return self._runner_verdict(ended, job, out_dir)
        # OpenCL here: kernels come from the caches, and a crash on a cached Paddle-Lite binary is retried without it.
        cache = self._kernel_cache()
        nb_sha = remembered_sha256(nb)
        name = f"{nb_sha[:24]}-{cache.key}-{self.used_precision}"
        for _attempt in range(2):
            run = cache.begin(f"{name}.bin")
            options = self._runner_options(str(run.private / name))
            ended = executor.run(nb, in_dir, out_dir, options, timeout)
            cache.end(run, ended.code == 0, nb_sha, ended.seconds)
            if ended.code == 0 or not run.had_binary or ended.code is None:
                break
            cache.drop(run)
        return self._runner_verdict(ended, job, out_dir)

    def _runner_verdict(self, ended: RunnerExit, job: Job, out_dir: Path) -> RunResult:
        """The result of a runner process: outputs, a timeout, a crash with its reason, or (the machine failed,
        not the model) EngineUnavailable."""
        if ended.code is None:
            return RunResult("timeout", seconds=ended.seconds, message=f"no result within {ended.seconds:.0f} s")
        log = ended.log.replace(" [F ", "\n[F ")  # the runner's one-line error embeds Paddle-Lite's fatal line
        if ended.code == 0:
            info, why = read_outputs(out_dir, job.fetches, job.outputs_file)
            if info is None:
                return RunResult("crash", seconds=ended.seconds, message=why)
            self._note_runtime(info, log)
            return RunResult("ok", seconds=ended.seconds, info={"paddle_lite_version": info.get("paddle_lite_version")})
        refusal = self._version_refusal(log)
        if refusal:
            raise EngineUnavailable(refusal)
        if ended.code == 127 or any(marker in log for marker in ENVIRONMENT_FAILURES):
            raise EngineUnavailable(f"engine {self.spec}: the native runner cannot start: {_startup_failure(log)}")
        if ended.code == 5:  # the runner refused a precision the OpenCL device cannot run (fp16 without fp16)
            raise EngineUnavailable(f"engine {self.spec}: {_startup_failure(log)}")
        if ended.code == 2:  # the runner's usage error: the protocol, never the model
            raise EngineUnavailable(f"engine {self.spec}: the native runner refused its job: {_startup_failure(log)}")
        stage = "build" if "cannot load model" in log else "run"
        details = crash_details(log, ended.code, stage, "runtime")
        return RunResult("crash", seconds=ended.seconds, message=details["message"], info=details)

    def _note_runtime(self, info: dict[str, Any], log: str) -> None:
        """Facts only a run shows (the runner's info.json): the library's stated release, the library really
        loaded, the OpenCL device and the precision it ran at, the CPU Paddle-Lite saw. A run on another library
        or at another precision than the engine states is the environment's fault: EngineUnavailable."""
        if not info.get("paddle_lite_version"):
            self._runtime["paddle_lite_version"] = "not stated by the library (GetVersion() is empty)"
        if self.adb:
            used = info.get("precision_used")
            if self.place == "opencl" and used and used != self.used_precision:
                # precision=auto is judged as fp16 (nearly every phone); this phone's GPU has no cl_khr_fp16.
                raise EngineUnavailable(
                    f"engine {self.spec}: the phone's OpenCL device ran {used}, and this engine is judged as "
                    f"{self.used_precision}: pass precision={used} so that it is judged as what it computes"
                )
            return
        loaded, library = info.get("library"), self._library()
        if loaded and library is not None and Path(loaded).resolve() != library.resolve():
            raise EngineUnavailable(
                f"engine {self.spec}: the runner loaded {loaded}, not {library} (LD_LIBRARY_PATH or the runner's "
                "RUNPATH picked another library): rerun `bisect-lite setup lite --force`"
            )
        if self.place == "opencl":
            for key in ("opencl_platform", "opencl_device", "opencl_fp16"):
                if info.get(key) is not None:
                    self._runtime[key] = info[key]
            used = info.get("precision_used")
            if used and used != self.used_precision:
                raise EngineUnavailable(
                    f"engine {self.spec}: the OpenCL device ran {used}, and setup recorded it as running "
                    f"{self.used_precision} (opencl_fp16 {self._device().get('opencl_fp16')}): rerun "
                    "`bisect-lite setup lite --force`"
                )
        cpu = _cpu_seen(log)
        if cpu:
            self._runtime["paddle_lite_cpu"] = cpu

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if self._executor is not None:
            self._executor.close()
            self._executor = None
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


def _startup_failure(log: str) -> str:
    """The line that says why a runner did not start or refused its job: its own error line (`bisect_lite_runner:
    error|runtime failure|unsupported precision: ...`; Paddle-Lite logs around it), else Paddle-Lite's fatal line."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    own = [ln.split(": ", 1)[1] for ln in lines if ln.startswith(f"{RUNNER}: ")]
    fatal = _fatal_line(lines)
    if fatal or own:
        return fatal or own[-1]
    for line in reversed(lines):
        if "error" in line.lower() or "failure" in line.lower() or "cannot" in line.lower():
            return line
    return lines[-1] if lines else "no output"


def _cpu_seen(log: str) -> str | None:
    """How Paddle-Lite's ARM library classified the CPU (its log: `CPU ARCH: A55`; `A-1` is an unknown core, as
    under QEMU, which shows the host's /proc/cpuinfo: dot-product and fp16 paths stay off)."""
    arches = re.findall(r"CPU ARCH: (\S+)", log)
    if not arches:
        return None
    unknown = " (unknown to Paddle-Lite: dot-product and ARM fp16 paths off)" if set(arches) == {"A-1"} else ""
    return f"CPU ARCH {', '.join(dict.fromkeys(arches))} on {len(arches)} cores{unknown}"


@functools.lru_cache(maxsize=8)
def _tool_version(program: str) -> str:
    """The first line of `PROGRAM --version` (e.g. QEMU's), or "unknown"."""
    try:
        proc = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = proc.stdout.strip().splitlines()
    return lines[0].strip() if lines else "unknown"


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


def _is_chatter(line: str) -> bool:
    """An info or warning log line (`[I ... ~CLRuntime] is_cl_runtime_initialized_:1`, logged by destructors after
    the real error): never the reason a process failed."""
    parsed = parse_log_line(line)
    return parsed is not None and parsed[0] in "IW"


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
        last = next((ln.strip() for ln in reversed(lines) if not (ln.startswith(STAGE_MARK) or _is_chatter(ln))), "")
        message += f": {last}" if last else " without a message"
    details: dict[str, Any] = {"stage": stage, "crashed_in": where, "fatal": fatal, "frames": frames}
    if code is not None and code < 0:
        details["signal"] = describe_exit(code).removeprefix("killed by signal ")
    elif code is not None:
        details["exit_code"] = code
    details["message"] = message
    return details
