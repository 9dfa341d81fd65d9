"""Search algorithms as pure functions over predicates: bisection (binary, and k-ary over runs that
observe several cuts), delta debugging and shape shrinking.

Nothing here touches an engine or a file: callers wrap their probes in plain callables, which keeps every
algorithm testable with synthetic predicates.
"""

from bisect_lite.search.bisect import (
    BisectResult,
    ProbeOutcome,
    Status,
    bisect_first_failure,
    expected_probes,
)
from bisect_lite.search.ddmin import MinimiseResult, ddmin, grow_window
from bisect_lite.search.multicut import MulticutResult, expected_runs, multicut_first_failure
from bisect_lite.search.shrink import ShrinkResult, shrink_dims

__all__ = [
    "BisectResult",
    "MinimiseResult",
    "MulticutResult",
    "ProbeOutcome",
    "ShrinkResult",
    "Status",
    "bisect_first_failure",
    "ddmin",
    "expected_probes",
    "expected_runs",
    "grow_window",
    "multicut_first_failure",
    "shrink_dims",
]
