"""What a benchmark produces: one :class:`BenchRow` per model and method, gathered in a :class:`BenchReport`
with the header's facts."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BenchRow:
    """One model × method: its status and, when it ran, its measurements (``None`` where not measured)."""

    model: str
    method: str
    status: str  # "ok", "n/a", "skipped" or "failed"
    note: str = ""
    step_ms: float | None = None
    images_per_s: float | None = None
    ratio_to_vanilla: float | None = None
    peak_memory_mb: float | None = None
    model_params: int | None = None
    method_params: int | None = None
    host_syncs_per_step: float | None = (
        None  # counted calls per step (untimed steps; mixbench.engine.host_syncs)
    )
    cuda_syncs_per_step: float | None = None  # CUDA's sync debug mode's reports per counted step; None on CPU
    host_sync_sites: dict[str, float] = field(default_factory=dict)  # "file:line" -> syncs per counted step


@dataclass
class BenchReport:
    """Every row, the device, and what the header states."""

    rows: list[BenchRow]
    device: str
    slug: str  # the device's file name: "cpu-2-threads", "nvidia-h100-80gb-hbm3"
    facts: dict[str, str]  # the header's named values, in order
    memory_of: str  # what the peak memory column measures
    host_syncs_of: str  # what the host syncs column counts on this device
