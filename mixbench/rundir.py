"""The run directory: the one place that knows its layout, its files, their schema and a run's identity.

    <runs_root>/<data>/<model>/<method>/<schedule>/seed<k>/
        config.yaml     the fully resolved config                          (RunDirectory.write_config)
        metrics.jsonl   one JSON line per evaluated epoch                  (RunDirectory.write_metrics)
        summary.json    status and headline numbers (SUMMARY_KEYS)         (RunDirectory.write_summary)
        checkpoint.pt   weights, optimizer state, history (atomic)         (RunDirectory.save_checkpoint)
        best.pt         weights of the best epoch (atomic)                 (RunDirectory.save_best)
        eval/<suite>.json       an evaluation of the last epoch's weights  (RunDirectory.write_evaluation)
        eval/<suite>@best.json  ... of best.pt's weights (weights=best)
        eval/*.png              its figures (reliability diagram, occlusion curve, CAMs)
        tb/ wandb/ mlflow/   experiment trackers' own folders              (RunDirectory.tracker_dir)

The trainer writes it; the report package (tables, figures) and the tools read it through
:class:`RunDirectory` and :func:`read_run`, so a file name or a summary key lives here and nowhere else.  This
module sits below both the engine and the report package (it imports neither), which is why it lives at the
package's top level rather than in ``engine/``.

**Identity.**  A run is identified by the four group names (data, model, method, schedule), the values of each
group that differ from its shipped ``configs/<group>/<name>.yaml`` (resolved against the run's own data
config), and the seed.  :func:`run_identity` computes it once, and everything else uses it: the folder names
(the name followed by the differences, e.g. ``r18,width=16``; long or path-like differences become a short
hash), the refusal to resume a folder written by another configuration (:func:`identity_mismatch`), and the
matching of runs to the cells of published tables (``RunIdentity.configuration``, the identity without the
seed).  Values that say where or how to run rather than what is computed (:data:`RUNTIME_KEYS`: device,
precision, data.root, the logger, ...) are never part of it.

**Pretrained weights.**  ``model.pretrained_path`` says *where* a weights file is, like ``data.root`` says
where a dataset is: it is a runtime key, so the same fine-tuning run matches its published cell and resumes on
a machine where the file lives elsewhere.  What the file *holds* is recorded instead: the trainer stores its
SHA-256 in the checkpoint and the summary (``pretrained_sha256``) and refuses to resume a run with a file of
other contents.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mixbench.atomic import atomic_save, atomic_write_json, atomic_write_text, load_checkpoint
from mixbench.config import CONFIG_DIR, GROUPS
from mixbench.metrics import median_last_k
from mixbench.runlock import LOCK_FILE, RunLock

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"  # the weights of the epoch with the best online top-1 (evaluations take weights=best)
TENSORBOARD_DIR = "tb"
EVAL_DIR = "eval"  # tools/evaluate.py writes eval/<suite>.json (and eval/<suite>@best.json) here
WEIGHTS = ("last", "best")  # which weights an evaluation used: checkpoint.pt's (last epoch) or best.pt's
ERROR_LOG = "error.log"

RUNNING, COMPLETE, FAILED, INTERRUPTED = "running", "complete", "failed", "interrupted"
ONLINE = (
    "online"  # the label of the online network in summary.json's "evaluated" (its metric keys have no prefix)
)

# Values that say where or how to run, not what is computed: never part of a run's identity.
RUNTIME_KEYS = frozenset(
    {
        "device",
        "precision",
        "channels_last",
        "compile",
        "compile_mode",
        "num_workers",
        "eval_batch_size",
        "runs_root",
        "force",
        "progress",
        "data.root",
        "data.download",
        "data.resident",
        "model.pretrained_path",  # where the weights are; their contents are checked by SHA-256 instead
        *("method.encoder_path", "method.decoder_path", "method.style_distance_path"),  # StyleMix's files
        "sync_bn",  # how a run is spread over processes, like their number: recorded in summary.json instead
        "reference_table",  # set by experiment files: which published table a run is compared with
        "samples",  # tools/show_mix.py
        "checkpoint",
        "out",
    }
)
RUNTIME_GROUPS = frozenset(
    {
        "logger",  # how a run is observed
        "hydra",
        # tables of published settings that an experiment file interpolates into a group's values (SUMix's
        # gamma per base, dataset and model): what they select is in the group, and counts there
        "paper_values",
    }
)  # whole subtrees that are never part of a run's identity
_SAFE = re.compile(r"^[A-Za-z0-9._=,+-]+$")
_MAX_SUFFIX = 60


class RunDirectoryError(ValueError):
    """A file of a run directory is missing a key or cannot be read; the message is one line with the fix."""


def is_runtime_key(key: str) -> bool:
    """Whether a flattened key (``data.root``, ``logger.mode``) says how to run rather than what is
    computed."""
    return key in RUNTIME_KEYS or key.split(".", 1)[0] in RUNTIME_GROUPS


# ------------------------------------------------------------------------------------------------ identity


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are values, an empty mapping disappears."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(key), _hashable(item)) for key, item in value.items()))
    return value


@functools.cache
def _stock_file(group: str, name: str) -> dict[str, Any] | None:
    """``configs/<group>/<name>.yaml`` as a dict, interpolations unresolved; ``None`` when there is none."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        return None
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)  # type: ignore[return-value]


