"""Check and prepare on-disk datasets for mixbench.

    python tools/prepare_data.py check <name> --root data    print OK, or the one-line problem (exit 1)
    python tools/prepare_data.py tiny_imagenet --root data   check, move val images into class folders,
                                                             decode both splits into the mixbench cache
    python tools/prepare_data.py cifar100 --root data [--download]   (same for cifar10) fetch through
                                                             torchvision when asked, then read both splits

Names: cifar10, cifar100, tiny_imagenet, imagenet, cub200, aircraft, cars. Any failure exits non-zero
with a single line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from mixbench.config import CONFIG_DIR
from mixbench.data import DATASETS as REGISTRY
from mixbench.errors import OneLineArgumentParser

DATASETS = sorted(name for name in REGISTRY if name != "digits")


def _module(name: str) -> Any:
    return importlib.import_module(f"mixbench.data.{REGISTRY[name][0]}")


def _options(name: str) -> dict[str, Any]:
    """The load/check options of ``name`` (e.g. num_classes), read from its config in configs/data/."""
    data_cfg = OmegaConf.load(CONFIG_DIR / "data" / f"{name}.yaml")
    return {key: data_cfg[key] for key in REGISTRY[name][1] if key != "download"}


def cmd_check(args: argparse.Namespace) -> None:
    _module(args.name).check(args.root, **_options(args.name))
    print(f"OK {args.name} under {Path(args.root).expanduser().absolute()}")


def cmd_tiny_imagenet(args: argparse.Namespace) -> None:
    tiny = _module("tiny_imagenet")
    tiny.check(args.root)
    moved = tiny.relayout_val(args.root)
    print(f"val: moved {moved} images into class folders")
    for split in ("train", "val"):
        data = tiny.load(args.root, split)
        print(
            f"{split}: {len(data)} images {tuple(data.images.shape[1:])}, "
            f"cache {tiny.cache_path(args.root, split)}"
        )


def cmd_cifar(args: argparse.Namespace) -> None:
    cifar = _module(args.command)
    options = _options(args.command)
    cifar.check(args.root, download=args.download, **options)
    for split in ("train", "test"):
        data = cifar.load(args.root, split, **options)
        print(f"{args.command} {split}: {len(data)} images {tuple(data.images.shape[1:])}")


def _parser() -> argparse.ArgumentParser:
    common = OneLineArgumentParser(add_help=False)
    common.add_argument("--root", default="data", help="data.root (default: data)")
    parser = OneLineArgumentParser(description="Check and prepare mixbench datasets on disk.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", parents=[common], help="print OK or the one-line problem")
    check.add_argument("name", choices=DATASETS)
    check.set_defaults(run=cmd_check)
    tiny = commands.add_parser("tiny_imagenet", parents=[common], help="re-lay out val, build the cache")
    tiny.set_defaults(run=cmd_tiny_imagenet)
    for name in ("cifar10", "cifar100"):
        cifar = commands.add_parser(name, parents=[common], help=f"download (optional) and verify {name}")
        cifar.add_argument("--download", action="store_true", help="fetch through torchvision if missing")
        cifar.set_defaults(run=cmd_cifar)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line, no traceback
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
