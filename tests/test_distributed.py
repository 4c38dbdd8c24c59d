"""One run over two processes on the CPU (gloo): what DDP in the trainer must guarantee.

* ``torchrun --nproc_per_node=2 tools/train.py ...`` makes one complete run directory, written once, whose
  accuracy is over exactly the test split (and equals a single-process evaluation of the saved weights);
* the wrapped step (model and method in one DDP module) averages gradients over the processes and keeps the
  replicas identical for methods that call the model several times, own trainable parts, or leave those
  unused on some steps;
* evaluation shards hold every test image exactly once, for any split size;
* a configuration that cannot be split over the processes stops with one error line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from mixbench.atomic import load_checkpoint
from mixbench.data import build_loaders
from mixbench.data.base import ArraySplit
from mixbench.data.loaders import DeviceTensorLoader, EpochShardSampler, Normalizer, evaluation_shard
from mixbench.engine.build import build_model_and_method, input_size
from mixbench.engine.distributed import (
    Launch,
    data_parallel_step,
    gather_objects,
    on_every_rank,
    on_main,
    sync_buffers,
)
from mixbench.engine.evaluate import evaluate
from mixbench.engine.runtime import Runtime
from mixbench.methods.base import Logs, MixMethod, mixed_cross_entropy
from mixbench.rng import MixRandom
from tests.helpers import REPO, compose_config, tiny_overrides
from tests.helpers.tools import run_tool

DIGITS_TEST_IMAGES = 450
CPU = torch.device("cpu")
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


def _torchrun(arguments: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", str(REPO / "tools" / "train.py"), *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# ---------------------------------------------------------------------------------------- torchrun end to end


@pytest.mark.slow
def test_torchrun_two_processes_make_one_run_over_exactly_the_test_split(tmp_path: Path) -> None:
    epochs = 2
    overrides = [  # the quickstart at 16 px and width 8: learns well beyond chance in 2 epochs
        "experiment=quickstart",
        f"runs_root={tmp_path / 'runs'}",
        "model.width=8",
        f"schedule.epochs={epochs}",
        "schedule.metric_window=1",
        "progress=false",
        "device=cpu",
        "method=mixup",
    ]
    result = _torchrun(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = list((tmp_path / "runs").rglob("summary.json"))
    assert len(summaries) == 1, summaries
    run_dir = summaries[0].parent
    summary = json.loads(summaries[0].read_text())
    assert summary["status"] == "complete" and summary["world_size"] == 2 and summary["epochs_done"] == epochs
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == list(range(1, epochs + 1))  # one writer
    assert all(record["test_images"] == DIGITS_TEST_IMAGES for record in history)
    assert all(
        record["train_images"] == 21 * 64 for record in history
    )  # 1,347 images: 21 global batches of 64
    assert history[-1]["top1"] > 30.0, history[-1]  # chance 10%; reaches 40% (seed 1: 46%)
    assert result.stdout.count("complete: ") == 1 and result.stdout.count(f"epoch {epochs}/{epochs}") == 1
    # The recorded accuracy is the whole test split's: a one-process evaluation of the saved weights agrees.
    cfg = compose_config(overrides)
    runtime = Runtime(CPU, None, False, False)
    model, _ = build_model_and_method(cfg, runtime)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt")["model"])
    data = build_loaders(cfg.data, cfg.schedule.augment, 64, 500, input_size(cfg), CPU)
    scores = evaluate(model, data.test, Runtime.cpu())
    assert scores["images"] == DIGITS_TEST_IMAGES
    assert scores["top1"] == pytest.approx(history[-1]["top1"], abs=1e-9)
    assert scores["loss"] == pytest.approx(history[-1]["test_loss"], rel=1e-5)


def test_torchrun_refuses_a_batch_that_does_not_split_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of the two workers is ``tools/train.py`` with the environment torchrun gives it, run in this
    process (``tests/helpers/tools.py``; the real launch is the end-to-end test's): both stop before any
    process group or run directory, and only rank 0 says why, in one line."""
    arguments = [*tiny_overrides(tmp_path / "runs", epochs=1, window=1), "schedule.batch_size=63"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    stderr = ""
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        result = run_tool("train", arguments)
        assert result.returncode != 0, f"rank {rank}: {result.stderr[-2000:]}"
        stderr += result.stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "batch_size=63" in errors[0] and "2 processes" in errors[0], stderr[-2000:]
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------- the wrapped step, in-process

STEPS = 4


class InputGradientProbe(MixMethod):
    """Shaped like Puzzle Mix / Co-Mixup, for this test only: an input-gradient pass on the clean batch inside
    the step (``torch.autograd.grad`` into the input, within DDP's forward), then a saliency-masked mix."""

    name = "input_gradient_probe"

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        with torch.enable_grad():
            x_leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_leaf), y, reduction="sum"), x_leaf)
        saliency = grad.pow(2).sum(dim=1, keepdim=True)
        keep = (saliency >= saliency.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)).float()
        perm = self.rng.permutation(x.shape[0])
        lam = keep.mean(dim=(1, 2, 3))
        mixed = keep * x + (1 - keep) * x[perm]
        return mixed_cross_entropy(model(mixed), y, y[perm], lam), {"lam": lam.mean()}


