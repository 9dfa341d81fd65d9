"""`onnxruntime`: the model converted with paddle2onnx and run by ONNX Runtime on the CPU.

An independent fp32 implementation of every op: when Paddle Inference and the device disagree, it tells whether
the reference itself is the odd one out. The conversion runs once per model and is cached as `model.onnx` in the
engine's work dir.

Naming facts (paddle2onnx 2.1.0, checked on legacy models): ONNX inputs keep the feed names (their order may
differ from the feed cols); ONNX outputs are called `fetch_name_N`, where N counts the `fetch` ops in program
(desc) order, not by their `col` attribute.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bisect_lite.engines.base import Engine, package_version
from bisect_lite.errors import InputError
from bisect_lite.fsutil import atomic_write_bytes
from bisect_lite.model import MODEL_FILE, PARAMS_FILE, Model

ONNX_FILE = "model.onnx"
DEFAULT_OPSET = 13
MIN_OPSET, MAX_OPSET = 7, 21
EXPORT_TIMEOUT = 600.0
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FETCH_NAME = re.compile(r"^fetch_name_(\d+)$")
_ERROR_MARK = "bisect-lite export error: "


def _verbose() -> bool:
    # The worker sets GLOG_minloglevel=3 unless the user asked for --verbose (then ONNX Runtime may talk too).
    return os.environ.get("GLOG_minloglevel", "0") not in ("2", "3")  # noqa: SIM112 (glog's own spelling)


class _Tee(io.TextIOBase):
    """Keep a copy of what paddle2onnx prints from Python (its error messages) while passing it through."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _error_detail(text: str) -> str:
    """paddle2onnx's own error message out of what it printed."""
    text = _ANSI.sub("", text)
    found = re.findall(r"Failed to convert PaddlePaddle model: (.*)", text)
    if found:
        return found[-1].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[ERROR]" in ln]
    return "\n".join(errors[-3:] or lines[-8:])


def _convert(model_dir: Path, opset: int) -> bytes:
    """paddle2onnx in this process; returns the ONNX bytes or raises RuntimeError with paddle2onnx's message.

    Its chatter goes where this process's stdout/stderr go (the worker's log file, shown only with --verbose).
    """
    # paddle2onnx's default optimiser pip-installs polygraphy by itself: never let it (and pass optimize_tool=None).
    os.environ["POLYGRAPHY_AUTOINSTALL_DEPS"] = "0"
    import paddle
    import paddle2onnx

    out, err = _Tee(sys.stdout), _Tee(sys.stderr)
    data: Any = None
    error = ""
    # A private scope: paddle2onnx loads the params into the global scope, where a long-lived worker would pile up
    # the params of every model it converts (all sharing names, as truncated models do).
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        paddle.static.scope_guard(paddle.static.Scope()),
    ):
        try:
            data = paddle2onnx.export(
                str(model_dir / MODEL_FILE),
                # A model without parameters (a single-op repro) has an empty params file, which paddle2onnx's
                # PIR translation cannot handle; it converts such a model when given no params file at all.
                str(model_dir / PARAMS_FILE) if (model_dir / PARAMS_FILE).stat().st_size else "",
                save_file=None,
                opset_version=opset,
                auto_upgrade_opset=True,
                verbose=False,
                enable_onnx_checker=True,
                enable_optimize=True,
                deploy_backend="onnxruntime",
                optimize_tool="None",
            )
        except (Exception, SystemExit) as exc:  # on failure it logs the real error and calls sys.exit(-1)
            error = f"{type(exc).__name__}: {exc}"
    if not isinstance(data, bytes) or not data:
        detail = _error_detail(out.copy.getvalue() + err.copy.getvalue()) or error or "no ONNX model produced"
        raise RuntimeError(f"paddle2onnx cannot convert {model_dir}: {detail}")
    return data


def export_onnx(
    model_dir: Path,
    out_file: Path,
    opset: int = DEFAULT_OPSET,
    *,
    in_process: bool = False,
    timeout: float = EXPORT_TIMEOUT,
) -> None:
    """Write model_dir's model (model.pdmodel + model.pdiparams) as ONNX to `out_file` (atomically).

    By default the conversion runs in a child process: it imports paddle (1 s, 300 MB), prints from native code
    and can abort. Raises RuntimeError with paddle2onnx's message when it fails.
    """
    model_dir, out_file = Path(model_dir), Path(out_file)
    if not MIN_OPSET <= opset <= MAX_OPSET:  # paddle2onnx 2.1.0 aborts the process outside this range
        raise RuntimeError(f"ONNX opset {opset} is outside the range paddle2onnx supports ({MIN_OPSET}..{MAX_OPSET})")
    if in_process:
        atomic_write_bytes(out_file, _convert(model_dir, opset))
        return
    from bisect_lite.engines.worker import QUIET_ENV, describe_exit

    env = dict(os.environ, POLYGRAPHY_AUTOINSTALL_DEPS="0", **QUIET_ENV)  # its output only serves error messages
    root = str(Path(__file__).resolve().parents[2])  # the child must import this very package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [sys.executable, "-m", "bisect_lite.engines.onnxruntime", str(model_dir), str(out_file), str(opset)]
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"paddle2onnx did not finish converting {model_dir} within {timeout:g} s") from None
    if proc.returncode != 0:
        text = proc.stderr.decode(errors="replace").strip()
        _, mark, message = text.rpartition(_ERROR_MARK)
        if mark:
            raise RuntimeError(message.strip())
        # It died (paddle2onnx aborts on some errors, e.g. an opset it does not support).
        raise RuntimeError(
            f"paddle2onnx died converting {model_dir} ({describe_exit(proc.returncode)}): " + _error_detail(text)
        )


