"""Search algorithms as pure functions over predicates: bisection, delta debugging and shape shrinking.

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
from bisect_lite.search.shrink import ShrinkResult, shrink_dims

__all__ = [
    "BisectResult",
    "MinimiseResult",
    "ProbeOutcome",
    "ShrinkResult",
    "Status",
    "bisect_first_failure",
    "ddmin",
    "expected_probes",
    "grow_window",
    "shrink_dims",
]
