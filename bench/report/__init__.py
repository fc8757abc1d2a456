"""The report: figures and a self-contained HTML page made from a comparison (never trains)."""

from bench.report.html import REPORTS_DIR, write_report

__all__ = ["write_report", "REPORTS_DIR"]
