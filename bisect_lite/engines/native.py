"""The native runner (runners/android/bisect_lite_runner.cc) behind one protocol, wherever it runs.

One run writes IN_DIR (`names.txt`, one feed per line, and `0.npy`, `1.npy`, ...), runs
`bisect_lite_runner --model M.nb --inputs IN_DIR --outputs OUT_DIR [options]` and reads OUT_DIR (`names.txt`,
`i.npy` and `info.json`, written last: its presence means the outputs are complete). Executors say where:
- `LocalExecutor`: a child process on this machine: the x86-64 runner (OpenCL kernels on this machine's OpenCL
  platform), or, behind a launcher (`qemu-aarch64 -L SYSROOT`), the aarch64 runner on ARM kernels under QEMU.
  `lib_dir` replaces the library the runner was linked with (its RUNPATH yields to LD_LIBRARY_PATH; QEMU gets it
  as `-E LD_LIBRARY_PATH=DIR`, the guest's environment).
- `AdbExecutor`: an Android phone: the runner and its libraries are pushed once, then per run the `.nb` and IN_DIR
  go to a fresh directory, `adb shell` runs it, OUT_DIR is pulled and the directory removed.
Every local run is its own process group, killed when it ends or times out, and at close; the caller keeps the
reason of a crash (the signal from the status, Paddle-Lite's fatal line from the log).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite import fsutil
from bisect_lite.engines.worker import run_in_group
from bisect_lite.npz import check_npy

LIBRARY = "libpaddle_light_api_shared.so"
RUNNER = "bisect_lite_runner"
# ELF e_machine values of the libraries bisect-lite can run: which executor a `lib=` needs.
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "arm"}
INFO_TIMEOUT = 120.0


@dataclass
class RunnerExit:
    """How one runner process ended."""

    code: int | None  # exit status (negative: killed by that signal); None: timed out and killed
    log: str  # what it printed (stderr and stdout), for the crash reason and runtime facts
    seconds: float


def elf_machine(path: Path) -> str | None:
    """`x86_64`, `aarch64`, `arm` (or `machine N`) of an ELF file; None when it is not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    number = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(number, f"machine {number}")


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def remembered_sha256(path: Path) -> str:
    """sha256 of a file, remembered per path, size and mtime (a library is hashed once per process)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = fsutil.file_sha256(path)
    return _SHA_CACHE[key]


# ---- the protocol ---------------------------------------------------------------------------------------------
def write_inputs(inputs_file: Path, feeds: list[str], in_dir: Path) -> None:
    """IN_DIR from the job's inputs .npz, in feed order."""
    shutil.rmtree(in_dir, ignore_errors=True)  # a retried job directory: never mix with old files
    in_dir.mkdir(parents=True)
    with np.load(inputs_file, allow_pickle=False) as data:
        for i, name in enumerate(feeds):
            np.save(in_dir / f"{i}.npy", np.ascontiguousarray(data[name]))
    (in_dir / "names.txt").write_text("".join(f"{n}\n" for n in feeds))


def read_outputs(out_dir: Path, fetches: list[str], outputs_file: Path) -> tuple[dict[str, Any] | None, str]:
    """(info.json, "") after writing the job's outputs .npz keyed by `fetches` in order (Paddle-Lite renames
    outputs, e.g. `x/target_trans`, but keeps their order); (None, why) when OUT_DIR is incomplete. Each .npy the
    runner wrote is checked (header, and data as long as it says) and copied into the archive as it is, one at a
    time: an every-tensor run of PP-OCRv5 det returns 559 MB, which loading them all first held in this process."""
    try:
        info = json.loads((out_dir / "info.json").read_text())
        count = len((out_dir / "names.txt").read_text().splitlines())
    except (OSError, ValueError) as exc:
        return None, f"incomplete runner outputs ({exc})"
    if count != len(fetches):
        return None, f"runner returned {count} outputs, expected {len(fetches)}"
    try:
        with zipfile.ZipFile(outputs_file, "w", zipfile.ZIP_STORED) as archive:
            for i, name in enumerate(fetches):
                path = out_dir / f"{i}.npy"
                check_npy(path)
                archive.write(path, arcname=f"{name}.npy")
    except (OSError, ValueError) as exc:
        outputs_file.unlink(missing_ok=True)
        return None, f"incomplete runner outputs ({exc})"
    return info if isinstance(info, dict) else {}, ""


