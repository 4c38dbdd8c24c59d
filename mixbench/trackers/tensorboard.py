"""TensorBoard: event files in the run's ``tb/`` folder (``tensorboard --logdir runs``).

What it writes, with ``torch.utils.tensorboard.SummaryWriter`` in the folder it is given (``<run>/tb``):

* each epoch's numbers (``top1``, ``top5``, ``train_loss``, ``lr``, ``ema_top1``, ...) as scalars at
  step = epoch (1-based), flushed after every epoch so a killed run keeps them;
* the resolved config once, as text (tag ``config``, step 0), when the run starts fresh;
* at the end the summary's numbers as scalars ``summary/<key>`` and the status as text (tag ``status``), both
  at the last epoch's step.

**Resumption.**  A run resumed from a checkpoint of ``start_epoch`` epochs opens its writer with
``purge_step = start_epoch + 1``: TensorBoard then drops every earlier event at a step past the checkpoint,
the epochs that a killed session logged but did not checkpoint, so each epoch shows once, with the values of
the session that checkpointed it.  (The checkpoint's own epoch, step ``start_epoch``, stays.)  TensorBoard
reads a folder's event files in name order, and the names start with the second they were opened at; a writer
opened within the same second as an earlier file of the folder waits for the next second, so the purge is
always read after the events it drops.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from mixbench.trackers.base import Tracker, epoch_scalars, summary_scalars

_EVENT_FILE = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def _event_file_seconds(folder: Path) -> list[int]:
    """The opening second of each event file already in ``folder``."""
    if not folder.is_dir():
        return []
    return [int(match.group(1)) for path in folder.iterdir() if (match := _EVENT_FILE.match(path.name))]


def _wait_past(second: int, limit: float = 2.0) -> None:
    """Sleep until the clock is past ``second``, ``limit`` seconds at most (a future file is clock skew)."""
    delay = second + 1 - time.time()
    if delay > 0:
        time.sleep(min(delay, limit))


def config_markdown(config: Mapping[str, Any]) -> str:
    """The config as a Markdown code block (TensorBoard renders text summaries as Markdown)."""
    text = yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)
    return "\n".join("    " + line for line in text.splitlines())


class TensorBoardTracker(Tracker):
    """Scalars per epoch, the config as text, the summary at the end; see the module docstring."""

    name = "tensorboard"

    def __init__(
        self,
        logger_cfg: Mapping[str, Any],
        folder: Path,
        config: Mapping[str, Any],
        start_epoch: int = 0,
        run_name: str = "",
    ) -> None:
        super().__init__(logger_cfg, folder, config, start_epoch, run_name)
        from torch.utils.tensorboard import SummaryWriter

        earlier = _event_file_seconds(self.folder)
        if earlier:
            _wait_past(max(earlier))
        # Also purge when a fresh start finds events: a session killed before its first checkpoint left them.
        purge_step = self.start_epoch + 1 if (self.start_epoch > 0 or earlier) else None
        self.writer = SummaryWriter(log_dir=str(self.folder), purge_step=purge_step)
        self.last_epoch = self.start_epoch
        if not earlier:
            self.writer.add_text("config", config_markdown(self.config), global_step=0)
            self.writer.flush()

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        epoch = int(record["epoch"])
        for key, value in epoch_scalars(record).items():
            self.writer.add_scalar(key, value, global_step=epoch)
        self.writer.flush()
        self.last_epoch = max(self.last_epoch, epoch)

    def finish(self, summary: Mapping[str, Any], status: str) -> None:
        if self.writer is None:
            return
        for key, value in summary_scalars(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, global_step=self.last_epoch)
        self.writer.add_text("status", status, global_step=self.last_epoch)
        self.writer.close()
        self.writer = None
