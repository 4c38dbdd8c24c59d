"""The local device pool (mixbench/sweep.py) and ``hydra/launcher=gpus``, on the CPU with pretend devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mixbench.rundir import run_directory
from mixbench.sweep import Job, PoolError, report, resolve_devices, run_pool
from tests.helpers import REPO, compose_config, tiny_overrides
from tests.helpers.tools import run_tool

# A job that records (its device, start, end) and sleeps, so that overlaps can be measured; exit code from
# argv.
RECORDING_JOB = """
import json, os, sys, time
start = time.time()
time.sleep(float(sys.argv[2]))
with open(sys.argv[1], "w") as f:
    json.dump({"device": os.environ["CUDA_VISIBLE_DEVICES"], "start": start, "end": time.time(),
               "threads": os.environ["OMP_NUM_THREADS"]}, f)
if int(sys.argv[3]):
    print("error: this job was told to fail")
sys.exit(int(sys.argv[3]))
"""


def _recording_jobs(tmp_path: Path, exit_codes: list[int], seconds: float = 0.6) -> list[Job]:
    return [
        Job(
            index=i,
            command=[
                sys.executable,
                "-c",
                RECORDING_JOB,
                str(tmp_path / f"job{i}.json"),
                str(seconds),
                str(code),
            ],
            label=f"job={i}",
            log_path=tmp_path / "logs" / f"{i}.log",
        )
        for i, code in enumerate(exit_codes)
    ]


def _overlaps(records: list[dict]) -> int:
    """The largest number of jobs running at the same moment."""
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def test_pool_runs_two_jobs_at_once_one_per_device_and_reports_the_failure(tmp_path: Path) -> None:
    jobs = _recording_jobs(tmp_path, [0, 0, 3, 0, 0])
    results = run_pool(jobs, devices=["0", "1"], echo=lambda line: None)
    records = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(5)]
    assert _overlaps(records) == 2, "two slots: exactly two jobs at a time"
    for device in ("0", "1"):  # never two jobs at once on one device
        assert _overlaps([r for r in records if r["device"] == device]) == 1
    assert {r["device"] for r in records} == {"0", "1"}
    assert [r.returncode for r in results] == [0, 0, 3, 0, 0]
    assert [r.job.index for r in results] == [0, 1, 2, 3, 4]
    assert results[2].last_line == "error: this job was told to fail"
    text = report(results)
    assert text.splitlines()[0] == "sweep finished: 4 of 5 job(s) succeeded"
    assert "failed #2 (exit 3) job=2: error: this job was told to fail" in text
    assert str(tmp_path / "logs" / "2.log") in text


def test_a_job_with_a_reason_to_skip_starts_no_process_and_takes_no_slot(tmp_path: Path) -> None:
    jobs = _recording_jobs(tmp_path, [3, 0, 0])
    asked: list[int] = []

    def skip_first() -> str:
        asked.append(0)
        return "complete, skipped: runs/x (median top-1 of the last 1 epochs 50.00); force=true to redo it"

    jobs[0].skip = skip_first
    jobs[1].skip = lambda: None
    echoed: list[str] = []
    results = run_pool(jobs, devices=["0"], echo=echoed.append)
    assert asked == [0] and not (tmp_path / "job0.json").exists(), "the skipped job never ran"
    assert [r.returncode for r in results] == [0, 0, 0], "job 0 would have exited 3"
    assert results[0].last_line.startswith("complete, skipped: runs/x")
    assert (tmp_path / "logs" / "0.log").read_text().startswith("complete, skipped: runs/x")
    assert {json.loads((tmp_path / f"job{i}.json").read_text())["device"] for i in (1, 2)} == {"0"}
    assert not any(line.startswith("[gpu 0] start #0") for line in echoed)
    assert report(results).splitlines()[0] == "sweep finished: 3 of 3 job(s) succeeded"


def test_jobs_per_device_shares_a_device_and_splits_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    jobs = _recording_jobs(tmp_path, [0, 0, 0, 0])
    run_pool(jobs, devices=["7"], jobs_per_device=2, echo=lambda line: None)
    records = [json.loads((tmp_path / f"job{i}.json").read_text()) for i in range(4)]
    assert {r["device"] for r in records} == {"7"}
    assert _overlaps(records) == 2
    assert {r["threads"] for r in records} == {str(max(1, (os.cpu_count() or 1) // 2))}


def test_devices_resolve_from_all_a_count_or_a_list() -> None:
    assert resolve_devices("all", visible=["0", "1", "2"]) == ["0", "1", "2"]
    assert resolve_devices(2, visible=["4", "5", "6"]) == ["4", "5"]
    assert resolve_devices([0, 3]) == ["0", "3"]  # taken as given: pretend devices on a CPU machine
    with pytest.raises(PoolError, match="no GPU is visible"):
        resolve_devices("all", visible=[])
    with pytest.raises(PoolError, match="3 GPU\\(s\\) are visible"):
        resolve_devices(4, visible=["0", "1", "2"])
    with pytest.raises(PoolError, match="twice"):
        resolve_devices([1, 1])
    with pytest.raises(PoolError, match="not understood"):
        resolve_devices("some")
    with pytest.raises(PoolError, match="not understood"):
        resolve_devices(True)


def _table_rows(table_md: str) -> list[str]:
    return [line for line in table_md.splitlines() if line.startswith("|") and "---" not in line][1:]


@pytest.mark.slow
def test_quickstart_sweep_on_two_pretend_devices_with_a_failure_then_relaunch(runs_root: Path) -> None:
    """The issue's acceptance run, shrunk to two of the quickstart's methods on two pretend devices: one job
    fails (its run directory holds another configuration), the other completes; after removing the cause,
    the same command finishes the missing run and skips the complete one; the table then has every method.

    ``tools/train.py -m`` and ``tools/table.py`` run in this process (tests/helpers/tools.py: the same
    scripts and arguments, Hydra's plugins found in tools/hydra_plugins as a fresh process finds them); the
    pool starts every job as a real ``python tools/train.py`` process, as it does for users: the failed
    one prints its error in one line and nothing else (no traceback, nothing while importing)."""
    overrides = tiny_overrides(runs_root, epochs=1, window=1)
    blocked = run_directory(compose_config([*overrides, "method=cutmix"]))
    blocked.mkdir(parents=True)
    foreign = yaml.safe_load(json.dumps({"seed": 99, "method": {"name": "cutmix"}}))
    (blocked / "config.yaml").write_text(yaml.safe_dump(foreign))
    methods = ["vanilla", "cutmix"]  # over the experiment's grid, as a command line may
    command = [
        "-m",
        *overrides,
        f"method={','.join(methods)}",
        "hydra/launcher=gpus",
        "hydra.launcher.gpus=[0,1]",
    ]

    first = run_tool("train", command)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "sweep finished: 1 of 2 job(s) succeeded" in first.stdout
    error_lines = [line for line in first.stderr.splitlines() if line.strip()]
    assert error_lines == [error_lines[-1]], "one line"
    assert error_lines[-1].startswith("error: 1 job(s) of the sweep failed: #1 method=cutmix"), first.stderr
    assert "holds a run of a different configuration" in error_lines[-1]
    (failed_log,) = runs_root.glob(".multirun/*/1.log")  # all a real `python tools/train.py` printed
    (job_line,) = failed_log.read_text().splitlines()
    assert job_line.startswith("error: ") and "holds a run of a different configuration" in job_line
    summaries = sorted(runs_root.glob("**/summary.json"))
    assert len(summaries) == 1 and all(json.loads(p.read_text())["status"] == "complete" for p in summaries)
    assert (blocked / "config.yaml").read_text() == yaml.safe_dump(foreign), "the foreign run is untouched"

    (blocked / "config.yaml").unlink()
    second = run_tool("train", command)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "sweep finished: 2 of 2 job(s) succeeded" in second.stdout
    logs = sorted((runs_root / ".multirun").glob("*/*.log"))
    assert len(logs) == 4, "each launch logs its jobs in a folder of its own"
    skipped = [p for p in logs if "complete, skipped" in p.read_text()]
    assert len(skipped) == 1, "the complete run is skipped on re-launch"
    assert "#0 complete, skipped" in second.stdout, "by the pool, without starting a process"
    assert json.loads((blocked / "summary.json").read_text())["status"] == "complete"

    table = run_tool("table", [str(runs_root), "--out", str(runs_root / "tables")])
    assert table.returncode == 0, table.stderr
    rows = "\n".join(row for p in (runs_root / "tables").glob("*.md") for row in _table_rows(p.read_text()))
    for method in methods:
        assert f"| {method} " in rows or f"| `{method}` " in rows, rows


def test_slurm_launcher_config_composes_onto_submitit() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[slurm]'")
    from hydra import compose, initialize_config_dir

    from mixbench.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=["experiment=quickstart", "hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.tasks_per_node) == ("gpu", 1, 1)
    assert str(launcher.submitit_folder).startswith("runs/quickstart/.slurm/")


def test_gpu_pool_launcher_config_names_a_class_hydra_can_find() -> None:
    """Hydra only instantiates launchers from the hydra_plugins namespace: the class must be importable there
    when tools/ is on sys.path (as it is for python tools/train.py)."""
    from hydra import compose, initialize_config_dir

    from mixbench.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=gpus"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert target.startswith("hydra_plugins.")
    module, name = target.rsplit(".", 1)
    tools = str(REPO / "tools")
    probe = f"import sys; sys.path.insert(0, {tools!r}); import {module} as m; print(m.{name}.__name__)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == name, out.stderr
    assert (cfg.hydra.launcher.gpus, cfg.hydra.launcher.jobs_per_gpu) == ("all", 1)