def stock_values(group: str, name: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The shipped config ``name`` of ``group``, flattened, interpolations resolved against ``data``.

    (``alignmixup_ae``'s ``image_size: ${data.image_size}`` is stored resolved in a run's config.yaml.)
    """
    stock = _stock_file(group, name)
    if stock is None:
        return {}
    if "${" not in repr(stock):
        return flatten(stock)
    try:
        context = OmegaConf.create({"data": dict(data or {}), group: stock})
        values = OmegaConf.to_container(context[group], resolve=True)
    except OmegaConfBaseException:  # an interpolation the context cannot serve: compare the raw text
        values = stock
    return flatten(values)


def group_differences(config: Mapping[str, Any], group: str) -> tuple[tuple[str, Any], ...]:
    """``(key, value)`` of ``config[group]`` that differ from its shipped file, sorted; runtime keys left
    out."""
    values = dict(config[group])
    stock = {
        key: _hashable(value)
        for key, value in stock_values(group, values["name"], config.get("data")).items()
    }
    given = {key: _hashable(value) for key, value in flatten(values).items() if key != "name"}
    return tuple(
        sorted(
            (key, value)
            for key, value in given.items()
            if not is_runtime_key(f"{group}.{key}") and (key not in stock or stock[key] != value)
        )
    )


def _format_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "-".join(_format_value(item) for item in value)
    return str(value)


@dataclass(frozen=True)
class RunIdentity:
    """What a run computes: group names, their differences from the shipped configs, other values, the
    seed."""

    names: tuple[str, ...]  # one per group of GROUPS (data, model, method, schedule)
    differences: tuple[tuple[tuple[str, Any], ...], ...]  # per group: sorted (key, value) pairs
    others: tuple[tuple[str, Any], ...]  # top-level values outside the groups and the seed (ema), not null
    seed: Any

    @property
    def configuration(self) -> tuple:
        """The identity without the seed: the key of a table row and of a published cell."""
        return (self.names, self.differences, self.others)

    def folder(self, group: str) -> str:
        """``name`` or ``name,key=value,...`` (a short hash when that would be long or not path-safe)."""
        index = GROUPS.index(group)
        differences = self.differences[index]
        if not differences:
            return self.names[index]
        suffix = ",".join(f"{key}={_format_value(value)}" for key, value in differences)
        if len(suffix) > _MAX_SUFFIX or not _SAFE.match(suffix):
            suffix = hashlib.sha1(suffix.encode()).hexdigest()[:8]
        return f"{self.names[index]},{suffix}"

    def relative_path(self) -> Path:
        """``<data>/<model>/<method>/<schedule>/seed<k>``; values outside the groups (``ema=``) join the
        seed's folder (``seed0,ema.momentum=0.999,...``, or a short hash): own folders."""
        seed = f"seed{self.seed}"
        if self.others:
            suffix = ",".join(f"{key}={_format_value(value)}" for key, value in self.others)
            if len(suffix) > _MAX_SUFFIX or not _SAFE.match(suffix):
                suffix = hashlib.sha1(suffix.encode()).hexdigest()[:8]
            seed = f"{seed},{suffix}"
        return Path(*(self.folder(group) for group in GROUPS), seed)

    def as_dict(self) -> dict[str, Any]:
        """Flattened ``key: value`` of everything the identity holds (for naming what differs)."""
        flat: dict[str, Any] = {f"{group}.name": name for group, name in zip(GROUPS, self.names, strict=True)}
        for group, differences in zip(GROUPS, self.differences, strict=True):
            flat.update({f"{group}.{key}": value for key, value in differences})
        flat.update(dict(self.others))
        flat["seed"] = self.seed
        return flat


def _plain(config: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(config, DictConfig):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config)


def run_identity(config: DictConfig | Mapping[str, Any]) -> RunIdentity:
    """The identity of a composed config or of a run's resolved ``config.yaml`` (a dict)."""
    plain = _plain(config)
    for group in GROUPS:
        if not isinstance(plain.get(group), Mapping) or "name" not in plain[group]:
            raise RunDirectoryError(f"the config has no {group} name; it is not a mixbench run configuration")
    others = tuple(
        sorted(
            (key, _hashable(value))
            for key, value in flatten({k: v for k, v in plain.items() if k not in GROUPS}).items()
            # a root value left at null (ema: null) is the same run as one made before the key existed
            if key != "seed" and not is_runtime_key(key) and value is not None
        )
    )
    return RunIdentity(
        names=tuple(str(plain[group]["name"]) for group in GROUPS),
        differences=tuple(group_differences(plain, group) for group in GROUPS),
        others=others,
        seed=plain.get("seed"),
    )


def run_directory(cfg: DictConfig | Mapping[str, Any]) -> Path:
    """``<runs_root>/<data>/<model>/<method>/<schedule>/seed<k>`` of a config."""
    plain = _plain(cfg)
    return Path(str(plain["runs_root"])) / run_identity(plain).relative_path()


def identity_mismatch(
    saved: DictConfig | Mapping[str, Any], current: DictConfig | Mapping[str, Any]
) -> list[str]:
    """The keys whose values differ between a saved run's config and the current one (empty: same run)."""
    saved_values, current_values = run_identity(saved).as_dict(), run_identity(current).as_dict()
    keys = set(saved_values) | set(current_values)
    return sorted(key for key in keys if saved_values.get(key) != current_values.get(key))


# ------------------------------------------------------------------------------------------ summary schema


def metric_prefix(label: str) -> str:
    """The prefix of a network's keys: ``""`` for the online network, ``"ema_"`` for the EMA one."""
    return "" if label in ("", ONLINE) else f"{label}_"


def headline_key(window: int, label: str = ONLINE) -> str:
    """``median_last10_top1`` (``ema_median_last10_top1``): the median top-1 of the last ``window`` epochs."""
    return f"{metric_prefix(label)}median_last{window}_top1"


def network_scores(history: list[Mapping[str, Any]], window: int, label: str = ONLINE) -> dict[str, Any]:
    """The summary's numbers for one evaluated network: median of the last ``window`` epochs, best, last.

    The median is ``None`` while fewer than ``window`` epochs exist (never a median of fewer epochs).
    """
    prefix = metric_prefix(label)
    top1 = [float(record[f"{prefix}top1"]) for record in history if f"{prefix}top1" in record]
    epochs = [record["epoch"] for record in history if f"{prefix}top1" in record]
    best = max(range(len(top1)), key=top1.__getitem__) if top1 else None
    median = median_last_k(top1, window)
    return {
        headline_key(window, label): median,
        f"{prefix}best_top1": top1[best] if best is not None else None,
        f"{prefix}best_epoch": epochs[best] if best is not None else None,
        f"{prefix}last_top1": top1[-1] if top1 else None,
    }


def summary_scores(
    history: list[Mapping[str, Any]], window: int, labels: Sequence[str] = (ONLINE,)
) -> dict[str, Any]:
    """:func:`network_scores` of every evaluated network (``labels``: ``online``/``""`` and ``ema``)."""
    scores: dict[str, Any] = {}
    for label in labels:
        scores.update(network_scores(history, window, label))
    return scores


# Every key of summary.json, in the order written; per-network keys are listed for the online network
# (an EMA network adds the same four with the prefix "ema_").
SUMMARY_KEYS = (
    "status",  # running | complete | failed | interrupted
    "data",
    "model",
    "method",
    "schedule",
    "seed",
    "run_dir",
    "epochs",
    "epochs_done",
    "metric_window",
    "evaluated",  # labels of the evaluated networks: ["online"] or ["online", "ema"]
    "median_last{window}_top1",
    "best_top1",
    "best_epoch",
    "last_top1",
    "wall_time_s",
    "train_images_per_s",
    "params",
    "method_params",
    "peak_memory_mb",
    "peak_memory_of",
    "device",
    "world_size",
    "sync_bn",
    "precision",
    "channels_last",
    "versions",
    "git_commit",
    "git_dirty",
    "pretrained_sha256",
    "numerics",  # the runtime settings that change the numbers (threads, precision, memory format, ...)
    "numerics_changes",  # resumptions with other such settings: [{from_epoch, changes}]
    "started_at",
    "updated_at",
    "message",
)
CHECKPOINT_KEYS = ("epoch", "model", "method", "optimizer", "history", "wall_time")
BEST_KEYS = ("epoch", "top1", "model", "method")
REQUIRED_SUMMARY_KEYS = ("status", "seed", "epochs", "epochs_done", "metric_window")
EVALUATION_KEYS = ("suite", "protocol", "weights", "data", "networks")
"""Keys every ``eval/<suite>.json`` holds (written by :mod:`mixbench.evaluation.runner`)::

    suite      the suite's name (configs/eval/<suite>.yaml): fgsm, pgd, ood, calibration, corruption,
               occlusion, wsol, cost
    protocol   the suite's parameters as run (what makes two evaluations the same: an evaluation with equal
               protocol and weights is skipped)
    weights    {"which": "last" | "best", "file": "checkpoint.pt" | "best.pt", "epoch": int}
    data       what was read: {"dataset", "split", "images", "image_size", ...} and the suite's own sets
               (OOD sets, the corruption source "released" | "generated" and its folder)
    networks   {label: results} for every network the method evaluates, labelled as in training ("online",
               "ema"); results are percentages (errors, accuracies, ECE, AUROC ...), see the suite's module.
               The cost suite measures the training step instead: {"step": {...}}
    device, commit, created, seconds     where, on what code, when, and how long
"""


# ------------------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class RunDirectory:
    """The files of one run directory: where each lives, and how it is read and (atomically) written."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, cfg: DictConfig | Mapping[str, Any]) -> RunDirectory:
        """The run directory of a config (see :func:`run_directory`)."""
        return cls(run_directory(cfg))

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary_file(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def checkpoint_file(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def best_file(self) -> Path:
        return self.path / BEST_FILE

    @property
    def error_log(self) -> Path:
        """Tracebacks of the errors that ended the run (the terminal gets one line)."""
        return self.path / ERROR_LOG

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def tracker_dir(self, name: str) -> Path:
        """The folder an experiment tracker keeps inside the run directory (``tb``, ``wandb``, ``mlflow``)."""
        return self.tensorboard_dir if name == "tensorboard" else self.path / name

    def has_config(self) -> bool:
        return self.config_file.is_file()

    def has_checkpoint(self) -> bool:
        return self.checkpoint_file.is_file()

    # -- config.yaml -------------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """The resolved config the run was made with."""
        try:
            config = yaml.safe_load(self.config_file.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise RunDirectoryError(
                f"{self.config_file} cannot be read ({first_line(error)}); remove the run directory or "
                "pass force=true to replace it"
            ) from error
        if not isinstance(config, dict):
            raise RunDirectoryError(
                f"{self.config_file} is not a mixbench config; remove the run directory or pass force=true"
            )
        return config

    def write_config(self, config: DictConfig | Mapping[str, Any]) -> None:
        text = (
            OmegaConf.to_yaml(config, resolve=True)
            if isinstance(config, DictConfig)
            else yaml.safe_dump(dict(config))
        )
        atomic_write_text(text, self.config_file)

    # -- metrics.jsonl -----------------------------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """One record per evaluated epoch; empty when the file does not exist."""
        if not self.metrics_file.is_file():
            return []
        records = []
        for number, line in enumerate(self.metrics_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise RunDirectoryError(
                    f"{self.metrics_file} line {number} is not JSON ({error.msg}); the run's checkpoint "
                    "rewrites it when the run resumes"
                ) from error
            if not isinstance(record, dict) or "epoch" not in record:
                raise RunDirectoryError(f"{self.metrics_file} line {number} is not an epoch record")
            records.append(record)
        return records

    def write_metrics(self, history: list[Mapping[str, Any]]) -> None:
        atomic_write_text("".join(json.dumps(dict(record)) + "\n" for record in history), self.metrics_file)

    # -- summary.json ------------------------------------------------------------------------------------
    def read_summary(self) -> dict[str, Any] | None:
        """The summary, or ``None`` when the run has none yet."""
        if not self.summary_file.is_file():
            return None
        try:
            summary = json.loads(self.summary_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunDirectoryError(
                f"{self.summary_file} is not readable JSON ({first_line(error)}); the run rewrites it when "
                "it resumes"
            ) from error
        missing = [
            key for key in REQUIRED_SUMMARY_KEYS if not isinstance(summary, dict) or key not in summary
        ]
        if missing:
            raise RunDirectoryError(
                f"{self.summary_file} lacks {', '.join(missing)}; the run rewrites it when it resumes"
            )
        return summary

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(dict(summary), self.summary_file)

    # -- checkpoint.pt -----------------------------------------------------------------------------------
    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        atomic_save(dict(state), self.checkpoint_file)

    def load_checkpoint(self, map_location: Any = "cpu", payload: bytes | None = None) -> dict[str, Any]:
        """The checkpoint (or its bytes ``payload``, read elsewhere), loaded with ``weights_only=True``, so
        loading never runs pickled code; a damaged or foreign file is one :class:`RunDirectoryError`."""
        return self._load_weights(
            self.checkpoint_file,
            CHECKPOINT_KEYS,
            "delete it to restart the run from its first epoch, or pass force=true",
            map_location,
            payload,
        )

    def save_best(self, state: Mapping[str, Any]) -> None:
        """``best.pt``: ``{"epoch", "top1", "model", "method"}`` of the best epoch so far (atomically)."""
        atomic_save(dict(state), self.best_file)

    def load_best(self, map_location: Any = "cpu") -> dict[str, Any]:
        """``best.pt``, guarded as :meth:`load_checkpoint` (``weights_only=True``; damage in one line)."""
        if not self.best_file.is_file():
            raise RunDirectoryError(
                f"{self.best_file} does not exist (a run keeps it from its first evaluated epoch; runs made "
                "before mixbench kept it have none); use the last epoch's weights"
            )
        return self._load_weights(
            self.best_file, BEST_KEYS, "delete it (the last epoch's weights stay usable)", map_location
        )

    def _load_weights(
        self,
        path: Path,
        required: Sequence[str],
        fix: str,
        map_location: Any = "cpu",
        payload: bytes | None = None,
    ) -> dict[str, Any]:
        source: Any = io.BytesIO(payload) if payload is not None else path
        try:
            state = load_checkpoint(source, map_location=map_location)
        except Exception as error:  # truncated, not a torch file, or a pickle that is not plain data
            head = payload[:4] if payload is not None else _head(path)
            raise RunDirectoryError(
                f"{path} cannot be loaded ({checkpoint_problem(error, head)}); {fix}"
            ) from error
        missing = [key for key in required if not isinstance(state, dict) or key not in state]
        if missing:
            raise RunDirectoryError(f"{path} lacks {', '.join(missing)}; {fix}")
        return state

    # -- eval/ -------------------------------------------------------------------------------------------
    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def evaluation_file(self, suite: str, weights: str = "last") -> Path:
        """``eval/<suite>.json`` (the last epoch's weights) or ``eval/<suite>@best.json`` (best.pt's)."""
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
        return self.eval_dir / (f"{suite}.json" if weights == "last" else f"{suite}@{weights}.json")

    def read_evaluation(self, suite: str, weights: str = "last") -> dict[str, Any] | None:
        """The record of an evaluation (:data:`EVALUATION_KEYS`), or ``None`` when it was not run."""
        path = self.evaluation_file(suite, weights)
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunDirectoryError(
                f"{path} is not readable JSON ({first_line(error)}); evaluate again with force=true"
            ) from error
        missing = [key for key in EVALUATION_KEYS if not isinstance(record, dict) or key not in record]
        if missing:
            raise RunDirectoryError(f"{path} lacks {', '.join(missing)}; evaluate again with force=true")
        return record

    def write_evaluation(self, record: Mapping[str, Any]) -> Path:
        """Write an evaluation record atomically to :meth:`evaluation_file` of its suite and weights."""
        missing = [key for key in EVALUATION_KEYS if key not in record]
        if missing:
            raise ValueError(f"an evaluation record needs {', '.join(missing)}")
        path = self.evaluation_file(str(record["suite"]), str(record["weights"]["which"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(dict(record), path)
        return path

    def make(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    # -- the writer's lock and what a dead writer left ------------------------------------------------------
    def lock(self) -> RunLock:
        """The run's exclusive lock, not yet taken: ``with run_dir.lock(): ...`` (:mod:`mixbench.runlock`)."""
        return RunLock(self.path)

    def temporary_files(self) -> list[Path]:
        """Half-written files of atomic writes (``.<name>.<random>.tmp``) anywhere in the run directory."""
        if not self.path.is_dir():
            return []
        return sorted(path for path in self.path.rglob(".*.tmp") if path.is_file())

    def remove_temporary_files(self) -> list[Path]:
        """Delete the half-written files a killed writer left; only call it while holding :meth:`lock`."""
        found = self.temporary_files()
        for path in found:
            path.unlink(missing_ok=True)
        return found

    def clear(self) -> None:
        """Delete everything in the run directory but its lock file (``force=true``, under the lock)."""
        if not self.path.is_dir():
            return
        for entry in self.path.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def _head(path: Path, size: int = 4) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def checkpoint_problem(error: BaseException, head: bytes) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file whose first bytes are ``head``, in a few words
    (torch's own message suggests ``weights_only=False``, which would run whatever the file's pickle says)."""
    if not head.startswith((b"PK\x03\x04", b"\x80")):  # a torch zip archive, or a legacy pickle
        return "it is not a torch checkpoint"
    text = str(error)
    if "Weights only load failed" in text and ("GLOBAL" in text or "Unsupported" in text):
        return "it holds objects other than tensors and plain data, and is not loaded for that reason"
    return "the file is truncated or damaged"


def complete_summary(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary of ``cfg``'s run when its directory holds a complete run of this very configuration;
    ``None`` in every other case (no run yet, another configuration, damaged files, not complete), which
    the trainer itself then resolves (it starts, resumes or refuses in one line).  Reads only."""
    try:
        directory = RunDirectory.of(cfg)
        if not directory.has_config() or identity_mismatch(directory.read_config(), cfg):
            return None
        summary = directory.read_summary()
    except (RunDirectoryError, OSError):
        return None
    return summary if summary is not None and summary.get("status") == COMPLETE else None


def skipped_line(path: Path, summary: Mapping[str, Any]) -> str:
    """What is printed for a complete run that a command skips."""
    window = summary["metric_window"]
    return (
        f"complete, skipped: {path} (median top-1 of the last {window} epochs "
        f"{summary[headline_key(window)]:.2f}); force=true to redo it"
    )


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none); for an error re-raised from
    a DataLoader worker ("Caught X in DataLoader worker process 0. Original Traceback ..."), the worker's own
    last line, which names the problem."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].startswith("Caught ") and "worker process" in lines[0] and len(lines) > 1:
        return lines[-1]
    return lines[0]


