"""tools/evaluate.py end to end on tiny digits runs: every suite writes its record, is skipped when asked
again, agrees with the trainer and with the other suites where they measure the same thing, and refuses bad
input in one line without writing anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mixbench.evaluation.images import digit_ink_boxes, evaluation_images
from mixbench.evaluation.localization import cub_box_to_resized
from mixbench.evaluation.suites import SUITES, generated_ood_images
from mixbench.rundir import EVALUATION_KEYS, RunDirectory, find_runs
from tests.helpers.config import REPO, tiny_overrides
from tests.helpers.tools import run_tool

pytestmark = [
    pytest.mark.usefixtures("single_torch_thread"),
    pytest.mark.xdist_group("evaluate_tool"),  # one worker trains and evaluates the module's runs, once
    pytest.mark.slow,  # trains runs and starts processes: scheduled first (conftest.py)
]

QUICK = [  # every suite's protocol shrunk to seconds (the values are part of the protocol, so recorded)
    "eval.corruption.corruptions=[gaussian_noise,contrast]",
    "eval.corruption.severities=[1,5]",
    "eval.pgd.steps=3",
    "eval.cost.steps=2",
    "eval.cost.warmup=1",
    "eval.wsol.threshold_interval=0.1",
    "progress=false",
]


def quick(*chosen: str) -> list[str]:
    """The :data:`QUICK` overrides of the chosen suites (a suite not chosen cannot be overridden)."""
    return [item for item in QUICK if not item.startswith("eval.") or item.split(".")[1] in chosen]


@pytest.fixture(scope="session")  # session: other modules' tests on this worker do not tear it down
def trained(tmp_path_factory) -> dict[str, Path]:
    """Two complete 3-epoch runs on 8 px digits: vanilla (one network) and AutoMix (online and EMA)."""
    root = tmp_path_factory.mktemp("runs")
    result = run_tool("train", ["-m", *tiny_overrides(root), "method=vanilla,automix"])
    assert result.returncode == 0, result.stderr
    return {RunDirectory(path).read_summary()["method"]: path for path in find_runs(root)} | {"root": root}


@pytest.fixture(scope="session")
def evaluated(trained) -> dict:
    """``eval=all`` over both runs, and the same command again."""
    first = run_tool("evaluate", [str(trained["root"]), "eval=all", *QUICK])
    assert first.returncode == 0, first.stderr
    snapshot = {
        path: path.read_bytes()
        for run in ("vanilla", "automix")
        for path in (trained[run] / "eval").iterdir()
    }
    second = run_tool("evaluate", [str(trained["root"]), "eval=all", *QUICK])
    return {"first": first, "second": second, "snapshot": snapshot}


def _lines(result, start: str) -> int:
    """How many lines of the tool's output start with ``start`` (one per run and suite)."""
    return sum(line.startswith(start) for line in result.stdout.splitlines())


def _record(run: Path, suite: str, weights: str = "last") -> dict:
    return RunDirectory(run).read_evaluation(suite, weights)


def test_every_suite_writes_its_record_with_weights_protocol_and_every_network(trained, evaluated):
    for method, labels in (("vanilla", {"online"}), ("automix", {"online", "ema"})):
        summary = RunDirectory(trained[method]).read_summary()
        assert set(summary["evaluated"]) == labels
        for suite in SUITES:
            record = _record(trained[method], suite)
            assert record is not None, f"{method} has no {suite} record"
            assert set(EVALUATION_KEYS) <= set(record)
            assert record["suite"] == suite and record["protocol"]
            if suite == "cost":
                assert record["networks"] == {} and record["step"]["params"] == summary["params"]
                assert record["step"]["batch_size"] == 64 and record["step"]["ms_per_batch"] > 0
                continue
            assert record["weights"] == {"which": "last", "file": "checkpoint.pt", "epoch": 3}
            assert set(record["networks"]) == labels
            assert record["data"]["dataset"] == "digits" and record["data"]["images"] == 450
    assert _record(trained["vanilla"], "corruption")["data"]["corruption_source"] == "generated"
    assert _record(trained["vanilla"], "pgd")["protocol"]["steps"] == 3
    assert "eval.ood" not in evaluated["first"].stderr


