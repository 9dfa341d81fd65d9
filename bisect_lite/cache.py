"""On-disk cache of saved models, prepared artefacts and run results, keyed by content hashes.

Layout under the root (default ~/.cache/bisect-lite, or $BISECT_LITE_CACHE):
    models/<model fingerprint>/model.pdmodel, model.pdiparams     models as engines read them
    prepared/<sha of model fingerprint + engine key>/              converted models (onnx, .nb, ...)
    results/<sha of model + engine key + inputs + fetches>.npz     outputs of successful runs
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bisect_lite.fsutil import atomic_dir
from bisect_lite.model import Model, write_model_files


def default_root() -> Path:
    env = os.environ.get("BISECT_LITE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bisect-lite"


def inputs_hash(inputs: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(inputs):
        arr = np.asarray(inputs[name])
        h.update(f"{name}|{arr.dtype}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:20]


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
        self.root.mkdir(parents=True, exist_ok=True)

    def model_dir(self, model: Model) -> Path:
        path = self.root / "models" / model.fingerprint
        if not (path / "model.pdiparams").exists():
            with atomic_dir(path) as tmp:
                write_model_files(model, tmp)
        return path

    def prepared_dir(self, model: Model, engine_key: str) -> Path:
        path = self.root / "prepared" / digest(model.fingerprint, engine_key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def result_key(
        self, model: Model, engine_key: str, inputs: Mapping[str, np.ndarray], fetches: Sequence[str]
    ) -> str:
        return digest(model.fingerprint, engine_key, inputs_hash(inputs), *fetches)

    def get_result(self, key: str) -> dict[str, np.ndarray] | None:
        if not self.use_results:
            return None
        path = self.root / "results" / f"{key}.npz"
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError):
            return None

    def put_result(self, key: str, outputs: Mapping[str, np.ndarray]) -> None:
        if not self.use_results:
            return
        path = self.root / "results" / f"{key}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        os.close(fd)
        np.savez(tmp, **dict(outputs))
        os.replace(tmp, path)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
