"""Fuzz the model and params readers: any bytes give either a loaded model or InputError, never another exception
and never a hang. Seeds are the bundled fixtures' real files, mutated (bit flips, cuts, splices, random records)."""

from __future__ import annotations

import contextlib
import signal
import struct
import tempfile
from pathlib import Path

import pytest
from conftest import FIXTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bisect_lite.errors import InputError
from bisect_lite.model import extract, load_model, truncate
from bisect_lite.model.describe import describe
from bisect_lite.model.params import read_combined, read_tensor

SEED_MODEL = FIXTURES / "two_io"
PROGRAM = (SEED_MODEL / "model.pdmodel").read_bytes()
PARAMS = (SEED_MODEL / "model.pdiparams").read_bytes()
FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None
)


@contextlib.contextmanager
def no_hang(seconds: int = 10):
    def alarm(signum, frame):
        raise AssertionError(f"reader still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@st.composite
def mutated(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "overwrite"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        else:
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[pos : pos + len(chunk)] = chunk
    return bytes(data)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields: two's complement, ten bytes when negative
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@st.composite
def tensor_record(draw) -> bytes:
    """A params record with hostile header fields: any dtype code, huge/negative/overflowing dims, bad lengths."""
    # Encoded by hand: the generated class refuses unknown enum codes, a file need not.
    body = b"\x08" + _varint(draw(st.integers(0, 200)))
    for dim in draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=6)):
        body += b"\x10" + _varint(dim)
    lod = draw(st.integers(0, 20))
    desc_len = draw(st.one_of(st.just(len(body)), st.integers(-(2**31), 2**31 - 1)))
    head = struct.pack("<IQ", draw(st.sampled_from([0, 0, 0, 1])), lod)
    head += b"".join(struct.pack("<Q", draw(st.integers(0, 2**64 - 1))) for _ in range(min(lod, 3)))
    return head + struct.pack("<Ii", 0, desc_len) + body + draw(st.binary(max_size=64))


@pytest.fixture(scope="module")
def work() -> Path:
    with tempfile.TemporaryDirectory(prefix="bisect-lite-fuzz-") as d:
        yield Path(d)


def _load(directory: Path, program: bytes, params: bytes) -> None:
    (directory / "model.pdmodel").write_bytes(program)
    (directory / "model.pdiparams").write_bytes(params)
    with no_hang():
        try:
            model = load_model(directory)
        except InputError as exc:
            assert str(exc) and "\n" not in str(exc).strip()  # one line for the user
            return
        # a loaded model is usable: it hashes, describes and slices without anything but InputError
        assert model.fingerprint and all(op.type for op in model.ops)
        describe(model)
        for step in (lambda: extract(model, [0]), lambda: truncate(model, [t for _, t in model.data_tensors()][:1])):
            try:
                step()
            except InputError:
                pass


@given(program=mutated(PROGRAM))
@FUZZ
def test_fuzz_program_reader(work, program):
    _load(work, program, PARAMS)


@given(params=mutated(PARAMS))
@FUZZ
def test_fuzz_params_reader(work, params):
    _load(work, PROGRAM, params)


@given(records=st.lists(tensor_record(), min_size=1, max_size=3))
@FUZZ
def test_fuzz_tensor_records(records):
    blob = b"".join(records)
    with no_hang():
        try:
            read_combined(blob, [f"p{i}" for i in range(len(records))])
        except InputError:
            pass
        try:
            read_tensor(blob, 0, "p")
        except InputError:
            pass


def test_seed_files_load_unchanged(work):
    """The fuzz seeds themselves load: the targets exercise the success path too."""
    _load(work, PROGRAM, PARAMS)
    assert load_model(work).param_names()
