"""Adversarial attacks: FGSM and PGD equal torchattacks 3.3.0 bit for bit (PGD under the same seed), and so
do the errors; the defining properties (the eps ball, [0, 1], one step of exactly eps, FGSM against the true
class of a binary linear model and up the convex loss of a linear one); the model's modes, the parameters'
``requires_grad`` and ``.grad`` untouched; an fp32 gradient under bf16 autocast; the normalising wrapper;
and one host read for a whole evaluation."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from mixbench.engine.host_syncs import HostSyncCounter
from mixbench.evaluation.attacks import NormalizedModel, adversarial_error, fgsm, input_gradient, pgd

pytestmark = pytest.mark.usefixtures("single_torch_thread")  # see tests/conftest.py

MEAN = (0.5, 0.4, 0.3)
STD = (0.25, 0.2, 0.3)
CLASS_COUNT = 5
BATCH = 16


def seeded(build, seed: int) -> nn.Module:
    """``build()`` with weights drawn from ``seed``, leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def conv_net() -> nn.Module:
    """A tiny classifier of 3x8x8 images whose eval mode matters: batch norm with non-trivial running
    statistics (train mode would use the batch's) and dropout."""
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, CLASS_COUNT),
    )
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    return net


def linear_net(class_count: int = CLASS_COUNT) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, class_count))


def batch(seed: int, low: float = 0.0, high: float = 1.0, class_count: int = CLASS_COUNT):
    """Images uniform in [low, high] (3x8x8) and random labels."""
    generator = torch.Generator().manual_seed(seed)
    images = low + (high - low) * torch.rand(BATCH, 3, 8, 8, generator=generator)
    labels = torch.randint(0, class_count, (BATCH,), generator=generator)
    return images, labels


def wrapped_conv_net(seed: int = 0) -> NormalizedModel:
    return NormalizedModel(seeded(conv_net, seed), MEAN, STD).eval()


