"""The generic trainer: any method × any model × any dataset × any schedule.

It knows nothing about particular methods: each step it asks the method for a loss
(``method.training_step(model, x, y)``), steps the optimizer, and calls ``method.after_step``; each epoch
it evaluates every network the method names (``method.eval_models``: the online one, and the EMA one of
learned methods) and writes the run directory (:mod:`mixbench.engine.rundir`).

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

import io
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from mixbench.config import ConfigError, to_plain, validate
from mixbench.data import DataBundle, build_loaders, check_dataset
from mixbench.engine.checkpoint import atomic_save, atomic_write_json, atomic_write_text, load_checkpoint
from mixbench.engine.distributed import (
    Launch,
    all_reduce_sum,
    broadcast_from_main,
    check_launch,
    convert_sync_batchnorm,
    data_parallel_step,
    gather_objects,
    launch_from_environment,
    on_every_rank,
    on_main,
    process_group,
    sync_buffers,
)
from mixbench.engine.evaluate import evaluate
from mixbench.engine.optim import build_lr_schedule, build_optimizer, parameter_groups
from mixbench.engine.rundir import identity_mismatch, run_directory
from mixbench.methods import MixMethod, build_method
from mixbench.metrics import summarize_history
from mixbench.models import StageUnavailableError, build_model
from mixbench.rng import MixRandom, derive_seed

CHECKPOINT, SUMMARY, METRICS, CONFIG = "checkpoint.pt", "summary.json", "metrics.jsonl", "config.yaml"
INIT_STREAM = 2**31 - 1  # seed stream of the initial weights, apart from the per-epoch streams
FINITE_CHECK_EVERY = 50  # steps between checks of the loss (each check is one device sync)


class RunFailed(RuntimeError):
    """Training stopped (non-finite loss); the message says where and what was kept."""


@dataclass
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool
    compile: bool


def resolve_runtime(cfg: DictConfig) -> Runtime:
    """Device, precision and memory format from the config's ``auto`` defaults.

    Under torchrun with several processes each process takes the GPU ``cuda:LOCAL_RANK``.
    """
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                "device=cuda was asked for but no CUDA GPU is visible; use device=cpu or device=auto"
            )
    launch = launch_from_environment()
    if launch.distributed and device.type == "cuda":
        if device.index is not None:
            raise ConfigError(
                f"device={cfg.device}: under torchrun each process uses cuda:LOCAL_RANK; "
                "use device=cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
            )
        if launch.local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"torchrun started local rank {launch.local_rank} but only {torch.cuda.device_count()} GPU(s) are "
                "visible; lower --nproc_per_node"
            )
        device = torch.device("cuda", launch.local_rank)
    on_cuda = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if on_cuda else "fp32")
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"unknown precision '{cfg.precision}'; valid: auto, bf16, fp32")
    channels_last = on_cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
    return Runtime(device, torch.bfloat16 if precision == "bf16" else None, channels_last, bool(cfg.compile))


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume, or skip) the configuration ``cfg``; returns its summary.

    Under torchrun every process calls this; they share one run (see :mod:`mixbench.engine.distributed`).
    """
    validate(cfg)
    runtime = resolve_runtime(cfg)
    launch = launch_from_environment()
    check_launch(cfg, launch, runtime.device)
    with process_group(launch, runtime.device):
        return _train(cfg, runtime, launch)


def _train(cfg: DictConfig, runtime: Runtime, launch: Launch) -> dict[str, Any]:
    run_dir = run_directory(cfg)
    existing = on_main(lambda: _existing_summary(run_dir, to_plain(cfg), force=bool(cfg.force)))
    if existing is not None:
        return existing
    if launch.is_main:
        _warn_if_other_recipe(cfg)
    on_every_rank(lambda: check_dataset(cfg.data))
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
            f"schedule.batch_size={cfg.schedule.batch_size} exceeds the {data.num_train} training images; lower it"
        )
    if cfg.force:
        on_main(lambda: shutil.rmtree(run_dir) if run_dir.exists() else None)
    return Trainer(cfg, runtime, run_dir, model, method, data, launch).fit()


def input_size(cfg: DictConfig) -> int:
    return int(cfg.schedule.train_size or cfg.data.image_size)


