"""Where a run's numbers and pictures go: metrics sinks (JSONL, console, SwanLab) and the logview page."""

from ajet.logging.logview import write_logview
from ajet.logging.metrics import MetricsLogger

__all__ = ["MetricsLogger", "write_logview"]
