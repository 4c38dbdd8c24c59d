"""``compile=true`` for the methods that compile parts of their own (``MixMethod.compile_parts``): a learned
method's EMA teacher and Mix Block, Co-Mixup's and Puzzle Mix's solver loops.  The compiled step trains
exactly as the eager one and each compiled call is traced once per distinct call (shape, grad mode), not once
per step.  Traced with the ``aot_eager`` backend, as ``tests/test_compile.py`` explains."""

from __future__ import annotations

import pytest

from tests.test_compile import assert_compiled_trains_as_eager

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.mark.parametrize(
    ("method_name", "fewest", "most"),
    [
        # the online forward; the teacher's forward_features (no grad) and forward (to the mask); the Mix
        # Block without and with gradient: 5 graphs for 5 steps of 5 compiled calls each
        ("automix", 5, 5),
        ("automix[lam_channel=true]", 3, 3),  # its Mix Block reads lam as a fill value: left eager
        ("samix", 5, 6),  # AutoMix's 5, and the Mixer again once its lam (a host float) is a graph input
        ("adautomix", 6, 6),  # AutoMix's 5 and the teacher's forward_from (the sources' logits)
        # the online forward on the clean batch (which needs its input's gradient: the saliency) and on the
        # mix, and Co-Mixup's output subproblem without and with half-half cells (80 calls a step)
        ("comixup", 4, 4),
        # the online forward with and without the input's gradient, and one chain solver and one transport per
        # grid size drawn (5 steps at 16 px: sizes 2, 4, 8, 16)
        ("puzzlemix", 4, 10),
        # SUMix on bases with compiled parts, its mixed forward and loss in one compiled call: on AutoMix the
        # teacher's 2 and the Mix Block's 2, SUMix's forward and loss, its no-grad clean forward; on Puzzle
        # Mix the saliency forward (SUMix's clean logits), SUMix's forward and loss, and the solvers per size
        ("sumix[base=automix]", 6, 6),
        ("sumix[base=puzzlemix]", 4, 10),
    ],
)
def test_a_compiled_step_with_compiled_parts_trains_as_the_eager_one_and_traces_each_call_shape_once(
    method_name: str, fewest: int, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_compiled_trains_as_eager(method_name, fewest, most, monkeypatch)
