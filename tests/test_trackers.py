"""Experiment trackers with the real packages, offline: what each logs, read back with the tool's own reader.

TensorBoard is read with its ``EventAccumulator``, MLflow with ``MlflowClient`` / ``mlflow.search_runs``, W&B
from the records of its offline ``.wandb`` file decoded with W&B's own protobuf classes (the installed W&B
ships no Python reader of that file: its LevelDB-style framing is undone below).  Nothing here reaches the
network: W&B runs offline (and the tracker tells W&B's process-wide set-up so), MLflow uses SQLite files.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mixbench.config import ConfigError
from mixbench.trackers import NoneTracker, check_tracker_available, open_tracker
from mixbench.trackers.base import RUN_ID_FILE, read_run_id
from tests.helpers import REPO, compose_config, tiny_overrides
from tests.helpers.tools import run_tool

CONFIG: dict[str, Any] = {
    "data": {"name": "digits", "image_size": 8},
    "model": {"name": "r18", "width": 4},
    "method": {"name": "mixup", "alpha": 1.0},
    "schedule": {"name": "digits_quick", "epochs": 3, "optimizer": {"lr": 0.1, "milestones": [10, 20]}},
    "seed": 0,
    "note": "x" * 700,  # longer than any MLflow server takes as a param value
}
RUN_NAME = "digits/r18/mixup/digits_quick/seed0"


def record(epoch: int, top1: float | None = None) -> dict[str, Any]:
    """A metrics.jsonl line; top1 = 50 + 10 * epoch unless given."""
    return {
        "epoch": epoch,
        "lr": 0.1 / epoch,
        "train_loss": 2.0 / epoch,
        "top1": 50.0 + 10 * epoch if top1 is None else top1,
        "top5": 90.0 + epoch,
        "test_images": 450,
        "images_per_s": 123.4,
    }


SUMMARY: dict[str, Any] = {
    "status": "complete",
    "median_last2_top1": 75.0,
    "best_top1": 80.0,
    "best_epoch": 3,
    "epochs_done": 3,
    "device": "cpu",
    "channels_last": False,
    "train_images_per_s": None,
    "versions": {"torch": "2"},
}


@pytest.fixture(autouse=True)
def offline_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Quiet W&B and keep its per-user folders in the test's; no MLflow telemetry."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / variable.lower()))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for variable in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)


# ------------------------------------------------------------------------------------- availability, none


@pytest.mark.parametrize(
    ("logger", "missing", "message"),
    [
        (
            {"name": "wandb"},
            "wandb",
            'logger=wandb needs the wandb package; install it with pip install -e ".[wandb]"',
        ),
        (
            {"name": "mlflow", "tracking_uri": None},
            "mlflow",
            'logger=mlflow needs the mlflow package; install it with pip install -e ".[mlflow]"',
        ),
        (
            {"name": "mlflow", "tracking_uri": None},
            "sqlalchemy",
            "logger=mlflow needs the sqlalchemy package (for MLflow's SQL store); "
            'install it with pip install -e ".[mlflow]"',
        ),
        (
            {"name": "tensorboard"},
            "tensorboard",
            "logger=tensorboard needs the tensorboard package; install it with pip install tensorboard",
        ),
    ],
)
def test_a_missing_package_is_one_line_naming_it_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, logger: dict, missing: str, message: str
) -> None:
    check_tracker_available(logger)  # installed: no complaint
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    with pytest.raises(ConfigError) as error:
        check_tracker_available(logger)
    assert str(error.value) == message
    with pytest.raises(ConfigError):
        open_tracker(logger, tmp_path / "tracker", CONFIG, 0, RUN_NAME)
    assert not (tmp_path / "tracker").exists()


def test_an_mlflow_server_needs_no_sql_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sqlalchemy" else real(name, *a)
    )
    check_tracker_available({"name": "mlflow", "tracking_uri": "http://mlflow.example:5000"})
    with pytest.raises(ConfigError, match="sqlalchemy"):
        check_tracker_available({"name": "mlflow", "tracking_uri": "sqlite:////tmp/store.db"})


def test_an_unknown_logger_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as error:
        check_tracker_available({"name": "comet"})
    assert "\n" not in str(error.value)
    for name in ("mlflow", "none", "tensorboard", "wandb", "comet"):
        assert name in str(error.value)


def test_the_none_tracker_writes_nothing(tmp_path: Path) -> None:
    tracker = open_tracker({"name": "none"}, tmp_path / "none", CONFIG, 0, RUN_NAME)
    assert isinstance(tracker, NoneTracker)
    tracker.log_epoch(record(1))
    tracker.finish(SUMMARY, "complete")
    assert list(tmp_path.iterdir()) == []


def test_logger_group_defaults_to_tensorboard_and_wandb_to_offline(tmp_path: Path) -> None:
    assert compose_config(tiny_overrides(tmp_path)).logger.name == "tensorboard"
    names = sorted(path.stem for path in (REPO / "configs" / "logger").glob("*.yaml"))
    assert names == ["mlflow", "none", "tensorboard", "wandb"]
    loggers = {name: compose_config([*tiny_overrides(tmp_path), f"logger={name}"]).logger for name in names}
    assert all(loggers[name].name == name for name in names)
    wandb_cfg, mlflow_cfg = loggers["wandb"], loggers["mlflow"]
    assert (wandb_cfg.mode, wandb_cfg.project, wandb_cfg.entity, list(wandb_cfg.tags)) == (
        "offline",
        "mixbench",
        None,
        [],
    )
    assert (mlflow_cfg.tracking_uri, mlflow_cfg.experiment_name) == (None, "mixbench")


# ---------------------------------------------------------------------------------------------- TensorBoard


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def tensorboard_texts(folder: Path) -> dict[str, list[tuple[int, str]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    events.Reload()
    return {  # add_text("config", ...) is stored under the tag "config/text_summary"
        tag.removesuffix("/text_summary"): [
            (event.step, event.tensor_proto.string_val[0].decode()) for event in events.Tensors(tag)
        ]
        for tag in events.Tags()["tensors"]
    }


def test_tensorboard_logs_each_epoch_the_config_and_the_summary(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "tb"
    tracker = open_tracker({"name": "tensorboard"}, folder, CONFIG, 0, RUN_NAME)
    for epoch in (1, 2, 3):
        tracker.log_epoch(record(epoch))
    tracker.finish(SUMMARY, "complete")

    scalars = tensorboard_scalars(folder)
    assert scalars["top1"] == [(1, 60.0), (2, 70.0), (3, 80.0)]
    assert [step for step, _ in scalars["lr"]] == [1, 2, 3]
    assert "epoch" not in scalars
    assert scalars["summary/median_last2_top1"] == [(3, 75.0)]
    assert scalars["summary/epochs_done"] == [(3, 3.0)]
    assert not {"summary/channels_last", "summary/device", "summary/train_images_per_s"} & set(scalars)
    texts = tensorboard_texts(folder)
    assert [step for step, _ in texts["config"]] == [0]
    assert "digits_quick" in texts["config"][0][1] and "milestones" in texts["config"][0][1]
    assert texts["status"] == [(3, "complete")]


def test_tensorboard_resume_drops_the_epochs_past_the_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "tb"
    killed = open_tracker({"name": "tensorboard"}, folder, CONFIG, 0, RUN_NAME)
    for epoch in (1, 2, 3):
        killed.log_epoch(record(epoch))
    # SIGKILL after epoch 3 was logged (and flushed), with a checkpoint of 2 epochs: no finish.
    killed.writer.close()
    # TensorBoard reads event files in name order: "events.out.tfevents.<second>.<host>.<pid>.<n>".  Give
    # the killed session's file a host name sorting last, as if another machine wrote it in that second.
    (path,) = folder.iterdir()
    second = path.name.split(".")[3]
    path.rename(folder / f"events.out.tfevents.{second}.~host.1.0")

    resumed = open_tracker({"name": "tensorboard"}, folder, CONFIG, 2, RUN_NAME)
    resumed.log_epoch(record(3, top1=81.5))
    resumed.log_epoch(record(4))
    resumed.finish({**SUMMARY, "epochs_done": 4}, "complete")

    top1 = tensorboard_scalars(folder)["top1"]
    assert top1 == [(1, 60.0), (2, 70.0), (3, 81.5), (4, 90.0)]  # epoch 2 kept, epoch 3 once: the resumed one
    assert len(tensorboard_texts(folder)["config"]) == 1  # the config is written by the first session only


# ------------------------------------------------------------------------------------------------------ W&B


def wandb_records(path: Path) -> list[Any]:
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then 32 KiB blocks of framed chunks
    (4-byte checksum, 2-byte length, 1-byte type: full, first, middle, last) as in LevelDB's log format."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, position, parts, records = 32768, 7, [], []
    while position + 7 <= len(data):
        room = block - position % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            position += room
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding up to the block's end
            position += room
            continue
        parts.append(data[position + 7 : position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # full, or the last chunk of a record
            parsed = wandb_internal_pb2.Record()
            parsed.ParseFromString(b"".join(parts))
            records.append(parsed)
            parts = []
    return records


def wandb_records_once_written(path: Path, timeout: float = 30.0) -> list[Any]:
    """The records of a ``.wandb`` file once it holds the session's exit record.  The file is written by W&B's
    service, a process of its own: ``run.finish()`` returns once the service has the exit status, and on a
    loaded machine the file's last blocks can reach the disk a moment later (seen once in a full suite run:
    no record read yet).  Waiting for the exit record asserts the same thing without the race."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _item_key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_offline_run(folder: Path) -> dict[str, Any]:
    """One offline session folder read back: run id and name, config, history rows by step, summary."""
    (path,) = folder.glob("run-*.wandb")
    records = wandb_records_once_written(path)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {_item_key(item): json.loads(item.value_json) for item in r.history.item}
            history[row["_step"]] = row
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({_item_key(item): json.loads(item.value_json) for item in r.summary.update})
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    return {"id": run.run_id, "name": run.display_name, "project": run.project, "tags": list(run.tags),
            "config": config, "history": history, "summary": summary, "exit_codes": exits}  # fmt: skip


