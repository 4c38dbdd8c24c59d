"""The README's Python API example runs as printed, and the API it shows is what ``mixbench`` exports.

The example is the one ``python`` code block of the section "## Python API (your own training loop)"; it is
executed as it stands (random tensors, a PreActResNet18 of width 8 at 16 px, four steps: about a second).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mixbench

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Python API (your own training loop)"
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)
MAX_LINES = 20

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see tests/conftest.py


def readme_example() -> str:
    """The code of the one ``python`` block of the API section of README.md."""
    text = (REPO / "README.md").read_text()
    assert text.count(SECTION + "\n") == 1, f"README.md has no single section {SECTION!r}"
    body = text.split(SECTION + "\n", 1)[1].split("\n## ", 1)[0]
    blocks = CODE_BLOCK.findall(body)
    assert len(blocks) == 1, f"the section holds {len(blocks)} python code blocks, not one"
    return blocks[0]


def test_the_api_section_comes_right_before_tables_and_figures() -> None:
    text = (REPO / "README.md").read_text()
    after = text.split(SECTION + "\n", 1)[1]
    assert re.search(r"^## ", after, re.MULTILINE) and after.split("\n## ", 1)[1].startswith(
        "Tables and figures"
    )


def test_the_readme_example_trains_and_evaluates(capsys) -> None:
    code = readme_example()
    assert len(code.strip().splitlines()) <= MAX_LINES
    namespace: dict = {}
    exec(compile(code, "README.md (Python API)", "exec"), namespace)
    method, model = namespace["method"], namespace["model"]
    assert torch.isfinite(namespace["loss"]) and namespace["loss"].requires_grad
    assert set(method.choices) == {"mixup", "cutmix"} and method.methods["cutmix"].alpha == 0.2
    assert method.rng is not None and next(model.parameters()).grad is not None
    printed = capsys.readouterr().out.split()
    assert printed[0] == "model" and 0.0 <= float(printed[1]) <= 1.0


def test_every_exported_name_resolves_and_import_mixbench_stays_light() -> None:
    for name in mixbench.__all__:
        assert callable(getattr(mixbench, name)), name
    with pytest.raises(AttributeError):
        mixbench.no_such_name  # noqa: B018
    code = (
        "import sys, mixbench; print(sorted(m for m in sys.modules if m.startswith(('torch', 'mixbench.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