def _existing_summary(run_dir: Path, plain_cfg: dict, force: bool) -> dict[str, Any] | None:
    """The summary of a complete run to skip; refuses a directory made by a different configuration."""
    config_path = run_dir / CONFIG
    if not config_path.exists() or force:
        return None
    saved = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    differing = identity_mismatch(saved, plain_cfg)
    if differing:
        raise ConfigError(
            f"{run_dir} holds a run of a different configuration (differs in {', '.join(differing[:5])}); "
            "pass force=true to replace it or set runs_root=<another folder>"
        )
    summary_path = run_dir / SUMMARY
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        if summary.get("status") == "complete":
            window = summary["metric_window"]
            print(
                f"complete, skipped: {run_dir} (median top-1 of the last {window} epochs "
                f"{summary[f'median_last{window}_top1']:.2f}); force=true to redo it",
                flush=True,
            )
            return summary
    return None


def _warn_if_other_recipe(cfg: DictConfig) -> None:
    recipe_for = list(cfg.schedule.get("recipe_for") or [])
    if recipe_for and cfg.data.name not in recipe_for:
        print(
            f"note: schedule {cfg.schedule.name} is the recipe for {', '.join(recipe_for)}, "
            f"not {cfg.data.name}; choose another with schedule=<name> if that was not intended",
            file=sys.stderr,
        )


def build_model_and_method(cfg: DictConfig, runtime: Runtime) -> tuple[nn.Module, MixMethod]:
    model_options = {k: v for k, v in to_plain(cfg.model).items() if k not in ("name", "width")}
    try:
        model = build_model(
            cfg.model.name,
            num_classes=int(cfg.data.num_classes),
            image_size=input_size(cfg),
            width=cfg.model.width,
            **model_options,
        )
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"model {cfg.model.name}: {error}") from error
    method_options = {k: v for k, v in to_plain(cfg.method).items() if k != "name"}
    try:
        method = build_method(cfg.method.name, **method_options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"method {cfg.method.name}: {error}") from error
    try:
        method.check_model(model)
    except StageUnavailableError as error:
        raise ConfigError(
            f"method {cfg.method.name} cannot run on model {cfg.model.name}: {error}; "
            "pick an input-space method (mixup, cutmix) or a CNN backbone"
        ) from error
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    model = model.to(runtime.device, memory_format=memory_format)
    if bool(cfg.get("sync_bn", False)) and launch_from_environment().distributed:
        model = convert_sync_batchnorm(
            model
        )  # before setup, so that EMA copies and hooks see the final layers
    method.setup(model, int(cfg.data.num_classes))
    method = method.to(runtime.device)
    return model, method