# ------------------------------------------------------------------------------------------------ reading


@dataclass
class Run:
    """One run directory as the reports see it: config, summary and per-epoch history."""

    directory: RunDirectory
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any] | None

    @property
    def path(self) -> Path:
        return self.directory.path

    @property
    def status(self) -> str:
        return str(self.summary["status"])

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    @property
    def seed(self) -> int:
        return int(self.summary["seed"])

    @property
    def window(self) -> int:
        return int(self.summary["metric_window"])

    @property
    def epochs(self) -> int:
        """The epochs the schedule asks for."""
        return int(self.summary["epochs"])

    @property
    def epochs_done(self) -> int:
        return int(self.summary["epochs_done"])

    @property
    def message(self) -> str | None:
        """Why the run failed (or other news from the trainer); ``None`` when there is none."""
        return self.summary.get("message")

    @property
    def group_names(self) -> tuple[str, ...]:
        """The config names of the run's groups (data, model, method, schedule) as its summary records
        them."""
        return tuple(str(self.summary[group]) for group in GROUPS)

    @property
    def recorded_epochs(self) -> list[int]:
        """The epochs of metrics.jsonl, in order (a resumed history need not start at 1)."""
        return [int(record["epoch"]) for record in self.history]

    def progress_text(self) -> str:
        """``seed2: failed 3/20``: seed, status, epochs done of the epochs asked for."""
        return f"seed{self.seed}: {self.status} {self.epochs_done}/{self.epochs}"

    @property
    def networks(self) -> list[str]:
        """Labels of the evaluated networks: ``online`` first, then ``ema`` and the like."""
        return list(self.summary.get("evaluated") or [ONLINE])

    def curve(self, label: str = ONLINE, metric: str = "top1") -> tuple[list[int], list[float]]:
        """``(epochs, values)`` of one network's metric over the evaluated epochs."""
        key = f"{metric_prefix(label)}{metric}"
        points = [(record["epoch"], record[key]) for record in self.history if key in record]
        return [epoch for epoch, _ in points], [value for _, value in points]

    def scores(self, label: str = ONLINE) -> dict[str, float | None]:
        """``median`` (of the metric window), ``best``, ``last`` and ``best_window`` (best of the window)."""
        prefix, window = metric_prefix(label), self.window
        _, top1 = self.curve(label)
        return {
            "median": self.summary.get(headline_key(window, label)),
            "best": self.summary.get(f"{prefix}best_top1"),
            "last": self.summary.get(f"{prefix}last_top1"),
            "best_window": max(top1[-window:]) if len(top1) >= window else None,
        }

    def commit_text(self) -> str:
        """The tree the run was made with: ``66652e0``, ``66652e0 (with uncommitted changes)`` or
        ``unknown``."""
        commit = self.summary.get("git_commit")
        if not commit:
            return "unknown"
        return str(commit)[:7] + (" (with uncommitted changes)" if self.summary.get("git_dirty") else "")

    def device_text(self) -> str:
        return f"{self.summary.get('device')}, {self.summary.get('precision')}"


def read_run(path: Path) -> Run:
    """The run directory at ``path`` (it must hold a summary.json)."""
    directory = RunDirectory(path)
    summary = directory.read_summary()
    if summary is None:
        raise RunDirectoryError(
            f"{path} has no {SUMMARY_FILE}; it is not a run directory (or has not started)"
        )
    config = directory.read_config() if directory.has_config() else None
    return Run(directory, summary, directory.read_metrics(), config)


def find_runs(root: Path) -> list[Path]:
    """Every run directory under ``root`` (or ``root`` itself), hidden folders skipped, in path order."""
    root = Path(root)
    return sorted(
        path.parent
        for path in root.rglob(SUMMARY_FILE)
        if not any(part.startswith(".") for part in path.relative_to(root).parts)
    )


def finite_or_none(value: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become ``None``."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
