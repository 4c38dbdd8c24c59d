"""Command-line helpers shared by the tools: early checks of overrides and one-line errors."""

from __future__ import annotations

import sys

from mixbench.config import SELECTABLE_GROUPS, ConfigError, check_group_choice


def check_group_overrides(arguments: list[str]) -> None:
    """Check ``group=choice`` overrides (also comma-separated sweeps) before Hydra composes anything.

    Hydra's own message for an unknown choice spans many lines; this one names the valid options in one.
    """
    for argument in arguments:
        if argument.startswith("-") or "=" not in argument:
            continue
        key, value = argument.lstrip("+~").split("=", 1)
        if key not in SELECTABLE_GROUPS or "(" in value:  # leave Hydra's sweep functions (range(), glob()) alone
            continue
        for choice in value.split(","):
            if choice and choice != "null":
                check_group_choice(key, choice.strip())


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


__all__ = ["ConfigError", "check_group_overrides", "fail"]
