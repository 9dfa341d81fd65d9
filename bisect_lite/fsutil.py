"""Everything bisect-lite writes goes through here: one output-path policy, atomic writes, a lock on an output dir.

The policy (every command that writes obeys it):
- a path that is, holds or lies inside a model being read is refused (symlinks resolved);
- an existing non-empty directory is refused unless bisect-lite made it (it holds MARKER) and `force` is given;
- an existing file, FIFO, device or symlink to one is never replaced by a directory; an existing output file is
  replaced only when the caller recognises it as bisect-lite's own earlier output;
- files and directories are written atomically (temp + rename in the same directory) with the modes the umask
  gives, not the 0600/0700 of mkstemp/mkdtemp.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from bisect_lite.errors import InputError


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

MARKER = ".bisect-lite"  # written into every directory bisect-lite creates for the user: "ours, may be replaced"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_default(path: Path | str, directory: bool = False) -> None:
    """The mode an ordinary open()/mkdir() would have given (mkstemp and mkdtemp use 0600/0700)."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_dir(path: Path, *, marker: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces `path` only when the block succeeds.

    `path` must be absent, an empty directory or a directory bisect-lite made (check_output_dir decides that for
    user paths); anything else that is not a directory is never replaced. `marker` marks the result as ours."""
    path = Path(path)
    if path.is_symlink():
        raise InputError(f"{path} is a symlink; refusing to replace it (give the directory it points to)")
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a directory; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        _chmod_default(tmp, directory=True)
        yield tmp
        if marker:
            write_marker(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.is_dir() and not os.listdir(path):
        # An empty directory of the user's (maybe the working directory) is filled in place, file by file, so its
        # identity and mode stay; each file arrives whole.
        for entry in os.listdir(tmp):
            os.replace(tmp / entry, path / entry)
        os.rmdir(tmp)
        return
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_marker(directory: Path, kind: str = "output") -> None:
    atomic_write_text(Path(directory) / MARKER, json.dumps({"tool": "bisect-lite", "kind": kind}) + "\n")


def is_ours(directory: Path) -> bool:
    return (Path(directory) / MARKER).is_file()


def is_inside(child: Path, parent: Path) -> bool:
    child, parent = Path(child).resolve(), Path(parent).resolve()
    return child == parent or parent in child.parents


def _refuse_unsafe(path: Path, protected: Iterable[Path | None], option: str) -> None:
    """What every output path must clear: no overlap with the model, no writing through a dangling symlink."""
    for p in protected:
        if p is None:
            continue
        if is_inside(path, p):
            raise InputError(f"{option} {path} is inside the model's directory {p}; bisect-lite never writes there")
        if is_inside(p, path):
            raise InputError(f"{option} {path} holds the model {p}; choose an output path outside it")
    if path.is_symlink() and not path.exists():
        raise InputError(f"{option} {path} is a dangling symlink; refusing to write through it")


def _check_parents(path: Path, option: str) -> None:
    """The nearest existing ancestor must be a directory (not a file that would make mkdir fail oddly)."""
    for parent in Path(os.path.abspath(path)).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise InputError(f"{option} {path}: {parent} is not a directory")
            return


def check_output_dir(
    path: Path, *, protected: Iterable[Path | None] = (), force: bool = False, resume: bool = False, option: str = "-o"
) -> None:
    """The output-path policy for a directory (raises InputError, changes nothing)."""
    path = Path(path)
    _refuse_unsafe(path, protected, option)
    if not path.exists():
        if resume:
            raise InputError(f"--resume: {path} does not exist (start a new run without --resume)")
        _check_parents(path, option)
        return
    if not path.is_dir():
        raise InputError(f"{option} {path} exists and is not a directory; refusing to replace it")
    try:
        entries = [e for e in os.listdir(path) if e != MARKER]  # a claim that wrote nothing yet
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot list the directory ({exc.strerror})") from None
    if not entries:
        if resume:
            raise InputError(f"--resume: {path} is empty: there is no earlier run to continue")
        return
    if not is_ours(path):
        raise InputError(
            f"{option} {path} is not empty and was not written by bisect-lite; refusing to touch it: "
            "choose an empty or new directory"
        )
    if resume:
        return
    if not force:
        raise InputError(f"{option} {path} holds an earlier bisect-lite output; pass --force to replace it")


def check_output_file(
    path: Path, *, protected: Iterable[Path | None] = (), option: str, ours: Callable[[Path], bool] | None = None
) -> None:
    """The output-path policy for a single file: never inside a model, never replaces what is not ours."""
    path = Path(path)
    _refuse_unsafe(path, protected, option)
    if not path.exists():
        _check_parents(path, option)
        return
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory")
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise InputError(f"{option} {path} exists and is not a regular file; refusing to replace it")
    if ours is None or not ours(path):
        raise InputError(f"{option} {path} already exists and is not bisect-lite's output; refusing to replace it")


class OutputDir:
    """A claimed output directory: created or checked by the policy, locked until close(), marked as ours."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None

    def __enter__(self) -> OutputDir:
        return self

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the fd is released with the process anyway
            self.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


def claim_output_dir(
    path: Path,
    *,
    protected: Iterable[Path | None] = (),
    force: bool = False,
    resume: bool = False,
    option: str = "--out",
) -> OutputDir:
    """Apply the policy, create the directory, lock it (a second run on a busy directory is refused before anything
    is touched), then, with `force`, empty our earlier output, and mark it as ours."""
    path = Path(path)
    protected = list(protected)
    check_output_dir(path, protected=protected, force=force, resume=resume, option=option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # The directory itself is locked: no lock file to leave behind, or to race over when it is removed.
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write there ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise InputError(
                f"{option} {path} is in use by another bisect-lite run; wait for it or choose another directory"
            ) from None
        raise
    claimed = OutputDir(path, fd)
    try:
        # Checked again under the lock: the directory may have changed while we waited for it.
        check_output_dir(path, protected=protected, force=force, resume=resume, option=option)
        if force and not resume:
            for entry in os.listdir(path):
                if entry == MARKER:
                    continue
                target = path / entry
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
        if not is_ours(path):
            write_marker(path, "run")
    except OSError as exc:
        claimed.close()
        raise InputError(f"{option} {path}: cannot write there ({exc.strerror})") from None
    except BaseException:
        claimed.close()
        raise
    return claimed
