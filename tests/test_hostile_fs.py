"""Hostile file-system cases: every command that writes obeys one output-path policy (fsutil). Each case checks the
exit code, a one-line message, and that nothing under the user's paths changed (bytes, modes, symlinks)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import FIXTURES, run_cli

from bisect_lite.fsutil import MARKER, atomic_write_bytes, check_output_dir, claim_output_dir

MODEL = FIXTURES / "resnet"
CUT = ["--at", "relu_0.tmp_0"]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root: (kind, mode, bytes or link target). Compared before/after a hostile command."""
    root = Path(root)
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISREG(st.st_mode) and st.st_size > 64 << 20:  # huge (sparse) files: size and mtime
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, st.st_mtime_ns)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
            else:
                out[rel] = ("other" if not stat.S_ISDIR(st.st_mode) else "dir", stat.S_IMODE(st.st_mode))
    return out


def make_repro(directory: Path, target: str, expected: dict | None = None) -> Path:
    """A repro bundle as `run` writes one (model, inputs, expected, repro.json), for op 0 of the resnet fixture."""
    import json

    from bisect_lite.inputs import generate_inputs, save_npz
    from bisect_lite.model import extract, load_model, save_model

    sub = extract(load_model(MODEL), [0])
    save_model(sub, directory, marker=True)
    inputs = generate_inputs(sub, seed=1)
    save_npz(directory / "inputs.npz", inputs)
    save_npz(directory / "expected.npz", expected or {f: [0.0] for f in sub.fetches})
    facts = {
        "op": {"type": sub.ops[0].type, "index": 0},
        "target": {"engine": target},
        "reference": {"engine": "paddle"},
        "tolerance": {"atol": 1e-4, "rtol": 1e-4},
    }
    (directory / "repro.json").write_text(json.dumps(facts))
    return directory


def refused(code: int, err: str, *words: str) -> None:
    """Exit 2 with exactly one `error:` line that says why."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def user(tmp_path) -> Path:
    """A user's working area holding a copy of a model and some files of their own."""
    (tmp_path / "models").mkdir()
    shutil.copytree(MODEL, tmp_path / "models" / "resnet")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "data.bin").write_bytes(b"\x00\x01")
    return tmp_path


@pytest.mark.parametrize("command", [["truncate", *CUT], ["extract", "--op", "0..2"]])
def test_model_writers_refuse_every_unsafe_output(user, command, capsys, monkeypatch):
    model = user / "models" / "resnet"
    (user / "link-to-model").symlink_to(model)
    (user / "dangling").symlink_to(user / "nowhere")
    cases = {
        "a regular file": (user / "notes.txt", "not a directory"),
        "the model's parent": (user / "models", "holds the model"),
        "the model itself": (model, "inside the model"),
        "inside the model": (model / "cut", "inside the model"),
        "a symlink to the model": (user / "link-to-model", "inside the model"),
        "under a symlink to the model": (user / "link-to-model" / "cut", "inside the model"),
        "a user's non-empty dir": (user / "work", "not written by bisect-lite"),
        "a dangling symlink": (user / "dangling", "dangling"),
        "the FIFO /dev/null": (Path("/dev/null"), "not a directory"),
    }
    before = snapshot(user)
    for what, (target, why) in cases.items():
        code, _, err = run_cli([command[0], str(model), *command[1:], "-o", str(target)], capsys)
        refused(code, err, why)
        assert snapshot(user) == before, what
    monkeypatch.chdir(user / "work")  # `-o .` in a non-empty working directory
    code, _, err = run_cli([command[0], str(model), *command[1:], "-o", "."], capsys)
    refused(code, err, "not written by bisect-lite")
    assert snapshot(user) == before


