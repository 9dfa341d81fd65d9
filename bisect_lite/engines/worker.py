"""Worker processes: engines run outside the bisect-lite process, so a crashing or hanging kernel is a verdict.

Protocol (JSON lines; the worker's real stdout is reserved for it, everything native code prints goes to stderr):
    worker -> {"ready": true, "info": {...}}                       once, after start-up
    parent -> {"cmd": "run", "model_dir", "work_dir", "inputs", "outputs", "fetches"}
    worker -> {"ok": true, "seconds": s, "load_seconds": s}  or  {"ok": false, "error": "..."}
A worker lives across runs (paddle's import costs about a second) and keeps the last few loaded models.
Start it with `python -m bisect_lite.engines.worker SPEC`.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import select
import selectors
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from bisect_lite.engines.base import Job, RunResult
from bisect_lite.errors import EngineUnavailable

STARTUP_TIMEOUT = 180.0
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # full or read-only disk: the machine, not the model
QUIET_ENV = {"GLOG_minloglevel": "3", "GLOG_v": "0", "FLAGS_call_stack_level": "0", "PYTHONWARNINGS": "ignore"}


# Process groups of every engine process this process started and has not reaped yet: killed after each run
# (leftover children), on stop, and at exit or on SIGINT/SIGTERM (cli.main), so nothing outlives bisect-lite.
_LIVE_GROUPS: set[int] = set()


def track_group(pgid: int) -> None:
    _LIVE_GROUPS.add(pgid)


def kill_group(pgid: int) -> None:
    """SIGKILL a process group (the engine process and every child it left behind)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    _LIVE_GROUPS.discard(pgid)


def kill_all_children() -> None:
    for pgid in list(_LIVE_GROUPS):
        kill_group(pgid)


atexit.register(kill_all_children)


