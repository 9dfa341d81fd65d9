"""The simulator's `.nb` container (real .nb files are an opaque flatbuffers format).

A deterministic, uncompressed zip whose comment is MAGIC, holding:
  sim_nb.json          metadata: format, format_version, opt_version, valid_targets, valid_places,
                       enable_fp16, model_type, opencl_memory_config, passes_internal, source, opt_log
  original/model       the input legacy ProgramDesc (what the simulated runtime executes)
  original/params      its combined params (persistables sorted by name)
  optimized/model      the simulated optimised ProgramDesc (fused ops, placements, io_copy/layout)
  optimized/params     its params (BN folded into conv weights, ...)
Inspect one with `python -m zipfile -l model.nb` / `unzip -p model.nb sim_nb.json`.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import Any

MAGIC = b"paddlelite-sim-nb"
FORMAT_VERSION = 1
_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass
class NbModel:
    meta: dict[str, Any]
    original_program: bytes
    original_params: bytes
    optimized_program: bytes
    optimized_params: bytes


class NbFormatError(ValueError):
    pass


def dump(model: NbModel) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        entries = [
            ("sim_nb.json", json.dumps(model.meta, indent=1, sort_keys=True).encode()),
            ("original/model", model.original_program),
            ("original/params", model.original_params),
            ("optimized/model", model.optimized_program),
            ("optimized/params", model.optimized_params),
        ]
        for name, data in entries:
            z.writestr(zipfile.ZipInfo(name, date_time=_DATE), data)
        z.comment = MAGIC
    return buf.getvalue()


def load(data: bytes) -> NbModel:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            if z.comment != MAGIC:
                raise NbFormatError("not a simulated .nb (bad magic)")
            meta = json.loads(z.read("sim_nb.json"))
            if meta.get("format") != "paddlelite-sim-nb" or meta.get("format_version") != FORMAT_VERSION:
                raise NbFormatError(f"unsupported container version {meta.get('format_version')}")
            return NbModel(
                meta,
                z.read("original/model"),
                z.read("original/params"),
                z.read("optimized/model"),
                z.read("optimized/params"),
            )
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
        raise NbFormatError(str(e)) from e
