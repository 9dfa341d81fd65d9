"""Human-facing output of a run: fault diagnosis, error-vs-depth plot and report.md."""

from bisect_lite.report.diagnose import KINDS, Diagnosis, diagnose
from bisect_lite.report.markdown import render_report
from bisect_lite.report.plot import plot_error_vs_depth

__all__ = ["KINDS", "Diagnosis", "diagnose", "plot_error_vs_depth", "render_report"]
