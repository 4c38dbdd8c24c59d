"""Command-line helpers shared by the tools: early checks of overrides and one-line errors.

Hydra reports a bad override (unknown group option, unknown key) in several lines; the tools check the
overrides first and turn any problem into one line naming the fix: each composed config is validated
(:func:`mixbench.config.validate`, values) and its names checked against the registries
(:func:`mixbench.engine.build.check_registered`).
"""

from __future__ import annotations

import itertools

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

from mixbench.config import (
    CONFIG_DIR,
    SELECTABLE_GROUPS,
    ConfigError,
    check_group_choice,
    check_writable_folder,
    validate,
)
from mixbench.engine.build import check_registered
from mixbench.errors import OneLineArgumentParser, fail

MAX_CHECKED_COMBINATIONS = 64


def config_overrides(arguments: list[str]) -> list[str]:
    """The ``key=value`` overrides of a command line, without Hydra's own flags and ``hydra`` settings."""
    return [
        argument
        for argument in arguments
        if "=" in argument and not argument.startswith("-") and not argument.lstrip("+~").startswith("hydra")
    ]


def check_overrides(arguments: list[str], config_name: str = "train") -> None:
    """Raise :class:`ConfigError` (one line) if the overrides do not compose, for every value of a sweep."""
    overrides = config_overrides(arguments)
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices: list[list[str]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # glob() and friends: left to Hydra
                values = []
            choices.append([f"{key}={value}" for value in values] or [])
        else:
            choices.append([override.input_line])
        if key.lstrip("+~") in SELECTABLE_GROUPS:
            for value in choices[-1]:
                choice = value.split("=", 1)[1]
                if choice not in ("null", ""):
                    check_group_choice(key.lstrip("+~"), choice)
    combinations = itertools.islice(itertools.product(*[c for c in choices if c]), MAX_CHECKED_COMBINATIONS)
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for combination in combinations:
            try:
                cfg = compose(config_name=config_name, overrides=list(combination))
            except Exception as error:  # Hydra and OmegaConf errors: condense to one line
                raise ConfigError(_one_line(error)) from error
            if config_name == "train":
                validate(cfg)
                check_registered(cfg)
                check_writable_folder(cfg.runs_root, "runs_root")


def _one_line(error: BaseException | None) -> str:
    messages: list[str] = []
    while error is not None:
        for line in str(error).splitlines():
            line = line.strip().rstrip(".")
            if line and "HYDRA_FULL_ERROR" not in line and not line.startswith(("full_key", "object_type")):
                messages.append(line)
        error = error.__cause__
    return "; ".join(dict.fromkeys(messages)) or "the overrides do not compose"


__all__ = [
    "ConfigError",
    "OneLineArgumentParser",
    "check_overrides",
    "config_overrides",
    "fail",
]
