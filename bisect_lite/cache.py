"""On-disk cache of saved models, prepared artefacts and run results, keyed by content hashes.

Layout under the root (default ~/.cache/bisect-lite, or $BISECT_LITE_CACHE):
    models/<model fingerprint>/model.pdmodel, model.pdiparams     models as engines read them
    prepared/<sha of model fingerprint + engine key>/              converted models (onnx, .nb, ...)
    results/<sha of model + engine key + inputs + fetches>.res     outputs of successful runs
    references/<sha of model + engine key + inputs + budget>/      a reference dump (bisect_lite.reference) and
                                                                   meta.json (what computing it cost)
    expectations/<sha of reference key + emulation key>.json       the precision model's expected errors

Entries are checked before use, never trusted: a model directory or a reference dump must match the manifest
written with it (SHA-256 of each file, CRC-32 of each array of a dump's .npz files; checked once per process), a
result or expectations file starts with the SHA-256 of the bytes that follow. A damaged entry is discarded and
recomputed; it never becomes a verdict.
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
from typing import Any

import numpy as np

from bisect_lite.errors import EngineUnavailable, InputError
from bisect_lite.fsutil import atomic_dir, atomic_write_bytes, file_sha256, is_inside
from bisect_lite.model import Model, write_model_files

MANIFEST = "manifest.json"
RESULT_SUFFIX = ".res"
REFERENCE_FORMAT = "reference-dump-1"  # part of every reference key: a new dump layout never reads an old one
REFERENCE_META = "meta.json"


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


def _write_manifest(directory: Path, npz_by_crc: bool = False) -> None:
    """SHA-256 of every file. `npz_by_crc`: an .npz is recorded by its size and the CRC-32 of each array, read
    from its zip directory (no data read): a reference dump is hundreds of MB, and hashing it cost a tenth of a
    PP-OCRv5 det run; the check recomputes the CRCs from the data."""
    files = {
        p.name: (
            {"size": p.stat().st_size, "crc32": _zip_crcs(p)} if npz_by_crc and p.suffix == ".npz" else file_sha256(p)
        )
        for p in sorted(directory.iterdir())
        if p.is_file()
    }
    (directory / MANIFEST).write_text(json.dumps(files))


def _manifest_ok(directory: Path) -> bool:
    try:
        files = json.loads((directory / MANIFEST).read_text())
        return isinstance(files, dict) and bool(files) and all(_file_ok(directory, n, w) for n, w in files.items())
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile):
        return False


def _file_ok(directory: Path, name: str, want: Any) -> bool:
    if "/" in name:
        return False
    path = directory / name
    if isinstance(want, str):
        return file_sha256(path) == want
    return path.stat().st_size == want["size"] and _zip_crcs(path, from_data=True) == want["crc32"]


def _zip_crcs(path: Path, from_data: bool = False) -> dict[str, int]:
    """CRC-32 of each member of a zip file as its directory records them; `from_data`: only after reading every
    member to its end, which checks its data against that CRC (zipfile raises BadZipFile on a mismatch)."""
    with zipfile.ZipFile(path) as archive:
        if from_data:
            for info in archive.infolist():
                with archive.open(info) as member:
                    while member.read(1 << 22):
                        pass
        return {info.filename: info.CRC for info in archive.infolist()}


def _read_checked(path: Path) -> bytes | None:
    """The body of a file written by `_write_checked`; None when it is missing or damaged (then removed)."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    body = blob[32:]
    if len(blob) < 32 or hashlib.sha256(body).digest() != blob[:32]:
        path.unlink(missing_ok=True)
        return None
    return body


def _write_checked(path: Path, body: bytes) -> None:
    """`body` behind its SHA-256, written atomically."""
    atomic_write_bytes(path, hashlib.sha256(body).digest() + body)


def _link_or_copy(source: Path, dest: Path) -> None:
    """A hard link where the file system allows it (a dump is hundreds of MB), else a copy. Never written in place
    afterwards: every writer of these files replaces them, so a link cannot change the cache entry."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


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
        body = _read_checked(path)
        if body is None:
            return None
        try:
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
        _write_checked(self.root / "results" / f"{key}{RESULT_SUFFIX}", buf.getvalue())

    # ---- reference dumps -------------------------------------------------------------------------------------
    def reference_key(self, model: Model, engine_key: str, inputs: Mapping[str, np.ndarray], budget: int) -> str:
        """A reference dump is the reference engine's value of every tensor of the model for these inputs; the
        memory budget sets its batches (what each reference run fetched), so it is part of the key too."""
        return digest(REFERENCE_FORMAT, model.fingerprint, engine_key, inputs_hash(inputs), str(budget))

    def get_reference(self, key: str, dest: Path) -> dict[str, Any] | None:
        """Link (or copy) the checked dump `key` into the empty directory `dest`; its meta.json, or None when the
        cache has no intact entry (a damaged one is removed)."""
        if not self.use_results:
            return None
        path = self.root / "references" / key
        if not path.is_dir():
            return None
        if path not in self._checked:
            if not _manifest_ok(path):
                shutil.rmtree(path, ignore_errors=True)
                return None
            self._checked.add(path)
        try:
            meta = json.loads((path / REFERENCE_META).read_text())
            dest.mkdir(parents=True, exist_ok=True)
            for file in path.iterdir():
                if file.name not in (MANIFEST, REFERENCE_META):
                    (dest / file.name).unlink(missing_ok=True)  # a link must not overwrite a file in place
                    _link_or_copy(file, dest / file.name)
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def put_reference(self, key: str, source: Path, meta: Mapping[str, Any]) -> None:
        """Store the complete dump in `source` (its files are linked, not copied, where the file system allows)."""
        if not self.use_results:
            return
        path = self.root / "references" / key
        with atomic_dir(path) as tmp:
            for file in source.iterdir():
                if file.is_file():
                    _link_or_copy(file, tmp / file.name)
            (tmp / REFERENCE_META).write_text(json.dumps(dict(meta)))
            _write_manifest(tmp, npz_by_crc=True)
        self._checked.add(path)

    def expectations_key(self, reference_key: str, emulation_key: str) -> str:
        return digest(reference_key, emulation_key)

    def get_expectations(self, key: str) -> bytes | None:
        """The precision model's expected errors (precision.json of bisect_lite.precision.Expectations)."""
        return _read_checked(self.root / "expectations" / f"{key}.json") if self.use_results else None

    def put_expectations(self, key: str, body: bytes) -> None:
        if self.use_results:
            _write_checked(self.root / "expectations" / f"{key}.json", body)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
