"""A private environment holding real Paddle-Lite, built by `bisect-lite setup lite`.

PyPI's `paddlelite` wheels exist only for CPython <= 3.10 on x86-64 Linux (2.13rc0 for 3.10 and 3.8), while
bisect-lite itself runs on newer Pythons. So setup builds a separate venv from an interpreter the machine already
has, installs `paddlelite==2.13rc0` with `numpy<2` (with numpy 2 the wheel's `Tensor.from_numpy` silently feeds
garbage), and measures what it can do before anyone trusts it:
- opt runs and prints its version, and the runtime reports the same version;
- which targets opt converts: a tiny model is converted for `x86`, `arm` and `opencl,arm`;
- which targets run here: each converted `.nb` is run and its output checked against numpy; a target counts only
  when the runtime is built for this machine's kernels (the x86 wheel loads ARM/OpenCL `.nb` files and returns
  1e31-scale garbage without an error, so a correct-looking answer alone is not enough);
- an input tensor reads back equal to what was fed.
`setup lite` also provisions the native targets (bisect_lite/lite_native.py): the project's runner built against
Paddle-Lite's light-API libraries, running real ARM kernels under QEMU and real OpenCL kernels; they are recorded
under "native" and added to `runs` once a probe model matches numpy on them.
The result is a manifest, `lite-env.json`, next to the venv. The venv lives in its own directory named by a
random tag and the manifest is written last and atomically: a half-built environment is never used, and
`--force` replaces a working one only once its successor works.

API for the rest of bisect-lite: `find_lite_env()` -> `LiteEnv | None`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bisect_lite.errors import EngineUnavailable
from bisect_lite.fsutil import atomic_write_text

PADDLELITE_REQUIREMENT = "paddlelite==2.13rc0"
NUMPY_REQUIREMENT = "numpy<2"
SUPPORTED_PYTHONS = ("3.10", "3.8")  # the CPython versions with a paddlelite 2.13rc0 wheel
MANIFEST = "lite-env.json"
# opt's --valid_targets for each target name bisect-lite uses (lite:arm, lite:opencl, lite:x86).
TARGETS = {"x86": "x86", "arm": "arm", "opencl": "opencl,arm"}
INSTALL_HINT = (
    "install one (e.g. `pyenv install 3.10.13`, `uv python install 3.10`, `apt-get install python3.10-venv`) "
    "or pass --python PATH"
)

WORKER_SCRIPT = Path(__file__).with_name("engines") / "lite_worker.py"


@dataclass(frozen=True)
class NativeTarget:
    """A native target (lite:arm, lite:opencl): the runner built against a Paddle-Lite light-API library, verified
    on a probe model. The manifest's "native" entries; their names are the interface with the engines."""

    runner: Path  # bisect_lite_runner built for this library (RUNPATH: the library's folder)
    lib: Path  # the libpaddle_light_api_shared.so it loads unless LD_LIBRARY_PATH names another folder
    lib_sha256: str
    version: str  # GetVersion() of the library ("" when the library answers nothing, as x86-opencl does)
    valid_targets: str  # opt's --valid_targets for .nb files this library runs: arm, x86_opencl
    launcher: list[str]  # what runs the runner: [] (natively) or [qemu-aarch64, -L, SYSROOT]
    machine: str  # the runner's machine: aarch64, x86_64
    device: dict  # arm: emulator, cpu; opencl: opencl_platform, opencl_device, opencl_fp16

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> NativeTarget:
        kwargs = {k: data[k] for k in cls.__dataclass_fields__}
        return cls(**{**kwargs, "runner": Path(data["runner"]), "lib": Path(data["lib"])})


