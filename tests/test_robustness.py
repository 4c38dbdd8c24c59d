"""Nothing lost, nothing mixed: one writer per run directory, leftovers of a dead writer removed, every error
ending a run recorded, signals ending a run or a sweep cleanly, and TensorBoard showing each epoch once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mixbench.engine import trainer as trainer_module
from mixbench.engine.trainer import RunFailed, RunInterrupted, train
from mixbench.methods.vanilla import Vanilla
from mixbench.rundir import RunDirectory
from mixbench.runlock import LOCK_FILE, RunLock, RunLockedError
from mixbench.sweep import INTERRUPTED, Job, JobResult, report
from tests.helpers import REPO, compose_config, tiny_overrides
from tests.helpers.tools import run_tool

pytestmark = pytest.mark.usefixtures("single_torch_thread")

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from mixbench.runlock import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


def _tiny(runs_root: Path, epochs: int = 2, *extra: str):
    return compose_config([*tiny_overrides(runs_root, epochs=epochs, window=1), *extra])


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding the run directory's lock (light: it imports no torch)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert process.stdout.readline().strip() == "locked"
    return process


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ the lock


def test_a_second_writer_is_refused_naming_the_holder(runs_root: Path) -> None:
    cfg = _tiny(runs_root)
    run_dir = RunDirectory.of(cfg)
    holder = _holder(run_dir.path)
    try:
        with pytest.raises(RunLockedError, match=f"being written by another process \\(pid {holder.pid} on "):
            train(cfg)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in run_dir.path.iterdir()) == [LOCK_FILE], "the refused run wrote nothing"


def test_force_is_refused_while_another_process_writes_the_run(runs_root: Path) -> None:
    train(_tiny(runs_root))
    run_dir = RunDirectory.of(_tiny(runs_root))
    before = _tree(run_dir.path)
    holder = _holder(run_dir.path)
    try:
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            train(_tiny(runs_root, 2, "force=true"))
    finally:
        holder.kill()
        holder.wait()
    after = _tree(run_dir.path)
    after.pop(LOCK_FILE), before.pop(LOCK_FILE)  # the holder wrote its name there
    assert after == before, "force=true deleted nothing under a live writer"


def test_the_lock_of_a_killed_process_is_taken_over(runs_root: Path) -> None:
    cfg = _tiny(runs_root)
    run_dir = RunDirectory.of(cfg)
    holder = _holder(run_dir.path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert f"pid {holder.pid}" in (run_dir.path / LOCK_FILE).read_text()  # its note is still there
    summary = train(cfg)
    assert summary["status"] == "complete" and summary["epochs_done"] == 2


def test_the_lock_is_exclusive_within_one_process_and_released(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "run").acquire()
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path / "run").acquire()
    first.release()
    with RunLock(tmp_path / "run") as again:
        assert again.held
    assert not again.held


# ------------------------------------------------------------------------------------ leftovers and errors


def test_half_written_files_of_a_dead_writer_are_removed_on_resume(
    runs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _tiny(runs_root, 2)
    run_dir = RunDirectory.of(cfg)
    save = trainer_module.Trainer._save

    def dies_after_epoch_one(self, epochs_done):
        save(self, epochs_done)
        raise RunInterrupted("SIGKILL")

    monkeypatch.setattr(trainer_module.Trainer, "_save", dies_after_epoch_one)
    with pytest.raises(RunInterrupted):
        train(cfg)
    leftovers = [run_dir.path / ".checkpoint.pt.k2j3.tmp", run_dir.path / "tb" / ".events.x9.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    assert run_dir.temporary_files() == sorted(leftovers)
    monkeypatch.setattr(trainer_module.Trainer, "_save", save)
    assert train(cfg)["status"] == "complete"
    assert run_dir.temporary_files() == []


def test_force_replaces_everything_but_the_lock_file(runs_root: Path) -> None:
    train(_tiny(runs_root, 1))
    run_dir = RunDirectory.of(_tiny(runs_root, 1))
    (run_dir.path / "stray.txt").write_text("from an older run")
    train(_tiny(runs_root, 1, "force=true"))
    assert not (run_dir.path / "stray.txt").exists() and (run_dir.path / LOCK_FILE).exists()


def test_an_unexpected_error_fails_the_run_in_one_line_with_the_traceback_in_a_log(
    runs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _tiny(runs_root, 3)
    calls = {"steps": 0}
    original = Vanilla.training_step

    def breaks_in_epoch_two(self, model, x, y):
        calls["steps"] += 1
        if calls["steps"] > 22:  # digits at batch 64: 21 steps per epoch
            raise OSError(28, "No space left on device")
        return original(self, model, x, y)

    monkeypatch.setattr(Vanilla, "training_step", breaks_in_epoch_two)
    with pytest.raises(RunFailed) as failure:
        train(cfg)
    message = str(failure.value)
    assert "\n" not in message and "No space left on device" in message and "error.log" in message
    run_dir = RunDirectory.of(cfg)
    summary = run_dir.read_summary()
    assert (
        summary["status"] == "failed"
        and summary["epochs_done"] == 1
        and "No space left" in summary["message"]
    )
    log = run_dir.error_log.read_text()
    assert "Traceback (most recent call last)" in log and "breaks_in_epoch_two" in log


def test_an_interruption_marks_the_run_and_the_same_command_resumes_it(
    runs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _tiny(runs_root, 3)
    original = trainer_module.Trainer._save

    def stop_after_epoch_two(self, epochs_done):
        original(self, epochs_done)
        if epochs_done == 2:
            raise RunInterrupted("SIGTERM")

    monkeypatch.setattr(trainer_module.Trainer, "_save", stop_after_epoch_two)
    with pytest.raises(RunInterrupted):
        train(cfg)
    summary = RunDirectory.of(cfg).read_summary()
    assert summary["status"] == "interrupted" and "SIGTERM" in summary["message"]
    assert summary["epochs_done"] == 2
    monkeypatch.setattr(trainer_module.Trainer, "_save", original)
    assert train(cfg)["status"] == "complete"


def test_an_interruption_before_the_checkpoint_reports_only_the_checkpointed_epochs(
    runs_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM after epoch 2 is evaluated and logged but before its checkpoint: the summary says 1 epoch done
    (the one the checkpoint holds, which a resume starts from), with that epoch's scores, not epoch 2's."""
    cfg = _tiny(runs_root, 3)
    save_if_best = trainer_module.Trainer._save_if_best

    def stop_before_the_checkpoint_of_epoch_two(self, record):
        save_if_best(self, record)
        if record["epoch"] == 2:
            raise RunInterrupted("SIGTERM")

    monkeypatch.setattr(trainer_module.Trainer, "_save_if_best", stop_before_the_checkpoint_of_epoch_two)
    with pytest.raises(RunInterrupted):
        train(cfg)
    run = RunDirectory.of(cfg)
    summary, metrics = run.read_summary(), run.read_metrics()
    assert summary["status"] == "interrupted" and "after 1 epoch(s)" in summary["message"]
    assert summary["epochs_done"] == 1 == run.load_checkpoint()["epoch"] == len(metrics)
    assert summary["last_top1"] == metrics[0]["top1"] and summary["best_epoch"] == 1


