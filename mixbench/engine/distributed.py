"""One run over several processes (GPUs of a node, or several nodes): DDP when launched by torchrun.

    torchrun --standalone --nproc_per_node=4 tools/train.py data=cifar100 model=r18 method=mixup
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 tools/train.py ...

torchrun starts one process per device and sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``.  With
``WORLD_SIZE > 1``, :func:`process_group` joins the processes (NCCL on ``cuda:LOCAL_RANK``, gloo on the CPU).
Without torchrun, or with one process, nothing here does anything: no process group, and a run has the same
seeds and numbers as always.

What the processes share and what each one owns:

* **The batch.**  ``schedule.batch_size`` stays the *global* batch, so a recipe keeps its meaning and its
  learning rate: each of the ``W`` processes trains on ``batch_size / W`` images per step; the loss is the
  mean over its shard and DDP averages the gradients, which is the gradient of the mean over the global
  batch.  BatchNorm statistics are per process (``batch_size / W`` images), as in the official multi-GPU
  codes; ``sync_bn=true`` computes them over the global batch (:class:`torch.nn.SyncBatchNorm`, CUDA only).
  ``eval_batch_size`` is per process (it only bounds memory); each process evaluates its shard of the test
  split and the counts are summed, so the accuracy is over exactly the whole split.
* **The gradients.**  The model and the method are wrapped *together* (:class:`MethodStep`, whose forward is
  ``method.training_step(model, x, y)``) and that module goes into ``DistributedDataParallel``.  Wrapping
  the model alone would be wrong for most methods: DDP expects one forward of the wrapped module per
  backward, while methods call the model several times per step (clean and mixed passes, saliency,
  ``model(x, mix_stage=k, mix_fn=f)``), and DDP would not see the method's own trainable parts (AutoMix's
  Mix Block, SUMix's uncertainty head, AlignMixup/AE's decoder).  Frozen EMA copies (``requires_grad``
  false) are not synchronised by DDP and need not be: they follow parameters that are identical on every
  process.
* **Unused parameters.**  ``find_unused_parameters`` is on exactly when the method owns trainable
  parameters.  Such parts may sit out some steps (AlignMixup/AE's decoder outside reconstruction steps, a
  learned method inside a switch that drew another choice), and DDP without the flag fails at the next
  step.  A method without trainable parts runs the whole model every step (input-space methods, and
  feature-space ones too: mixing at stage ``k`` still runs every layer), so the flag would only cost a
  traversal of the autograd graph per step and a warning.  A parameter that no process used keeps
  ``grad=None``, exactly as in a single-process step, so momentum and weight decay treat it alike.
* **Random numbers.**  The shuffled order is the same on every process (so the shards are disjoint);
  augmentation and torch's global generator (dropout, DataLoader workers) are seeded per process, so every
  process sees other crops.  The method's own draws (:class:`~mixbench.rng.MixRandom`: lam, pairing, level,
  branch) are the same on every process: one draw per global step, as in a single-process run or the
  ``DataParallel`` official codes (and OpenMMLab's default, ``diff_rank_seed=False``).  This also makes
  every process take the same branch of a method, so the same parameters are used everywhere and the number
  of forward passes (each a collective under ``sync_bn``) matches; per-process draws could deadlock there.
* **Buffers.**  ``broadcast_buffers=False`` (no broadcast before every forward); instead every buffer
  (BatchNorm running statistics, EMA buffers) is copied from rank 0 (:func:`sync_buffers`) before each
  evaluation and checkpoint, so the evaluated network is the saved one, identical on every process.
* **Files.**  Only rank 0 reads and writes the run directory; what it finds there (a complete run to skip,
  a checkpoint to resume from) is broadcast, so ``runs_root`` need not be on a shared filesystem.
* **Errors.**  A bad configuration or missing data raises the same error on every process
  (:func:`on_main`, :func:`on_every_rank`), so all of them stop with the same exit status instead of some
  waiting forever in a collective; only rank 0 prints it (:func:`mixbench.cli.fail`).
"""

from __future__ import annotations

