"""Experiment trackers (TensorBoard, Weights & Biases, MLflow): the ``logger`` config group.

Only :mod:`mixbench.trackers.base` is imported here; a tracker's package is imported when it is opened.
"""

from mixbench.trackers.base import NoneTracker, Tracker, check_tracker_available
from mixbench.trackers.factory import open_tracker

__all__ = ["NoneTracker", "Tracker", "check_tracker_available", "open_tracker"]
