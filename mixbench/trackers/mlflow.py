"""MLflow: a local SQLite store in the run's ``mlflow/`` folder by default, or a tracking server.

What it logs, through ``MlflowClient`` (no global active run is touched): the resolved config as params
(flattened, ``schedule.optimizer.lr``; values as JSON, cut to 500 characters, the limit of the oldest MLflow
servers), each epoch's numbers as metrics at step = epoch, and at the end the summary's numbers as metrics
``summary/<key>`` (at the last epoch's step), the tag ``mixbench.status`` and the run's status: FINISHED when
complete, FAILED when failed.  The MLflow run is named after the run directory; the experiment is
``experiment_name`` (mixbench).

Where: with ``tracking_uri: null`` the store is the SQLite file ``<folder>/mlflow.db`` with artifacts in
``<folder>/artifacts`` (``<folder>`` is the run's tracker folder, ``<run>/mlflow``): MLflow 3 refuses its
older file store (``./mlruns``) unless told otherwise and recommends a database.  A new store costs a few
seconds (MLflow creates its tables); look at it with ``mlflow ui --backend-store-uri
sqlite:///<run>/mlflow/mlflow.db`` (the UI comes with the full ``mlflow`` package).  ``logger.tracking_uri=
http://host:5000`` (or any MLflow URI) logs to that server instead.  The tracker's ``run-id`` file stays in
``<folder>`` either way.

**Resumption.**  The MLflow run id is kept in ``<folder>/run-id``; a later session of the run (a resume, or a
restart before the first checkpoint) finds that run, sets it RUNNING again and logs on into it; params are
logged once, by the session that created the run.  If the store no longer has that run (another
``tracking_uri``, a deleted run) a new one is made and its id kept.  MLflow keeps every value logged: an epoch
that a killed session logged past its checkpoint is logged again by the resumed session, so its step holds two
values (equal on the CPU, where resumption is exact), the resumed one last.

MLflow's own usage telemetry follows MLflow's settings (``MLFLOW_DISABLE_TELEMETRY=true`` turns it off).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mixbench.rundir import flatten
from mixbench.trackers.base import (
    Tracker,
    epoch_scalars,
    read_run_id,
    summary_scalars,
    write_run_id,
)

STORE_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
MAX_PARAM_LENGTH = 500
_BATCH = 100  # params per log_batch call (MLflow's limit)


def param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, the rest as JSON; cut to MAX_PARAM_LENGTH."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def local_store_uri(folder: Path) -> str:
    """The tracking URI of the SQLite store in ``folder``."""
    return f"sqlite:///{(Path(folder) / STORE_FILE).resolve()}"


@contextlib.contextmanager
def _quiet_store_setup() -> Iterator[None]:
    """Keep the opening of a SQL store out of the run's output.

    MLflow announces the creation of its tables and Alembic each migration step at INFO level (Hydra's logging
    shows INFO); SQLAlchemy 2.1 warns about a loader strategy that MLflow's store still configures.
    """
    loggers = [logging.getLogger(name) for name in ("alembic", "mlflow.store.db.utils")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"The ``noload`` loader strategy", category=DeprecationWarning
            )
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class MlflowTracker(Tracker):
    """An MLflow run continued across the sessions of one mixbench run; see the module docstring."""

    name = "mlflow"

    def __init__(
        self,
        logger_cfg: Mapping[str, Any],
        folder: Path,
        config: Mapping[str, Any],
        start_epoch: int = 0,
        run_name: str = "",
    ) -> None:
        super().__init__(logger_cfg, folder, config, start_epoch, run_name)
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        self.folder.mkdir(parents=True, exist_ok=True)
        uri = self.options.get("tracking_uri")
        artifact_location = None
        if uri is None:
            uri = local_store_uri(self.folder)
            artifact_location = str((self.folder / ARTIFACTS_DIR).resolve())
        self.tracking_uri = str(uri)
        with _quiet_store_setup():
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment_id = self._experiment_id(
            str(self.options.get("experiment_name") or "mixbench"), artifact_location
        )

        run = None
        run_id = read_run_id(self.folder)
        if run_id is not None:
            with contextlib.suppress(MlflowException):
                run = self.client.get_run(run_id)
            if run is not None and run.info.lifecycle_stage != "active":
                run = None
        if run is None:
            run = self.client.create_run(
                experiment_id, run_name=run_name or None, tags={"mixbench.run_dir": str(self.folder.parent)}
            )
            write_run_id(self.folder, run.info.run_id)
            self._log_params(run.info.run_id)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        self.run_id: str | None = run.info.run_id
        self.last_epoch = self.start_epoch

    def _experiment_id(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException:  # made meanwhile by another run on the same server
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _log_params(self, run_id: str) -> None:
        from mlflow.entities import Param

        params = [Param(key, param_value(value)) for key, value in flatten(self.config).items()]
        for start in range(0, len(params), _BATCH):
            self.client.log_batch(run_id, params=params[start : start + _BATCH])

    def _log_metrics(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        if self.run_id is None:
            return
        epoch = int(record["epoch"])
        self._log_metrics(epoch_scalars(record), step=epoch)
        self.last_epoch = max(self.last_epoch, epoch)

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        if self.run_id is None:
            return
        values = {f"summary/{key}": value for key, value in summary_scalars(summary).items()}
        self._log_metrics(values, step=self.last_epoch)
        self.client.set_tag(self.run_id, "mixbench.status", status)
        self.client.set_terminated(self.run_id, status="FINISHED" if status == "complete" else "FAILED")
        self.run_id = None
