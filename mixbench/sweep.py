"""A local device pool for sweeps: every job a fresh process pinned to one GPU, the next job starting when a
slot frees up.

    python tools/train.py -m experiment=<table> hydra/launcher=gpus                   # every visible GPU
    python tools/train.py -m experiment=<table> hydra/launcher=gpus hydra.launcher.gpus=[0,2] \\
        hydra.launcher.jobs_per_gpu=2

The Hydra side (tools/hydra_plugins/mixbench_launchers/gpu_pool.py) turns each job of the grid into the
command line of a single run (``python tools/train.py <the job's overrides>``) and hands the list to
:func:`run_pool`, which knows nothing about Hydra:

* a *slot* is one device id repeated ``jobs_per_gpu`` times; a job runs with ``CUDA_VISIBLE_DEVICES=<id>``, so
  inside it the GPU is ``cuda:0`` and the trainer needs no device option;
* jobs start in grid order as slots free up, each writes its output to ``<log_dir>/<index>.log``;
* a job that fails (non-zero exit) does not stop the others; failures are returned and reported at the end;
* a job whose run is already complete is skipped without starting a process (:attr:`Job.skip`; the trainer
  would skip it too), and an interrupted one resumes from its checkpoint, so re-launching the same sweep
  finishes only what is missing.

Why subprocesses instead of Hydra's in-process basic launcher: one CUDA context per job and per GPU, a crash
(even a segfault or out-of-memory kill) stays inside its job, and memory is returned to the GPU when a job
ends.  Each job gets ``OMP_NUM_THREADS = cpus // slots`` unless the caller set it, so that concurrent jobs
do not oversubscribe the node's cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

POLL_SECONDS = 0.2
# Jobs of the current sweep that failed, as "#<index> <overrides>: <last line>": filled by the launchers
# (the pool's and, for Hydra's in-process one, tools/train.py) and reported once by tools/train.py.
FAILED_JOBS: list[str] = []


class PoolError(ValueError):
    """A bad pool setting (no device to run on, a malformed list); the message names the fix."""


@dataclass
class Job:
    index: int
    command: list[str]
    label: str  # what the report shows: the job's overrides
    log_path: Path
    # Asked just before the job would start: why it need not run (its run is complete), or None.  A skipped
    # job costs no process (a fresh interpreter spends seconds importing torch before it could say so).
    skip: Callable[[], str | None] | None = None


@dataclass
class JobResult:
    job: Job
    returncode: int
    device: str
    seconds: float
    last_line: str = ""  # the last non-empty line of the job's log (its error when it failed)

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class _Running:
    job: Job
    device: str
    process: subprocess.Popen
    log: object
    started: float = field(default_factory=time.monotonic)


def visible_devices(environ: dict[str, str] | None = None) -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch counts."""
    environ = os.environ if environ is None else environ
    declared = environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [d.strip() for d in declared.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def resolve_devices(gpus: str | int | Sequence[int | str], visible: Sequence[str] | None = None) -> list[str]:
    """Turn the ``gpus`` setting into device ids.

    ``all``: every visible GPU; an integer ``n``: the first ``n`` visible GPUs; a list such as ``[0, 2]``:
    exactly those ids, taken as given (so a CPU machine can pretend to have devices, with ``device=cpu``).
    """
    if isinstance(gpus, (str, bool)):
        if not isinstance(gpus, str) or gpus.strip().lower() != "all":
            raise PoolError(
                f"hydra.launcher.gpus={gpus!r} is not understood; use all, a count such as 2, or a list "
                "such as [0,1]"
            )
    elif not isinstance(gpus, int):  # a list (Hydra gives a ListConfig)
        devices = [str(g) for g in gpus]
        if not devices:
            raise PoolError(
                "hydra.launcher.gpus is empty; use all, a count such as 2, or a list such as [0,1]"
            )
        if len(set(devices)) != len(devices):
            raise PoolError(
                f"hydra.launcher.gpus lists a device twice ({devices}); use jobs_per_gpu to share one"
            )
        return devices
    visible = list(visible_devices() if visible is None else visible)
    if not visible:
        raise PoolError(
            "no GPU is visible for hydra/launcher=gpus; run the sweep without it (one job after another), or "
            "name devices with hydra.launcher.gpus=[0,1] (with device=cpu to pretend on a CPU machine)"
        )
    if isinstance(gpus, int):
        if not 1 <= gpus <= len(visible):
            raise PoolError(
                f"hydra.launcher.gpus={gpus} but {len(visible)} GPU(s) are visible; use 1..{len(visible)}"
            )
        return visible[:gpus]
    return visible


def threads_per_job(slots: int, environ: dict[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    if "OMP_NUM_THREADS" in environ:
        return environ["OMP_NUM_THREADS"]
    return str(max(1, (os.cpu_count() or 1) // max(1, slots)))


class SweepInterrupted(Exception):
    """The pool was asked to stop (a signal); ``results`` holds the finished jobs and the interrupted ones
    (exit code :data:`INTERRUPTED`), in job order, and ``signal_name`` what asked."""

    def __init__(self, signal_name: str, results: list[JobResult]) -> None:
        super().__init__(f"the sweep was interrupted by {signal_name}")
        self.signal_name = signal_name
        self.results = results


INTERRUPTED = -1  # a JobResult's returncode for a job the pool stopped (the job is not finished)
STOP_GRACE_SECONDS = 30.0  # a stopped job's time to mark its run interrupted, before SIGKILL


def run_pool(
    jobs: Sequence[Job],
    devices: Sequence[str],
    jobs_per_device: int = 1,
    echo: Callable[[str], None] = print,
) -> list[JobResult]:
    """Run ``jobs`` on ``devices`` (``jobs_per_device`` at a time on each); results in job order.

    Each job runs in a session of its own and is told to die with the pool (``PR_SET_PDEATHSIG`` on Linux),
    so it never outlives its sweep, even when the pool is SIGKILLed.  SIGINT (Ctrl-C), SIGTERM (Slurm,
    ``timeout``, ``kill``) and SIGHUP stop the pool: every running job gets SIGTERM (it marks its run
    interrupted and exits; SIGKILL after :data:`STOP_GRACE_SECONDS`), nothing new starts, and
    :class:`SweepInterrupted` carries the results with the stopped jobs, which a re-launch resumes.
    """
    if jobs_per_device < 1:
        raise PoolError(f"hydra.launcher.jobs_per_gpu must be at least 1, got {jobs_per_device}")
    slots = [device for _ in range(jobs_per_device) for device in devices]
    threads = threads_per_job(len(slots))
    pending = list(jobs)
    running: list[_Running] = []
    free = list(slots)
    results: dict[int, JobResult] = {}
    echo(f"sweep: {len(jobs)} job(s) on device(s) {', '.join(devices)} ({jobs_per_device} per device)")
    try:
        with _stop_on_signals():
            while pending or running:
                while pending and free:
                    job = pending.pop(0)
                    reason = job.skip() if job.skip is not None else None
                    if reason:
                        results[job.index] = _skipped(job, reason)
                        echo(f"#{job.index} {reason}")
                        continue
                    device = free.pop(0)
                    running.append(_start(job, device, threads))
                    echo(f"[gpu {device}] start #{job.index}: {job.label}")
                time.sleep(POLL_SECONDS)
                for entry in list(running):
                    code = entry.process.poll()
                    if code is None:
                        continue
                    running.remove(entry)
                    free.append(entry.device)
                    result = _finished(entry, code)
                    results[entry.job.index] = result
                    failure = "" if result.ok else f" (exit {code}): {result.last_line}"
                    outcome = "done" if result.ok else "FAILED"
                    took = f"in {result.seconds:.0f} s{failure}"
                    echo(f"[gpu {entry.device}] {outcome} #{entry.job.index} {took}")
    except (KeyboardInterrupt, _Stop) as stop:
        signal_name = str(stop) if isinstance(stop, _Stop) else "SIGINT"
        echo(f"sweep: {signal_name}: stopping {len(running)} running job(s); their runs resume on re-launch")
        for entry in _stop(running):
            results[entry.job.index] = _finished(entry, INTERRUPTED)
        known = [results[job.index] for job in jobs if job.index in results]
        raise SweepInterrupted(signal_name, known) from None
    return [results[job.index] for job in jobs]


class _Stop(Exception):
    """A signal asked the pool to stop; the message is the signal's name."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`_Stop` in the pool (SIGINT already raises KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number: int, frame: object) -> None:
        raise _Stop(signal.Signals(number).name)

    previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _stop(running: Sequence[_Running]) -> list[_Running]:
    """SIGTERM to every running job's process group, SIGKILL to those still alive after the grace time."""
    with _ignoring_signals():  # a second Ctrl-C or SIGTERM must not leave jobs behind
        for entry in running:
            _signal_group(entry.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for entry in running:
            try:
                entry.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(entry.process, signal.SIGKILL)
                entry.process.wait()
    return list(running)


@contextlib.contextmanager
def _ignoring_signals() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, signal.SIG_IGN) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _signal_group(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)  # the job leads its own session: its group id is its pid
    except ProcessLookupError:
        pass


def _finished(entry: _Running, code: int) -> JobResult:
    entry.log.close()
    seconds = time.monotonic() - entry.started
    return JobResult(entry.job, code, entry.device, seconds, _last_line(entry.job.log_path))


def _die_with_parent() -> None:
    """In the job's process before it runs: SIGTERM when the pool's process dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the pool's signal handlers still stop the jobs
        pass


PR_SET_PDEATHSIG = 1


def _start(job: Job, device: str, threads: str) -> _Running:
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(job.log_path, "w")  # noqa: SIM115 (closed when the job ends)
    environ = dict(os.environ, CUDA_VISIBLE_DEVICES=device, OMP_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        job.command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environ,
        start_new_session=True,  # the terminal's Ctrl-C reaches the pool, which stops the jobs in order
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )
    return _Running(job, device, process, log)


def _skipped(job: Job, reason: str) -> JobResult:
    """A job that did not need to run: its log says why, as the job itself would have."""
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    job.log_path.write_text(reason + "\n")
    return JobResult(job, 0, "-", 0.0, reason)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def report(results: Sequence[JobResult], interrupted_by: str | None = None) -> str:
    """The end-of-sweep summary: counts, then one line per failed or interrupted job with its log."""
    failed = [r for r in results if not r.ok and r.returncode != INTERRUPTED]
    stopped = [r for r in results if r.returncode == INTERRUPTED]
    done = len(results) - len(failed) - len(stopped)
    if interrupted_by is None:
        lines = [f"sweep finished: {done} of {len(results)} job(s) succeeded"]
    else:
        lines = [f"sweep interrupted by {interrupted_by}: {done} job(s) succeeded, {len(stopped)} stopped"]
    for result in failed:
        lines.append(
            f"  failed #{result.job.index} (exit {result.returncode}) {result.job.label}: "
            f"{result.last_line}  [log: {result.job.log_path}]"
        )
    for result in stopped:
        lines.append(f"  interrupted #{result.job.index} {result.job.label}  [log: {result.job.log_path}]")
    if failed or stopped:
        lines.append(
            "  fix the cause and run the same command again: complete runs are skipped, others resume"
        )
    return "\n".join(lines)


def python_command(script: str | Path, overrides: Sequence[str]) -> list[str]:
    """The command line of one job: this interpreter, the entry script, the job's overrides."""
    return [sys.executable, str(script), *overrides]
