"""Paddle-Lite style logging: LOG(FATAL)/CHECK failures abort the process, like the real library.

Real builds (without LITE_WITH_EXCEPTION) print "[F ...] message" to stderr and call abort(), so callers see
SIGABRT. Set PADDLELITE_SIM_FATAL=raise to get a RuntimeError instead (what a LITE_WITH_EXCEPTION build
does), which is handy for in-process tests.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import NoReturn

DEFAULT_VERSION = "v2.13-rc"  # lite::version() of the last PyPI wheel (paddlelite 2.13rc0)


class LiteFatalError(RuntimeError):
    """Raised instead of abort() when PADDLELITE_SIM_FATAL=raise."""


def version() -> str:
    # lite::version() is baked into the library; the env var lets tests fake an opt/runtime mismatch.
    return os.environ.get("PADDLELITE_SIM_VERSION", DEFAULT_VERSION)


def _prefix(level: str, where: str) -> str:
    # PADDLELITE_SIM_LOG_TIME (epoch seconds) fixes the clock, so tests see every padding form on any date.
    t = float(os.environ.get("PADDLELITE_SIM_LOG_TIME") or time.time())
    lt = time.localtime(t)
    return (
        f"[{level} {lt.tm_mon:2d}/{lt.tm_mday:2d} {lt.tm_hour:2d}:{lt.tm_min:2d}:{lt.tm_sec:2d}."
        f"{int(t * 1000) % 1000:03d} ...{where}]"
    )


def warn(msg: str, where: str = "lite/api/light_api.cc") -> None:
    sys.stderr.write(f"{_prefix('W', where)} {msg}\n")
    sys.stderr.flush()


def fatal(msg: str, where: str = "lite/core/program.cc") -> NoReturn:
    sys.stdout.flush()
    sys.stderr.write(f"{_prefix('F', where)} {msg}\n")
    sys.stderr.flush()
    if os.environ.get("PADDLELITE_SIM_FATAL", "abort").lower() == "raise":
        raise LiteFatalError(msg)
    try:  # paddle installs a SIGABRT handler that prints its own banner; real Lite dies quietly
        signal.signal(signal.SIGABRT, signal.SIG_DFL)
    except ValueError:  # not the main thread
        pass
    os.abort()


def check(cond: object, msg: str, where: str = "lite/core/program.cc") -> None:
    if not cond:
        fatal(f"Check failed: {msg}", where)