def test_the_suites_agree_with_the_trainer_and_with_each_other(trained, evaluated):
    """Clean error of the attacks = 100 - the trainer's last top-1; occlusion at 0 % and corruption's clean
    accuracy = the trainer's top-1; calibration's top-1 likewise; FGSM and PGD attack the same clean
    images."""
    for method in ("vanilla", "automix"):
        summary = RunDirectory(trained[method]).read_summary()
        for label in summary["evaluated"]:
            prefix = "" if label == "online" else f"{label}_"
            top1 = RunDirectory(trained[method]).read_metrics()[-1][f"{prefix}top1"]
            fgsm = _record(trained[method], "fgsm")["networks"][label]
            pgd = _record(trained[method], "pgd")["networks"][label]
            assert fgsm["clean_error"] == pytest.approx(100 - top1, abs=1e-9)
            assert pgd["clean_error"] == pytest.approx(100 - top1, abs=1e-9)
            assert fgsm["adversarial_error"] >= fgsm["clean_error"] - 1e-9
            occlusion = _record(trained[method], "occlusion")["networks"][label]["accuracy"]
            assert occlusion["0.0"] == pytest.approx(top1, abs=1e-9)
            assert occlusion["1.0"] <= 100
            corruption = _record(trained[method], "corruption")["networks"][label]
            assert corruption["clean_top1"] == pytest.approx(top1, abs=1e-9)
            accuracies = [value for per in corruption["accuracy"].values() for value in per.values()]
            assert corruption["mean"] == pytest.approx(np.mean(accuracies))
            assert _record(trained[method], "calibration")["networks"][label]["top1"] == pytest.approx(top1)