class Trainer:
    """One run: owns the objects, the loop, the checkpoint and the run directory's files."""

    def __init__(
        self,
        cfg: DictConfig,
        runtime: Runtime,
        run_dir: Path,
        model: nn.Module,
        method: MixMethod,
        data: DataBundle,
        launch: Launch | None = None,
    ) -> None:
        self.cfg, self.runtime, self.run_dir = cfg, runtime, run_dir
        self.model, self.method, self.data = model, method, data
        self.launch = launch or Launch()
        self.schedule = cfg.schedule
        self.window = int(cfg.schedule.metric_window)
        self.rng = MixRandom(int(cfg.seed), runtime.device)
        total_steps = int(cfg.schedule.epochs) * len(data.train)
        method.bind(self.rng, label_smoothing=float(cfg.schedule.label_smoothing), total_steps=total_steps)
        groups = parameter_groups(model, cfg.schedule.optimizer) + method.param_groups(
            float(cfg.schedule.optimizer.lr), float(cfg.schedule.optimizer.weight_decay)
        )
        self.optimizer = build_optimizer(groups, cfg.schedule.optimizer)
        self.lr_schedule = build_lr_schedule(self.optimizer, cfg.schedule, len(data.train))
        self.step_model = torch.compile(model) if runtime.compile else model
        # method.training_step(step_model, x, y) as one module; inside DDP when there are several processes
        self.step = data_parallel_step(self.step_model, method, runtime.device)
        self.history: list[dict[str, Any]] = []
        self.wall_time = 0.0
        self.started_at = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.writer = None

    # -- the run -------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        main = self.launch.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(OmegaConf.to_yaml(self.cfg, resolve=True), self.run_dir / CONFIG)
        start_epoch = self._resume()
        if main:
            self.writer = _tensorboard_writer(self.run_dir / "tb", purge_step=start_epoch)
        epochs = int(self.schedule.epochs)
        where = f"resuming at epoch {start_epoch + 1}" if start_epoch else "starting"
        processes = f" × {self.launch.world_size} processes" if self.launch.distributed else ""
        self._print(f"{where}: {self.run_dir} ({epochs} epochs on {self.runtime.device}{processes})")
        self._write_summary("running")
        try:
            for epoch in range(start_epoch, epochs):
                record = self._run_epoch(epoch)
                self.history.append(record)
                self._save(epoch + 1)
                self._log(record)
        except RunFailed as failure:
            self._write_summary("failed", message=str(failure))
            raise
        finally:
            if self.writer is not None:
                self.writer.close()
        return self._write_summary("complete")

    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        self._reseed(epoch)
        started = time.perf_counter()
        train_stats = self._train_one_epoch(epoch)
        train_seconds = time.perf_counter() - started
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": train_stats.pop("lr")}
        record.update(train_stats)
        sync_buffers(self.step)  # every process evaluates (and rank 0 saves) rank 0's BatchNorm statistics
        for label, network in self.method.eval_models(self.model).items():
            prefix = f"{label}_" if label else ""
            scores = evaluate(network, self.data.test, self.runtime.autocast_dtype, self.launch.distributed)
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
        step_module, method, optimizer = self.step, self.method, self.optimizer
        self.model.train()
        method.train()
        steps = len(self.data.train)
        device = self.runtime.device
        loss_sum = torch.zeros((), device=device)
        log_sums: dict[str, torch.Tensor] = {}
        images = 0
        clip = self.schedule.grad_clip
        params = [p for group in optimizer.param_groups for p in group["params"]]
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{self.schedule.epochs}",
            leave=False,
            disable=not self._show_progress(),
        )
        lr = optimizer.param_groups[0]["lr"]
        for step, (x, y) in enumerate(self.data.train):
            self.lr_schedule.step_update(epoch * steps + step)
            lr = optimizer.param_groups[0]["lr"]
            with torch.autocast(
                device.type,
                dtype=self.runtime.autocast_dtype or torch.float32,
                enabled=self.runtime.autocast_dtype is not None,
            ):
                loss, logs = step_module(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, float(clip))
            optimizer.step()
            method.after_step(self.model)
            loss_sum += loss.detach().float()
            for key, value in logs.items():
                log_sums[key] = log_sums.get(key, 0.0) + value.detach().float().to(device)
            images += y.shape[0]
            if (step + 1) % FINITE_CHECK_EVERY == 0 or step + 1 == steps:
                self._check_finite(loss_sum, epoch, step)
                bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.3f}", lr=f"{lr:.3g}")
            bar.update(1)
        bar.close()
        if self.runtime.device.type == "cuda":
            torch.cuda.synchronize(device)
        return {"lr": lr, **self._epoch_means(loss_sum, log_sums, images, steps)}

    def _epoch_means(
        self, loss_sum: torch.Tensor, log_sums: dict[str, torch.Tensor], images: int, steps: int
    ) -> dict[str, Any]:
        """Mean loss and logs per step over the processes, and the number of images they trained on.

        A log key that some process never produced this epoch (a branch it did not draw) counts as 0 there.
        """
        keys = list(dict.fromkeys(key for keys in gather_objects(list(log_sums)) for key in keys))
        zero = torch.zeros((), device=loss_sum.device)
        values = [loss_sum, *(log_sums.get(key, zero) for key in keys), torch.tensor(float(images))]
        totals = all_reduce_sum(
            torch.stack([value.double().to(loss_sum.device) for value in values])
        ).tolist()
        per_step = steps * self.launch.world_size
        stats: dict[str, Any] = {"train_loss": totals[0] / per_step, "train_images": int(totals[-1])}
        stats.update(
            {f"train_{key}": total / per_step for key, total in zip(keys, totals[1:-1], strict=True)}
        )
        return stats

    def _check_finite(self, loss_sum: torch.Tensor, epoch: int, step: int) -> None:
        """Stop on a non-finite loss; with several processes the sum over them decides, the same everywhere."""
        if self.launch.distributed:
            loss_sum = all_reduce_sum(loss_sum.detach().clone())
        if not torch.isfinite(loss_sum):
            kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch had completed"
            raise RunFailed(
                f"the training loss became non-finite ({loss_sum.item()}) by step {step + 1} of epoch {epoch + 1}; "
                f"{kept} in {self.run_dir}; lower schedule.optimizer.lr or check the data"
            )

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
        path = self.run_dir / CHECKPOINT
        payload = broadcast_from_main(path.read_bytes() if self.launch.is_main and path.exists() else None)
        if payload is None:
            return 0
        state = load_checkpoint(io.BytesIO(payload), map_location=self.runtime.device)  # weights_only=True
        self.model.load_state_dict(state["model"])
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.wall_time = float(state["wall_time"])
        self.started_at = state.get("started_at", self.started_at)
        if self.launch.is_main:
            self._write_metrics()  # the checkpoint is the truth: drop lines of an epoch that did not finish
        return int(state["epoch"])

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
        }
        atomic_save(state, self.run_dir / CHECKPOINT)
        self._write_metrics()
        self._write_summary("running")

    def _write_metrics(self) -> None:
        text = "".join(json.dumps(record) + "\n" for record in self.history)
        atomic_write_text(text, self.run_dir / METRICS)

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
            f"epoch {epoch}/{self.schedule.epochs}  loss {record['train_loss']:.4f}  top-1 {record['top1']:.2f}  "
            f"top-5 {record['top5']:.2f}{extra}  lr {record['lr']:.4g}  {record['seconds']:.1f} s  "
            f"{record['images_per_s']:.0f} img/s"
        )
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def _write_summary(self, status: str, message: str | None = None) -> dict[str, Any]:
        labels = list(self.method.eval_models(self.model))
        summary: dict[str, Any] = {
            "status": status,
            "data": self.cfg.data.name,
            "model": self.cfg.model.name,
            "method": self.cfg.method.name,
            "schedule": self.cfg.schedule.name,
            "seed": int(self.cfg.seed),
            "run_dir": str(self.run_dir),
            "epochs": int(self.schedule.epochs),
            "epochs_done": len(self.history),
            "metric_window": self.window,
            "evaluated": [label or "online" for label in labels],
        }
        summary.update(summarize_history(self.history, self.window, labels))
        train_rates = [record["images_per_s"] for record in self.history]
        summary.update(
            {
                "wall_time_s": round(self.wall_time, 1),
                "train_images_per_s": round(sum(train_rates) / len(train_rates), 1) if train_rates else None,
                "params": sum(p.numel() for p in self.model.parameters()),
                "method_params": sum(p.numel() for p in self.method.parameters() if p.requires_grad),
                "peak_memory_mb": _peak_memory_mb(self.runtime.device),
                "peak_memory_of": ("cuda allocated" if self.runtime.device.type == "cuda" else "process RSS")
                + (" (rank 0)" if self.launch.distributed else ""),
                "device": _device_name(self.runtime.device),
                "world_size": self.launch.world_size,
                "sync_bn": bool(self.cfg.get("sync_bn", False)) and self.launch.distributed,
                "precision": "bf16" if self.runtime.autocast_dtype else "fp32",
                "channels_last": self.runtime.channels_last,
                "versions": _versions(),
                "git_commit": _git_commit(),
                "started_at": self.started_at,
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "message": message,
            }
        )
        if not self.launch.is_main:
            return summary
        atomic_write_json(summary, self.run_dir / SUMMARY)
        if status == "complete":
            value = summary[f"median_last{self.window}_top1"]
            self._print(
                f"complete: {self.run_dir}  median top-1 of the last {self.window} epochs {value:.2f}"
            )
        return summary


def _tensorboard_writer(log_dir: Path, purge_step: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a declared dependency; tolerate its absence in slim installs
        return None
    # purge_step drops events of epochs after the checkpoint, written by a run that was then killed.
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step or None)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # host RSS (Linux: KiB)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _versions() -> dict[str, str]:
    import timm
    import torchvision

    import mixbench

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "mixbench": mixbench.__version__,
    }


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
