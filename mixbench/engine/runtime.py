"""Where and how a run computes: device, precision, memory format, compilation.

:class:`Runtime` is resolved once from the config's ``auto`` defaults and then passed to everything that runs
the model (the training step, evaluation, the benchmark), which all enter :meth:`Runtime.autocast` rather than
spelling ``torch.autocast`` out themselves.  ``compile`` and ``compile_mode`` reach
:func:`mixbench.engine.step.build_training_step`, which compiles the online model and the method's own
networks (:meth:`mixbench.methods.MixMethod.compile_parts`) with ``torch.compile(..., mode=compile_mode)``.

``compile_mode=auto`` (the default) is resolved here (:func:`resolve_compile_mode`): ``reduce-overhead``,
which replays CUDA graphs, on one CUDA device; ``default`` on the CPU, where there are no CUDA graphs, and
under torchrun, where CUDA graphs around DDP's gradient hooks have not been checked.  On an H200 the default
mode bought nothing (vanilla r18 9.9 ms compiled against 9.3 ms eager) while ``reduce-overhead`` ran the step
about 2.5x faster for vanilla, AutoMix, Puzzle Mix and Co-Mixup (results/bench/README.md, ``--compile``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from mixbench.config import ConfigError, check_compile_mode
from mixbench.engine.distributed import launch_from_environment


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: full fp32
    channels_last: bool
    compile: bool
    compile_mode: str = "default"  # torch.compile's mode under compile=true (mixbench.config.COMPILE_MODES)

    @property
    def precision(self) -> str:
        """``bf16`` (autocast) or ``fp32``, as written in summaries and benchmark headers."""
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's mixed-precision context: bf16 autocast on the device, or nothing at fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @classmethod
    def cpu(cls) -> Runtime:
        """Plain fp32 on the CPU (building and checking models, tests)."""
        return cls(torch.device("cpu"), autocast_dtype=None, channels_last=False, compile=False)


def resolve_runtime(cfg: DictConfig) -> Runtime:
    """Device, precision and memory format from the config's ``auto`` defaults.

    Under torchrun with several processes each process takes the GPU ``cuda:LOCAL_RANK``.
    """
    if cfg.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(cfg.device)
        except (RuntimeError, TypeError) as error:
            raise ConfigError(
                f"device={cfg.device} is not a device; use auto, cpu, cuda or cuda:N"
            ) from error
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"device={cfg.device} is not supported; use auto, cpu, cuda or cuda:N")
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
                f"torchrun started local rank {launch.local_rank} but only {torch.cuda.device_count()} "
                "GPU(s) "
                "are visible; lower --nproc_per_node"
            )
        device = torch.device("cuda", launch.local_rank)
    on_cuda = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if on_cuda else "fp32")
    if precision not in ("bf16", "fp32"):
        raise ConfigError(f"unknown precision '{cfg.precision}'; valid: auto, bf16, fp32")
    channels_last = on_cuda if cfg.channels_last == "auto" else bool(cfg.channels_last)
    compile_mode = cfg.get("compile_mode", "auto")
    check_compile_mode(compile_mode)  # the benchmark resolves its runtime before it validates the rows
    return Runtime(
        device,
        torch.bfloat16 if precision == "bf16" else None,
        channels_last,
        bool(cfg.compile),
        resolve_compile_mode(str(compile_mode), device.type, launch.world_size),
    )


def resolve_compile_mode(mode: str, device_type: str, world_size: int) -> str:
    """The ``torch.compile`` mode a run uses: ``mode`` itself, or for ``auto`` ``reduce-overhead`` (CUDA
    graphs) on a single CUDA process and ``default`` otherwise (see the module docstring)."""
    if mode != "auto":
        return mode
    return "reduce-overhead" if device_type == "cuda" and world_size == 1 else "default"
