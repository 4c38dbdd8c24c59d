"""``hydra/launcher=gpus``: Hydra's view of :mod:`mixbench.sweep` (see there for the behaviour).

Each job of the grid becomes ``python <the running script> <the job's overrides>``, a single run in a fresh
process pinned to one device; the results come back to Hydra as :class:`JobReturn` s whose value is the
job's exit code.  Failed jobs are also recorded in :data:`mixbench.sweep.FAILED_JOBS`: the entry script
reports them in one line after the whole grid has run and exits with code 1 (Hydra's own report of a failed
job is a multi-line traceback).
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from mixbench.rundir import complete_summary, run_directory, skipped_line
from mixbench.sweep import (
    FAILED_JOBS,
    Job,
    PoolError,
    SweepInterrupted,
    python_command,
    report,
    resolve_devices,
    run_pool,
)


class GpuPoolLauncher(Launcher):
    def __init__(self, gpus: object = "all", jobs_per_gpu: int = 1) -> None:
        super().__init__()
        self.gpus = OmegaConf.to_container(gpus) if OmegaConf.is_config(gpus) else gpus
        self.jobs_per_gpu = int(jobs_per_gpu)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context

    def _skip_if_complete(self, overrides: Sequence[str]) -> Callable[[], str | None]:
        """The job's check before it starts: its config composed here, as the job would compose it, and
        its run directory read; a complete run of the same configuration is skipped without a process (for
        ``tools/evaluate.py``, a job whose suites are all evaluated already)."""

        def reason() -> str | None:
            assert self.config is not None and self.hydra_context is not None
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            except Exception:  # noqa: BLE001 (a bad override: the job itself reports it in one line)
                return None
            with open_dict(cfg):
                del cfg["hydra"]
            if cfg.get("force"):
                return None
            if "target" in cfg:  # a job of tools/evaluate.py: skipped when every suite is done on every run
                from mixbench.evaluation.runner import sweep_skip_reason

                return sweep_skip_reason(cfg)
            summary = complete_summary(cfg)
            return None if summary is None else skipped_line(run_directory(cfg), summary)

        return reason

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        try:
            devices = resolve_devices(self.gpus)
        except PoolError as error:
            raise SystemExit(f"error: {error}") from None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        script = Path(sys.argv[0]).resolve()
        jobs = [
            Job(
                index=initial_job_idx + offset,
                command=python_command(script, filter_overrides(overrides)),
                label=" ".join(filter_overrides(overrides)),
                log_path=sweep_dir / f"{initial_job_idx + offset}.log",
                skip=self._skip_if_complete(overrides),
            )
            for offset, overrides in enumerate(job_overrides)
        ]
        try:
            results = run_pool(jobs, devices, self.jobs_per_gpu)
        except SweepInterrupted as stop:
            print(report(stop.results, interrupted_by=stop.signal_name), flush=True)
            print(
                f"error: the sweep was interrupted by {stop.signal_name}; the same command resumes it",
                file=sys.stderr,
                flush=True,
            )
            code = (
                signal.Signals[stop.signal_name].value
                if stop.signal_name in signal.Signals.__members__
                else 2
            )
            raise SystemExit(128 + code) from None
        summary = report(results)
        print(summary, flush=True)
        FAILED_JOBS.extend(f"#{r.job.index} {r.job.label}: {r.last_line}" for r in results if not r.ok)
        return [
            JobReturn(
                overrides=list(overrides),
                working_dir=str(Path.cwd()),
                task_name=script.stem,
                status=JobStatus.COMPLETED,
                _return_value=result.returncode,
            )
            for result, overrides in zip(results, job_overrides, strict=True)
        ]
