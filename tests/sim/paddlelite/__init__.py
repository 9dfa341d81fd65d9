"""Simulated `paddlelite` wheel (Paddle-Lite's Python package) for hosts where it cannot be installed.

Put `tests/sim` on sys.path / PYTHONPATH, then `from paddlelite.lite import *` as with the real wheel.
See tests/sim/README.md for what is simulated and how.
"""