@pytest.mark.parametrize("moment", ["after_log", "after_save"])
def test_tensorboard_shows_each_epoch_once_after_an_interruption(
    runs_root: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """Stopped right after epoch 2 is logged (before its checkpoint) or right after its checkpoint: the
    resumed run leaves TensorBoard with epochs 1, 2, 3 exactly once each, the checkpoint's values."""
    cfg = _tiny(runs_root, 3)
    log, save = trainer_module.Trainer._log, trainer_module.Trainer._save

    def stopping_log(self, record):
        log(self, record)
        if moment == "after_log" and record["epoch"] == 2:
            raise RunInterrupted("SIGTERM")

    def stopping_save(self, epochs_done):
        save(self, epochs_done)
        if moment == "after_save" and epochs_done == 2:
            raise RunInterrupted("SIGTERM")

    monkeypatch.setattr(trainer_module.Trainer, "_log", stopping_log)
    monkeypatch.setattr(trainer_module.Trainer, "_save", stopping_save)
    with pytest.raises(RunInterrupted):
        train(cfg)
    time.sleep(1.0)  # a new event file must not share the first one's second (TensorBoard orders by name)
    monkeypatch.setattr(trainer_module.Trainer, "_log", log)
    monkeypatch.setattr(trainer_module.Trainer, "_save", save)
    train(cfg)
    run_dir = RunDirectory.of(cfg)
    events = EventAccumulator(str(run_dir.tensorboard_dir))
    events.Reload()
    steps = [event.step for event in events.Scalars("top1")]
    assert steps == [1, 2, 3]
    assert [event.value for event in events.Scalars("top1")] == pytest.approx(
        [record["top1"] for record in run_dir.read_metrics()]
    )


# ------------------------------------------------------------------------------------------------ the sweep

SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
POOL = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mixbench.sweep import Job, SweepInterrupted, report, run_pool
    folder = Path(sys.argv[1])
    command = [sys.executable, "-c", sys.argv[2]]
    jobs = [Job(i, [*command, str(folder / f"{i}.pid")], f"job {i}", folder / f"{i}.log") for i in range(2)]
    try:
        run_pool(jobs, ["0", "1"], echo=lambda line: print(line, flush=True))
    except SweepInterrupted as stop:
        print(report(stop.results, interrupted_by=stop.signal_name), flush=True)
    """
)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to read its exit status does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _pool_with_two_sleeping_jobs(folder: Path) -> tuple[subprocess.Popen, list[int]]:
    pool = subprocess.Popen(
        [sys.executable, "-c", POOL, str(folder), SLEEPER], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    deadline = time.monotonic() + 60
    pid_files = [folder / "0.pid", folder / "1.pid"]
    while not all(path.exists() and path.read_text() for path in pid_files):
        assert time.monotonic() < deadline and pool.poll() is None, "the jobs did not start"
        time.sleep(0.05)
    return pool, [int(path.read_text()) for path in pid_files]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_jobs_die_with_a_sweep_killed_by_sigkill(tmp_path: Path) -> None:
    pool, jobs = _pool_with_two_sleeping_jobs(tmp_path)
    assert all(_alive(pid) for pid in jobs)
    pool.send_signal(signal.SIGKILL)
    pool.wait()
    time.sleep(1.0)
    assert not any(_alive(pid) for pid in jobs), "a job outlived its sweep"


def test_a_sweep_stopped_by_sigterm_stops_its_jobs_and_lists_them(tmp_path: Path) -> None:
    pool, jobs = _pool_with_two_sleeping_jobs(tmp_path)
    pool.send_signal(signal.SIGTERM)
    output, _ = pool.communicate(timeout=60)
    assert not any(_alive(pid) for pid in jobs)
    assert "sweep interrupted by SIGTERM: 0 job(s) succeeded, 2 stopped" in output
    assert "interrupted #0 job 0" in output and "interrupted #1 job 1" in output


def test_the_report_of_an_interrupted_sweep_separates_failed_and_stopped_jobs(tmp_path: Path) -> None:
    jobs = [Job(i, ["x"], f"method=m{i}", tmp_path / f"{i}.log") for i in range(3)]
    results = [
        JobResult(jobs[0], 0, "0", 1.0),
        JobResult(jobs[1], 2, "1", 1.0, "error: bad"),
        JobResult(jobs[2], INTERRUPTED, "0", 1.0),
    ]
    text = report(results, interrupted_by="SIGTERM")
    assert text.splitlines()[0] == "sweep interrupted by SIGTERM: 1 job(s) succeeded, 1 stopped"
    assert "failed #1 (exit 2) method=m1: error: bad" in text and "interrupted #2 method=m2" in text


def test_a_resume_with_another_thread_count_is_said_and_recorded(
    runs_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """CPU numbers depend on the thread count: a resume with another one goes on, but says so in one line
    and summary.json records from which epoch the numbers are not an uninterrupted run's."""
    cfg = _tiny(runs_root, 2)
    save = trainer_module.Trainer._save

    def stops_after_epoch_one(self, epochs_done):
        save(self, epochs_done)
        raise RunInterrupted("SIGTERM")

    monkeypatch.setattr(trainer_module.Trainer, "_save", stops_after_epoch_one)
    with pytest.raises(RunInterrupted):
        train(cfg)  # one thread (the module's fixture)
    monkeypatch.setattr(trainer_module.Trainer, "_save", save)
    torch.set_num_threads(2)
    try:
        summary = train(cfg)
    finally:
        torch.set_num_threads(1)
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: resuming")]
    assert len(notes) == 1 and "torch_threads 1 -> 2" in notes[0]
    assert summary["numerics_changes"] == [{"from_epoch": 2, "changes": "torch_threads 1 -> 2"}]
    assert summary["numerics"]["torch_threads"] == 2


def test_a_corrupt_image_read_by_a_worker_is_one_line_naming_the_file(tmp_path: Path) -> None:
    """A truncated JPEG in an ImageNet-layout folder, read by a DataLoader worker process: the error the
    run reports is the worker's one line naming the file, not "Caught ... in DataLoader worker process 0"."""
    from omegaconf import OmegaConf
    from PIL import Image

    from mixbench.data import build_loaders
    from mixbench.data.base import CorruptImageError
    from mixbench.rundir import first_line

    for split in ("train", "val"):
        for index, wnid in enumerate(("n01000000", "n02000000")):
            folder = tmp_path / "imagenet" / split / wnid
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 40), (index * 200, 50, 50)).save(folder / f"{split}_{index}.JPEG")
    broken = tmp_path / "imagenet" / "train" / "n02000000" / "train_1.JPEG"
    broken.write_bytes((tmp_path / "imagenet" / "train" / "n01000000" / "train_0.JPEG").read_bytes()[:100])
    data_cfg = OmegaConf.create(
        {
            "name": "imagenet",
            "root": str(tmp_path),
            "num_classes": 2,
            "image_size": 32,
            "resident": False,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
        }
    )
    loaders = build_loaders(data_cfg, "crop_flip", 2, 2, 32, torch.device("cpu"), num_workers=1)
    with pytest.raises(CorruptImageError) as failure:
        for _ in loaders.train:
            pass
    assert "worker process" in str(failure.value).splitlines()[0]  # how torch re-raises it
    assert first_line(failure.value).startswith(
        f"mixbench.data.base.CorruptImageError: image file {broken} cannot be decoded ("
    ), first_line(failure.value)


