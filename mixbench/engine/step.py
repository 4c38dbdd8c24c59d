"""The one training step, used by the trainer and the benchmark alike.

One call of :class:`TrainingStep` is::

    lr  <- schedule(update)                          (host-side assignment; timm schedules are pure functions)
    with runtime.autocast():  loss, logs <- method.training_step(model, x, y)
    zero_grad;  loss.backward();  clip the gradient norm (when the recipe asks);  optimizer.step()
    method.after_step(model)                         (EMA updates: a teacher's, the model's copy of ema=)
    sums += loss, logs                               (on the device: no host read)

Under ``compile=true`` :func:`build_training_step` compiles, with ``torch.compile(..., mode=compile_mode)``
(no mode for ``default``), the online model the method receives, its train-mode ``forward_features`` (for
a method that runs the stages itself: AlignMixup/AE; the model's own forward inlines it) and, through
:meth:`~mixbench.methods.MixMethod.compile_parts`, the method's own parts: the EMA teacher's and the Mix
Block's train-mode passes of AutoMix, SAMix and AdAutoMix (and of AutoMix under SUMix), Co-Mixup's and Puzzle
Mix's solver loops, and for vanilla and the input-space methods the forward together with the loss (one
graph, the model inlined).  The optimizer step, the EMA update and the method's glue between the passes
(mixing included) stay eager.  In the modes that replay CUDA graphs
(``reduce-overhead``, ``max-autotune``) each step starts with ``torch.compiler.cudagraph_mark_step_begin()``,
as torch asks of a loop that calls compiled functions several times per iteration.  Measured on an H200
(results/bench/README.md): ``reduce-overhead`` runs vanilla r18's step in 3.5 ms against 9.3 ms eager; the
default mode gains nothing there.

The step reads nothing from the device: the loss and the method's logs are added to :class:`EpochSums` where
they were made, and the trainer moves the sums to the host once per epoch (and checks the loss for
non-finite values every ``FINITE_CHECK_EVERY`` steps, its only read inside an epoch).  Whatever a method
itself reads from the device is the method's, and ``tools/bench.py`` counts it per step.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from omegaconf import DictConfig
from timm.scheduler.scheduler import Scheduler
from torch import nn

from mixbench.config import CUDA_GRAPH_MODES
from mixbench.engine.distributed import data_parallel_step
from mixbench.engine.optim import build_lr_schedule, build_optimizer, parameter_groups
from mixbench.engine.runtime import Runtime
from mixbench.methods import MixMethod
from mixbench.methods.mix_block import compile_train_passes
from mixbench.rng import MixRandom

# the online model's passes compiled beside its forward, for methods that call them on the model they receive
ONLINE_PASSES = ("forward_features",)


class EpochSums:
    """Sums of the loss and of each log value over the steps since :meth:`reset`, kept on their devices."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss = torch.zeros((), device=self.device)
        self.logs: dict[str, torch.Tensor] = {}
        self.images = 0
        self.steps = 0

    def add(self, loss: torch.Tensor, logs: dict[str, torch.Tensor], images: int) -> None:
        self.loss += loss.detach().float()
        for key, value in logs.items():
            value = value.detach().float()
            current = self.logs.get(key)
            self.logs[key] = value.clone() if current is None else current + value
        self.images += images
        self.steps += 1

    def logs_on_device(self) -> dict[str, torch.Tensor]:
        """The log sums on the run's device: one transfer per epoch for a method that logs host values."""
        return {key: value.to(self.device) for key, value in self.logs.items()}


class TrainingStep:
    """A whole optimizer step of ``method`` on ``model`` (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        method: MixMethod,
        optimizer: torch.optim.Optimizer,
        runtime: Runtime,
        grad_clip: float | None = None,
        lr_schedule: Scheduler | None = None,
        step_module: nn.Module | None = None,
    ) -> None:
        self.model, self.method, self.optimizer, self.runtime = model, method, optimizer, runtime
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.lr_schedule = lr_schedule
        # method.training_step(model, x, y) as one module (inside DDP when there are several processes)
        self.step_module = (
            step_module if step_module is not None else data_parallel_step(model, method, runtime.device)
        )
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.sums = EpochSums(runtime.device)
        self.replays_cuda_graphs = runtime.compile and runtime.compile_mode in CUDA_GRAPH_MODES

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def __call__(self, x: torch.Tensor, y: torch.Tensor, update: int | None = None) -> torch.Tensor:
        """One step on the batch ``(x, y)``; ``update`` is the run's update count for the lr schedule.

        Returns the detached loss (still on the device).
        """
        if self.lr_schedule is not None and update is not None:
            self.lr_schedule.step_update(update)
        if self.replays_cuda_graphs:  # a new iteration: the graphs' outputs of the last step may be reused
            torch.compiler.cudagraph_mark_step_begin()
        with self.runtime.autocast():
            loss, logs = self.step_module(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.method.after_step(self.model)
        self.sums.add(loss, logs, y.shape[0])
        return loss.detach()


def compiler_of(runtime: Runtime) -> Callable[[Callable], Callable] | None:
    """``torch.compile`` with the run's ``compile_mode`` (none passed for ``default``), or ``None`` when
    ``compile=false``.  ``torch.compile`` is looked up at each call, so that tests can replace it."""
    if not runtime.compile:
        return None
    options = {} if runtime.compile_mode == "default" else {"mode": runtime.compile_mode}
    return functools.partial(torch.compile, **options)


def build_training_step(
    cfg: DictConfig,
    runtime: Runtime,
    model: nn.Module,
    method: MixMethod,
    updates_per_epoch: int,
    rng: MixRandom | None = None,
) -> TrainingStep:
    """The step of a run: the method bound to the run's generators, the recipe's optimizer over the model's
    and the method's parameter groups, its lr schedule, the compiled model and the method's compiled parts
    when ``compile=true`` (module docstring), and DDP over model and method together when a process group
    is up."""
    total_updates = int(cfg.schedule.epochs) * updates_per_epoch
    method.bind(
        rng if rng is not None else MixRandom(int(cfg.seed), runtime.device),
        label_smoothing=float(cfg.schedule.label_smoothing),
        total_steps=total_updates,
    )
    optimizer_cfg = cfg.schedule.optimizer
    groups = parameter_groups(model, optimizer_cfg) + method.param_groups(
        float(optimizer_cfg.lr), float(optimizer_cfg.weight_decay)
    )
    optimizer = build_optimizer(groups, optimizer_cfg)
    lr_schedule = build_lr_schedule(optimizer, cfg.schedule, updates_per_epoch)
    compiler = compiler_of(runtime)
    step_model = model
    if compiler is not None:
        step_model = compiler(model)
        compile_train_passes(model, ONLINE_PASSES, compiler)  # state_dict keys unchanged (TrainModePass)
        method.compile_parts(compiler)  # teachers, Mix Blocks, solvers (state_dict keys unchanged)
    return TrainingStep(
        model,
        method,
        optimizer,
        runtime,
        grad_clip=cfg.schedule.grad_clip,
        lr_schedule=lr_schedule,
        step_module=data_parallel_step(step_model, method, runtime.device),
    )


__all__ = ["EpochSums", "TrainingStep", "build_training_step", "compiler_of"]