def top1_error(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        wrong = int((model(images).argmax(dim=1) != labels).sum())
    return 100.0 * wrong / labels.shape[0]


def test_fgsm_and_its_error_equal_torchattacks() -> None:
    model = wrapped_conv_net()
    images, labels = batch(1)
    ours = fgsm(model, images, labels)
    theirs = torchattacks.FGSM(model, eps=8 / 255)(images, labels)
    assert torch.equal(ours, theirs)
    assert (ours != images).float().mean() > 0.5  # the attack did move the images
    result = adversarial_error(model, [(images[:10], labels[:10]), (images[10:], labels[10:])], "fgsm")
    assert result == {
        "clean_error": top1_error(model, images, labels),
        "adversarial_error": top1_error(model, theirs, labels),
        "images": BATCH,
    }
    assert result["adversarial_error"] > result["clean_error"]


@pytest.mark.parametrize("seed", [0, 7])
def test_pgd_and_its_error_equal_torchattacks_under_the_same_seed(seed: int) -> None:
    model = wrapped_conv_net()
    images, labels = batch(2)
    torch.manual_seed(seed)
    ours = pgd(model, images, labels)
    torch.manual_seed(seed)
    theirs = torchattacks.PGD(model, eps=4 / 255, alpha=2 / 255, steps=20, random_start=True)(images, labels)
    assert torch.equal(ours, theirs)

    torch.manual_seed(seed)
    result = adversarial_error(model, [(images, labels)], "pgd")
    assert result["adversarial_error"] == top1_error(model, theirs, labels)

    # A given generator with the same seed draws the same start, and leaves the global generator alone.
    global_state = torch.get_rng_state()
    from_generator = pgd(model, images, labels, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(from_generator, ours)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_pgd_start_is_random_and_optional() -> None:
    model = wrapped_conv_net()
    images, labels = batch(3)
    starts = [pgd(model, images, labels, steps=0, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    assert not torch.equal(starts[0], starts[1])
    assert torch.equal(pgd(model, images, labels, steps=0, random_start=False), images)
    global_state = torch.get_rng_state()
    without_start = pgd(model, images, labels, steps=3, random_start=False)
    assert torch.equal(torch.get_rng_state(), global_state)  # no random start: nothing drawn
    assert torch.equal(without_start, torchattacks.PGD(model, 4 / 255, 2 / 255, 3, False)(images, labels))


ATTACK_CASES = {
    "fgsm": (functools.partial(fgsm), 8 / 255),
    "fgsm_16": (functools.partial(fgsm, eps=16 / 255), 16 / 255),
    "pgd": (functools.partial(pgd, generator=torch.Generator().manual_seed(0)), 4 / 255),
    "pgd_big_steps": (functools.partial(pgd, eps=8 / 255, alpha=6 / 255, steps=4), 8 / 255),
}


@pytest.mark.parametrize("case", ATTACK_CASES)
def test_adversarial_images_stay_in_the_eps_ball_and_in_the_unit_box(case: str) -> None:
    attack, eps = ATTACK_CASES[case]
    model = wrapped_conv_net()
    images, labels = batch(4)
    adversarial = attack(model, images, labels)
    assert adversarial.dtype == torch.float32 and not adversarial.requires_grad
    assert (adversarial - images).abs().max() <= eps + 1e-7
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - images).abs().max() >= eps - 1e-7  # the ball is reached, not merely respected


def test_fgsm_moves_every_unclamped_pixel_by_exactly_eps() -> None:
    model = NormalizedModel(seeded(linear_net, 1), MEAN, STD)
    images, labels = batch(5)
    eps = 8 / 255
    step = fgsm(model, images, labels, eps) - images
    unclamped = (images >= eps) & (images <= 1 - eps)
    assert unclamped.float().mean() > 0.8
    assert ((step.abs()[unclamped] - eps).abs() <= 1e-7).all()


def test_fgsm_on_a_binary_linear_model_steps_against_the_true_class() -> None:
    """For logits ``W x + b`` over two classes, ``grad_x CE = p_other * (w_other - w_true)`` with
    ``p_other > 0``: FGSM adds ``eps * sign(w_other - w_true)``, by hand."""
    net = seeded(functools.partial(linear_net, 2), 2)
    images, labels = batch(6, class_count=2)
    eps = 8 / 255
    weight = net[1].weight.detach()  # (2, 192)
    direction = (weight[1 - labels] - weight[labels]).sign().reshape(images.shape)
    assert (direction != 0).all()
    expected = torch.clamp(images + eps * direction, 0, 1)
    assert torch.equal(fgsm(net, images, labels, eps), expected)


def test_fgsm_raises_the_loss_of_each_image_of_a_linear_model_by_the_convexity_bound() -> None:
    """CE of a linear model is convex in x, so with no clamping (images in [0.1, 0.9]) each image's loss
    rises by at least ``eps * ||grad_x loss_i||_1`` (the first-order term of the signed step)."""
    model = NormalizedModel(seeded(linear_net, 3), MEAN, STD)
    images, labels = batch(7, low=0.1, high=0.9)
    eps = 8 / 255
    adversarial = fgsm(model, images, labels, eps)
    per_image_gradient = input_gradient(model, images, labels) * BATCH  # the mean's gradient, times N
    with torch.no_grad():
        before = F.cross_entropy(model(images), labels, reduction="none")
        after = F.cross_entropy(model(adversarial), labels, reduction="none")
    bound = before + eps * per_image_gradient.abs().flatten(1).sum(dim=1)
    assert (after >= bound - 1e-5).all()
    assert (after > before).all()


def test_model_modes_requires_grad_and_parameter_grads_are_left_as_they_were() -> None:
    model = NormalizedModel(seeded(conv_net, 4), MEAN, STD)
    images, labels = batch(8)
    expected = {"fgsm": fgsm(model.eval(), images, labels)}
    torch.manual_seed(0)
    expected["pgd"] = pgd(model, images, labels, steps=3)

    model.train()
    model.model[1].eval()  # a frozen batch norm inside a model in training: mixed modes
    modes = [module.training for module in model.modules()]
    conv, _, _, _, _, linear = model.model
    conv.bias.requires_grad_(False)
    linear.weight.grad = torch.ones_like(linear.weight)
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]

    assert torch.equal(fgsm(model, images, labels), expected["fgsm"])  # attacked in eval mode
    torch.manual_seed(0)
    assert torch.equal(pgd(model, images, labels, steps=3), expected["pgd"])
    adversarial_error(model, [(images, labels)], fgsm)

    assert [module.training for module in model.modules()] == modes
    assert [parameter.requires_grad for parameter in model.parameters()] == requires_grad
    assert torch.equal(linear.weight.grad, torch.ones_like(linear.weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "model.5.weight")


def test_attacks_work_under_no_grad_and_inference_mode() -> None:
    model = wrapped_conv_net()
    images, labels = batch(9)
    expected = fgsm(model, images, labels)
    with torch.no_grad():
        assert torch.equal(fgsm(model, images, labels), expected)
    with torch.inference_mode():
        inference_images, inference_labels = images.clone(), labels.clone()
        assert torch.equal(fgsm(model, inference_images, inference_labels), expected)
        pgd(model, inference_images, inference_labels, steps=2)


def test_the_gradient_is_fp32_under_bf16_autocast() -> None:
    model = NormalizedModel(seeded(linear_net, 5), MEAN, STD)
    images, labels = batch(10)
    gradient_dtypes = []

    def record(module, inputs, output) -> None:
        if torch.is_grad_enabled():
            gradient_dtypes.append(output.dtype)

    expected = fgsm(model, images, labels)
    model.model[1].register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images).dtype == torch.bfloat16  # autocast is on for the caller's forward passes
        gradient_dtypes.clear()
        adversarial = fgsm(model, images, labels)
        pgd(model, images, labels, steps=2, generator=torch.Generator().manual_seed(0))
    assert gradient_dtypes == [torch.float32] * 3
    assert torch.equal(adversarial, expected)


def test_normalized_model_normalises_each_channel() -> None:
    model = NormalizedModel(nn.Identity(), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))
    output = model(torch.full((2, 3, 2, 2), 0.5))
    for channel, value in enumerate((0.0, 1.0, 0.25)):
        assert torch.equal(output[:, channel], torch.full((2, 2, 2), value))
    assert set(NormalizedModel(nn.Linear(2, 2), MEAN, STD).state_dict()) == {"model.weight", "model.bias"}
    with pytest.raises(ValueError, match="std must be positive"):
        NormalizedModel(nn.Identity(), mean=(0.5, 0.5), std=(0.5, 0.0))
    with pytest.raises(ValueError, match="one mean and one std per channel"):
        NormalizedModel(nn.Identity(), mean=(0.5, 0.5), std=(0.5,))


def test_adversarial_error_reads_the_device_once_for_all_batches() -> None:
    model = wrapped_conv_net()
    images, labels = batch(11)
    batches = [(images[i : i + 4], labels[i : i + 4]) for i in range(0, BATCH, 4)]
    with HostSyncCounter("cpu") as syncs:
        result = adversarial_error(model, batches, pgd, steps=2, generator=torch.Generator().manual_seed(0))
    assert syncs.count == 1, syncs.describe()
    assert result["images"] == BATCH
    with pytest.raises(ValueError, match="at least one image"):
        adversarial_error(model, [], fgsm)
    with pytest.raises(ValueError, match="unknown attack"):
        adversarial_error(model, batches, "cw")
