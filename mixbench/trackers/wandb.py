"""Weights & Biases: offline by default, files in the run's ``wandb/`` folder.

What it logs: the resolved config (``wandb.init(config=...)``), each epoch's numbers at step = epoch, and at
the end the summary's numbers (and ``status``) into the W&B run summary; the run ends with exit code 0 when
complete, 1 when failed.  The W&B run is named after the run directory (``digits/r18/mixup/.../seed0``).

Where: W&B always makes a folder named ``wandb`` inside the directory it is handed, so given the run's tracker
folder ``<run>/wandb`` the tracker hands W&B ``<run>`` and everything lands in ``<run>/wandb/``: one
``offline-run-<time>-<id>/`` folder per session (``run-<id>.wandb`` holds the records), W&B's logs, and the
tracker's ``run-id`` file.  A folder of another name gets a ``wandb/`` folder inside it.

Options (``configs/logger/wandb.yaml``): ``project`` (mixbench), ``entity`` (null: your default), ``mode``
(``offline``; ``online`` with your ``WANDB_API_KEY``, and ``WANDB_BASE_URL`` for your own server, logs live;
``disabled``), ``tags`` and ``group``.  Offline runs are uploaded later with
``wandb sync <run>/wandb/offline-run-*``.  In offline mode nothing is sent anywhere: the tracker also tells
W&B's process-wide set-up that the process is offline, otherwise W&B's own telemetry would try to reach its
server when the process exits.

**Resumption.**  The W&B run id is drawn once, at the run's first session, and kept in ``<run>/wandb/run-id``;
every later session of the run (``start_epoch > 0`` or a restart before the first checkpoint) opens the same
id with ``resume="allow"``, so W&B continues one run.  Offline, each session is its own ``offline-run-*``
folder with that id.  Online, W&B keeps history append-only by step: epochs that a killed session logged past
its checkpoint stay as that session logged them, and the resumed session skips them (W&B would refuse a step
below its current one); resumption is exact on the CPU, so they hold the same numbers.  ``force=true``
replaces the run directory, the ``run-id`` file with it, and so starts a new W&B run.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mixbench.trackers.base import Tracker, epoch_scalars, read_run_id, summary_scalars, write_run_id


class WandbTracker(Tracker):
    """A W&B run continued across the sessions of one mixbench run; see the module docstring."""

    name = "wandb"

    def __init__(
        self,
        logger_cfg: Mapping[str, Any],
        folder: Path,
        config: Mapping[str, Any],
        start_epoch: int = 0,
        run_name: str = "",
    ) -> None:
        super().__init__(logger_cfg, folder, config, start_epoch, run_name)
        import wandb

        options = self.options
        mode = str(options.get("mode") or "offline")
        self.folder.mkdir(parents=True, exist_ok=True)
        run_id = read_run_id(self.folder)
        if run_id is None:
            run_id = secrets.token_hex(6)  # 12 characters of [0-9a-f], valid as a W&B run id
            write_run_id(self.folder, run_id)
        if mode == "offline":
            # The run's mode alone does not reach W&B's process-wide telemetry, which would otherwise look up
            # and contact the W&B server when the process exits.
            wandb.setup(settings=wandb.Settings(mode="offline"))
        root = self.folder.parent if self.folder.name == "wandb" else self.folder
        self.run = wandb.init(
            project=options.get("project") or "mixbench",
            entity=options.get("entity"),
            group=options.get("group"),
            tags=list(options.get("tags") or []),
            name=run_name or None,
            config=self.config,
            dir=str(root),
            mode=mode,
            id=run_id,
            resume="allow",
        )
        # Online, a resumed W&B run starts past the steps it already holds; offline this is 0.
        self.first_step = int(getattr(self.run, "starting_step", 0) or 0)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        if self.run is None or epoch < self.first_step:
            return
        self.run.log(epoch_scalars(record), step=epoch, commit=True)

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        if self.run is None:
            return
        self.run.summary.update({**summary_scalars(summary), "status": status})
        self.run.finish(exit_code=0 if status == "complete" else 1)
        self.run = None