# ---------------------------------------------------------------------------- a killed sweep, re-launched


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _method_of(pid: int) -> str:
    """The method a training process was started with (its ``method=<name>`` argument)."""
    arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    (method,) = [argument.removeprefix("method=") for argument in arguments if argument.startswith("method=")]
    return method


def _metrics_lines(run_dir: Path) -> list[str]:
    path = run_dir / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


TIMING_KEYS = {"seconds", "train_seconds", "images_per_s"}  # differ between two runs of the same numbers


def _without_timing(lines: list[str]) -> list[dict]:
    return [
        {key: value for key, value in json.loads(line).items() if key not in TIMING_KEYS} for line in lines
    ]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_sweep_is_relaunched_to_the_same_numbers_redoing_no_completed_epoch(tmp_path: Path) -> None:
    """Issue 9's acceptance, for a stateless and a stateful method at once.  ``python tools/train.py -m`` on
    the GPU pool (two pretend devices) trains Puzzle Mix and AutoMix (EMA network, Mix Block and its
    optimizer, a step counter).  Mid-epoch, the AutoMix job is SIGKILLed (a kill at any moment: OOM killer,
    a node lost), then the sweep itself: a second later no job is alive, and the Puzzle Mix run, stopped by
    the pool's death, says ``interrupted``.  The same command then completes both runs: the epochs their
    checkpoints mark done stay as written (their lines of metrics.jsonl, timings included: nothing was
    redone), and every epoch's numbers equal those of an uninterrupted run.  (Puzzle Mix, stateless: at this
    size its epoch takes about as long as AutoMix's, so neither run can end before the other has trained an
    epoch; Manifold Mixup, three times faster, sometimes had.)

    The killed sweep is a real process (so is every job the pool starts); the re-launch's parent runs in this
    process (tests/helpers/tools.py); the uninterrupted runs are trained here.  Manifold Mixup's resume from
    SIGKILL, twice, is tests/test_trainer.py's."""
    epochs, methods = 3, ("puzzlemix", "automix")
    overrides = tiny_overrides(tmp_path / "runs", epochs=epochs, window=1)
    expected = {}
    for method in methods:
        reference = compose_config([*tiny_overrides(tmp_path / "reference", epochs, 1), f"method={method}"])
        train(reference)
        expected[method] = _without_timing(_metrics_lines(RunDirectory.of(reference).path))
    run_dirs = {m: RunDirectory.of(compose_config([*overrides, f"method={m}"])).path for m in methods}
    command = [*overrides, f"method={','.join(methods)}", "hydra/launcher=gpus", "hydra.launcher.gpus=[0,1]"]

    environ = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    sweep = subprocess.Popen(
        [sys.executable, str(REPO / "tools" / "train.py"), "-m", *command],
        cwd=REPO,
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while not all(len(_metrics_lines(path)) >= 1 for path in run_dirs.values()):
        assert time.monotonic() < deadline and sweep.poll() is None, "the jobs did not train an epoch"
        time.sleep(0.05)
    jobs = {_method_of(pid): pid for pid in _children(sweep.pid)}
    assert sorted(jobs) == sorted(methods)
    time.sleep(0.2)  # inside an epoch
    os.kill(jobs["automix"], signal.SIGKILL)
    time.sleep(0.1)
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    time.sleep(1.0)
    assert not any(_alive(pid) for pid in jobs.values()), "a job outlived its sweep"
    kept = {}  # the lines of the completed epochs: those the checkpoint marks done
    for method, path in run_dirs.items():
        summary, lines = RunDirectory(path).read_summary(), _metrics_lines(path)
        status = {"puzzlemix": "interrupted", "automix": "running"}[method]  # SIGKILL leaves "running"
        assert summary["status"] == status, (method, summary)
        done = summary["epochs_done"]
        assert 1 <= done < epochs, (method, summary)
        assert len(lines) in (done, done + 1), "an epoch is logged before the checkpoint marks it done"
        kept[method] = lines[:done]

    relaunch = run_tool("train", ["-m", *command])
    assert relaunch.returncode == 0, relaunch.stdout + relaunch.stderr
    assert "sweep finished: 2 of 2 job(s) succeeded" in relaunch.stdout
    for method, path in run_dirs.items():
        lines = _metrics_lines(path)
        assert lines[: len(kept[method])] == kept[method], f"{method}: a completed epoch was redone"
        assert _without_timing(lines) == expected[method], method
        assert RunDirectory(path).read_summary()["status"] == "complete"
