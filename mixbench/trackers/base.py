"""The experiment-tracker interface the trainer talks to, the ``none`` tracker, and the factory.

A tracker mirrors a run's per-epoch metrics (the lines of ``metrics.jsonl``) and its final summary into an
experiment-tracking tool.  The run directory stays the record of the run; a tracker only shows it elsewhere,
so a run never depends on one: ``logger=none`` turns them off.

The trainer (on the main process only) opens one with :func:`open_tracker` once the checkpoint is loaded,
calls :meth:`Tracker.log_epoch` after each epoch and :meth:`Tracker.finish` at the end, also when the run
fails.  Each tracker writes inside the one folder it is given, the run directory's tracker folder:

    tensorboard   <run>/tb/       event files                                 (tensorboard.py)
    wandb         <run>/wandb/    W&B's offline-run-* folders and run-id      (wandb.py)
    mlflow        <run>/mlflow/   mlflow.db (SQLite store), run-id            (mlflow.py)

**Resumption.**  ``start_epoch`` is the number of epochs the checkpoint holds.  Records are logged at
step = epoch (1-based), so a resumed run logs from step ``start_epoch + 1`` on; a killed run may have logged
epochs past its checkpoint, and each tracker says how it treats them.  W&B and MLflow continue the same run:
its id is kept in the file ``run-id`` of the tracker's folder.

The packages behind wandb and mlflow are optional (extras ``wandb`` and ``mlflow``);
:func:`check_tracker_available` says which one is missing, in one line, before anything runs.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixbench.atomic import atomic_write_text
from mixbench.config import ConfigError, check_group_choice

RUN_ID_FILE = "run-id"

_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class Tracker(abc.ABC):
    """One run's connection to an experiment tracker.

    Args:
        logger_cfg: the ``logger`` group of the config as a plain dict (``name`` and the tracker's options).
        folder: the folder the tracker writes in (see the module docstring); made when needed.
        config: the fully resolved run config as a plain dict.
        start_epoch: epochs already done (the checkpoint's) when the run resumes; 0 for a fresh run.
        run_name: the run's name, its directory relative to the runs root (``digits/r18/mixup/.../seed0``).
    """

    name = "base"

    def __init__(
        self,
        logger_cfg: Mapping[str, Any],
        folder: Path,
        config: Mapping[str, Any],
        start_epoch: int = 0,
        run_name: str = "",
    ) -> None:
        self.options = dict(logger_cfg)
        self.folder = Path(folder)
        self.config = dict(config)
        self.start_epoch = int(start_epoch)
        self.run_name = run_name

    @abc.abstractmethod
    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Log one ``metrics.jsonl`` record: every number but ``epoch``, at step ``record["epoch"]``."""

    @abc.abstractmethod
    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        """Log the summary's numbers as final values, mark the run ``complete`` or ``failed``, close."""


class NoneTracker(Tracker):
    """``logger=none``: logs nothing, writes nothing."""

    name = "none"

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        pass

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        pass


# ---------------------------------------------------------------------------------------------- factory


def _required_modules(logger_cfg: Mapping[str, Any]) -> list[str]:
    name = logger_cfg.get("name", "none")
    if name == "tensorboard":
        return ["tensorboard"]  # torch.utils.tensorboard needs the tensorboard package
    if name == "wandb":
        return ["wandb"]
    if name == "mlflow":
        uri = logger_cfg.get("tracking_uri")
        sql_store = uri is None or str(uri).split(":", 1)[0].split("+", 1)[0] in _SQL_SCHEMES
        # MLflow's SQL stores (the default local one is SQLite) need SQLAlchemy and Alembic, which the light
        # mlflow-skinny package leaves out.
        return ["mlflow", "sqlalchemy", "alembic"] if sql_store else ["mlflow"]
    return []


def check_tracker_available(logger_cfg: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` (one line) when the logger is unknown or its package is not installed.

    Looks the packages up with ``importlib.util.find_spec``; nothing heavy is imported.
    """
    name = str(logger_cfg.get("name", "none"))
    check_group_choice("logger", name)
    for module in _required_modules(logger_cfg):
        if importlib.util.find_spec(module) is None:
            what = f"the {module} package" + (" (for MLflow's SQL store)" if module != name else "")
            extra = name if name in ("wandb", "mlflow") else ""
            fix = f'pip install -e ".[{extra}]"' if extra else f"pip install {module}"
            raise ConfigError(f"logger={name} needs {what}; install it with {fix}")


# ---------------------------------------------------------------------------------------------- helpers


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def epoch_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a metrics record to log, ``epoch`` left out (it is the step)."""
    return {key: float(value) for key, value in record.items() if key != "epoch" and _is_number(value)}


def summary_scalars(summary: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers at the top level of ``summary.json`` (no flags, strings, None, nested dicts)."""
    return {
        key: float(value)
        for key, value in summary.items()
        if _is_number(value) and math.isfinite(float(value))
    }


def read_run_id(folder: Path) -> str | None:
    """The tracker run id kept in ``folder/run-id`` by an earlier session of this run, or None."""
    path = Path(folder) / RUN_ID_FILE
    if not path.is_file():
        return None
    run_id = path.read_text().strip()
    return run_id or None


def write_run_id(folder: Path, run_id: str) -> None:
    """Keep ``run_id`` in ``folder/run-id`` (atomically) for the sessions that resume this run."""
    atomic_write_text(run_id + "\n", Path(folder) / RUN_ID_FILE)