def test_own_output_is_replaced_only_with_force_and_empty_dirs_keep_their_identity(user, capsys, monkeypatch):
    model = user / "models" / "resnet"
    out = user / "cut"
    assert run_cli(["truncate", str(model), *CUT, "-o", str(out)], capsys)[0] == 0
    assert (out / MARKER).is_file() and (out / "model.pdmodel").is_file()
    before = snapshot(user)
    code, _, err = run_cli(["truncate", str(model), *CUT, "-o", str(out)], capsys)
    refused(code, err, "--force")
    assert snapshot(user) == before
    assert run_cli(["extract", str(model), "--op", "0", "-o", str(out), "--force"], capsys)[0] == 0
    # an empty working directory is filled in place: `-o .` keeps the user's directory (inode, mode)
    empty = user / "empty"
    empty.mkdir(mode=0o751)
    os.chmod(empty, 0o751)
    inode = empty.stat().st_ino
    monkeypatch.chdir(empty)
    assert run_cli(["truncate", str(model), *CUT, "-o", "."], capsys)[0] == 0
    assert empty.stat().st_ino == inode and stat.S_IMODE(empty.stat().st_mode) == 0o751
    assert (empty / "model.pdmodel").is_file() and not [p for p in empty.iterdir() if p.name.endswith(".tmp")]


def test_run_force_never_deletes_a_model_inside_out(user, capsys):
    out = user / "out"
    assert run_cli(["truncate", str(user / "models" / "resnet"), *CUT, "-o", str(out)], capsys)[0] == 0
    shutil.copytree(MODEL, out / "m")  # the model now lies inside an earlier output of ours
    before = snapshot(user)
    code, _, err = run_cli(
        ["run", str(out / "m"), "--ref", "paddle", "--target", "fp16", "--out", str(out), "--force"], capsys
    )
    refused(code, err, "holds the model")
    assert snapshot(user) == before


def test_run_force_never_deletes_a_params_file_inside_out(user, capsys):
    out = user / "out"
    assert run_cli(["truncate", str(user / "models" / "resnet"), *CUT, "-o", str(out)], capsys)[0] == 0
    (user / "prog").mkdir()
    shutil.copy(MODEL / "model.pdmodel", user / "prog" / "net.pdmodel")
    shutil.copy(MODEL / "model.pdiparams", out / "weights.bin")
    before = snapshot(user)
    args = ["run", str(user / "prog" / "net.pdmodel"), "--params", str(out / "weights.bin"), "--out", str(out)]
    refused(*run_cli([*args, "--ref", "paddle", "--target", "fp16", "--force"], capsys)[::2], "holds the model")
    assert snapshot(user) == before


def test_run_out_policy(user, capsys):
    model = user / "models" / "resnet"
    before = snapshot(user)
    for target, why in (
        (user / "notes.txt", "not a directory"),
        (user / "work", "not written by bisect-lite"),
        (model / "o", "inside the model"),
        (user / "models", "holds the model"),
    ):
        for extra in ([], ["--force"]):
            args = ["run", str(model), "--ref", "paddle", "--target", "fp16", "--out", str(target), *extra]
            refused(*run_cli(args, capsys)[::2], why)
            assert snapshot(user) == before


def test_save_inputs_and_junit_policy(user, capsys):
    model = user / "models" / "resnet"
    before = snapshot(user)
    base = ["compare", str(model), "--ref", "paddle", "--target", "fp16"]
    for target, why in (
        (model / "inputs.npz", "inside the model"),
        (user / "notes.txt", "not bisect-lite's output"),
        (user / "work", "is a directory"),
        (Path("/dev/full"), "not a regular file"),
        (user / "notes.txt" / "x.npz", "not a directory"),
    ):
        refused(*run_cli([*base, "--save-inputs", str(target)], capsys)[::2], why)
        assert snapshot(user) == before
    repro = make_repro(user / "repro", "fp16")
    before = snapshot(user)
    for target, why in (
        (user / "notes.txt", "not bisect-lite's output"),
        (repro / "junit.xml", "inside the model"),
        (Path("/dev/full"), "not a regular file"),
    ):
        refused(*run_cli(["verify", str(repro), "--junit", str(target)], capsys)[::2], why)
        assert snapshot(user) == before


