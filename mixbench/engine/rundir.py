"""Run directories, keyed by configuration rather than by time.

    <runs_root>/<data>/<model>/<method>/<schedule>/seed<k>/
        config.yaml  metrics.jsonl  summary.json  checkpoint.pt  tb/

Each of the four group folders is the config's name, followed by the values that differ from the shipped
file of that name, e.g. ``r18,width=16`` or ``mixup,alpha=0.2``; long or path-like differences become a
short hash (``mixup,3f2a9c1e``).  Two runs land in the same directory exactly when their configurations
agree, so re-running a command resumes it, and a sweep skips what is done.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mixbench.config import CONFIG_DIR, GROUPS

# Values that say where or how to run, not what is computed: never part of a run's identity.
RUNTIME_KEYS = {
    "device",
    "precision",
    "channels_last",
    "compile",
    "num_workers",
    "eval_batch_size",
    "runs_root",
    "force",
    "progress",
    "data.root",
    "data.download",
    "data.resident",
    "sync_bn",  # how a run is spread over processes, like their number: recorded in summary.json instead
    "reference_table",  # set by experiment files: which published table a run is compared with
    "samples",
    "checkpoint",
    "out",  # tools/show_mix.py
}
_SAFE = re.compile(r"^[A-Za-z0-9._=,+-]+$")
_MAX_SUFFIX = 60


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists are kept as values)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_format_value(v) for v in value)
    return str(value)


def group_differences(cfg: DictConfig, group: str) -> dict[str, Any]:
    """Keys of ``cfg[group]`` whose value differs from the shipped ``configs/<group>/<name>.yaml``."""
    name = cfg[group].name
    stock_path = CONFIG_DIR / group / f"{name}.yaml"
    stock = (
        flatten(OmegaConf.to_container(OmegaConf.load(stock_path), resolve=False))
        if stock_path.exists()
        else {}
    )
    current = flatten(OmegaConf.to_container(cfg[group], resolve=False))
    keys = sorted(set(stock) | set(current))
    return {
        key: current.get(key)
        for key in keys
        if stock.get(key) != current.get(key) and f"{group}.{key}" not in RUNTIME_KEYS
    }


def group_folder(cfg: DictConfig, group: str) -> str:
    name = str(cfg[group].name)
    differences = group_differences(cfg, group)
    if not differences:
        return name
    suffix = ",".join(f"{key}={_format_value(value)}" for key, value in differences.items())
    if len(suffix) > _MAX_SUFFIX or not _SAFE.match(suffix):
        suffix = hashlib.sha1(suffix.encode()).hexdigest()[:8]
    return f"{name},{suffix}"


def run_directory(cfg: DictConfig) -> Path:
    folders = [group_folder(cfg, group) for group in GROUPS]
    return Path(cfg.runs_root).joinpath(*folders, f"seed{cfg.seed}")


def identity(cfg: DictConfig | dict) -> dict[str, Any]:
    """The resolved values that define what a run computes (runtime keys removed), flattened."""
    plain = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    return {key: value for key, value in flatten(plain).items() if key not in RUNTIME_KEYS}


def identity_mismatch(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ between a saved run's config and the current one."""
    saved_id, current_id = identity(saved), identity(current)
    return sorted(key for key in set(saved_id) | set(current_id) if saved_id.get(key) != current_id.get(key))
