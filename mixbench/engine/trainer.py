"""The generic trainer: any method × any model × any dataset × any schedule.

It knows nothing about particular methods: each step it asks the method for a loss
(``method.training_step(model, x, y)``), steps the optimizer, and calls ``method.after_step``; each epoch
it evaluates every network the method names (``method.eval_models``: the online one, and the EMA one of
learned methods) and writes the run directory (:mod:`mixbench.engine.rundir`).  With ``ema=<schedule>`` at
the config's root, any method gets an EMA copy of the model, updated after each step, evaluated as ``ema`` and
saved with the method's state (:mod:`mixbench.engine.model_ema`, attached by the builder).

Reproducibility and resumption: at the start of epoch ``e`` every generator (torch's global one, the
method's, the loader's) is reseeded from ``(seed, e)``.  The checkpoint written atomically after each
epoch therefore only needs weights, optimizer state and the per-epoch history: a run killed at any moment
and started again with the same command continues from the last completed epoch and ends with the same
numbers as an uninterrupted one (on the CPU; GPU kernels are not all bitwise deterministic).

Several processes (``torchrun --nproc_per_node=N tools/train.py ...``): one run, DDP over the model and the
method together, ``schedule.batch_size`` the global batch, disjoint shards, rank 0 alone writing the run
directory; :mod:`mixbench.engine.distributed` says what is shared and why.  One process never starts a
process group and keeps its seeds and numbers.
"""

from __future__ import annotations

import math
import resource
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm

from mixbench.config import ConfigError, check_writable_folder, to_plain, validate
from mixbench.data import DataBundle, build_loaders, check_dataset
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.distributed import (
    Launch,
    all_reduce_sum,
    broadcast_from_main,
    check_launch,
    gather_objects,
    launch_from_environment,
    on_every_rank,
    on_main,
    process_group,
    sync_buffers,
)
from mixbench.engine.evaluate import evaluate
from mixbench.engine.runtime import Runtime, resolve_runtime
from mixbench.engine.step import build_training_step
from mixbench.methods import MixMethod
from mixbench.provenance import file_sha256, provenance
from mixbench.rng import MixRandom, derive_seed
from mixbench.rundir import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    RUNNING,
    RunDirectory,
    RunDirectoryError,
    first_line,
    headline_key,
    identity_mismatch,
    run_identity,
    skipped_line,
    summary_scores,
)
from mixbench.trackers import Tracker, check_tracker_available, open_tracker

INIT_STREAM = 2**31 - 1  # seed stream of the initial weights, apart from the per-epoch streams
FINITE_CHECK_EVERY = 50  # steps between checks of the loss (each check is one device sync)


class RunFailed(RuntimeError):
    """Training stopped (a non-finite loss, or any error); the message is one line saying why and what was
    kept."""


