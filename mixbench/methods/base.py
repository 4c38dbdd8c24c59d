"""The method interface and the loss every mixing method shares.

A method is an ``nn.Module`` (so that it may own trainable parts that join the optimizer) with

* ``training_step(model, x, y) -> (loss, logs)``: one training loss on a clean batch;
* ``after_step(model)``: called after each optimizer step (EMA updates);
* ``eval_models(model) -> {label: network}``: the networks to evaluate each epoch (``""`` = online);
* ``compile_parts(compiler)``: under ``compile=true``, compile the method's own networks' passes (the EMA
  teacher's, the Mix Block's); the online model is compiled by the step, not by the method;
* ``required_stages``: the hidden states (stage indices of :mod:`mixbench.models.base`) it needs;
* ``passes()``: the network passes of its step, in the pass units below (the bench times each unit on the
  row's model and batch, and their sum is the step's floor: what the algorithm's passes cost before any
  mixing, solving or bookkeeping; :mod:`mixbench.bench.passes`).

Input-space methods only implement :meth:`InputMixMethod.mix`; the step is inherited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mixbench.methods.solver_graph import SolverGraph
from mixbench.models.base import StagedNet
from mixbench.rng import MixRandom

Logs = dict[str, torch.Tensor]

# Pass units: what one call of each costs on the online network in train mode (mixbench/bench/passes.py).
STEP = "step"  # a vanilla training step: forward, loss, backward with weight gradients, optimizer step
FORWARD = "forward"  # a forward that records the graph (dropped unused)
FORWARD_NO_GRAD = "forward, no grad"  # a forward under no_grad (a teacher's, a clean batch's predictions)
FORWARD_BACKWARD = "forward + backward"  # a forward and a backward with weight gradients, no optimizer step
FORWARD_BACKWARD_INPUT = "forward + backward to the input"  # backward to the input only: no weight gradients


def features_no_grad(stage: int) -> str:
    """The pass unit of stages 1..``stage`` under no_grad (an EMA teacher's features for a Mix Block)."""
    return f"stages 1-{stage}, no grad"


def add_passes(*counts: dict[str, float]) -> dict[str, float]:
    """The sum of pass counts, units that cancel left out."""
    total: dict[str, float] = {}
    for part in counts:
        for unit, count in part.items():
            total[unit] = total.get(unit, 0.0) + count
    return {unit: count for unit, count in total.items() if count}


def device_scalar(
    value: float | bool, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A 0-dim tensor holding the host value ``value``, made on ``device`` by a fill.

    ``torch.full`` passes the value to the fill kernel as an argument, so no host-to-device copy (which waits
    for the kernels queued before it) is made, unlike ``torch.tensor(value, device=device)``.  The value is
    rounded to ``dtype`` as ``torch.tensor(value, dtype=dtype)`` would round it.
    """
    return torch.full((), float(value), dtype=dtype, device=device)


def mixed_cross_entropy(
    logits: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float | torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``mean(lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b))``; ``lam`` is a scalar or per sample."""
    loss_a = F.cross_entropy(logits, y_a, reduction="none", label_smoothing=label_smoothing)
    loss_b = F.cross_entropy(logits, y_b, reduction="none", label_smoothing=label_smoothing)
    return (lam * loss_a + (1.0 - lam) * loss_b).mean()


def mixed_loss_of_forward(
    model: nn.Module,
    x: torch.Tensor,
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float | torch.Tensor,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``model(x)`` and its :func:`mixed_cross_entropy` in one call, so that ``compile=true`` traces the loss
    with the network: one graph for the forward and one for the backward, the loss's dozen small kernels
    inside them (CUDA graphs replay them with the network) instead of launched one by one."""
    return mixed_cross_entropy(model(x), y_a, y_b, lam, label_smoothing)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean_i( -sum_c target[i, c] * log_softmax(logits)[i, c] )`` for soft targets (rows sum to 1)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def in_layout_of(mixed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``mixed`` in the memory format of the batch ``x`` (channels_last or contiguous).

    Mixing by reshapes and permutes of cells can leave a tensor whose strides follow neither layout (or, when
    a cell is one pixel, channels_last on a contiguous batch); the model then runs slower kernels, and on the
    CPU in torch 2.14 a strided 1x1 convolution's backward on such an input was seen to corrupt the heap.
    """
    channels_last = (
        x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    )
    return mixed.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@dataclass
class MixedBatch:
    """A mixed batch: sample ``i`` is ``lam_i`` parts ``y_a[i]`` and ``1 - lam_i`` parts ``y_b[i]``."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float | torch.Tensor
    perm: torch.Tensor | None = None  # the pairing: y_b = y_a[perm] (for previews and wrappers such as SUMix)
    mask: torch.Tensor | None = None  # per-pixel share of x[perm] in x (B or 1, 1, H, W) for cutting methods
    # For wrappers (SUMix), from a method that made the batch with a model (``mix_with_model``):
    # the logits of the clean batch and the hidden state at the stage the wrapper asked for
    # (``capture_stage``), detached, when the method already ran that forward through the same model in its
    # current mode (Puzzle Mix's saliency forward), so that the wrapper need not run it again;
    clean_logits: torch.Tensor | None = None
    clean_features: torch.Tensor | None = None
    # and the loss of the method's own trainable part (AutoMix's Mix Block), which whoever trains on the
    # batch adds to its loss so that the part keeps learning.
    own_loss: torch.Tensor | None = None

    def lam_mean(self) -> float | torch.Tensor:
        return self.lam.mean() if torch.is_tensor(self.lam) else self.lam


class MixMethod(nn.Module):
    """Base class of every mixing method."""

    name: str = "base"
    required_stages: tuple[int, ...] = (0,)
    provides_clean_forward: bool = False  # mix_with_model hands over the clean batch's logits (SUMix reuses)

    def __init__(self) -> None:
        super().__init__()
        self.rng = MixRandom(0)
        self.label_smoothing = 0.0
        self.total_steps = 1

    def setup(self, model: StagedNet, num_classes: int) -> None:
        """Build what depends on the model (an EMA copy, a Mix Block sized to a stage); nothing by default.

        Called once by the trainer after the model is on its device and before the optimizer is made, so
        parameters created here join the optimizer through :meth:`param_groups`.
        """

    def bind(self, rng: MixRandom, label_smoothing: float = 0.0, total_steps: int = 1) -> None:
        """Give the method the run's random generators, the recipe's label smoothing and the run length in
        optimizer steps (for schedules such as AutoMix's EMA momentum)."""
        self.rng = rng
        self.label_smoothing = label_smoothing
        self.total_steps = total_steps

    def check_model(self, model: StagedNet) -> None:
        """Raise ``StageUnavailableError`` when ``model`` cannot serve this method."""
        for stage in self.required_stages:
            model.check_stage(stage)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Optimizer groups for the method's own trainable parts (none for most methods)."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "lr": lr, "weight_decay": weight_decay}] if params else []

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        raise TypeError(f"{type(self).__name__} must define training_step()")

    def after_step(self, model: nn.Module) -> None:
        """Hook after each optimizer step (EMA updates); nothing by default."""

    def passes(self) -> dict[str, float] | None:
        """The network passes of one training step as counts of the pass units (``STEP``...): one vanilla
        step by default (input-space and feature-space mixing add no pass).  ``None`` where the step's cost is
        not passes of the model (StyleMix's AdaIN networks).  The method's own small parts (a Mix Block, a
        decoder, a head) and its mixing and solving are not passes: they are what the bench shows above the
        floor."""
        return {STEP: 1.0}

    def mix_passes(self) -> dict[str, float]:
        """The passes ``mix_with_model`` runs to make a mixed batch for a wrapper (SUMix); none by default."""
        return {}

    def eval_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """Networks evaluated each epoch, by label; ``""`` is the online network."""
        return {"": model}

    def compile_parts(self, compiler: Callable[[Callable], Callable]) -> None:
        """Under ``compile=true``: run the passes of the method's own networks through ``compiler`` (the
        step's ``torch.compile`` with the run's ``compile_mode``, applied to a module or a function).

        Called once by :func:`mixbench.engine.step.build_training_step`, after :meth:`setup`; the online model
        the step passes to :meth:`training_step` is compiled already.  An override must keep the compiled
        callables out of the module tree (``torch.compile`` of a module is a module that would add
        ``_orig_mod.`` to the ``state_dict`` keys) and must not feed a Python value that changes every step
        into a compiled call (each value would be traced again).  By default the method compiles nothing of
        its own and passes ``compiler`` on to the mixing methods it holds (a wrapper's base: SUMix's AutoMix).
        Its :meth:`solver_graphs` stop recording: compiled code is not recorded into CUDA graphs of our own
        (``torch.compile``'s modes handle the launches); overrides call this first.
        """
        for graph in self.solver_graphs():
            graph.enabled = False
        for child in self.children():
            if isinstance(child, MixMethod):
                child.compile_parts(compiler)

    def solver_graphs(self) -> list[SolverGraph]:
        """The method's solvers that replay as CUDA graphs in eager GPU runs
        (:mod:`mixbench.methods.solver_graph`), for reports; by default those of the mixing methods it
        holds."""
        return [
            graph
            for child in self.children()
            if isinstance(child, MixMethod)
            for graph in child.solver_graphs()
        ]

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        """The rows ``tools/show_mix.py`` draws for this method (sources, masks or alignments, mixed
        images)."""
        return MixPreview(rows={"images": x}, lam=torch.ones(x.shape[0]), note=f"{self.name} does not mix")


@dataclass
class MixPreview:
    """What ``tools/show_mix.py`` draws for a batch: rows of images, masks or alignments, and the ratios.

    ``rows`` maps a row title to a (B, C, H, W) tensor: images are normalised like the batch (the tool
    un-normalises them), single-channel rows are masks or maps in [0, 1].  ``lam`` is each sample's label
    share of its first source.
    """

    rows: dict[str, torch.Tensor]
    lam: torch.Tensor
    note: str = ""


class InputMixMethod(MixMethod):
    """A method that mixes images only: subclasses implement :meth:`mix`.

    Under ``compile=true`` the network's forward and the mixed loss are one compiled call
    (:func:`mixed_loss_of_forward`, compiled by :meth:`compile_parts`; the online model it calls is inlined
    into its graph), and a Python lam reaches it as a 0-dim device tensor, so that a new value is not a new
    graph.  There ``1 - lam`` is taken in float32 rather than from the Python float, a difference of at most
    one float32 rounding (the compiled losses equal the eager ones within ``tests/test_compile.py``'s
    tolerance).  Eager steps pass lam as they always did: the same numbers as before the compiled call.
    """

    forward_loss: Callable[..., torch.Tensor] = staticmethod(mixed_loss_of_forward)
    lam_as_tensor = False  # set by compile_parts: the compiled forward_loss takes lam as a device tensor

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        raise TypeError(f"{type(self).__name__} must define mix()")

    def compile_parts(self, compiler: Callable[[Callable], Callable]) -> None:
        super().compile_parts(compiler)
        self.forward_loss = compiler(mixed_loss_of_forward)  # held outside the module tree: a function
        self.lam_as_tensor = True

    def training_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Logs]:
        batch = self.mix(x, y)
        lam_mean = batch.lam_mean()
        if torch.is_tensor(lam_mean):  # a per-sample lam computed on the device stays there
            lam, lam_log = batch.lam, lam_mean.to(torch.float32)
        else:
            lam_log = device_scalar(lam_mean, x.device)
            lam = lam_log if self.lam_as_tensor else batch.lam
        loss = self.forward_loss(model, batch.x, batch.y_a, batch.y_b, lam, self.label_smoothing)
        return loss, {"lam": lam_log}

    @torch.no_grad()
    def preview(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> MixPreview:
        batch = self.mix(x, y)
        rows = {"source a": x}
        if batch.perm is not None:
            rows["source b"] = x[batch.perm]
        if batch.mask is not None:
            rows["mask (share of b)"] = batch.mask.expand(x.shape[0], 1, *x.shape[-2:])
        rows["mixed"] = batch.x
        lam = torch.as_tensor(batch.lam, dtype=torch.float32).expand(x.shape[0]).cpu()
        return MixPreview(rows=rows, lam=lam)