import inspect
import os
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from mixbench.config import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Launch:
    """Where this process stands in the run: its rank, its rank on its node, and the number of processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_from_environment() -> Launch:
    """The :class:`Launch` that torchrun described in the environment; one process when it did not."""
    if "WORLD_SIZE" not in os.environ:
        return Launch()
    try:
        return Launch(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ["WORLD_SIZE"]),
        )
    except ValueError as error:
        raise ConfigError(
            f"WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun): {error}"
        ) from error


def check_launch(cfg: DictConfig, launch: Launch, device: torch.device) -> None:
    """Refuse, in one line, what cannot run over ``launch.world_size`` processes (nothing for one process)."""
    if not launch.distributed:
        return
    world = launch.world_size
    if _hydra_multirun():
        raise ConfigError(
            "torchrun runs one configuration; drop -m (a grid spreads over GPUs with hydra/launcher=gpus "
            "instead)"
        )
    batch = int(cfg.schedule.batch_size)
    if batch % world:
        raise ConfigError(
            f"schedule.batch_size={batch} is the global batch and must divide evenly over the {world} "
            "processes; "
            f"choose a multiple of {world} or another --nproc_per_node"
        )
    if batch // world < 2:
        raise ConfigError(
            f"schedule.batch_size={batch} over {world} processes leaves {batch // world} image per process "
            "(mixing pairs samples); raise schedule.batch_size or use fewer processes"
        )
    if bool(cfg.get("sync_bn", False)) and device.type != "cuda":
        raise ConfigError(
            "sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU kernel); set sync_bn=false"
        )


def _hydra_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def process_group(launch: Launch, device: torch.device) -> Iterator[None]:
    """Join the run's processes for the duration of the block (nothing for a single process).

    NCCL when ``device`` is a GPU (bound to it), gloo on the CPU.  On a normal exit the processes meet at a
    barrier first, so that when any of them ends, rank 0 has written everything.
    """
    if not launch.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        bound = (
            {"device_id": device}
            if "device_id" in inspect.signature(dist.init_process_group).parameters
            else {}
        )
        dist.init_process_group("nccl", rank=launch.rank, world_size=launch.world_size, **bound)
    else:
        dist.init_process_group("gloo", rank=launch.rank, world_size=launch.world_size)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def active() -> bool:
    """Whether a process group is up (collectives below are no-ops when it is not)."""
    return dist.is_available() and dist.is_initialized()


def is_main() -> bool:
    return not active() or dist.get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place; returns it."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every process (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: T) -> list[T]:
    """Every process's ``value``, in rank order."""
    if not active():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def on_main(action: Callable[[], T]) -> T:
    """``action()`` run by rank 0 only (it reads the run directory); its result, or its error, on every
    process.
    """
    if not active():
        return action()
    result, failure = None, None
    if dist.get_rank() == 0:
        try:
            result = action()
        except Exception as error:
            failure = error
    shared_result, shared_failure = broadcast_from_main((result, _portable(failure)))
    if failure is not None:
        raise failure
    if shared_failure is not None:
        raise shared_failure
    return result if dist.get_rank() == 0 else shared_result


def on_every_rank(action: Callable[[], T]) -> T:
    """``action()`` on every process (each reads its own node's data); if it fails anywhere, it fails
    everywhere.

    Every process then raises the error of the lowest failing rank (its message names that rank when it is
    not 0), so rank 0 reports a problem seen on another node, and no process waits for the others forever.
    """
    if not active():
        return action()
    result, failure = None, None
    try:
        result = action()
    except Exception as error:
        failure = error
    failures = gather_objects(_portable(failure))
    for failing_rank, shared in enumerate(failures):
        if shared is None:
            continue
        if failing_rank == dist.get_rank():
            raise failure
        if failing_rank == 0:
            raise shared
        raise _renamed(shared, f"on rank {failing_rank} of {dist.get_world_size()}: {shared}") from None
    return result


def _portable(error: Exception | None) -> Exception | None:
    """``error`` if it survives pickling (to be sent to the other processes), else a
    RuntimeError saying it.
    """
    if error is None:
        return None
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _renamed(error: Exception, message: str) -> Exception:
    try:
        return type(error)(message)
    except Exception:
        return RuntimeError(message)


def sync_buffers(module: nn.Module) -> None:
    """Copy every buffer of ``module`` (BatchNorm statistics, EMA buffers) from rank 0 to the others."""
    if not active():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm layer of ``model`` made a SyncBatchNorm (timm's converter keeps BatchNormAct layers
    whole).
    """
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)


class MethodStep(nn.Module):
    """A whole training step as one module: ``forward(x, y) = method.training_step(model, x, y)``.

    This is what DDP wraps (see the module docstring): one forward per backward whatever the method does
    inside, and every trainable parameter, the model's and the method's, under its gradient averaging.
    """

    def __init__(self, model: nn.Module, method: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.method.training_step(self.model, x, y)


def data_parallel_step(model: nn.Module, method: nn.Module, device: torch.device) -> nn.Module:
    """The module the trainer calls each step: :class:`MethodStep`, inside DDP when a process group is up."""
    step = MethodStep(model, method)
    if not active():
        return step
    return nn.parallel.DistributedDataParallel(
        step,
        device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=any(parameter.requires_grad for parameter in method.parameters()),
        **_NO_BUFFER_BROADCAST,
    )


# Buffers are synchronised per epoch by sync_buffers(), not before every forward; the keyword was renamed in
# torch 2.14 (both keep the synchronisation at construction).
_NO_BUFFER_BROADCAST = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False}
)


__all__ = [
    "Launch",
    "MethodStep",
    "active",
    "all_reduce_sum",
    "broadcast_from_main",
    "check_launch",
    "convert_sync_batchnorm",
    "data_parallel_step",
    "gather_objects",
    "is_main",
    "launch_from_environment",
    "on_every_rank",
    "on_main",
    "process_group",
    "sync_buffers",
]
