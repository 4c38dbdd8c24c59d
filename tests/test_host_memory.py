"""mixbench/engine/host_memory.py: on glibc, memory a step frees stays in the process, so taking it again
costs no page faults; the trainer and the benchmark ask for that on the CPU."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

import mixbench.engine.trainer as trainer_module
from mixbench.engine.host_memory import minor_page_faults
from tests.helpers import compose_config, tiny_overrides

FAULTS_OF_A_LOOP = """
import torch
from mixbench.engine.host_memory import keep_freed_host_memory, minor_page_faults

def faults_of_a_loop():
    before = minor_page_faults()
    for _ in range(5):
        torch.ones(12_000_000)  # 48 MB, touched, freed: above glibc's largest default mmap threshold
    return minor_page_faults() - before

faults_of_a_loop()
default = faults_of_a_loop()
kept = keep_freed_host_memory()
for _ in range(5):  # the heap settles over the first loops (measured: 0 faults from the third on)
    faults_of_a_loop()
print(default, kept, faults_of_a_loop())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_kept_memory_is_taken_again_without_page_faults() -> None:
    """48 MB allocated and freed five times: with glibc's defaults every allocation maps fresh pages (about
    11,700 faults each); once the thresholds are raised and the heap has settled, the loop reuses it."""
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_OF_A_LOOP], capture_output=True, text=True, check=True, timeout=120
    )
    default, kept, after = result.stdout.split()
    assert kept == "True"
    assert int(default) > 5 * 10_000, "the default allocator kept the memory: this test proves nothing here"
    assert int(after) < 1_000


def test_the_page_fault_count_grows_when_new_memory_is_touched() -> None:
    before = minor_page_faults()
    if before is None:
        pytest.skip("no getrusage on this platform")
    block = bytearray(64 << 20)  # 64 MB of fresh zeroed pages, touched below
    for index in range(0, len(block), 4096):
        block[index] = 1
    assert minor_page_faults() - before > 1_000


class StopAfterRuntime(Exception):
    pass


def test_the_trainer_keeps_freed_host_memory_on_the_cpu(monkeypatch, tmp_path) -> None:
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_host_memory", lambda: calls.append("kept"))

    def stop(*args, **kwargs):
        raise StopAfterRuntime

    monkeypatch.setattr(trainer_module, "launch_from_environment", stop)  # the next call after the runtime
    cfg = compose_config(["method=mixup", "device=cpu", *tiny_overrides(tmp_path)])
    with pytest.raises(StopAfterRuntime):
        trainer_module.train(cfg)
    assert calls == ["kept"]