def wandb_sessions(folder: Path) -> list[dict[str, Any]]:
    return [wandb_offline_run(path) for path in sorted(folder.glob("offline-run-*"))]


WANDB = {
    "name": "wandb",
    "project": "mixbench-tests",
    "entity": None,
    "mode": "offline",
    "tags": ["t1"],
    "group": None,
}


def test_wandb_offline_logs_the_config_each_epoch_and_the_summary(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "wandb"
    tracker = open_tracker(WANDB, folder, CONFIG, 0, RUN_NAME)
    for epoch in (1, 2, 3):
        tracker.log_epoch(record(epoch))
    tracker.finish(SUMMARY, "complete")

    assert sorted(path.name for path in (tmp_path / "run").iterdir()) == ["wandb"]  # W&B's folder is ours
    (session,) = wandb_sessions(folder)
    assert session["id"] == read_run_id(folder)
    assert (session["name"], session["project"], session["tags"]) == (RUN_NAME, "mixbench-tests", ["t1"])
    assert session["config"]["schedule"]["optimizer"]["milestones"] == [10, 20]
    assert sorted(session["history"]) == [1, 2, 3]
    assert [session["history"][step]["top1"] for step in (1, 2, 3)] == [60.0, 70.0, 80.0]
    assert "epoch" not in session["history"][1]
    assert session["summary"]["median_last2_top1"] == 75.0
    assert session["summary"]["status"] == "complete"
    assert "channels_last" not in session["summary"]
    assert session["exit_codes"] == [0]


def test_wandb_resume_continues_the_same_run(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "wandb"
    killed = open_tracker(WANDB, folder, CONFIG, 0, RUN_NAME)
    for epoch in (1, 2, 3):
        killed.log_epoch(record(epoch))
    killed.run.finish(exit_code=137)  # what W&B records of a killed process; the tracker's finish never ran

    resumed = open_tracker(WANDB, folder, CONFIG, 2, RUN_NAME)
    resumed.log_epoch(record(3, top1=81.5))
    resumed.finish(SUMMARY, "failed")

    first, second = wandb_sessions(folder)
    assert first["id"] == second["id"] == (folder / RUN_ID_FILE).read_text().strip()
    assert sorted(first["history"]) == [1, 2, 3]
    assert sorted(second["history"]) == [3]  # offline, the resumed session logs from the checkpoint on
    assert second["history"][3]["top1"] == 81.5
    assert second["summary"]["status"] == "failed" and second["exit_codes"] == [1]


OFFLINE_SCRIPT = """
import atexit, socket, sys
from pathlib import Path

attempts = []

def refuse(host, *args, **kwargs):
    attempts.append(host)
    raise OSError("no network in this test")

socket.getaddrinfo = refuse
atexit.register(lambda: print("looked up:", attempts))  # registered first, so it runs after W&B's exit hooks

from mixbench.trackers import open_tracker

tracker = open_tracker({"name": "wandb", "mode": "offline"}, Path(sys.argv[1]), {"seed": 0}, 0, "a/b")
tracker.log_epoch({"epoch": 1, "top1": 50.0})
tracker.finish({"status": "complete"}, "complete")
"""


def test_wandb_offline_looks_up_no_host(tmp_path: Path) -> None:
    """Offline means no connection at all, also from W&B's own telemetry when the process exits."""
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT, str(tmp_path / "wandb")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "looked up: []"


# --------------------------------------------------------------------------------------------------- MLflow


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run logged into a fresh default (local SQLite) store, 3 epochs and the summary; its folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        folder = tmp_path_factory.mktemp("mlflow") / "run" / "mlflow"
        logger = {"name": "mlflow", "tracking_uri": None, "experiment_name": "mixbench"}
        tracker = open_tracker(logger, folder, CONFIG, 0, RUN_NAME)
        for epoch in (1, 2, 3):
            tracker.log_epoch(record(epoch))
        tracker.finish(SUMMARY, "complete")
    return folder


def mlflow_client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def top1_history(client, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "top1"))


def test_mlflow_logs_params_epochs_and_summary_into_a_local_store(mlflow_run: Path) -> None:
    import mlflow

    from mixbench.trackers.mlflow import local_store_uri

    assert sorted(path.name for path in mlflow_run.iterdir()) == ["mlflow.db", RUN_ID_FILE]
    uri = local_store_uri(mlflow_run)
    mlflow.set_tracking_uri(uri)
    try:
        (run,) = mlflow.search_runs(experiment_names=["mixbench"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    assert run.info.run_id == read_run_id(mlflow_run)
    assert run.info.run_name == RUN_NAME
    assert run.info.status == "FINISHED"
    assert run.data.tags["mixbench.status"] == "complete"
    assert run.data.params["data.name"] == "digits"
    assert run.data.params["schedule.optimizer.milestones"] == "[10, 20]"
    assert len(run.data.params["note"]) == 500  # cut, not refused
    assert run.data.metrics["summary/median_last2_top1"] == 75.0
    assert "summary/channels_last" not in run.data.metrics and "epoch" not in run.data.metrics
    assert top1_history(mlflow_client(uri), run.info.run_id) == [(1, 60.0), (2, 70.0), (3, 80.0)]
    assert Path(mlflow_client(uri).get_experiment_by_name("mixbench").artifact_location).name == "artifacts"


def test_mlflow_resume_continues_the_same_run(mlflow_run: Path, tmp_path: Path) -> None:
    store = tmp_path / "server.db"  # a store of MLflow's tables, copied: creating one takes seconds
    shutil.copy(mlflow_run / "mlflow.db", store)
    logger = {"name": "mlflow", "tracking_uri": f"sqlite:///{store}", "experiment_name": "mixbench"}
    folder = tmp_path / "run" / "mlflow"

    killed = open_tracker(logger, folder, CONFIG, 0, RUN_NAME)
    for epoch in (1, 2, 3):
        killed.log_epoch(record(epoch))
    run_id = killed.run_id
    client = mlflow_client(logger["tracking_uri"])
    assert client.get_run(run_id).info.status == "RUNNING"  # killed: never finished

    resumed = open_tracker({**logger}, folder, {**CONFIG, "num_workers": 2}, 2, RUN_NAME)
    resumed.log_epoch(record(3, top1=81.5))
    resumed.log_epoch(record(4))
    resumed.finish({**SUMMARY, "status": "failed"}, "failed")

    assert read_run_id(folder) == run_id
    assert not (folder / "mlflow.db").exists()  # the store is the one the URI names
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["mixbench.status"] == "failed"
    assert "num_workers" not in run.data.params  # params come from the session that made the run
    history = top1_history(client, run_id)
    assert [step for step, _ in history] == [1, 2, 3, 3, 4]
    assert (3, 81.5) in history and run.data.metrics["top1"] == 90.0


# ----------------------------------------------------------------------------- end to end (wired by the lead)
# ``python tools/train.py`` run in this process (tests/helpers/tools.py): the same script and code path as
# the command line, the tracker's packages already imported.


def _run_folder(runs_root: Path) -> Path:
    (metrics,) = runs_root.rglob("metrics.jsonl")
    return metrics.parent


def _jsonl_top1(run: Path) -> list[tuple[int, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(row["epoch"], row["top1"]) for row in map(json.loads, lines)]


@pytest.mark.slow
@pytest.mark.usefixtures("single_torch_thread")
def test_train_two_epochs_with_wandb(runs_root: Path) -> None:
    done = run_tool("train", [*tiny_overrides(runs_root, epochs=2, window=2), "logger=wandb"])
    assert done.returncode == 0, done.stderr
    run = _run_folder(runs_root)
    (session,) = [wandb_offline_run(path.parent) for path in run.rglob("run-*.wandb")]
    expected = _jsonl_top1(run)
    assert len(expected) == 2
    assert sorted(session["history"]) == [epoch for epoch, _ in expected]
    logged = [row["top1"] for _, row in sorted(session["history"].items())]
    assert logged == pytest.approx([top1 for _, top1 in expected])
    assert session["config"]["data"]["name"] == "digits"
    assert session["summary"]["status"] == "complete" and session["exit_codes"] == [0]


@pytest.mark.slow
@pytest.mark.usefixtures("single_torch_thread")
def test_train_two_epochs_with_mlflow(runs_root: Path) -> None:
    done = run_tool("train", [*tiny_overrides(runs_root, epochs=2, window=2), "logger=mlflow"])
    assert done.returncode == 0, done.stderr
    run = _run_folder(runs_root)
    (store,) = run.rglob("mlflow.db")
    client = mlflow_client(f"sqlite:///{store}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("mixbench").experiment_id])
    expected = _jsonl_top1(run)
    assert len(expected) == 2
    history = top1_history(client, mlflow_run.info.run_id)
    assert [step for step, _ in history] == [epoch for epoch, _ in expected]
    assert [top1 for _, top1 in history] == pytest.approx([top1 for _, top1 in expected])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.data.params["data.name"] == "digits"
