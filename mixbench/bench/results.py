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
    step_ms: float | None = None  # mean of the timed steps
    step_ms_q1: float | None = None  # their first and third quartiles
    step_ms_q3: float | None = None
    images_per_s: float | None = None
    ratio_to_vanilla: float | None = None  # total step time / vanilla's over the same rounds
    ratio_low: float | None = None  # its 90% bootstrap interval over the rounds: what a claim must leave
    ratio_high: float | None = None
    peak_memory_mb: float | None = None
    page_faults_per_step: float | None = None  # the process's minor page faults per timed step (host memory)
    model_params: int | None = None
    method_params: int | None = None
    host_syncs_per_step: float | None = (
        None  # counted calls per step (untimed steps; mixbench.engine.host_syncs)
    )
    cuda_syncs_per_step: float | None = None  # CUDA's sync debug mode's reports per counted step; None on CPU
    host_sync_sites: dict[str, float] = field(default_factory=dict)  # "file:line" -> syncs per counted step
    launches_per_step: float | None = None  # --profile: CUDA kernel launches (CPU: aten calls) per step
    gpu_busy_ms_per_step: float | None = None  # --profile on a GPU: the kernels' own device time per step
    passes: dict[str, float] | None = None  # the step's passes in units (MixMethod.passes); None: unknown
    floor: float | None = None  # the passes' time / vanilla's over the same rounds (mixbench.bench.passes)
    floor_low: float | None = None  # its 90% bootstrap interval
    floor_high: float | None = None

    def versus_vanilla(self) -> str:
        """What the ratio supports: ``slower`` or ``faster`` when its whole bootstrap interval lies above or
        below 1, ``same`` when it contains 1 (not distinguishable from vanilla by this measurement); empty
        for vanilla itself and for rows without a ratio."""
        if self.ratio_low is None or self.ratio_high is None or self.method == "vanilla":
            return ""
        if self.ratio_low > 1.0:
            return "slower"
        if self.ratio_high < 1.0:
            return "faster"
        return "same"


@dataclass
class LoopComparison:
    """Step times of both loops (median and quartiles over windows, ms) and the trainer's speed as a share
    of the bare loop's (median of paired bare / trainer ratios and their quartiles)."""

    model: str
    batch_size: int
    window: int
    windows: int
    dataset_images: int
    bare_ms: float
    bare_ms_q1: float
    bare_ms_q3: float
    trainer_ms: float
    trainer_ms_q1: float
    trainer_ms_q3: float
    share_of_bare: float
    share_q1: float
    share_q3: float

    @property
    def bare_images_per_s(self) -> float:
        return 1000.0 * self.batch_size / self.bare_ms

    @property
    def trainer_images_per_s(self) -> float:
        return 1000.0 * self.batch_size / self.trainer_ms


@dataclass
class UnitTiming:
    """One pass unit on one model: its mean time and its ratio to vanilla's step over the same rounds."""

    model: str
    unit: str
    ms: float
    ratio: float
    ratio_low: float
    ratio_high: float


@dataclass
class BenchReport:
    """Every row, the device, and what the header states."""

    rows: list[BenchRow]
    device: str
    slug: str  # the device's file name: "cpu-2-threads", "nvidia-h100-80gb-hbm3"
    facts: dict[str, str]  # the header's named values, in order
    memory_of: str  # what the peak memory column measures
    host_syncs_of: str  # what the host syncs column counts on this device
    loops: list[LoopComparison] = field(default_factory=list)  # trainer vs bare loop, one per model
    units: list[UnitTiming] = field(default_factory=list)  # the pass units behind the floors, per model