def last_json_line(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                return value if isinstance(value, dict) else {}
    return {}


# ---- executors --------------------------------------------------------------------------------------------------
class Executor:
    """Where the runner runs. `run` gets local paths and returns how the process ended."""

    kind = ""

    def run(self, nb: Path, in_dir: Path, out_dir: Path, options: list[str], timeout: float) -> RunnerExit:
        raise NotImplementedError

    def info(self, nb: Path | None = None) -> tuple[dict[str, Any], str]:
        """The runner's `--info` JSON (with `--model nb`: the library's version too) and its log."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what runs keep (device sessions); local runs leave nothing running."""


class LocalExecutor(Executor):
    """The runner as a child process here, directly or behind a launcher such as QEMU."""

    def __init__(
        self,
        runner: Path,
        launcher: list[str] | None = None,
        lib_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.runner = runner
        self.launcher = list(launcher or [])
        self.lib_dir = lib_dir
        self.extra_env = dict(env or {})
        self.kind = "qemu" if self.launcher else "local"

    def argv(self, args: list[str]) -> list[str]:
        if not self.launcher:
            return [str(self.runner), *args]
        guest = ["-E", f"LD_LIBRARY_PATH={self.lib_dir}"] if self.lib_dir else []
        return [*self.launcher, *guest, str(self.runner), *args]

    def env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        if self.lib_dir and not self.launcher:
            env["LD_LIBRARY_PATH"] = str(self.lib_dir)
        return env

    def run(self, nb: Path, in_dir: Path, out_dir: Path, options: list[str], timeout: float) -> RunnerExit:
        shutil.rmtree(out_dir, ignore_errors=True)
        log = out_dir.with_name(out_dir.name + ".log")
        args = ["--model", str(nb), "--inputs", str(in_dir), "--outputs", str(out_dir), *options]
        start = time.perf_counter()
        code: int | None
        try:
            code = run_in_group(self.argv(args), log, timeout, env=self.env())
        except subprocess.TimeoutExpired:
            code = None
        except OSError as exc:
            return RunnerExit(127, f"cannot start {self.argv([])[0]}: {exc.strerror}", time.perf_counter() - start)
        text = log.read_text(errors="replace") if log.exists() else ""
        return RunnerExit(code, text, time.perf_counter() - start)

    def info(self, nb: Path | None = None) -> tuple[dict[str, Any], str]:
        args = ["--info", *(["--model", str(nb)] if nb else [])]
        try:
            proc = subprocess.run(
                self.argv(args),
                capture_output=True,
                text=True,
                timeout=INFO_TIMEOUT,
                env=self.env(),
                errors="replace",
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return {}, f"cannot run {self.argv([])[0]}: {exc}"
        log = proc.stderr + proc.stdout
        facts = last_json_line(proc.stdout) if proc.returncode == 0 else {}
        return facts, log


class AdbExecutor(Executor):
    """An Android phone over adb: the runner and the libraries pushed once (`libs`: local file, name on the phone)."""

    kind = "adb"

    def __init__(self, runner: Path, libs: list[tuple[Path, str]], device_dir: str, serial: str | None = None) -> None:
        self.runner = runner
        self.libs = libs
        self.device_dir = device_dir
        self.serial = serial
        self.ready = False
        self.facts: dict[str, Any] = {}

    def adb(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        serial = ["-s", self.serial] if self.serial else []
        return subprocess.run(["adb", *serial, *args], capture_output=True, text=True, timeout=timeout)

    def adb_ok(self, *args: str, timeout: float = 120) -> str:
        proc = self.adb(*args, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"adb {' '.join(args[:2])} failed: {tail_lines(proc.stderr + proc.stdout)}")
        return proc.stdout

    def prepare(self) -> None:
        """Push the runner and libraries once (RuntimeError, subprocess.TimeoutExpired: the phone is not usable)."""
        if self.ready:
            return
        d = self.device_dir
        self.adb_ok("shell", f"mkdir -p {d}")
        self.adb_ok("push", str(self.runner), f"{d}/{RUNNER}")
        self.adb_ok("shell", f"chmod 755 {d}/{RUNNER}")
        for lib, name in self.libs:
            self.adb_ok("push", str(lib), f"{d}/{name}")
        model = self.adb("shell", "getprop ro.product.model").stdout.strip()
        release = self.adb("shell", "getprop ro.build.version.release").stdout.strip()
        self.facts.update(device_model=model, android=release)
        self.facts.update(self.info()[0])
        self.ready = True

    def info(self, nb: Path | None = None) -> tuple[dict[str, Any], str]:
        proc = self.adb("shell", f"cd {self.device_dir} && LD_LIBRARY_PATH=. ./{RUNNER} --info")
        facts = last_json_line(proc.stdout)
        keep = (
            "opencl_valid",
            "opencl_fp16_valid",
            "opencl_fp16",
            "opencl_platform",
            "opencl_device",
            "device",
            "gpu",
            "driver",
        )
        return {k: v for k, v in facts.items() if k in keep}, proc.stderr + proc.stdout

    def run(self, nb: Path, in_dir: Path, out_dir: Path, options: list[str], timeout: float) -> RunnerExit:
        start = time.perf_counter()
        d = self.device_dir
        run_dir = f"{d}/run-{uuid.uuid4().hex[:12]}"
        command = (
            f"cd {d} && LD_LIBRARY_PATH=. ./{RUNNER} --model {run_dir}/model.nb --inputs {run_dir}/in "
            f"--outputs {run_dir}/out " + " ".join(options)
        )
        shutil.rmtree(out_dir, ignore_errors=True)
        try:
            self.adb_ok("shell", f"mkdir -p {run_dir} {d}/opencl-cache")
            self.adb_ok("push", str(nb), f"{run_dir}/model.nb")
            self.adb_ok("push", str(in_dir), f"{run_dir}/in")
            try:
                proc = self.adb("shell", command, timeout=timeout)
            except subprocess.TimeoutExpired:
                self.adb("shell", f"pkill -f {RUNNER}")
                return RunnerExit(None, "", time.perf_counter() - start)
            code = proc.returncode
            # adb shell returns the remote status; the shell reports death by signal N as 128 + N.
            code = -(code - 128) if 128 < code < 160 else code
            if code == 0:
                self.adb_ok("pull", f"{run_dir}/out", str(out_dir))
        except RuntimeError as exc:
            return RunnerExit(255, str(exc), time.perf_counter() - start)
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.adb("shell", f"rm -rf {run_dir}")
        return RunnerExit(code, proc.stderr + proc.stdout, time.perf_counter() - start)


def tail_lines(text: str, lines: int = 8) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(kept[-lines:])