def _fetch_names_in_desc_order(model_dir: Path) -> list[str]:
    """The tensors fetched by the program's `fetch` ops, in the order the ops appear (paddle2onnx's numbering)."""
    model = Model.from_bytes((model_dir / MODEL_FILE).read_bytes(), {})
    return [a for od in model.block.ops if od.type == "fetch" for v in od.inputs for a in v.arguments]


class OnnxRuntimeEngine(Engine):
    half_precision = False
    fetch_invariant = True  # a tensor fetched for a cut is the cut's own output in a plain probe as well
    name = "onnxruntime"
    summary = "the model converted by paddle2onnx, run by ONNX Runtime CPU fp32 (an independent reference)"
    option_help = {
        "opset": f"ONNX opset to request from paddle2onnx (default {DEFAULT_OPSET}; it may raise it when an op "
        "needs more)",
        "threads": "intra-op threads (default 1)",
    }

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.opset = self.int_option("opset", DEFAULT_OPSET)
        self.threads = self.int_option("threads", 1, minimum=1)
        # paddle2onnx 2.1.0 aborts the process (SIGABRT) outside this range: refuse it here instead.
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise InputError(f"engine {spec}: opset={self.opset} is outside {MIN_OPSET}..{MAX_OPSET}")

    @classmethod
    def unavailable_reason(cls) -> str | None:
        needed = ("onnxruntime", "paddle2onnx", "paddle", "onnx")
        missing = [pkg for pkg in needed if importlib.util.find_spec(pkg) is None]
        if missing:
            return f"missing Python packages: {', '.join(missing)} (pip install onnxruntime paddle2onnx paddlepaddle)"
        return None

    def version(self) -> str:
        ort, p2o = package_version("onnxruntime") or "?", package_version("paddle2onnx") or "?"
        return f"onnxruntime {ort} / paddle2onnx {p2o}"

    def load(self, model_dir: Path, work_dir: Path) -> Any:
        import onnxruntime as ort

        onnx_file = work_dir / ONNX_FILE
        if not onnx_file.exists():  # cached per (model, engine spec); written atomically
            atomic_write_bytes(onnx_file, _convert(model_dir, self.opset))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 1 if _verbose() else 3
        fetches = _fetch_names_in_desc_order(model_dir)
        try:
            session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            # paddle2onnx does not export every op output (layer_norm's Mean/Variance, for one) and then declares
            # a graph output that nothing computes.
            dangling = re.search(r"Graph output \((\S+)\) does not exist", str(exc))
            if dangling is None:
                raise
            onnx_name = dangling.group(1)
            match = _FETCH_NAME.match(onnx_name)
            paddle_name = fetches[int(match.group(1))] if match and int(match.group(1)) < len(fetches) else onnx_name
            raise RuntimeError(
                f"paddle2onnx computes no value for fetch target {paddle_name!r} (ONNX output {onnx_name}): it does "
                "not export every op output (e.g. layer_norm's Mean/Variance)"
            ) from None
        return session, self._output_map(session, fetches)

    @staticmethod
    def _output_map(session: Any, fetches: list[str]) -> dict[str, str]:
        """Paddle fetch name -> ONNX output name."""
        outputs = [o.name for o in session.get_outputs()]
        if set(outputs) <= set(fetches):  # names kept (other converters, or a future paddle2onnx)
            return {name: name for name in outputs}
        mapping: dict[str, str] = {}
        for name in outputs:
            match = _FETCH_NAME.match(name)
            if match is None or int(match.group(1)) >= len(fetches):
                raise RuntimeError(f"cannot map ONNX output {name!r} to a Paddle fetch target (fetches: {fetches})")
            mapping.setdefault(fetches[int(match.group(1))], name)
        return mapping

    def infer(self, loaded: Any, inputs: dict[str, np.ndarray], fetches: list[str]) -> dict[str, np.ndarray]:
        session, mapping = loaded
        feed: dict[str, np.ndarray] = {}
        for item in session.get_inputs():
            if item.name not in inputs:
                raise RuntimeError(f"the ONNX model wants input {item.name!r}, which is not a feed ({sorted(inputs)})")
            feed[item.name] = np.ascontiguousarray(inputs[item.name])
        missing = [f for f in fetches if f not in mapping]
        if missing:
            raise RuntimeError(f"the ONNX model has no output for fetch targets {missing}")
        values = session.run([mapping[f] for f in fetches], feed)
        return {name: np.asarray(value) for name, value in zip(fetches, values, strict=True)}


def _main(argv: list[str]) -> int:
    """`python -m bisect_lite.engines.onnxruntime MODEL_DIR OUT_FILE [OPSET]` (used by export_onnx)."""
    if len(argv) not in (2, 3):
        print("usage: python -m bisect_lite.engines.onnxruntime MODEL_DIR OUT_FILE [OPSET]", file=sys.stderr)
        return 2
    # Native code prints to fd 1; keep this process's stdout clean for whoever reads it.
    os.dup2(2, 1)
    try:
        export_onnx(Path(argv[0]), Path(argv[1]), int(argv[2]) if len(argv) == 3 else DEFAULT_OPSET, in_process=True)
    except RuntimeError as exc:
        print(f"{_ERROR_MARK}{exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
