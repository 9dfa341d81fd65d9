"""On-disk cache of saved models, prepared artefacts and run results, keyed by content hashes.

Layout under the root (default ~/.cache/bisect-lite, or $BISECT_LITE_CACHE):
    models/<model fingerprint>/model.pdmodel, model.pdiparams     models as engines read them
    prepared/<sha of model fingerprint + engine key>/              converted models (onnx, .nb, ...)
    results/<sha of model + engine key + inputs + fetches>.res     outputs of successful runs

Entries are checked before use, never trusted: a model directory must match the SHA-256 manifest written with it
(checked once per process), a result file starts with the SHA-256 of the .npz that follows. A damaged entry is
discarded and recomputed; it never becomes a verdict.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bisect_lite.errors import EngineUnavailable, InputError
from bisect_lite.fsutil import atomic_dir, atomic_write_bytes, is_inside
from bisect_lite.model import Model, write_model_files

MANIFEST = "manifest.json"
RESULT_SUFFIX = ".res"


def default_root() -> Path:
    env = os.environ.get("BISECT_LITE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bisect-lite"


def check_root(protected: list[Path | None]) -> None:
    """The cache must not lie inside (or hold) a model being read: bisect-lite never writes there."""
    root = default_root()
    for path in protected:
        if path is not None and (is_inside(root, path) or is_inside(path, root)):
            raise InputError(
                f"the cache {root} overlaps the model's directory {path}; bisect-lite never writes there: point "
                "BISECT_LITE_CACHE elsewhere"
            )


def inputs_hash(inputs: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(inputs):
        arr = np.asarray(inputs[name])
        h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(directory: Path) -> None:
    files = {p.name: _file_sha(p) for p in sorted(directory.iterdir()) if p.is_file()}
    (directory / MANIFEST).write_text(json.dumps(files))


def _manifest_ok(directory: Path) -> bool:
    try:
        files = json.loads((directory / MANIFEST).read_text())
        return (
            isinstance(files, dict)
            and bool(files)
            and all("/" not in name and _file_sha(directory / name) == sha for name, sha in files.items())
        )
    except (OSError, ValueError, TypeError):
        return False


def digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


class Cache:
    def __init__(self, root: Path | None = None, *, results: bool = True) -> None:
        """`results=False` (--no-cache) keeps models in a private temp dir and never reuses results."""
        self.use_results = results
        if results:
            self.root = Path(root) if root else default_root()
            self._tmp = None
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="bisect-lite-")
            self.root = Path(self._tmp.name)
        self.root = Path(os.path.abspath(self.root))
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=self.root, prefix=".probe-")  # noqa: SIM115
            probe.close()
        except OSError as exc:
            raise EngineUnavailable(
                f"cache {self.root} is not usable ({exc.strerror}); set BISECT_LITE_CACHE to a writable directory"
            ) from None
        self._checked: set[Path] = set()  # model dirs verified (or written) by this process

    def model_dir(self, model: Model) -> Path:
        path = self.root / "models" / model.fingerprint
        if path in self._checked:
            return path
        if model.source is not None and is_inside(self.root, model.source):
            raise InputError(
                f"the cache {self.root} lies inside the model's directory {model.source}; bisect-lite never writes "
                "there: point BISECT_LITE_CACHE elsewhere"
            )
        if not _manifest_ok(path):
            with atomic_dir(path) as tmp:
                write_model_files(model, tmp)
                _write_manifest(tmp)
        self._checked.add(path)
        return path

    def prepared_dir(self, model: Model, engine_key: str) -> Path:
        path = self.root / "prepared" / digest(model.fingerprint, engine_key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def result_key(
        self, model: Model, engine_key: str, inputs: Mapping[str, np.ndarray], fetches: Sequence[str]
    ) -> str:
        return digest(model.fingerprint, engine_key, inputs_hash(inputs), *fetches)

    def discard_prepared(self, model: Model, engine_key: str) -> None:
        shutil.rmtree(self.root / "prepared" / digest(model.fingerprint, engine_key), ignore_errors=True)

    def get_result(self, key: str) -> dict[str, np.ndarray] | None:
        if not self.use_results:
            return None
        path = self.root / "results" / f"{key}{RESULT_SUFFIX}"
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        body = blob[32:]
        try:
            if len(blob) < 32 or hashlib.sha256(body).digest() != blob[:32]:
                raise ValueError("checksum")
            with np.load(io.BytesIO(body), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            path.unlink(missing_ok=True)  # damaged: recomputed by the caller, never used
            return None

    def put_result(self, key: str, outputs: Mapping[str, np.ndarray]) -> None:
        if not self.use_results:
            return
        buf = io.BytesIO()
        np.savez(buf, **dict(outputs))
        body = buf.getvalue()
        atomic_write_bytes(self.root / "results" / f"{key}{RESULT_SUFFIX}", hashlib.sha256(body).digest() + body)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
