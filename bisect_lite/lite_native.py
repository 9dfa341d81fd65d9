"""The native targets of `bisect-lite setup lite`: real ARM kernels under QEMU (`lite:arm`) and real OpenCL kernels
on this machine's OpenCL platform (`lite:opencl`), through the project's runner (runners/android).

Paddle-Lite's light-API libraries come from a folder laid out like ../shared/paddle-lite (`armv8/{lib,include}`,
`x86-opencl/{lib,include}`): `setup lite --libs DIR`, else `$BISECT_LITE_PADDLE_LITE_LIBS`, else `shared/paddle-lite`
beside the checkout. For each library found, setup:
- checks the Debian packages it needs (installs the missing ones when root with apt-get, else names them if the
  place then fails);
- builds the runner against it into the environment directory, linked with a RUNPATH (not an RPATH) to the
  library's folder, so that LD_LIBRARY_PATH (under QEMU: `-E LD_LIBRARY_PATH=DIR`) can substitute another library;
- converts the probe model with opt for the place's valid targets (`arm`; `x86_opencl`: not `opencl,x86`, for which
  opt puts ARM fallback kernels first) and runs it with the runner: its output must match numpy, the runner must have
  loaded that library, and a library that reports a version must report opt's.
Only targets that pass are recorded (LiteEnv.native, LiteEnv.runs). A library found but unusable is one line naming
what to install (exit 3); no library at the default place is not an error (the native targets stay unavailable).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import bisect_lite
from bisect_lite.errors import EngineUnavailable
from bisect_lite.fsutil import atomic_write_text, file_sha256
from bisect_lite.lite_env import (
    PROBE_BIAS,
    PROBE_INPUT,
    LiteEnv,
    NativeTarget,
    convert_probe,
    write_probe_model,
)

LIBS_ENV = "BISECT_LITE_PADDLE_LITE_LIBS"
LIBRARY = "libpaddle_light_api_shared.so"
RUNNER_DIR = Path(bisect_lite.__file__).resolve().parents[1] / "runners" / "android"
RUNNER_SOURCES = ("bisect_lite_runner.cc", "npy.h")
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
BUILD_DIR = "native"  # beside the manifest


@dataclass(frozen=True)
class Place:
    """How one native target is built and run."""

    folder: str  # in the libraries folder
    valid_targets: str  # opt's --valid_targets for its .nb files
    machine: str  # of the runner
    compiler: str
    launcher: tuple[str, ...]  # program first (looked up on PATH); () runs the runner directly
    packages: tuple[str, ...]  # Debian packages needed to build and run


PLACES = {
    "arm": Place(
        "armv8",
        "arm",
        "aarch64",
        "aarch64-linux-gnu-g++",
        ("qemu-aarch64", "-L", AARCH64_SYSROOT),
        ("g++-aarch64-linux-gnu", "qemu-user"),
    ),
    "opencl": Place(
        "x86-opencl",
        "x86_opencl",
        "x86_64",
        "g++",
        (),
        ("g++", "pocl-opencl-icd", "ocl-icd-libopencl1", "ocl-icd-opencl-dev", "libopenblas0-pthread"),
    ),
}
# The Debian package behind each program or shared library a message may name.
PACKAGE_OF = {
    "g++": "g++",
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "qemu-aarch64": "qemu-user",
    "libopenblas.so.0": "libopenblas0-pthread",
    "libOpenCL.so": "ocl-icd-opencl-dev",
    "libOpenCL.so.1": "ocl-icd-libopencl1",
}
AARCH64_RUNTIME = ("lib/ld-linux-aarch64.so.1", "lib/libstdc++.so.6", "lib/libgomp.so.1")  # in the sysroot
OPENCL_HINT = "pocl-opencl-icd ocl-icd-opencl-dev (Debian; or the OpenCL driver of this machine's GPU)"


@dataclass
class NativeSetup:
    """What native provisioning did: the environment as recorded, where the libraries came from, and why each
    place that has a library does not work (empty when all do)."""

    env: LiteEnv
    libraries: Path | None
    source: str
    problems: dict[str, str] = dataclasses.field(default_factory=dict)


# ---- libraries ----------------------------------------------------------------------------------------------
def default_libraries() -> Path:
    """`shared/paddle-lite` beside the checkout bisect-lite runs from."""
    return Path(bisect_lite.__file__).resolve().parents[1].parent / "shared" / "paddle-lite"


def find_libraries(libs: Path | None, recorded: Path | None = None) -> tuple[Path | None, str, dict[str, Path]]:
    """(folder, where it came from, {place: its library}): --libs, else the environment variable, else the folder
    an earlier setup recorded, else shared/paddle-lite beside the checkout. The folder is None when the default place
    has none; a folder named explicitly that holds no library is EngineUnavailable."""
    override = os.environ.get(LIBS_ENV)
    if libs is not None:
        folder, source, explicit = libs.expanduser(), "--libs", True
    elif override:
        folder, source, explicit = Path(override).expanduser(), f"${LIBS_ENV}", True
    elif recorded is not None and recorded.is_dir() and recorded != default_libraries().resolve():
        folder, source, explicit = recorded, "recorded by the last setup", False
    else:
        folder, source, explicit = default_libraries(), "beside the checkout", False
    folder = folder.resolve() if folder.exists() else folder
    found = {p: folder / spec.folder / "lib" / LIBRARY for p, spec in PLACES.items()}
    found = {p: lib for p, lib in found.items() if lib.is_file()}
    if found:
        return folder, source, found
    layout = " or ".join(f"{spec.folder}/lib/{LIBRARY}" for spec in PLACES.values())
    if explicit:
        what = "does not exist" if not folder.exists() else f"holds no {layout}"
        raise EngineUnavailable(
            f"Paddle-Lite libraries ({source}): {folder} {what}; give a folder laid out like shared/paddle-lite "
            f"({layout}, each with include/ beside lib/)"
        )
    return None, f"none: {folder} not found (give --libs DIR or ${LIBS_ENV})", {}


# ---- packages -----------------------------------------------------------------------------------------------
def missing_packages(packages: list[str]) -> list[str] | None:
    """The Debian packages of `packages` not installed; None where dpkg cannot tell (not Debian)."""
    dpkg = shutil.which("dpkg-query")
    if dpkg is None or not packages:
        return None if dpkg is None else []
    proc = subprocess.run(
        [dpkg, "-W", "-f=${Package} ${db:Status-Status}\\n", *packages], capture_output=True, text=True, timeout=60
    )
    installed = {line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def install_packages(packages: list[str], say: Callable[[str], None]) -> str | None:
    """Install with apt-get when root (as in CI); None when done, else one line naming what to install."""
    command = f"apt-get install {' '.join(packages)}"
    apt = shutil.which("apt-get")
    if os.geteuid() != 0 or apt is None:
        why = "not root" if os.geteuid() != 0 else "no apt-get"
        return f"missing Debian packages {', '.join(packages)} ({why}: run `{command}` as root)"
    say(f"installing {' '.join(packages)} with apt-get (apt-get update first)")
    quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "--no-install-recommends", *packages]):
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=1200, env=quiet)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(argv[:2])}` did not finish within 1200 s: run `{command}`"
        if proc.returncode != 0:
            return f"`apt-get {argv[1]}` failed ({_last_line(proc.stderr + proc.stdout)}): run `{command}`"
    return None


# ---- build --------------------------------------------------------------------------------------------------
def _compile_argv(compiler: str, lib: Path, out: Path) -> list[str]:
    lib_dir = lib.parent
    return [
        compiler,
        "-std=c++14",
        "-O2",
        "-Wall",
        "-Wextra",
        "-isystem",
        str(lib_dir.parent / "include"),  # Paddle-Lite's own headers (their warnings are theirs)
        "-I",
        str(RUNNER_DIR),
        str(RUNNER_DIR / "bisect_lite_runner.cc"),
        "-o",
        str(out),
        f"-L{lib_dir}",
        "-lpaddle_light_api_shared",
        "-ldl",
        # RUNPATH, not RPATH: LD_LIBRARY_PATH then wins, which is how another library (lib=PATH) is substituted.
        f"-Wl,--enable-new-dtags,-rpath,{lib_dir}",
    ]


def runner_path(place: str, compiler: str, lib_sha256: str, lib: Path, root: Path) -> Path:
    """Where the runner for this source, compiler and library lives: the folder is named by their digest, so a
    changed source or library gets a new build and an unchanged one is reused."""
    digest = hashlib.sha256()
    for name in RUNNER_SOURCES:
        digest.update((RUNNER_DIR / name).read_bytes())
    digest.update(" ".join(_compile_argv(compiler, lib, Path("OUT"))).encode() + lib_sha256.encode())
    return root / BUILD_DIR / f"{place}-{digest.hexdigest()[:16]}" / "bisect_lite_runner"


def build_runner(compiler: str, lib: Path, runner: Path) -> str | None:
    """Compile unless already built; None when done, else the compiler's last line."""
    if runner.is_file():
        return None
    runner.parent.mkdir(parents=True, exist_ok=True)
    tmp = runner.with_name(f".{runner.name}.{os.getpid()}.tmp")
    try:
        proc = subprocess.run(_compile_argv(compiler, lib, tmp), capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return _last_line(proc.stderr)
        tmp.replace(runner)
    finally:
        tmp.unlink(missing_ok=True)
    return None


# ---- probe --------------------------------------------------------------------------------------------------
def _last_line(text: str) -> str:
    """The runner's own message when there is one (Paddle-Lite logs around it), else the last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("bisect_lite_runner:")]
    return (ours or lines or ["no output"])[-1]


def _loader_problem(stderr: str) -> str | None:
    """What to install when the dynamic loader (or QEMU's) cannot find a library."""
    hit = re.search(r"error while loading shared libraries: ([^:\s]+)", stderr)
    if hit:
        name = hit.group(1)
        package = PACKAGE_OF.get(name)
        return f"{name} is missing" + (f": install {package}" if package else "")
    if "ld-linux-aarch64.so.1" in stderr:
        return f"the aarch64 runtime is missing under {AARCH64_SYSROOT}: install g++-aarch64-linux-gnu"
    return None


def run_runner(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(f"`{' '.join(argv[:3])} ...` did not finish within {timeout:g} s") from None


def probe_place(place: str, spec: Place, runner: Path, lib: Path, launcher: list[str], env: LiteEnv) -> dict:
    """Run the probe model on the runner; the runner's info.json when its output matches numpy, else
    EngineUnavailable with what went wrong."""
    name = f"lite:{place}"
    info_proc = run_runner([*launcher, str(runner), "--info"], 120)
    if info_proc.returncode != 0:
        why = _loader_problem(info_proc.stderr) or _last_line(info_proc.stderr)
        raise EngineUnavailable(f"{name}: the runner built against {lib} does not start: {why}")
    facts = json.loads(info_proc.stdout.strip().splitlines()[-1])
    if place == "opencl" and not facts.get("opencl_valid"):
        raise EngineUnavailable(f"{name}: no usable OpenCL platform or device on this machine: install {OPENCL_HINT}")
    with tempfile.TemporaryDirectory(prefix="bisect-lite-native-") as tmp:
        work = Path(tmp)
        write_probe_model(work / "probe")
        nb = convert_probe(env.python, env.opt, work, spec.valid_targets, place)
        if nb is None:
            raise EngineUnavailable(
                f"{name}: opt {env.version} does not convert the probe model for {spec.valid_targets}"
            )
        inputs = work / "inputs"
        inputs.mkdir()
        (inputs / "names.txt").write_text("x\n")
        np.save(inputs / "0.npy", PROBE_INPUT)
        proc = run_runner(
            [*launcher, str(runner), "--model", str(nb), "--inputs", str(inputs), "--outputs", str(work / "out")]
        )
        if proc.returncode != 0:
            raise EngineUnavailable(
                f"{name}: the library {lib} does not run a probe model converted by opt {env.version} "
                f"(exit {proc.returncode}): {_last_line(proc.stderr)}"
            )
        info = json.loads((work / "out" / "info.json").read_text())
        got = np.load(work / "out" / "0.npy")
    if Path(info.get("library") or "") != lib.resolve():
        raise EngineUnavailable(f"{name}: the runner loaded {info.get('library')}, not {lib}")
    version = info.get("paddle_lite_version") or ""
    if version and version != env.version:
        raise EngineUnavailable(f"{name}: the library {lib} is Paddle-Lite {version} and opt is {env.version}")
    expected = PROBE_INPUT + PROBE_BIAS
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-6, atol=0):
        raise EngineUnavailable(f"{name}: the probe model gives {got.tolist()} on {lib}, numpy {expected.tolist()}")
    if place == "opencl" and info.get("precision_used") is None:
        raise EngineUnavailable(f"{name}: the probe did not run on OpenCL ({lib}): install {OPENCL_HINT}")
    return info


def _emulator(launcher: list[str]) -> str:
    """`qemu-aarch64 7.2.x (Debian ...)` from `qemu-aarch64 --version`."""
    proc = run_runner([launcher[0], "--version"], 30)
    first = (proc.stdout.strip().splitlines() or ["?"])[0]
    return first.replace(" version ", " ", 1)


def _cpu(cpu: dict) -> str:
    """The CPU Paddle-Lite saw, from the runner's /proc/cpuinfo facts."""
    parts = cpu.get("arm_parts") or []
    if parts:
        return f"ARM CPU part {', '.join(sorted(set(parts)))} ({len(parts)} cores)"
    host = cpu.get("model_name") or "unknown"
    return f"an unknown ARM core: no 'CPU part' in /proc/cpuinfo, which QEMU passes through from the host ({host})"


def _device(place: str, info: dict, launcher: list[str]) -> dict:
    if place == "arm":
        return {"emulator": _emulator(launcher), "cpu": _cpu(info.get("cpu") or {})}
    return {key: info.get(key) for key in ("opencl_platform", "opencl_device", "opencl_fp16")}


# ---- setup --------------------------------------------------------------------------------------------------
def _tool_problem(place: str, spec: Place) -> str | None:
    for program in (spec.compiler, *spec.launcher[:1]):
        if shutil.which(program) is None:
            return f"lite:{place} needs {program}, which is not on PATH: install {PACKAGE_OF[program]}"
    if place == "arm":
        absent = [f for f in AARCH64_RUNTIME if not (Path(AARCH64_SYSROOT) / f).exists()]
        if absent:
            where = f"{', '.join(absent)} under {AARCH64_SYSROOT}"
            return f"lite:arm needs the aarch64 runtime ({where}): install g++-aarch64-linux-gnu"
    if spec.machine == "x86_64" and platform.machine() not in ("x86_64", "AMD64"):
        return f"lite:{place}: the {spec.folder} library is for x86-64 and this machine is {platform.machine()}"
    return None


def setup_native(
    env: LiteEnv, libs: Path | None = None, force: bool = False, say: Callable[[str], None] = print
) -> NativeSetup:
    """Provision the native targets for `env` and record them in its manifest (see the module docstring)."""
    assert env.manifest is not None
    root = env.manifest.parent
    recorded = next((t.lib.parents[2] for t in env.native.values()), None)  # FOLDER/armv8/lib/LIBRARY
    folder, source, found = find_libraries(libs, recorded)
    say(f"Paddle-Lite libraries: {folder} ({source})" if folder else f"Paddle-Lite libraries: {source}")
    problems: dict[str, str] = {}
    needed = sorted({pkg for place in found for pkg in PLACES[place].packages})
    missing = missing_packages(needed)
    # Packages that cannot be installed here are named only where the place then fails: the probe is the truth
    # (the tools may come from elsewhere).
    package_line = install_packages(missing, say) if missing else None
    native: dict[str, NativeTarget] = {}
    for place, lib in found.items():
        spec = PLACES[place]
        try:
            native[place] = _provision(place, spec, lib, env, root, force, say)
        except EngineUnavailable as exc:
            lacking = package_line and missing and [p for p in spec.packages if p in missing]
            problems[place] = f"{exc} ({package_line})" if lacking else str(exc)
    base_runs = [r for r in env.runs if r not in env.native]  # what the wheel runs
    runs = base_runs + [p for p in native if p not in base_runs]
    updated = dataclasses.replace(env, native=native, runs=runs)
    if updated != env:
        atomic_write_text(env.manifest, json.dumps(updated.to_json(), indent=2) + "\n")
    _remove_stale_builds(root, native)
    return NativeSetup(updated, folder, source, problems)


def _provision(place: str, spec: Place, lib: Path, env: LiteEnv, root: Path, force: bool, say) -> NativeTarget:
    problem = _tool_problem(place, spec)
    if problem:
        raise EngineUnavailable(problem)
    compiler = shutil.which(spec.compiler)
    assert compiler is not None
    launcher = [shutil.which(spec.launcher[0]) or spec.launcher[0], *spec.launcher[1:]] if spec.launcher else []
    lib = lib.resolve()
    digest = file_sha256(lib)
    runner = runner_path(place, compiler, digest, lib, root)
    recorded = env.native.get(place)
    if (
        not force
        and recorded is not None
        and (recorded.runner, recorded.lib, recorded.lib_sha256, recorded.launcher) == (runner, lib, digest, launcher)
        and runner.is_file()
    ):
        return recorded  # built from this source against this library and verified already
    say(f"lite:{place}: building the runner against {lib}")
    failure = build_runner(compiler, lib, runner)
    if failure:
        raise EngineUnavailable(f"lite:{place}: compiling the runner against {lib} failed: {failure}")
    say(f"lite:{place}: probing (opt --valid_targets={spec.valid_targets}, then the runner)")
    info = probe_place(place, spec, runner, lib, launcher, env)
    return NativeTarget(
        runner=runner,
        lib=lib,
        lib_sha256=digest,
        version=info.get("paddle_lite_version") or "",
        valid_targets=spec.valid_targets,
        launcher=launcher,
        machine=spec.machine,
        device=_device(place, info, launcher),
    )


def _remove_stale_builds(root: Path, native: dict[str, NativeTarget]) -> None:
    """Builds of other sources or libraries (their manifest entries are gone)."""
    keep = {t.runner.parent for t in native.values()}
    builds = root / BUILD_DIR
    if builds.is_dir():
        for d in builds.iterdir():
            if d.is_dir() and d not in keep:
                shutil.rmtree(d, ignore_errors=True)
