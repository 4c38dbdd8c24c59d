"""The trainer's loop against a bare loop: what the run's data path and step machinery cost on top of the
network's forward, backward and optimizer step.

Two loops of vanilla training on the same model, optimizer and batch size, timed in alternating windows:

* **bare**: a fixed, already normalised batch on the device; per step ``loss = CE(model(x), y)`` under the
  run's autocast, ``zero_grad(set_to_none=True)``, ``backward``, ``optimizer.step()`` -- the least a
  training step can be (the recipe's optimizer from :func:`mixbench.engine.optim.build_optimizer`, no lr
  schedule, no method, no sums);
* **trainer**: what ``tools/train.py`` runs per batch on a small dataset kept on the device
  (``data.resident``): the :class:`~mixbench.data.loaders.DeviceTensorLoader` over a synthetic CIFAR-shaped
  split (uint8, 50,000 images of 3 x 32 x 32 unless told otherwise; shuffled order, reflect-pad-4 random crop
  and flip, normalisation and channels_last per batch, all on the device) feeding
  :class:`~mixbench.engine.step.TrainingStep` with the lr schedule's update count, plus the trainer's
  finite check of the loss every ``FINITE_CHECK_EVERY`` steps (its one documented read inside an epoch).

Each window times ``window`` consecutive steps of one loop (``torch.cuda.synchronize`` at both ends on a
GPU) and the loops alternate window by window, so a drift of the device's speed hits both; a loop's step
time is the median over its windows of window time / ``window``, and the trainer's share of the bare loop's
speed is the median of the per-pair ratios bare / trainer with their interquartile range.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from mixbench.bench.results import LoopComparison
from mixbench.bench.timing import quartiles, synthetic_batch
from mixbench.data.base import ArraySplit
from mixbench.data.loaders import DeviceTensorLoader, Normalizer
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.optim import build_optimizer, parameter_groups
from mixbench.engine.runtime import Runtime
from mixbench.engine.step import build_training_step
from mixbench.engine.trainer import FINITE_CHECK_EVERY

CIFAR_TRAIN_IMAGES = 50_000


def synthetic_cifar_split(cfg: DictConfig, images: int, seed: int = 0) -> ArraySplit:
    """``images`` uniform uint8 images at the config's size with uniform labels over its classes (CPU)."""
    generator = torch.Generator().manual_seed(seed)
    size = input_size(cfg)
    pixels = torch.randint(0, 256, (images, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, int(cfg.data.num_classes), (images,), generator=generator)
    return ArraySplit(pixels, labels)


def bare_loop(cfg: DictConfig, runtime: Runtime) -> Callable[[], None]:
    """One call = one bare step of the vanilla model on a fixed batch (see the module docstring)."""
    model, _ = build_model_and_method(cfg, runtime)
    optimizer = build_optimizer(parameter_groups(model, cfg.schedule.optimizer), cfg.schedule.optimizer)
    x, y = synthetic_batch(cfg, runtime)
    model.train()

    def step() -> None:
        with runtime.autocast():
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def trainer_loop(cfg: DictConfig, runtime: Runtime, dataset_images: int) -> Callable[[], None]:
    """One call = one batch of the trainer's resident data path and its training step (module docstring)."""
    split = synthetic_cifar_split(cfg, dataset_images)
    normalizer = Normalizer(cfg.data.mean, cfg.data.std, runtime.device, runtime.channels_last)
    batch_size = int(cfg.schedule.batch_size)
    loader = DeviceTensorLoader(split, batch_size, normalizer, runtime.device, train=True)
    model, method = build_model_and_method(cfg, runtime)
    steps_per_epoch = len(loader)
    step = build_training_step(cfg, runtime, model, method, updates_per_epoch=steps_per_epoch)
    model.train()
    state = {"update": 0, "batches": _epochs(loader)}

    def one_batch() -> None:
        x, y = next(state["batches"])
        step(x, y, update=state["update"])
        state["update"] += 1
        index = state["update"] % steps_per_epoch
        if index % FINITE_CHECK_EVERY == 0:  # the trainer's finite check (and its end-of-epoch one)
            float(step.sums.loss)

    return one_batch


def _epochs(loader: DeviceTensorLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def compare_loops(
    cfg: DictConfig,
    runtime: Runtime,
    window: int,
    windows: int,
    warmup: int,
    dataset_images: int = CIFAR_TRAIN_IMAGES,
) -> LoopComparison:
    """Time ``windows`` windows of ``window`` steps of each loop, alternating, after ``warmup`` steps each."""
    loops = {"bare": bare_loop(cfg, runtime), "trainer": trainer_loop(cfg, runtime, dataset_images)}
    for run in loops.values():
        for _ in range(warmup):
            run()
    seconds: dict[str, list[float]] = {"bare": [], "trainer": []}
    for index in range(windows):
        order = ("bare", "trainer") if index % 2 == 0 else ("trainer", "bare")
        for name in order:
            seconds[name].append(_window_seconds(loops[name], window, runtime.device) / window)
    shares = [bare / trainer for bare, trainer in zip(seconds["bare"], seconds["trainer"], strict=True)]
    bare_q1, bare_q3 = quartiles(seconds["bare"])
    trainer_q1, trainer_q3 = quartiles(seconds["trainer"])
    share_q1, share_q3 = quartiles(shares)
    return LoopComparison(
        model=str(cfg.model.name),
        batch_size=int(cfg.schedule.batch_size),
        window=window,
        windows=windows,
        dataset_images=dataset_images,
        bare_ms=1000.0 * statistics.median(seconds["bare"]),
        bare_ms_q1=1000.0 * bare_q1,
        bare_ms_q3=1000.0 * bare_q3,
        trainer_ms=1000.0 * statistics.median(seconds["trainer"]),
        trainer_ms_q1=1000.0 * trainer_q1,
        trainer_ms_q3=1000.0 * trainer_q3,
        share_of_bare=statistics.median(shares),
        share_q1=share_q1,
        share_q3=share_q3,
    )


def _window_seconds(run: Callable[[], None], steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started