@dataclass(frozen=True)
class LiteEnv:
    """A verified Paddle-Lite environment (what `lite-env.json` records)."""

    root: Path  # the venv
    python: Path  # its interpreter (runs lite_worker.py)
    opt: Path  # paddle_lite_opt (a Python script: run it with `python`)
    version: str  # as opt and the runtime print it, e.g. v2.13-rc
    lite_so: Path  # paddlelite/lite.so, which also exports Paddle-Lite's C++ API
    site_packages: Path
    converts: list[str] = field(default_factory=list)  # targets opt converts for: x86, arm, opencl
    runs: list[str] = field(default_factory=list)  # targets whose .nb files run correctly on this machine
    numpy: str = ""
    base_python: str = ""  # the interpreter the venv was made from
    machine: str = ""
    native: dict[str, NativeTarget] = field(default_factory=dict)  # lite:arm / lite:opencl on real kernels
    manifest: Path | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("manifest")
        data["native"] = {place: target.to_json() for place, target in self.native.items()}
        return {k: str(v) if isinstance(v, Path) else v for k, v in data.items()}

    @classmethod
    def from_json(cls, data: dict, manifest: Path) -> LiteEnv:
        paths = ("root", "python", "opt", "lite_so", "site_packages")
        kwargs = {k: Path(data[k]) if k in paths else data[k] for k in cls.__dataclass_fields__ if k in data}
        kwargs["native"] = {place: NativeTarget.from_json(t) for place, t in data.get("native", {}).items()}
        return cls(**kwargs, manifest=manifest)


def home() -> Path:
    return Path(os.environ.get("BISECT_LITE_HOME") or Path.home() / ".local" / "share" / "bisect-lite")


def env_dir() -> Path:
    return home() / "lite-env"


def manifest_path() -> Path:
    """`$BISECT_LITE_LITE_ENV` (a manifest, or a directory holding one) or the default location."""
    override = os.environ.get("BISECT_LITE_LITE_ENV")
    if override:
        path = Path(override).expanduser()
        return path if path.suffix == ".json" else path / MANIFEST  # a manifest, or the directory that holds one
    return env_dir() / MANIFEST