def test_unwritable_out_is_one_line_not_a_crash(user, capsys):
    """A path that cannot be created (under a regular file, or in /proc) is exit 2 with one line."""
    model = user / "models" / "resnet"
    before = snapshot(user)
    for target in (user / "notes.txt" / "out", Path("/proc/bisect-lite-out")):
        code, _, err = run_cli(["run", str(model), "--ref", "paddle", "--target", "fp16", "--out", str(target)], capsys)
        refused(code, err)
        code, _, err = run_cli(["truncate", str(model), *CUT, "-o", str(target)], capsys)
        refused(code, err)
    assert snapshot(user) == before


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_honour_the_umask(user, capsys, mask):
    old = os.umask(mask)
    try:
        out = user / "cut"
        assert run_cli(["truncate", str(user / "models" / "resnet"), *CUT, "-o", str(out)], capsys)[0] == 0
        atomic_write_bytes(user / "sub" / "file.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for f in (out / "model.pdmodel", out / "model.pdiparams", out / MARKER, user / "sub" / "file.bin"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


def test_claimed_out_dir_is_locked_and_marked(tmp_path):
    out = tmp_path / "o"
    with claim_output_dir(out) as first:
        assert (out / MARKER).is_file()
        (out / "journal.jsonl").write_text("{}\n")
        with pytest.raises(Exception, match="in use by another bisect-lite run"):
            claim_output_dir(out, force=True)
        assert (out / "journal.jsonl").exists()  # the busy directory was not emptied
        assert first.path == out
    with claim_output_dir(out, force=True):  # free again: replaced
        assert not (out / "journal.jsonl").exists()
    # a claim that wrote nothing (the run failed before its first file) does not need --force next time
    check_output_dir(out)
    with pytest.raises(Exception, match="empty"):
        check_output_dir(out, resume=True)


def test_unusable_cache_is_an_environment_error(user, capsys, monkeypatch):
    """A cache that cannot be created is exit 3 (the environment), one line, nothing of the user's touched."""
    monkeypatch.setenv("BISECT_LITE_CACHE", "/proc/bisect-lite-cache")
    model = user / "models" / "resnet"
    before = snapshot(user)
    for args in (
        ["compare", str(model), "--ref", "paddle", "--target", "fp16"],
        ["run", str(model), "--ref", "paddle", "--target", "fp16", "--out", str(user / "o")],
    ):
        code, _, err = run_cli(args, capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 3 and len(lines) == 1 and "BISECT_LITE_CACHE" in lines[0], err
    assert snapshot(user) == {**before, **{k: v for k, v in snapshot(user).items() if k.startswith("o")}}


def test_cache_inside_the_model_is_refused(user, capsys, monkeypatch):
    model = user / "models" / "resnet"
    monkeypatch.setenv("BISECT_LITE_CACHE", str(model / "cache"))
    before = snapshot(user)
    for args in (
        ["compare", str(model)],
        ["compare", str(model), "--no-cache"],
        ["run", str(model), "--out", str(user / "o")],
    ):
        refused(*run_cli([*args, "--ref", "paddle", "--target", "fp16"], capsys)[::2], "never writes there")
    assert snapshot(user) == before


def test_setup_never_writes_into_a_users_directory(user, capsys, monkeypatch):
    """`setup lite` with BISECT_LITE_LITE_ENV naming a non-empty directory of the user's (or a file) is refused."""
    before = snapshot(user)
    for target, why in ((user / "work", "not written by bisect-lite"), (user / "notes.txt", "not a directory")):
        monkeypatch.setenv("BISECT_LITE_LITE_ENV", str(target))
        refused(*run_cli(["setup", "lite"], capsys)[::2], why)
        assert snapshot(user) == before
