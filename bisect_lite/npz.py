"""Arrays of an .npz file, checked once and read one at a time straight from their offsets (engine outputs, the
reference dump, user inputs)."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import IO

import numpy as np

# The header numpy.save writes: parsed by this pattern (numpy's own parser, ast.literal_eval, cost ~0.3 ms per
# array: seconds for the 5,000 arrays of one run of a 5,000-op model); anything else goes to numpy's parser.
_HEADER = re.compile(rb"\{'descr': '([<>|=][a-zA-Z]\d*)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), \}")


_PEEK = 512  # bytes read at a member's local header: its name, extra field and .npy header fit in most cases


class BadNpz(ValueError):
    """An .npz whose arrays are not what their headers claim (or too large, or not plain arrays)."""


class NpzReader(Mapping[str, np.ndarray]):
    """Arrays of an .npz written by numpy.savez, read one at a time straight from their offsets in the file.

    Opening checks every array header against its stored size before anything is allocated (a header may claim
    4 TiB; `wanted` limits that to those names), refuses pickled objects, and records each array's CRC-32 from the
    zip directory (`crcs`). A stored (uncompressed) member's .npy data lies at a fixed offset: reading it is one
    read into a fresh array, with no zip CRC pass and no temporary copy (np.load does both). The arrays are private
    copies, freed when dropped: memory maps would be faster still, but every page they touch counts in this
    process's resident set for as long as the map lives. Compressed members are read through zipfile.
    The file stays open until `close` (it may be renamed or unlinked meanwhile: reads go on)."""

    def __init__(
        self,
        path: Path,
        *,
        file: IO[bytes] | None = None,
        wanted: Collection[str] | None = None,
        limit: int | None = None,
    ) -> None:
        self.path = Path(path)
        self._file = file if file is not None else open(path, "rb")  # noqa: SIM115 (closed by close())
        # name -> (offset, dtype, shape, fortran order), or None for a compressed member
        self.members: dict[str, tuple[int, np.dtype, tuple[int, ...], bool] | None] = {}
        self.crcs: dict[str, int] = {}
        try:
            self._index(wanted, limit)
        except BaseException:
            self.close()
            raise

    def _index(self, wanted: Collection[str] | None, limit: int | None) -> None:
        raw = self._file
        raw.seek(0)
        with zipfile.ZipFile(raw) as archive:
            infos = archive.infolist()
            if limit is not None and sum(i.file_size for i in infos) > limit:
                raise BadNpz(f"more than {limit} bytes of arrays")
            for info in infos:
                name = info.filename.removesuffix(".npy")
                self.crcs[name] = info.CRC
                try:
                    self._add(archive, info, name, wanted is None or name in wanted)
                except BadNpz as exc:
                    raise BadNpz(f"{name!r}: {exc}") from None

    def _add(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, check: bool) -> None:
        if info.compress_type != zipfile.ZIP_STORED:
            self.members[name] = None
            if check:
                with archive.open(info) as member:
                    _check(*_read_header(member), info.file_size)
            return
        raw = self._file
        raw.seek(info.header_offset)
        head = raw.read(_PEEK)  # the local header, the member's name and extra field, and (mostly) its .npy header
        name_len, extra_len = int.from_bytes(head[26:28], "little"), int.from_bytes(head[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        parsed = _parse_v1(head[30 + name_len + extra_len :])
        if parsed is None:
            raw.seek(start)
            parsed = _read_header(raw)
        shape, fortran, dtype, header_len = parsed
        if check:
            _check(shape, fortran, dtype, header_len, info.file_size)
        self.members[name] = (start + header_len, dtype, shape, fortran)

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self.members[name]
        if entry is None:
            self._file.seek(0)
            with zipfile.ZipFile(self._file) as archive:
                return np.load(archive.open(f"{name}.npy"), allow_pickle=False)
        offset, dtype, shape, fortran = entry
        count = 1
        for d in shape:
            count *= d
        flat = np.empty(count, dtype)
        if count:
            self._file.seek(offset)
            if self._file.readinto(memoryview(flat).cast("B")) != flat.nbytes:
                raise ValueError(f"{self.path}: {name} is truncated")
        return flat.reshape(shape, order="F" if fortran else "C")

    def close(self) -> None:
        self._file.close()


def check_npy(path: Path) -> None:
    """BadNpz unless `path` is a .npy whose data is exactly as long as its header says (the data is not read)."""
    with open(path, "rb") as f:
        _check(*_read_header(f), Path(path).stat().st_size)


def _parse_v1(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int] | None:
    """The header of a version 1.0 .npy starting `data`, when all of it is there and numpy wrote it; else None."""
    if data[:8] != b"\x93NUMPY\x01\x00" or len(data) < 10:
        return None
    length = int.from_bytes(data[8:10], "little")
    match = _HEADER.match(data, 10, 10 + length)
    if match is None or 10 + length > len(data):
        return None
    return (*_fields(match), 10 + length)


def _read_header(f: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, header length) of the .npy whose first byte is at f's position."""
    start = f.tell()
    try:
        version = np.lib.format.read_magic(f)
    except ValueError as exc:
        raise BadNpz(str(exc)) from None
    if version not in ((1, 0), (2, 0)):
        raise BadNpz(f"unsupported .npy version {version}")
    size_bytes = 2 if version == (1, 0) else 4
    length = int.from_bytes(f.read(size_bytes), "little")
    text = f.read(length)
    header_len = 6 + 2 + size_bytes + length
    match = _HEADER.match(text)
    if match is not None:
        return (*_fields(match), header_len)
    f.seek(start)  # numpy's own parser: structured dtypes, other spellings
    np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = reader(f)
    except (ValueError, SyntaxError) as exc:
        raise BadNpz(f"unreadable .npy header ({exc})") from None
    return shape, fortran_order, dtype, header_len


def _fields(match: re.Match[bytes]) -> tuple[tuple[int, ...], bool, np.dtype]:
    descr, fortran, dims = match.groups()
    try:
        dtype = np.dtype(descr.decode())
    except (TypeError, ValueError) as exc:
        raise BadNpz(f"unreadable .npy header ({exc})") from None
    return tuple(int(d) for d in dims.split(b",") if d.strip()), fortran == b"True", dtype


def _check(shape: tuple[int, ...], fortran: bool, dtype: np.dtype, header_len: int, size: int) -> None:
    if dtype.hasobject:
        raise BadNpz("holds Python objects")
    count = 1
    for d in shape:
        count *= d
    if header_len + count * dtype.itemsize != size:
        raise BadNpz(f"claims shape {list(shape)} {dtype} but holds {size - header_len} bytes")