def test_figures_are_written_beside_the_records(trained, evaluated):
    for name in ("calibration_online.png", "occlusion_online.png", "cam_online.png", "cam_ema.png"):
        folder = trained["automix"] / "eval"
        assert (folder / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_a_second_run_skips_every_suite_and_changes_no_file(trained, evaluated):
    second = evaluated["second"]
    assert second.returncode == 0, second.stderr
    assert _lines(second, "skipped ") == 2 * len(SUITES) and _lines(second, "evaluated ") == 0
    for path, content in evaluated["snapshot"].items():
        assert path.read_bytes() == content, path


def test_a_changed_protocol_or_force_redoes_only_that_suite(trained, evaluated):
    run = trained["vanilla"]
    before = _record(run, "fgsm")
    changed = run_tool("evaluate", [str(run), "eval=fgsm,pgd", "eval.fgsm.eps=2", *quick("pgd")])
    assert changed.returncode == 0, changed.stderr
    assert _lines(changed, "evaluated ") == 1 and _lines(changed, "skipped ") == 1  # fgsm redone, pgd not
    after = _record(run, "fgsm")
    assert (
        after["protocol"]["eps"] == 2
        and after["networks"]["online"]["adversarial_error"]
        <= (before["networks"]["online"]["adversarial_error"])
    )
    forced = run_tool("evaluate", [str(run), "eval=fgsm", "eval.fgsm.eps=2", "force=true", *quick()])
    assert forced.returncode == 0 and _lines(forced, "evaluated ") == 1
    restored = run_tool("evaluate", [str(run), "eval=fgsm", *quick()])
    assert restored.returncode == 0
    assert (
        _record(run, "fgsm")["networks"] == before["networks"]
    )  # deterministic: same protocol, same numbers


def test_weights_best_evaluates_best_pt_into_its_own_record(trained, evaluated):
    run = trained["vanilla"]
    result = run_tool("evaluate", [str(run), "eval=calibration", "weights=best", *quick()])
    assert result.returncode == 0, result.stderr
    record = _record(run, "calibration", "best")
    summary = RunDirectory(run).read_summary()
    assert record["weights"] == {"which": "best", "file": "best.pt", "epoch": summary["best_epoch"]}
    assert record["networks"]["online"]["top1"] == pytest.approx(summary["best_top1"])
    assert (run / "eval" / "calibration_online@best.png").is_file()
    assert _record(run, "calibration")["weights"]["which"] == "last"  # the last-epoch record is kept


def _copy_run(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns("eval"))
    return destination


@pytest.mark.parametrize(
    "case",
    [
        "incomplete run",
        "missing OOD set",
        "transformer for WSOL",
        "unknown suite",
        "missing best.pt",
        "override of a suite not chosen",
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, case):
    run = _copy_run(trained["vanilla"], tmp_path / "run")
    arguments = [str(run), "eval=fgsm", *quick()]
    expected = ""
    if case == "incomplete run":
        summary = json.loads((run / "summary.json").read_text())
        summary["status"] = "interrupted"
        (run / "summary.json").write_text(json.dumps(summary))
        expected = "is not complete"
    elif case == "missing OOD set":
        arguments = [str(run), "eval=fgsm,ood", "eval.ood.sets=[isun]", f"eval.ood.root={tmp_path / 'none'}"]
        expected = "iSUN"
    elif case == "transformer for WSOL":
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["model"].update(name="swin_t", width=None)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        arguments = [str(run), "eval=fgsm,wsol", *quick("wsol")]
        expected = "no class activation map"
    elif case == "unknown suite":
        arguments = [str(run), "eval=fgsm,robustness"]
        expected = "unknown suite robustness"
    elif case == "override of a suite not chosen":
        arguments = [str(run), "eval=fgsm", "eval.pgd.steps=3"]
        expected = "eval.pgd.steps"
    elif case == "missing best.pt":
        (run / "best.pt").unlink()
        arguments = [str(run), "eval=fgsm", "weights=best"]
        expected = "use weights=last"
    result = run_tool("evaluate", arguments)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (run / "eval").exists()


def test_eval_all_lists_wsol_as_not_applicable_instead_of_refusing(trained, tmp_path):
    run = _copy_run(trained["vanilla"], tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"].update(name="swin_t", width=None)  # a config without CAMs (only WSOL is asked here)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    from omegaconf import OmegaConf

    from mixbench.evaluation.runner import plan

    cfg = OmegaConf.create(
        {
            "target": str(run),
            "eval": {"wsol": {"cam_threshold": 0.15}},
            "weights": "last",
            "force": False,
            "applicable_only": True,
            "device": "cpu",
            "precision": "fp32",
            "channels_last": False,
            "data_root": None,
        }
    )
    tasks, _ = plan(cfg)
    assert tasks[0].skip_reason.startswith("left out") and "no class activation map" in tasks[0].skip_reason
    config["model"].update(name="r18", width=4)
    config["method"] = {"name": "alignmixup_ae"}  # classifies through its own embedding head: no CAM either
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    tasks, _ = plan(cfg)
    assert "method alignmixup_ae has no class activation map" in tasks[0].skip_reason


def test_the_sweep_pool_skips_an_evaluation_job_whose_suites_are_done(trained, evaluated):
    from hydra import compose, initialize_config_dir

    from mixbench.config import CONFIG_DIR
    from mixbench.evaluation.runner import sweep_skip_reason

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        done = compose("evaluate", [f"target='{trained['root']}'", "eval=[fgsm,pgd]", *quick("pgd")])
        pending = compose("evaluate", [f"target='{trained['root']}'", "eval=fgsm", "eval.fgsm.eps=1"])
    assert sweep_skip_reason(done).startswith("skipped: fgsm, pgd already evaluated on 2 run(s)")
    assert sweep_skip_reason(pending) is None


# --------------------------------------------------------------------------------------------- data of suites
def test_digit_ink_boxes_bound_exactly_the_ink_at_native_size():
    from mixbench.data import digits

    images = digits.load(None, "test", image_size=8).images[:, 0].numpy()
    boxes = digit_ink_boxes(8)
    for image, (x0, y0, x1, y1) in zip(images, boxes, strict=True):
        rows, cols = np.flatnonzero(image.max(1) > 0), np.flatnonzero(image.max(0) > 0)
        assert (x0, y0, x1, y1) == (cols[0], rows[0], cols[-1], rows[-1])
    assert (
        digit_ink_boxes(16)
        == np.stack([2 * boxes[:, 0], 2 * boxes[:, 1], 2 * boxes[:, 2] + 1, 2 * boxes[:, 3] + 1], 1)
    ).all()


def test_generated_ood_sets_follow_odin_and_are_seeded():
    uniform = generated_ood_images("uniform", 200, 8, seed=3)
    gaussian = generated_ood_images("gaussian", 200, 8, seed=3)
    assert torch.equal(uniform, generated_ood_images("uniform", 200, 8, seed=3))
    assert not torch.equal(uniform, generated_ood_images("uniform", 200, 8, seed=4))
    assert uniform.dtype == torch.uint8 and uniform.shape == (200, 3, 8, 8)
    assert abs(uniform.float().mean().item() - 127.5) < 3  # U[0, 1]
    clipped = (gaussian == 0).float().mean().item(), (gaussian == 255).float().mean().item()
    assert all(0.25 < share < 0.37 for share in clipped)  # N(0.5, 1): P(x < 0) = P(x > 1) = 0.3085


def _jpeg(path: Path, size: tuple[int, int], seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _fake_cub(root: Path) -> None:
    folder = root / "CUB_200_2011"
    rows = [(i, f"00{1 + i % 2}.Bird/b_{i}.jpg", 1 + i % 2, int(i <= 4)) for i in range(1, 9)]
    for i, path, _, _ in rows:
        _jpeg(folder / "images" / path, size=(40 + 4 * i, 30 + 2 * i), seed=i)
    (folder / "images.txt").write_text("".join(f"{i} {p}\n" for i, p, _, _ in rows))
    (folder / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c, _ in rows))
    (folder / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, _, t in rows))
    (folder / "bounding_boxes.txt").write_text("".join(f"{i} {i}.0 3.5 {20 + i}.0 15.0\n" for i, *_ in rows))


def test_wsol_on_cub_resizes_whole_images_and_scales_their_boxes(tmp_path):
    """WSOL end to end on CUB-200-2011's layout (VGG-GAP): the boxes of bounding_boxes.txt are scaled with the
    whole image (no centre crop), and a CAM-capable run evaluates on them."""
    _fake_cub(tmp_path / "data")
    overrides = [
        "data=cub200",
        f"data.root={tmp_path / 'data'}",
        "data.num_classes=2",
        "data.image_size=32",
        "model=vgg_gap",
        "model.width=4",
        "method=cutmix",
        "schedule=digits_quick",
        "schedule.epochs=1",
        "schedule.metric_window=1",
        "schedule.batch_size=2",
        f"runs_root={tmp_path / 'runs'}",
        "num_workers=0",
        "progress=false",
        "device=cpu",
    ]
    trained = run_tool("train", overrides)
    assert trained.returncode == 0, trained.stderr
    (run,) = find_runs(tmp_path / "runs")
    result = run_tool(
        "evaluate", [str(run), "eval=wsol", "eval.wsol.threshold_interval=0.1", "num_workers=0"]
    )
    assert result.returncode == 0, result.stderr
    record = RunDirectory(run).read_evaluation("wsol")
    assert record["data"]["images"] == 4 and record["data"]["resize"] == "whole image"
    assert record["data"]["boxes"] == "bounding_boxes.txt"
    scores = record["networks"]["online"]
    assert 0 <= scores["top1_loc"] <= scores["gt_known_loc"] <= 100 and 0 <= scores["max_box_acc_v2"] <= 100

    from omegaconf import OmegaConf

    from mixbench.evaluation.images import boxes_of

    data_cfg = OmegaConf.create({"name": "cub200", "root": str(tmp_path / "data")})
    boxes = boxes_of(data_cfg, 32, 4)
    for index, image_id in enumerate((5, 6, 7, 8)):
        size = (40 + 4 * image_id, 30 + 2 * image_id)
        expected = cub_box_to_resized((image_id, 3.5, 20 + image_id, 15.0), size, 32)
        assert (boxes[index][0] == expected).all()
    images = evaluation_images(
        OmegaConf.merge(data_cfg, {"num_classes": 2}), "finegrained", 32, whole_image=True, num_workers=0
    )
    first, _ = next(images.uint8_batches(4))
    assert first.shape == (4, 3, 32, 32)


def test_a_sweep_of_suites_runs_one_pool_job_per_suite_and_skips_them_when_done(trained, tmp_path):
    """``-m eval=fgsm,calibration hydra/launcher=gpus``: each suite is a job of the pool (the skip below is
    per job; the target's folder name, with its '=' and ',', survives the job's command line); launched again,
    the pool skips both jobs without a process."""
    run = _copy_run(trained["vanilla"], tmp_path / "runs" / "run")
    command = [
        "-m",
        str(run),
        "eval=fgsm,calibration",
        "hydra/launcher=gpus",
        "hydra.launcher.gpus=[0,1]",
        "device=cpu",
        f"runs_root={tmp_path}",
        "progress=false",
    ]
    first = run_tool("evaluate", command)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "sweep finished: 2 of 2 job(s) succeeded" in first.stdout
    assert {path.name for path in (run / "eval").glob("*.json")} == {"fgsm.json", "calibration.json"}
    second = run_tool("evaluate", command)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "#0 skipped: fgsm already evaluated on 1 run(s)" in second.stdout
    assert "#1 skipped: calibration already evaluated on 1 run(s)" in second.stdout


def test_a_real_process_refuses_a_missing_folder_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "evaluate.py"), str(tmp_path / "nothing"), "eval=fgsm"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nothing'} is not a folder; pass a run directory or a folder of runs (runs_root)"
    ]