def run_in_group(
    argv: list[str], log: Path, timeout: float, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> int:
    """Run a program in its own process group, stdout and stderr into `log`; its exit status (negative: signal).
    The whole group is killed when it exits or times out (subprocess.TimeoutExpired): nothing it started outlives
    the run. OSError when it cannot start."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, cwd=cwd, env=env
        )
    track_group(proc.pid)
    try:
        return _wait(proc, timeout)
    finally:
        # Not reaped yet (pidfd wait), so the group id cannot have been reused: kill what is left of it.
        kill_group(proc.pid)
        proc.wait()


def _wait(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for exit without polling (Popen.wait(timeout) sleeps in steps of up to 50 ms, per run)."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


def tail(path: Path, limit: int = 1500) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return "\n".join(lines[-12:])


def peak_rss(pid: int) -> int:
    """A live process's peak resident set size in bytes (VmHWM), 0 when it cannot be read (not Linux, gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Worker:
    """Parent-side handle of one worker process for one engine spec."""

    def __init__(
        self,
        spec: str,
        log_file: Path,
        *,
        verbose: bool = False,
        python: str | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.spec = spec
        self.log_file = log_file
        self.verbose = verbose
        self.command = command or [python or sys.executable, "-m", "bisect_lite.engines.worker", spec]
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.peak_rss = 0  # the highest VmHWM seen of any of its processes (report.json records it)
        self._buf = b""
        self._log_offset = 0

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        env = dict(os.environ)
        if not self.verbose:
            env.update(QUIET_ENV)
        # The worker must import this very package, even when bisect-lite runs from a source checkout.
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 (handed to the child, closed below)
        self._log_offset = log.tell()
        try:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        track_group(self.proc.pid)
        self._buf = b""
        msg = self._read_message(STARTUP_TIMEOUT)
        if msg is None or not msg.get("ready"):
            reason = self._death_reason("did not start")
            self.stop()
            raise WorkerDied(reason)
        self.info = msg.get("info", {})

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        # The whole group, even when the worker itself has exited: children it started must not survive it.
        kill_group(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream:
                stream.close()

    # ---- runs ---------------------------------------------------------------------------------------------
    def run(self, job: Job, timeout: float, extra: dict[str, Any] | None = None) -> RunResult:
        """One run; `extra` adds fields to the request (for workers speaking an extended protocol).

        A worker that dies during a run gets one retry in a fresh process: it may have died of something else
        (killed between runs, out of memory), and a false `crash` would send the search the wrong way. A real
        crash repeats and stays a crash."""
        result = self._run_once(job, timeout, extra)
        if result.status == "crash" and result.message.startswith("worker died"):
            retry = self._run_once(job, timeout, extra)
            if retry.ok or retry.status == "timeout":
                return retry
        return result

    def _run_once(self, job: Job, timeout: float, extra: dict[str, Any] | None) -> RunResult:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        request = {
            "cmd": "run",
            "model_dir": str(job.model_dir),
            "work_dir": str(job.work_dir),
            "inputs": str(job.inputs_file),
            "outputs": str(job.outputs_file),
            "fetches": job.fetches,
            **(extra or {}),
        }
        start = time.perf_counter()
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        msg = self._read_message(timeout)
        stage = "run"
        while msg is not None and "ok" not in msg and "stage" in msg:  # the worker says what it is doing
            stage = msg["stage"]
            msg = self._read_message(max(timeout - (time.perf_counter() - start), 0.0))
        seconds = time.perf_counter() - start
        self._echo_log()
        if msg is None:
            # End of file before the deadline is a death, even if the process is not reapable yet.
            timed_out = seconds >= timeout and self.proc is not None and self.proc.poll() is None
            reason = f"no answer within {timeout:g} s" if timed_out else self._death_reason("died")
            # info["stage"] == "load": it died preparing (converting) the model and never ran it.
            info = {"stage": stage} if stage == "load" else {}
            result = RunResult("timeout" if timed_out else "crash", seconds=seconds, message=reason, info=info)
            self.stop()  # restarted lazily by the next run
            return result
        if not msg.get("ok") and msg.get("environment"):
            # The disk is full or read-only: a fact about this machine, never a verdict on the model's ops.
            raise EngineUnavailable(f"engine {self.spec} cannot write its outputs: {msg.get('error', '?')}")
        if not msg.get("ok"):
            # info["stage"] == "load": the engine could not prepare (convert) this model, it never ran it.
            stage = {"stage": msg["stage"]} if msg.get("stage") else {}
            return RunResult("crash", seconds=seconds, message=f"engine error: {msg.get('error', '?')}", info=stage)
        info = {"run_seconds": msg.get("seconds"), "load_seconds": msg.get("load_seconds"), **msg.get("info", {})}
        if self.proc is not None:
            self.peak_rss = max(self.peak_rss, peak_rss(self.proc.pid))
        return RunResult("ok", seconds=seconds, info=info)

    def _death_reason(self, what: str) -> str:
        code = self.proc.poll() if self.proc else None
        if self.proc is not None and code is None:
            try:
                code = self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
        text = tail(self.log_file)
        return f"worker {what} ({describe_exit(code)})" + (f": {text}" if text else "")

    def _echo_log(self) -> None:
        if not self.verbose:
            return
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
                self._log_offset = f.tell()
        except OSError:
            return
        if data:
            sys.stderr.write(data.decode(errors="replace"))

    def _read_message(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            return {"ok": False, "error": f"garbled worker message {line[:200]!r}"}


class WorkerDied(Exception):
    pass


# ---- child side -------------------------------------------------------------------------------------------
def serve(spec_text: str) -> None:
    import numpy as np

    from bisect_lite.engines.registry import create_engine

    # Keep the protocol channel private: native code (glog, print) writing to fd 1 must not garble it.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    engine = create_engine(spec_text)
    loaded: OrderedDict[str, Any] = OrderedDict()
    send({"ready": True, "info": {"pid": os.getpid(), "engine": spec_text}})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        stage = "load"
        try:
            t0 = time.perf_counter()
            key = req["model_dir"]
            if key not in loaded:
                send({"stage": "load"})  # a death from here on happened preparing the model, not running it
                # One model at a time: a loaded predictor keeps its activation buffers, and runs of the same
                # model come back to back (determinism checks), so a larger cache only multiplies the peak.
                loaded.clear()
                loaded[key] = engine.load(Path(req["model_dir"]), Path(req["work_dir"]))
                send({"stage": "run"})
            loaded.move_to_end(key)
            stage = "run"
            t1 = time.perf_counter()
            with np.load(req["inputs"], allow_pickle=False) as data:
                inputs = {k: data[k] for k in data.files}
            outputs = engine.infer(loaded[key], inputs, list(req["fetches"]))
            t2 = time.perf_counter()
            tmp = req["outputs"] + ".part.npz"
            np.savez(tmp, **{k: np.asarray(v) for k, v in outputs.items()})
            os.replace(tmp, req["outputs"])
            send({"ok": True, "seconds": t2 - t1, "load_seconds": t1 - t0})
        except (Exception, SystemExit) as exc:  # an engine error is a verdict for this run, not the end of the worker
            answer = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()[-1500:]}", "stage": stage}
            if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
                answer["environment"] = True
            send(answer)


if __name__ == "__main__":
    serve(sys.argv[1])
