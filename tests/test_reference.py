"""The reference dump's failure message: a Paddle-Lite reference that cannot run a model with known Paddle 3.x schema
drift (two_io's flatten without XShape segfaults real opt for `arm` too) says what repairs it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from bisect_lite.model import load_model
from bisect_lite.reference import drift_hint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def runner(name: str) -> SimpleNamespace:
    return SimpleNamespace(engine=SimpleNamespace(name=name))


def test_a_lite_reference_failure_names_the_drift_and_its_fix():
    model = load_model(FIXTURES / "two_io", with_params=False)
    hint = drift_hint(model, runner("lite"))  # type: ignore[arg-type]
    assert "op 12 flatten_contiguous_range has no output XShape" in hint and "bisect-lite lite-compat" in hint
    assert drift_hint(model, runner("paddle")) == ""  # type: ignore[arg-type]  # Paddle reads the model as it is
    assert drift_hint(load_model(FIXTURES / "unet", with_params=False), runner("lite")) == ""  # type: ignore[arg-type]
