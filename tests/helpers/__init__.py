"""Helpers the test modules import (fixtures stay in ``tests/conftest.py``)."""

from tests.helpers.config import REPO, compose_config, run_cli, tiny_overrides
from tests.helpers.methods import FixedLam, InputOnlyNet, LinearNet, StageRecorder, hand_ce

__all__ = [
    "REPO",
    "FixedLam",
    "InputOnlyNet",
    "LinearNet",
    "StageRecorder",
    "compose_config",
    "hand_ce",
    "run_cli",
    "tiny_overrides",
]