def find_lite_env() -> LiteEnv | None:
    """The environment `bisect-lite setup lite` made, or None when there is none (or it has been removed)."""
    path = manifest_path()
    try:
        env = LiteEnv.from_json(json.loads(path.read_text()), path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (env.python.exists() and env.opt.exists()):
        return None
    return env


# ---- interpreters ------------------------------------------------------------------------------------------
def candidate_interpreters() -> list[Path]:
    """CPython 3.10 / 3.8 executables where people keep them: PATH, pyenv, uv, asdf, conda, /usr/bin."""
    names = [f"python{v}" for v in SUPPORTED_PYTHONS]
    found: list[Path] = []
    for name in names:
        hit = shutil.which(name)
        if hit:
            found.append(Path(hit))
    user = Path.home()
    roots = [Path(os.environ["PYENV_ROOT"]) if os.environ.get("PYENV_ROOT") else None, user / ".pyenv"]
    roots.append(Path("/root/.pyenv"))
    patterns: list[tuple[Path, str]] = []
    for root in filter(None, roots):
        patterns += [(root / "versions", f"{v}*/bin/python{v}") for v in SUPPORTED_PYTHONS]
    for root in (user / ".local/share/uv/python", Path(os.environ.get("UV_PYTHON_INSTALL_DIR", "/nonexistent"))):
        patterns += [(root, f"cpython-{v}*/bin/python{v}") for v in SUPPORTED_PYTHONS]
    patterns += [(user / ".asdf/installs/python", f"{v}*/bin/python{v}") for v in SUPPORTED_PYTHONS]
    conda_roots = [user / d for d in ("miniconda3", "anaconda3", "miniforge3", "mambaforge")] + [Path("/opt/conda")]
    for root in conda_roots:
        patterns += [(root / "envs", f"*/bin/python{v}") for v in SUPPORTED_PYTHONS]
        patterns += [(root, f"bin/python{v}") for v in SUPPORTED_PYTHONS]
    for folder, pattern in patterns:
        if folder.is_dir():
            found += sorted(folder.glob(pattern), reverse=True)
    for v in SUPPORTED_PYTHONS:
        found += [Path(f"/usr/local/bin/python{v}"), Path(f"/usr/bin/python{v}")]
    unique: list[Path] = []
    for path in found:
        if path.exists() and path not in unique:
            unique.append(path)
    return unique


PROBE_INTERPRETER = (
    "import json, platform, sys, sysconfig; print(json.dumps({'impl': platform.python_implementation(), "
    "'version': '%d.%d' % sys.version_info[:2], 'full': platform.python_version(), 'machine': platform.machine(), "
    "'system': platform.system(), 'venv': __import__('importlib.util').util.find_spec('venv') is not None}))"
)


def interpreter_problem(python: Path) -> tuple[dict | None, str | None]:
    """(facts, None) when this interpreter can hold the paddlelite wheel, else (facts or None, why not)."""
    try:
        proc = subprocess.run([str(python), "-c", PROBE_INTERPRETER], capture_output=True, text=True, timeout=60)
        facts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None, f"{python} is not a runnable Python interpreter"
    what = f"{python} is {facts['impl']} {facts['full']} on {facts['system']} {facts['machine']}"
    if facts["impl"] != "CPython" or facts["version"] not in SUPPORTED_PYTHONS:
        return facts, f"{what}; paddlelite 2.13rc0 has wheels only for CPython 3.10 and 3.8"
    if facts["system"] != "Linux" or facts["machine"] not in ("x86_64", "AMD64"):
        return facts, f"{what}; PyPI's paddlelite 2.13rc0 wheels are for x86-64 Linux only"
    if not facts["venv"]:
        return facts, f"{python} has no venv module (e.g. apt-get install python{facts['version']}-venv)"
    return facts, None


def choose_interpreter(python: Path | None) -> tuple[Path, dict]:
    if python is not None:
        facts, why = interpreter_problem(python)
        if why or facts is None:
            raise EngineUnavailable(f"cannot build the Paddle-Lite environment: {why}")
        return python, facts
    rejected = []
    for candidate in candidate_interpreters():
        facts, why = interpreter_problem(candidate)
        if why is None and facts is not None:
            return candidate, facts
        rejected.append(str(candidate))
    looked = "PATH, ~/.pyenv/versions, /root/.pyenv/versions, uv, asdf and conda folders, /usr/bin"
    tried = f" (unusable: {', '.join(rejected)})" if rejected else ""
    raise EngineUnavailable(
        f"real Paddle-Lite needs CPython 3.10 or 3.8 on x86-64 Linux and none was found in {looked}{tried}: "
        + INSTALL_HINT
    )


# ---- probe model --------------------------------------------------------------------------------------------
PROBE_BIAS = np.array([0.5, -1.25, 2.0, 3.75], dtype=np.float32)
PROBE_INPUT = np.array([[1.5, -2.0, 0.25, 7.0]], dtype=np.float32)


def write_probe_model(directory: Path) -> None:
    """`model.pdmodel` + `model.pdiparams` of y = x + b (x [1, 4], b a parameter): what setup converts and runs."""
    from bisect_lite.model import Model, write_model_files
    from bisect_lite.model.proto import DENSE_TENSOR, FEED_MINIBATCH, FETCH_LIST, framework_pb2

    directory.mkdir(parents=True, exist_ok=True)
    program = framework_pb2().ProgramDesc()
    block = program.blocks.add()
    block.idx, block.parent_idx = 0, -1

    def var(name: str, dims: list[int] | None, *, persistable: bool = False, kind: int = DENSE_TENSOR) -> None:
        v = block.vars.add()
        v.name, v.persistable = name, persistable
        v.type.type = kind
        if dims is not None:
            v.type.dense_tensor.tensor.data_type = 5  # FP32
            v.type.dense_tensor.tensor.dims.extend(dims)

    def op(kind: str, ins: dict[str, str], outs: dict[str, str], attrs: dict[str, int]) -> None:
        od = block.ops.add()
        od.type = kind
        for slot, name in ins.items():
            od.inputs.add(parameter=slot, arguments=[name])
        for slot, name in outs.items():
            od.outputs.add(parameter=slot, arguments=[name])
        for key, value in attrs.items():
            od.attrs.add(name=key, type=0, i=value)  # INT

    var("feed", None, persistable=True, kind=FEED_MINIBATCH)
    var("fetch", None, persistable=True, kind=FETCH_LIST)
    var("x", [-1, 4])
    var("b", [4], persistable=True)
    var("y", [-1, 4])
    op("feed", {"X": "feed"}, {"Out": "x"}, {"col": 0})
    op("elementwise_add", {"X": "x", "Y": "b"}, {"Out": "y"}, {"axis": -1})
    op("fetch", {"X": "y"}, {"Out": "fetch"}, {"col": 0})
    write_model_files(Model(program, {"b": PROBE_BIAS}), directory)


def quiet_env() -> dict[str, str]:
    """The environment for Paddle-Lite programs whose log is not wanted."""
    return {**os.environ, "GLOG_minloglevel": "2"}


def convert_probe(python: Path, opt: Path, work: Path, valid_targets: str, name: str) -> Path | None:
    """Convert the probe model in `work/probe` (write_probe_model) with opt into `work/NAME.nb`; None if opt fails."""
    argv = [
        str(python),
        str(opt),
        f"--model_file={work / 'probe' / 'model.pdmodel'}",
        f"--param_file={work / 'probe' / 'model.pdiparams'}",
        f"--valid_targets={valid_targets}",
        f"--optimize_out={work / name}",
    ]
    nb = work / f"{name}.nb"
    return nb if _run(argv, 300, quiet_env()).returncode == 0 and nb.exists() else None


# ---- setup and verification --------------------------------------------------------------------------------
def _run(argv: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise EngineUnavailable(f"`{' '.join(argv[:3])} ...` did not finish within {timeout:g} s") from None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def verify_lite_env(python: Path, opt: Path) -> dict:
    """Measure what the environment does (see the module docstring); EngineUnavailable when it cannot be trusted."""
    quiet = quiet_env()
    proc = _run([str(python), str(opt), "--version"], 120, quiet)
    version = _last_line(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not version.startswith("v"):
        raise EngineUnavailable(f"Paddle-Lite's opt in {python.parent.parent} does not run: {version}")
    with tempfile.TemporaryDirectory(prefix="bisect-lite-setup-") as tmp:
        work = Path(tmp)
        write_probe_model(work / "probe")
        np.savez(work / "inputs.npz", x=PROBE_INPUT)
        converts = [target for target, valid in TARGETS.items() if convert_probe(python, opt, work, valid, target)]
        if "x86" not in converts and "arm" not in converts:
            raise EngineUnavailable(f"Paddle-Lite's opt in {python.parent.parent} converts no probe model")
        # The worker's self-check: runtime facts, input read-back and each .nb's output against numpy.
        check = _run(
            [
                str(python),
                str(WORKER_SCRIPT),
                "--self-check",
                str(work / "inputs.npz"),
                *map(str, sorted(work.glob("*.nb"))),
            ],
            300,
            quiet,
        )
        try:
            facts = json.loads(check.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise EngineUnavailable(
                f"the Paddle-Lite runtime in {python.parent.parent} does not start: {_last_line(check.stderr)}"
            ) from None
    if facts.get("error"):
        raise EngineUnavailable(f"the Paddle-Lite runtime in {python.parent.parent} is unusable: {facts['error']}")
    if facts.get("numpy", "0").split(".")[0] != "1":
        raise EngineUnavailable(
            f"numpy {facts.get('numpy')} in {python.parent.parent}: paddlelite 2.13 needs numpy<2 "
            "(with numpy 2 it feeds garbage); rerun `bisect-lite setup lite --force`"
        )
    if not facts.get("readback_equal"):
        raise EngineUnavailable(
            f"the Paddle-Lite runtime in {python.parent.parent} does not read back the input it was fed "
            f"(numpy {facts.get('numpy')}): its results cannot be trusted; rerun `bisect-lite setup lite --force`"
        )
    runtime = facts.get("version") or ""
    if runtime != version:
        raise EngineUnavailable(f"Paddle-Lite runtime {runtime} differs from opt {version} in {python.parent.parent}")
    expected = PROBE_INPUT + PROBE_BIAS
    native = set(facts.get("native_targets", []))
    runs = []
    for target in converts:
        got = facts.get("results", {}).get(f"{target}.nb")
        if target in native and got is not None and np.allclose(np.asarray(got, dtype=np.float32), expected):
            runs.append(target)
    return {
        "version": version,
        "converts": converts,
        "runs": runs,
        "numpy": facts["numpy"],
        "lite_so": facts["lite_so"],
        "site_packages": facts["site_packages"],
        "machine": facts["machine"],
    }


def setup_lite_env(
    python: Path | None = None, force: bool = False, say: Callable[[str], None] = print
) -> tuple[LiteEnv, bool]:
    """Build (or reuse) the environment; returns it and whether an existing one was reused."""
    existing = find_lite_env()
    if existing is not None and not force and (python is None or _same_base(existing, python)):
        if _still_healthy(existing):
            return existing, True
        say(f"the environment in {existing.root} no longer imports paddlelite with numpy<2: rebuilding it")
    base, facts = choose_interpreter(python)
    target = env_dir() if not os.environ.get("BISECT_LITE_LITE_ENV") else manifest_path().parent
    target.mkdir(parents=True, exist_ok=True)
    venv = target / f"venv-{facts['version']}-{uuid.uuid4().hex[:8]}"
    say(f"building a Paddle-Lite environment in {venv} from {base} (CPython {facts['full']})")
    start = time.perf_counter()
    try:
        proc = _run([str(base), "-m", "venv", str(venv)], 300)
        if proc.returncode != 0:
            raise EngineUnavailable(f"`{base} -m venv` failed: {_last_line(proc.stderr)}")
        vpython = venv / "bin" / "python"
        say(f"installing {PADDLELITE_REQUIREMENT} {NUMPY_REQUIREMENT}")
        pip = [str(vpython), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        proc = _run([*pip, PADDLELITE_REQUIREMENT, NUMPY_REQUIREMENT], 1800)
        if proc.returncode != 0:
            raise EngineUnavailable(
                f"pip could not install {PADDLELITE_REQUIREMENT} {NUMPY_REQUIREMENT} into {venv}: "
                f"{_last_line(proc.stderr + proc.stdout)} (needs network access to PyPI or a mirror in pip.conf)"
            )
        opt = venv / "bin" / "paddle_lite_opt"
        say("verifying: opt per target, runtime per target, input read-back, versions")
        measured = verify_lite_env(vpython, opt)
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    env = LiteEnv(
        root=venv,
        python=vpython,
        opt=opt,
        version=measured["version"],
        lite_so=Path(measured["lite_so"]),
        site_packages=Path(measured["site_packages"]),
        converts=measured["converts"],
        runs=measured["runs"],
        numpy=measured["numpy"],
        base_python=str(base),
        machine=measured["machine"],
        manifest=target / MANIFEST,
    )
    atomic_write_text(target / MANIFEST, json.dumps(env.to_json(), indent=2) + "\n")
    if existing is not None and existing.root != venv and existing.root.parent == target:
        shutil.rmtree(existing.root, ignore_errors=True)
    say(f"built in {time.perf_counter() - start:.0f} s")
    return env, False


def _still_healthy(env: LiteEnv) -> bool:
    """A cheap re-check of a recorded environment: paddlelite imports and numpy is still 1.x (someone may have
    upgraded it, which makes the wheel feed garbage)."""
    probe = "import numpy, paddlelite.lite; print(numpy.__version__)"
    try:
        proc = subprocess.run([str(env.python), "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0 and proc.stdout.strip().startswith("1.")


def _same_base(env: LiteEnv, python: Path) -> bool:
    return Path(env.base_python).resolve() == python.resolve() or env.python.resolve() == python.resolve()


def describe_lite_env(env: LiteEnv | None) -> dict:
    """What `bisect-lite engines --json` shows about real Paddle-Lite."""
    if env is None:
        return {"installed": False, "setup": "bisect-lite setup lite"}
    return {"installed": True, **env.to_json(), "manifest": str(env.manifest)}