def _replica_worker(
    rank: int, world_size: int, init_file: str, configs: dict[str, DictConfig], results: str
) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        report: dict[str, dict] = {}
        for name, cfg in configs.items():
            report[name] = _train_replica(name, cfg, rank)
        _check_errors_agree(rank)
        if rank == 0:
            Path(results).write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def replica_config(name: str) -> DictConfig:
    """The tiny quickstart config of ``name`` (the probe: vanilla's, whose method it replaces)."""
    often = ["method.reconstruction_prob=0.5"] if name == "alignmixup_ae" else []  # the decoder on some steps
    registered = "vanilla" if name == InputGradientProbe.name else name
    return compose_config(
        [*tiny_overrides(Path("unused"), epochs=1, window=1), f"method={registered}", *often]
    )


def _train_replica(name: str, cfg: DictConfig, rank: int) -> dict:
    """A few DDP steps of ``name`` on rank-specific data; checks that the replicas stay identical."""
    torch.manual_seed(0)  # the same initial weights on both ranks (DDP would also broadcast rank 0's)
    model, method = build_model_and_method(cfg, Runtime(CPU, None, False, False))
    if name == InputGradientProbe.name:
        method = InputGradientProbe()
    rng = MixRandom(11)  # the method's draws are shared by the ranks
    method.bind(rng, total_steps=STEPS)
    params = [p for p in model.parameters()] + [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    step = data_parallel_step(model, method, CPU)
    data = torch.Generator().manual_seed(100 + rank)  # each rank its own images
    averaged, decoder_idle_steps, lams = [], 0, []
    for index in range(STEPS):
        x, y = torch.randn(8, 3, 8, 8, generator=data), torch.randint(0, 10, (8,), generator=data)
        if index == 0 and name in ("vanilla", "manifoldmix"):  # DDP's gradient = the mean of the local ones
            rng.reseed(5)
            loss, _ = step.module(x, y)
            local = torch.autograd.grad(loss, [p for p in model.parameters()])
            expected = [gathered_mean(g) for g in local]
            rng.reseed(5)
        loss, logs = step(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if index == 0 and name in ("vanilla", "manifoldmix"):
            averaged.append(
                all(
                    torch.allclose(p.grad, e, atol=1e-6)
                    for p, e in zip(model.parameters(), expected, strict=True)
                )
            )
            averaged.append(
                not all(torch.allclose(g, e, atol=1e-6) for g, e in zip(local, expected, strict=True))
            )
        if name == "alignmixup_ae" and float(logs["reconstruction"]) == 0.0:
            decoder_idle_steps += 1  # no rank used the decoder: its gradient stays None, as in one process
            assert all(p.grad is None for p in method.decoder.parameters())
        if "lam" in logs:
            lams.append(float(logs["lam"]))
        optimizer.step()
        method.after_step(model)
    sync_buffers(step)
    state = torch.cat([t.detach().double().flatten() for t in step.module.state_dict().values()])
    replicas, rank_lams = gather_objects(state), gather_objects(lams)
    return {
        "identical": bool(torch.equal(replicas[0], replicas[1])),
        "averaged": averaged,
        "decoder_idle_steps": decoder_idle_steps,
        "lams_shared": rank_lams[0] == rank_lams[1],
    }


def gathered_mean(tensor: torch.Tensor) -> torch.Tensor:
    total = tensor.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def _check_errors_agree(rank: int) -> None:
    """An error on one rank is raised on every rank (named by rank when it is not 0); rank 0 decides alone."""

    def fails_on_rank_one() -> None:
        if rank == 1:
            raise FileNotFoundError("no data here")

    with pytest.raises(
        FileNotFoundError, match="on rank 1 of 2: no data here" if rank == 0 else "^no data here$"
    ):
        on_every_rank(fails_on_rank_one)
    assert on_main(lambda: f"read by {rank}") == "read by 0"


@pytest.mark.parametrize(
    "methods",
    [
        # vanilla / manifoldmix: plain and stage-hooked calls; the probe: an input-gradient pass inside the
        # step;
        # sumix: two model calls and a trainable head; alignmixup_ae: a decoder used on some steps only
        ["vanilla", "manifoldmix", InputGradientProbe.name, "sumix", "alignmixup_ae"],
    ],
)
def test_the_wrapped_step_keeps_two_replicas_identical(methods: list[str], tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    # fork: the workers inherit the imported modules (seconds each) and the configs, composed once here
    configs = {name: replica_config(name) for name in methods}
    arguments = (2, str(tmp_path / "init"), configs, str(results))
    mp.start_processes(_replica_worker, args=arguments, nprocs=2, join=True, start_method="fork")
    report = json.loads(results.read_text())
    for name in methods:
        assert report[name]["identical"], f"{name}: the two replicas differ after {STEPS} DDP steps"
    for name in ("vanilla", "manifoldmix"):
        assert report[name]["averaged"] == [True, True], f"{name}: DDP did not average the gradients"
    assert 0 < report["alignmixup_ae"]["decoder_idle_steps"] < STEPS  # both kinds of step were taken
    assert all(entry["lams_shared"] for entry in report.values())


# ------------------------------------------------------------------------------------------ evaluation shards


@pytest.mark.parametrize("size,world_size", [(450, 2), (451, 2), (7, 3), (2, 3), (101, 4)])
def test_evaluation_shards_hold_every_index_exactly_once(size: int, world_size: int) -> None:
    images = torch.zeros(size, 3, 4, 4, dtype=torch.uint8)
    split = ArraySplit(images=images, labels=torch.arange(size))
    normalizer = Normalizer([0.5] * 3, [0.5] * 3, CPU, channels_last=False)
    seen: list[int] = []
    for rank in range(world_size):
        loader = DeviceTensorLoader(split, 3, normalizer, CPU, train=False, rank=rank, world_size=world_size)
        labels = [int(i) for _, y in loader for i in y]
        assert len(loader) == -(-len(labels) // 3)
        seen += labels
        sampler = EpochShardSampler(size, shuffle=False, rank=rank, world_size=world_size, pad=False)
        assert list(sampler) == labels and len(sampler) == len(labels)
        assert evaluation_shard(torch.arange(size), rank, world_size).tolist() == labels
    assert sorted(seen) == list(range(size))  # each test image once: no padding repeats, none left out


def test_launch_defaults_to_one_process(monkeypatch) -> None:
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    from mixbench.engine.distributed import launch_from_environment

    assert launch_from_environment() == Launch(0, 0, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_from_environment() == Launch(3, 1, 4)