class RunInterrupted(BaseException):
    """A signal asked the run to stop (SIGTERM from Slurm, ``timeout`` or ``kill``; SIGHUP); the message names
    it.  Like ``KeyboardInterrupt`` it is not an ``Exception``, so nothing on the way swallows it."""


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip) the configuration ``cfg``; returns its summary.

    Under torchrun every process calls this; they share one run (see :mod:`mixbench.engine.distributed`).
    """
    validate(cfg)
    check_writable_folder(cfg.runs_root, "runs_root")
    check_tracker_available(logger_config(cfg))
    runtime = resolve_runtime(cfg)
    launch = launch_from_environment()
    check_launch(cfg, launch, runtime.device)
    with process_group(launch, runtime.device):
        return _train(cfg, runtime, launch)


def _train(cfg: DictConfig, runtime: Runtime, launch: Launch) -> dict[str, Any]:
    run_dir = RunDirectory.of(cfg)
    existing = on_main(lambda: _existing_summary(run_dir, cfg, force=bool(cfg.force)))
    if existing is not None:
        return existing
    if launch.is_main:
        _warn_if_other_recipe(cfg)
    on_every_rank(lambda: check_dataset(cfg.data))
    pretrained_sha256 = on_main(lambda: _pretrained_sha256(cfg))
    torch.manual_seed(derive_seed(int(cfg.seed), INIT_STREAM))  # the same seed gives the same initial weights
    model, method = on_every_rank(lambda: build_model_and_method(cfg, runtime))
    data = on_every_rank(
        lambda: build_loaders(
            cfg.data,
            augment=cfg.schedule.augment,
            batch_size=int(cfg.schedule.batch_size) // launch.world_size,  # the global batch, split evenly
            eval_batch_size=int(cfg.eval_batch_size),
            input_size=input_size(cfg),
            device=runtime.device,
            channels_last=runtime.channels_last,
            num_workers=int(cfg.num_workers),
            rank=launch.rank,
            world_size=launch.world_size,
        )
    )
    if len(data.train) == 0:
        raise ConfigError(
            f"schedule.batch_size={cfg.schedule.batch_size} exceeds the {data.num_train} training images; "
            "lower it"
        )
    lock = run_dir.lock()
    created = not run_dir.path.exists()
    try:
        on_main(lock.acquire)  # one writer per run directory (rank 0 holds it for all the processes)
        existing = on_main(lambda: _existing_summary(run_dir, cfg, force=bool(cfg.force)))
        if existing is not None:  # another process completed it while this one was building
            return existing
        on_main(run_dir.clear if cfg.force else run_dir.remove_temporary_files)
        trainer = Trainer(cfg, runtime, run_dir, model, method, data, launch)
        trainer.pretrained_sha256 = pretrained_sha256
        return trainer.fit()
    finally:
        if launch.is_main and created and lock.held and not run_dir.has_config():
            shutil.rmtree(run_dir.path, ignore_errors=True)  # nothing of the run was written: leave no folder
        lock.release()


def _existing_summary(run_dir: RunDirectory, cfg: DictConfig, force: bool) -> dict[str, Any] | None:
    """The summary of a complete run to skip; refuses a directory made by a different configuration."""
    if not run_dir.has_config() or force:
        return None
    try:
        differing = identity_mismatch(run_dir.read_config(), cfg)
        how = f"differs in {', '.join(differing[:5])}"
    except RunDirectoryError as error:  # a config.yaml that is not a run configuration at all
        differing, how = [str(error)], f"its config.yaml: {error}"
    if differing:
        raise ConfigError(
            f"{run_dir.path} holds a run of a different configuration ({how}); pass force=true to replace it "
            "or set runs_root=<another folder>"
        )
    try:
        summary = run_dir.read_summary()
    except RunDirectoryError:  # damaged: the checkpoint is the truth, and resuming rewrites the summary
        summary = None
    if summary is not None and summary["status"] == COMPLETE:
        print(skipped_line(run_dir.path, summary), flush=True)
        return summary
    return None


def _pretrained_sha256(cfg: DictConfig) -> str | None:
    """The SHA-256 of the local weights file the model starts from, if any (what the file holds is part of
    what a run computes; its path is not: see :mod:`mixbench.rundir`)."""
    path = cfg.model.get("pretrained_path")
    if not path:
        return None
    try:
        return file_sha256(path)
    except OSError as error:
        raise ConfigError(
            f"model.pretrained_path={path} cannot be read ({error.strerror}); give a local file"
        ) from error


def _warn_if_other_recipe(cfg: DictConfig) -> None:
    recipe_for = list(cfg.schedule.get("recipe_for") or [])
    if recipe_for and cfg.data.name not in recipe_for:
        print(
            f"note: schedule {cfg.schedule.name} is the recipe for {', '.join(recipe_for)}, "
            f"not {cfg.data.name}; choose another with schedule=<name> if that was not intended",
            file=sys.stderr,
        )


def logger_config(cfg: DictConfig) -> dict[str, Any]:
    """The ``logger`` group as a dict (TensorBoard for configs composed without the group)."""
    return to_plain(cfg.logger) if cfg.get("logger") is not None else {"name": "tensorboard"}


class Trainer:
    """One run: owns the objects, the loop, and what it writes through its :class:`RunDirectory`."""

    def __init__(
        self,
        cfg: DictConfig,
        runtime: Runtime,
        run_dir: RunDirectory | Path,
        model: nn.Module,
        method: MixMethod,
        data: DataBundle,
        launch: Launch | None = None,
    ) -> None:
        self.cfg, self.runtime = cfg, runtime
        self.run_dir = run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
        self.model, self.method, self.data = model, method, data
        self.launch = launch or Launch()
        self.schedule = cfg.schedule
        self.window = int(cfg.schedule.metric_window)
        self.rng = MixRandom(int(cfg.seed), runtime.device)
        self.step = build_training_step(cfg, runtime, model, method, len(data.train), self.rng)
        self.optimizer = self.step.optimizer
        self.history: list[dict[str, Any]] = []
        # Epochs the checkpoint marks done: the summary speaks for these only (an epoch appended to the
        # history but interrupted before its checkpoint is redone on resume, so it is not reported as done).
        self.epochs_saved = 0
        self.wall_time = 0.0
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.pretrained_sha256: str | None = None
        self.numerics_changes: list[dict[str, Any]] = []
        self.tracker: Tracker | None = None
        self._provenance = None

    # -- the run -------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        main = self.launch.is_main
        start_epoch = self._resume()
        if main:
            self.run_dir.make()
            self.run_dir.write_config(self.cfg)
        summary = self._write_summary(RUNNING)
        epochs = int(self.schedule.epochs)
        where = f"resuming at epoch {start_epoch + 1}" if start_epoch else "starting"
        processes = f" × {self.launch.world_size} processes" if self.launch.distributed else ""
        self._print(f"{where}: {self.run_dir.path} ({epochs} epochs on {self.runtime.device}{processes})")
        status = FAILED
        try:
            if main:
                self.tracker = self._open_tracker(start_epoch)
            for epoch in range(start_epoch, epochs):
                record = self._run_epoch(epoch)
                self.history.append(record)
                self._log(record)  # before the checkpoint: a kill in between re-logs the epoch on resume
                self._save_if_best(record)  # before the checkpoint too: a kill in between redoes the epoch
                self._save(epoch + 1)
        except RunFailed as failure:
            summary = self._write_summary(FAILED, message=str(failure))
            raise
        except (KeyboardInterrupt, RunInterrupted) as interruption:
            cause = str(interruption) or "Ctrl-C"
            done = self.epochs_saved
            summary = self._write_summary(
                INTERRUPTED,
                message=f"interrupted by {cause} after {done} epoch(s); the same command resumes it",
            )
            raise
        except Exception as error:  # anything else ends the run as failed, with its cause in one line
            line = first_line(error)  # a DataLoader worker's error already starts with its type's name
            named = type(error).__name__ in line.split(":", 1)[0]
            message = line if named else f"{type(error).__name__}: {line}"
            try:  # a full disk may refuse these files too: the one line still reaches the terminal
                if main:
                    message += f" (the traceback is in {self._write_error_log(error)})"
                summary = self._write_summary(FAILED, message=message)
            except OSError as unwritable:
                message += f"; the run directory could not record it ({first_line(unwritable)})"
            raise RunFailed(message) from error
        else:
            summary = self._write_summary(COMPLETE)
            status = COMPLETE
        finally:
            if self.tracker is not None:
                self.tracker.finish(summary, status)
        return summary

    def _write_error_log(self, error: BaseException) -> Path:
        """The traceback of the exception that ended the run, appended to ``<run>/error.log``."""
        path = self.run_dir.error_log
        text = "".join(traceback.format_exception(error))
        with path.open("a") as handle:
            handle.write(
                f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} after {self.epochs_saved} epoch(s)\n{text}"
            )
        return path

    def _open_tracker(self, start_epoch: int) -> Tracker:
        """The experiment tracker of ``logger=`` on the run's tracker folder, resumed at ``start_epoch``;
        the tracker's run is named by the run directory under the runs root (``digits/r18/.../seed0``)."""
        logger = logger_config(self.cfg)
        folder = self.run_dir.tracker_dir(str(logger["name"]))
        run_name = str(run_identity(self.cfg).relative_path())
        return open_tracker(logger, folder, to_plain(self.cfg), start_epoch, run_name)

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        self._reseed(epoch)
        started = time.perf_counter()
        train_stats = self._train_one_epoch(epoch)
        train_seconds = time.perf_counter() - started
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": train_stats.pop("lr")}
        record.update(train_stats)
        sync_buffers(
            self.step.step_module
        )  # every process evaluates (and rank 0 saves) rank 0's BN statistics
        for label, network in self.method.eval_models(self.model).items():
            prefix = f"{label}_" if label else ""
            scores = evaluate(network, self.data.test, self.runtime, self.launch.distributed)
            record.update({f"{prefix}top1": scores["top1"], f"{prefix}top5": scores["top5"]})
            record[f"{prefix}test_loss"] = scores["loss"]
            record["test_images"] = scores["images"]  # the whole test split, counted over the processes
        seconds = time.perf_counter() - started
        self.wall_time += seconds
        record["train_seconds"] = round(train_seconds, 3)
        record["seconds"] = round(seconds, 3)
        record["images_per_s"] = round(train_stats["train_images"] / train_seconds, 1)
        return record

    def _reseed(self, epoch: int) -> None:
        """Streams of epoch ``epoch``: 0 torch's global generator (per process), 1 the method's draws (shared
        by the processes: one draw per global step), 2 the loader (shared order, per-process augmentation)."""
        seed = int(self.cfg.seed)
        per_process = (self.launch.rank,) if self.launch.distributed else ()
        torch.manual_seed(derive_seed(seed, epoch, 0, *per_process))
        self.rng.reseed(derive_seed(seed, epoch, 1))
        self.data.train.set_epoch(derive_seed(seed, epoch, 2))

    def _train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's steps; the only reads of device values are the finite checks (every
        ``FINITE_CHECK_EVERY`` steps and at the end) and the epoch's sums."""
        step = self.step
        self.model.train()
        self.method.train()
        steps = len(self.data.train)
        step.sums.reset()
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{self.schedule.epochs}",
            leave=False,
            disable=not self._show_progress(),
        )
        for index, (x, y) in enumerate(self.data.train):
            step(x, y, update=epoch * steps + index)
            if (index + 1) % FINITE_CHECK_EVERY == 0 or index + 1 == steps:
                mean_loss = self._checked_loss(epoch, index)
                bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{step.lr:.3g}")
            bar.update(1)
        bar.close()
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(self.runtime.device)
        return {"lr": step.lr, **self._epoch_means(steps)}

    def _epoch_means(self, steps: int) -> dict[str, Any]:
        """Mean loss and logs per step over the processes, and the number of images they trained on.

        A log key that some process never produced this epoch (a branch it did not draw) counts as 0 there.
        """
        sums = self.step.sums
        logs = sums.logs_on_device()
        keys = list(dict.fromkeys(key for keys in gather_objects(list(logs)) for key in keys))
        zero = torch.zeros((), device=sums.loss.device)
        values = [sums.loss, *(logs.get(key, zero) for key in keys), torch.tensor(float(sums.images))]
        totals = all_reduce_sum(
            torch.stack([value.double().to(sums.loss.device) for value in values])
        ).tolist()
        per_step = steps * self.launch.world_size
        stats: dict[str, Any] = {"train_loss": totals[0] / per_step, "train_images": int(totals[-1])}
        stats.update(
            {f"train_{key}": total / per_step for key, total in zip(keys, totals[1:-1], strict=True)}
        )
        return stats

    def _checked_loss(self, epoch: int, index: int) -> float:
        """The mean loss so far (one read of the device); stops the run when it is not finite.  With several
        processes the sum over them decides, the same everywhere."""
        loss_sum = self.step.sums.loss
        if self.launch.distributed:
            loss_sum = all_reduce_sum(loss_sum.detach().clone())
        total = float(loss_sum)
        if not math.isfinite(total):
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch had completed"
            raise RunFailed(
                f"the training loss became non-finite ({total}) by step {index + 1} of epoch {epoch + 1}; "
                f"{kept} in {self.run_dir.path}; lower schedule.optimizer.lr or check the data"
            )
        return total / ((index + 1) * self.launch.world_size)

    def _show_progress(self) -> bool:
        if not self.launch.is_main:
            return False
        if self.cfg.progress == "auto":
            return sys.stderr.isatty()
        return bool(self.cfg.progress)

    def _print(self, line: str) -> None:
        if self.launch.is_main:
            print(line, flush=True)

    # -- the run directory ---------------------------------------------------------------------------
    def _resume(self) -> int:
        """Load the checkpoint, if any: rank 0 reads the file and sends its bytes to the other processes."""
        path = self.run_dir.checkpoint_file
        payload = broadcast_from_main(path.read_bytes() if self.launch.is_main and path.exists() else None)
        if payload is None:
            return 0
        state = self.run_dir.load_checkpoint(self.runtime.device, payload=payload)  # weights_only=True
        trained_from = state.get("pretrained_sha256")
        if trained_from != self.pretrained_sha256:  # the same on every process (both were broadcast)
            raise ConfigError(
                f"{self.run_dir.path} was trained from weights with SHA-256 {str(trained_from)[:12]}, but "
                f"model.pretrained_path holds {str(self.pretrained_sha256)[:12]}; give the same weights "
                "file, or force=true to start again"
            )
        self.numerics_changes = list(state.get("numerics_changes") or [])
        self._note_runtime_changes(state.get("numerics"), int(state["epoch"]))
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.epochs_saved = int(state["epoch"])
        self.wall_time = float(state["wall_time"])
        self.started_at = state.get("started_at", self.started_at)
        if self.launch.is_main:
            self.run_dir.write_metrics(self.history)  # the checkpoint is the truth: drop unfinished epochs
        return int(state["epoch"])

    @property
    def numerics(self) -> dict[str, Any]:
        """The runtime settings that change a run's numbers: the same seed and config give other numbers
        with another thread count (CPU kernels split sums by thread), precision, memory format or device."""
        return {
            "device": self.runtime.device.type,
            "torch_threads": torch.get_num_threads() if self.runtime.device.type == "cpu" else None,
            "precision": self.runtime.precision,
            "channels_last": self.runtime.channels_last,
            "compile": self.runtime.compile,
            # absent from runs made before the key existed: None there and whenever compile is off
            "compile_mode": self.runtime.compile_mode if self.runtime.compile else None,
            "world_size": self.launch.world_size,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        }

    def _note_runtime_changes(self, before: dict[str, Any] | None, epoch: int) -> None:
        """Resuming with settings that change the numbers is allowed (a pre-empted job may come back on
        another machine) but said in one line and recorded in the summary (``numerics_changes``)."""
        if not before:
            return
        now = self.numerics
        changed = {key: (before.get(key), now[key]) for key in now if before.get(key) != now[key]}
        if not changed:
            return
        text = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changed.items())
        self.numerics_changes.append({"from_epoch": epoch + 1, "changes": text})
        if self.launch.is_main:
            print(
                f"note: resuming {self.run_dir.path} with other settings than its first epochs ({text}); "
                f"its numbers from epoch {epoch + 1} on differ from an uninterrupted run's, and summary.json "
                "records it (numerics_changes)",
                file=sys.stderr,
                flush=True,
            )

    def _save_if_best(self, record: dict[str, Any]) -> None:
        """Keep ``best.pt`` when this epoch's online top-1 beats every earlier epoch's (ties keep the earlier
        epoch, as the summary's ``best_epoch``): the weights AlignMixup reports its best epoch of.  An EMA
        network's own best epoch is not kept apart; ``best.pt`` holds the method's state of the same epoch."""
        if not self.launch.is_main:
            return
        earlier = [float(r["top1"]) for r in self.history if r is not record and "top1" in r]
        if earlier and float(record["top1"]) <= max(earlier):
            return
        self.run_dir.save_best(
            {
                "epoch": record["epoch"],
                "top1": record["top1"],
                "model": self.model.state_dict(),
                "method": self.method.state_dict(),
            }
        )

    def _save(self, epochs_done: int) -> None:
        if not self.launch.is_main:
            return
        state = {
            "format": 1,
            "epoch": epochs_done,
            "model": self.model.state_dict(),
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "wall_time": self.wall_time,
            "started_at": self.started_at,
            "pretrained_sha256": self.pretrained_sha256,
            "numerics": self.numerics,
            "numerics_changes": self.numerics_changes,
        }
        self.run_dir.save_checkpoint(state)
        self.epochs_saved = epochs_done
        self.run_dir.write_metrics(self.history)
        self._write_summary(RUNNING)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.launch.is_main:
            return
        epoch = record["epoch"]
        extra = "".join(
            f"  {key[:-5]} top-1 {value:.2f}"
            for key, value in record.items()
            if key.endswith("_top1") and key != "top1"
        )
        self._print(
            f"epoch {epoch}/{self.schedule.epochs}  loss {record['train_loss']:.4f}  top-1 "
            f"{record['top1']:.2f}  "
            f"top-5 {record['top5']:.2f}{extra}  lr {record['lr']:.4g}  {record['seconds']:.1f} s  "
            f"{record['images_per_s']:.0f} img/s"
        )
        if self.tracker is not None:
            self.tracker.log_epoch(record)

    def _write_summary(self, status: str, message: str | None = None) -> dict[str, Any]:
        labels = [label or "online" for label in self.method.eval_models(self.model)]
        summary: dict[str, Any] = {
            "status": status,
            "data": self.cfg.data.name,
            "model": self.cfg.model.name,
            "method": self.cfg.method.name,
            "schedule": self.cfg.schedule.name,
            "seed": int(self.cfg.seed),
            "run_dir": str(self.run_dir.path),
            "epochs": int(self.schedule.epochs),
            "epochs_done": self.epochs_saved,
            "metric_window": self.window,
            "evaluated": labels,
        }
        summary.update(summary_scores(self.history[: self.epochs_saved], self.window, labels))
        if not self.launch.is_main:
            return summary
        if self._provenance is None:
            self._provenance = provenance(self.runtime.device)  # once per run: the git call included
        facts = self._provenance
        train_rates = [record["images_per_s"] for record in self.history[: self.epochs_saved]]
        summary.update(
            {
                "wall_time_s": round(self.wall_time, 1),
                "train_images_per_s": round(sum(train_rates) / len(train_rates), 1) if train_rates else None,
                "params": sum(p.numel() for p in self.model.parameters()),
                "method_params": sum(p.numel() for p in self.method.parameters() if p.requires_grad),
                "peak_memory_mb": _peak_memory_mb(self.runtime.device),
                "peak_memory_of": ("cuda allocated" if self.runtime.device.type == "cuda" else "process RSS")
                + (" (rank 0)" if self.launch.distributed else ""),
                "device": facts.device,
                "world_size": self.launch.world_size,
                "sync_bn": bool(self.cfg.get("sync_bn", False)) and self.launch.distributed,
                "precision": self.runtime.precision,
                "channels_last": self.runtime.channels_last,
                "versions": facts.versions,
                "git_commit": facts.git_commit,
                "git_dirty": facts.git_dirty,
                "pretrained_sha256": self.pretrained_sha256,
                "numerics": self.numerics,
                "numerics_changes": self.numerics_changes,
                "started_at": self.started_at,
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "message": message,
            }
        )
        self.run_dir.write_summary(summary)
        if status == COMPLETE:
            value = summary[headline_key(self.window)]
            self._print(
                f"complete: {self.run_dir.path}  median top-1 of the last {self.window} epochs {value:.2f}"
            )
        return summary


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # host RSS (Linux: KiB)
