"""The live display of `run` (only shown on a terminal): every event kind, including non-finite errors."""

from __future__ import annotations

import io

from rich.console import Console

from bisect_lite.progress import RunProgress


def test_progress_renders_every_event_on_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100)
    with RunProgress(console) as progress:
        assert progress.enabled
        progress.event("phase", {"name": "reference", "detail": "paddle on every tensor"})
        progress.event("batch", {"done": 3, "total": 16})
        progress.event("phase", {"name": "target", "detail": "fp16 on the whole model"})
        progress.event("search", {"segment": 0, "ops": 14, "expected": 4})
        progress.event("probe", {"cut": 6, "verdict": "pass", "worst_rel_l2": 8.1e-4, "message": ""})
        progress.event("probe", {"cut": 9, "verdict": "fail", "worst_rel_l2": "inf", "message": ""})
        progress.event("probe", {"cut": 7, "verdict": "crash", "worst_rel_l2": None, "message": "SIGSEGV"})
        assert progress.progress.tasks[0].completed == 3
    text = buf.getvalue()
    assert "rel L2 0.00081" in text and "rel L2 inf" in text and "SIGSEGV" in text


def test_progress_is_silent_off_a_terminal():
    buf = io.StringIO()
    with RunProgress(Console(file=buf, force_terminal=False)) as progress:
        progress.event("probe", {"cut": 1, "verdict": "pass", "worst_rel_l2": 0.1, "message": ""})
    assert buf.getvalue() == ""