def test_released_cifar_c_is_read_in_its_layout_and_scored_image_by_image(trained, tmp_path, monkeypatch):
    """corruption on a CIFAR run reads <root>/CIFAR-10-C/<name>.npy (severities stacked) and labels.npy:
    the accuracy of each severity is the network's on exactly that slice (resized to the run's input size);
    without the folder the command refuses in one line naming it, with nothing written."""
    from omegaconf import OmegaConf

    from mixbench.evaluation.images import _resized
    from mixbench.evaluation.runner import load_run, run_config
    from tests.test_datasets_on_disk import _fake_cifar

    written = _fake_cifar(tmp_path / "data", 10, monkeypatch)
    test_labels = np.asarray(written["test_batch"][1])
    run = _copy_run(trained["vanilla"], tmp_path / "run")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(name="cifar10", root=str(tmp_path / "data"), resident=True, download=False)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    arguments = [
        str(run),
        "eval=corruption",
        "eval.corruption.corruptions=[gaussian_noise]",
        "eval.corruption.severities=[1,2]",
        f"eval.corruption.root={tmp_path / 'data'}",
    ]
    refused = run_tool("evaluate", arguments)
    assert refused.returncode == 2 and "CIFAR-10-C not found" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (run / "eval").exists()

    folder = tmp_path / "data" / "CIFAR-10-C"
    folder.mkdir()
    count = len(test_labels)
    stacked = np.random.default_rng(0).integers(0, 256, (5 * count, 32, 32, 3), dtype=np.uint8)
    np.save(folder / "labels.npy", np.tile(test_labels, 5))
    np.save(folder / "gaussian_noise.npy", stacked)
    result = run_tool("evaluate", arguments)
    assert result.returncode == 0, result.stderr
    record = RunDirectory(run).read_evaluation("corruption")
    assert (
        record["data"]["corruption_source"] == "released" and record["data"]["corruption_set"] == "cifar10_c"
    )

    cfg = OmegaConf.create({"device": "cpu", "precision": "fp32", "channels_last": False, "data_root": None})
    network = load_run(RunDirectory(run), run_config(RunDirectory(run), cfg), "last", 0).networks["online"]
    for severity in (1, 2):
        images = torch.from_numpy(stacked[(severity - 1) * count : severity * count]).permute(0, 3, 1, 2)
        with torch.no_grad():
            predictions = network(_resized(images, 8).float() / 255).argmax(1).numpy()
        expected = 100.0 * float((predictions == test_labels).mean())
        assert record["networks"]["online"]["accuracy"]["gaussian_noise"][str(severity)] == pytest.approx(
            expected
        )
