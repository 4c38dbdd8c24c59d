"""Draw what a method does to a batch: source pairs, masks or alignments, and the mixed images.

    python tools/show_mix.py method=cutmix                       # -> results/gallery/cutmix.png
    python tools/show_mix.py method=puzzlemix samples=6 out=/tmp/puzzle.png
    python tools/show_mix.py method=automix checkpoint=runs/gallery/.../checkpoint.pt

Methods that look at the network (saliency, learned masks, feature alignment) use the weights of
``checkpoint`` (by default this configuration's run directory under ``runs_root``, when it has been trained);
otherwise the network is at its random initialisation, and the figure says so.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from mixbench.atomic import load_checkpoint
from mixbench.cli import check_overrides, fail
from mixbench.config import ConfigError, check_writable_folder, validate
from mixbench.data import load_split
from mixbench.engine.build import build_model_and_method
from mixbench.engine.runtime import resolve_runtime
from mixbench.report.gallery import draw_preview, pick_samples
from mixbench.rng import MixRandom
from mixbench.rundir import RunDirectory, checkpoint_problem


def _weights(cfg: DictConfig) -> Path | None:
    if cfg.checkpoint in (None, "null"):
        return None
    if cfg.checkpoint == "auto":
        path = RunDirectory.of(cfg).checkpoint_file
        return path if path.exists() else None
    path = Path(cfg.checkpoint)
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist; pass a run's checkpoint.pt, auto or null")
    return path


def _load_weights(path: Path, model: torch.nn.Module, method: torch.nn.Module, device: torch.device) -> None:
    """A run's checkpoint into the model and the method (``weights_only=True``); damage or another run's
    weights is one :class:`ConfigError` naming the file."""
    fix = "pass this configuration's checkpoint.pt, auto or null"
    try:
        state = load_checkpoint(path, map_location=device)
    except Exception as error:  # not a torch file, truncated, or not plain data
        with path.open("rb") as handle:
            problem = checkpoint_problem(error, handle.read(4))
        raise ConfigError(f"checkpoint {path} cannot be loaded ({problem}); {fix}") from None
    try:
        model.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
    except (KeyError, TypeError) as error:
        raise ConfigError(f"checkpoint {path} is not a mixbench run's (it has no {error}); {fix}") from None
    except RuntimeError:  # load_state_dict: the weights of another model or method
        raise ConfigError(f"checkpoint {path} holds another model's or method's weights; {fix}") from None


@hydra.main(config_path="../configs", config_name="show_mix", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        validate(cfg)
        samples = cfg.samples
        if not isinstance(samples, int) or isinstance(samples, bool) or not 2 <= samples <= 64:
            raise ConfigError(f"samples must be an integer from 2 to 64 (images drawn), got {samples!r}")
        check_writable_folder(Path(str(cfg.out)).parent, "out")
        runtime = resolve_runtime(cfg)
        torch.manual_seed(int(cfg.seed))
        model, method = build_model_and_method(cfg, runtime)
        weights = _weights(cfg)
        if weights is not None:
            _load_weights(weights, model, method, runtime.device)
        model.eval()
        method.bind(MixRandom(int(cfg.seed), runtime.device), total_steps=1)
        split = load_split(cfg.data, "test")
        x, y = pick_samples(split, cfg.data, int(cfg.samples), runtime.device)
        preview = method.preview(model, x, y)
        source = (
            f"weights: {weights}" if weights else "weights: random initialisation (no trained checkpoint)"
        )
        out = Path(cfg.out)
        draw_preview(
            preview,
            cfg.data.mean,
            cfg.data.std,
            title=f"{cfg.method.name} on {cfg.data.name} — {source}",
            out=out,
        )
        print(f"wrote {out}")
    except (ConfigError, FileNotFoundError, ValueError) as error:
        fail(str(error))


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:], config_name="show_mix")
    except ConfigError as error:
        fail(str(error))
    main()
