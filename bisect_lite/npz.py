"""Arrays of an .npz file read one at a time, straight from their offsets (engine outputs, the reference dump)."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np


class NpzReader(Mapping[str, np.ndarray]):
    """Arrays of an .npz written by numpy.savez, read one at a time straight from their offsets in the file.

    A stored (uncompressed) member's .npy data lies at a fixed offset of the zip file: reading it is one read
    into a fresh array, with no zip CRC pass and no temporary copy (np.load does both). The arrays are private
    copies, freed when dropped: memory maps would be faster still, but every page they touch counts in this
    process's resident set for as long as the map lives. Compressed members are read through zipfile."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # name -> (offset, dtype, shape, fortran order), or None for a compressed member
        self.members: dict[str, tuple[int, np.dtype, tuple[int, ...], bool] | None] = {}
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            for info in archive.infolist():
                name = info.filename.removesuffix(".npy")
                if info.compress_type != zipfile.ZIP_STORED:
                    self.members[name] = None
                    continue
                raw.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
                name_len, extra_len = int.from_bytes(raw.read(2), "little"), int.from_bytes(raw.read(2), "little")
                raw.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(raw)
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, fortran, dtype = read_header(raw)
                if dtype.hasobject:
                    raise ValueError(f"{path}: {name} holds Python objects")
                self.members[name] = (raw.tell(), dtype, shape, fortran)

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def __iter__(self) -> Iterator[str]:
        return iter(self.members)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self.members[name]
        if entry is None:
            with zipfile.ZipFile(self.path) as archive:
                return np.load(archive.open(f"{name}.npy"), allow_pickle=False)
        offset, dtype, shape, fortran = entry
        count = int(np.prod(shape))
        flat = np.fromfile(self.path, dtype=dtype, count=count, offset=offset) if count else np.empty(0, dtype)
        if flat.size != count:
            raise ValueError(f"{self.path}: {name} is truncated")
        return flat.reshape(shape, order="F" if fortran else "C")
