"""A copy of the real x86 OpenCL Paddle-Lite library with ONE OpenCL kernel made wrong (issue 14, study e).

The library embeds its `.cl` kernel sources as plain bytes in .rodata: Paddle-Lite's build
(lite/tools/cmake_tools/gen_opencl_code.py) strips comments and indentation from each file, inlines cl_common.h,
and emits `{"image/x_kernel.cl", {0x23, 0x70, ...}}` into a `std::map<std::string, std::vector<unsigned char>>`,
so each file's text sits in the binary uncompressed and unterminated, and is compiled by the OpenCL driver at run
time. Replacing bytes of one kernel's source with the same number of bytes keeps every offset in the ELF valid
and changes what that kernel alone computes: no rebuild of Paddle-Lite, no build recipe.

The fault: `bilinear_interp` (image/bilinear_interp_kernel.cl, the OpenCL kernel of the `bilinear_interp` and
`bilinear_interp_v2` ops) weighs the next input row (ceil_h) with the weight meant for the nearer one (floor_h):
`... * wight0_h;` -> `... * wight1_h;`, a one-character slip. With f the output row's fractional source
position, it computes (1 - f) * (row_floor + row_ceil) instead of (1 - f) * row_floor + f * row_ceil: about
2 (1 - f) times the right value (2x at f = 0, 1.5x at 0.25, 0.5x at 0.75 in a 2x upsampling). Every kernel
still compiles, and no other kernel's source contains the patched text (checked: one occurrence, in that kernel).

Use: `python tests/faulty_lib.py OUT_DIR [--healthy LIB]` writes OUT_DIR/libpaddle_light_api_shared.so and prints
what it did as JSON; run a program linked against the library with LD_LIBRARY_PATH=OUT_DIR to load the copy.
PoCL caches compiled kernels keyed by their source, so the faulty kernel is compiled afresh; give each
experiment its own POCL_CACHE_DIR anyway, and no --cl-cache (Paddle-Lite's binary cache is keyed loosely).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: `python tests/faulty_lib.py OUT_DIR`
    sys.path.insert(0, str(ROOT))

from bisect_lite.fsutil import atomic_write_bytes  # noqa: E402

LIB_NAME = "libpaddle_light_api_shared.so"
SHARED = Path(os.environ.get("BISECT_LITE_SHARED_MODELS", ROOT.parent / "shared"))
HEALTHY_OPENCL_LIB = SHARED / "paddle-lite" / "x86-opencl" / "lib" / LIB_NAME


@dataclass(frozen=True)
class KernelPatch:
    """A same-length replacement inside one embedded OpenCL kernel's source."""

    source_file: str  # the .cl file as the library's kernel map names it
    kernel: str  # the `__kernel void NAME(` the bytes must lie in
    op_types: tuple[str, ...]  # Paddle ops whose OpenCL kernel runs it
    old: bytes
    new: bytes
    description: str


BILINEAR_ROW_WEIGHT = KernelPatch(
    source_file="image/bilinear_interp_kernel.cl",
    kernel="bilinear_interp",
    op_types=("bilinear_interp", "bilinear_interp_v2"),
    old=b"(left_up_data * wight1_w + right_up_data * wight0_w) * wight0_h;",
    new=b"(left_up_data * wight1_w + right_up_data * wight0_w) * wight1_h;",
    description="OpenCL bilinear_interp weighs input row ceil_h with row floor_h's weight (wight0_h -> wight1_h): "
    "(1 - f) * (row_floor + row_ceil) instead of (1 - f) * row_floor + f * row_ceil",
)


@dataclass(frozen=True)
class FaultyLib:
    path: Path  # the faulty copy (OUT_DIR/libpaddle_light_api_shared.so)
    healthy: Path
    source_file: str
    kernel: str
    op_types: tuple[str, ...]
    description: str
    offset: int  # file offset of the patched bytes
    length: int
    healthy_sha256: str
    sha256: str

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def kernel_span(data: bytes, kernel: str) -> tuple[int, int]:
    """Byte range of `__kernel void KERNEL(` up to the next kernel, file or end of the embedded array."""
    head = f"__kernel void {kernel}(".encode()
    if data.count(head) != 1:
        raise ValueError(f"expected one OpenCL kernel {kernel!r} in the library, found {data.count(head)}")
    start = data.index(head)
    ends = [data.find(marker, start + len(head)) for marker in (b"__kernel ", b"#pragma once", b"\x00")]
    return start, min((e for e in ends if e >= 0), default=len(data))


def apply_patch(data: bytes, patch: KernelPatch) -> tuple[bytes, int]:
    """The patched bytes and the patch's offset; ValueError unless the text occurs once, inside its kernel."""
    if len(patch.old) != len(patch.new) or patch.old == patch.new:
        raise ValueError("a kernel patch must change bytes without changing their number")
    found = data.count(patch.old)
    if found != 1:
        raise ValueError(f"expected the patched text once in the library, found it {found} times (another build?)")
    offset = data.index(patch.old)
    start, end = kernel_span(data, patch.kernel)
    if not start <= offset < offset + len(patch.old) <= end:
        raise ValueError(f"the patched text lies outside OpenCL kernel {patch.kernel!r}")
    return data[:offset] + patch.new + data[offset + len(patch.old) :], offset


def make_faulty_opencl_lib(healthy: Path, out_dir: Path, patch: KernelPatch = BILINEAR_ROW_WEIGHT) -> FaultyLib:
    """Write out_dir/libpaddle_light_api_shared.so: `healthy` with one kernel's source patched (same size)."""
    healthy, out_dir = Path(healthy), Path(out_dir)
    out = out_dir / LIB_NAME
    if out.resolve() == healthy.resolve():
        raise ValueError(f"{out} is the healthy library itself")
    data = healthy.read_bytes()
    patched, offset = apply_patch(data, patch)
    atomic_write_bytes(out, patched)
    return FaultyLib(
        path=out,
        healthy=healthy,
        source_file=patch.source_file,
        kernel=patch.kernel,
        op_types=patch.op_types,
        description=patch.description,
        offset=offset,
        length=len(patch.old),
        healthy_sha256=hashlib.sha256(data).hexdigest(),
        sha256=hashlib.sha256(patched).hexdigest(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help=f"where to write the faulty {LIB_NAME}")
    parser.add_argument("--healthy", type=Path, default=HEALTHY_OPENCL_LIB, help="the real x86 OpenCL library")
    args = parser.parse_args(argv)
    try:
        lib = make_faulty_opencl_lib(args.healthy, args.out_dir)
    except (OSError, ValueError) as exc:
        print(f"faulty_lib: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(lib.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
