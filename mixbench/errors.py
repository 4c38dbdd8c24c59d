"""How the tools refuse: one line on stderr, ``error: <the problem and its fix>``, and a non-zero exit.

Light on purpose (no torch, no Hydra), so that every tool can use it before importing anything heavy.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``.

    Under torchrun every process meets the same error (:mod:`mixbench.engine.distributed`); only rank 0
    prints it, the others exit with the same code silently.
    """
    if os.environ.get("RANK", "0") == "0":
        print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse with its errors in one line (``error: <problem>; see --help``) and exit code 2, like every
    other refusal of the tools (argparse prints its usage first, which buries the problem)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message}; see {self.prog} --help")
        raise AssertionError("fail() exits")  # pragma: no cover
