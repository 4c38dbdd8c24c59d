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

try:
    import mixbench  # noqa: F401  (installed editable by scripts/setup.sh)
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> (module under mixbench.data, options for check/load)
DATASETS: dict[str, tuple[str, dict[str, Any]]] = {
    "cifar10": ("cifar", {"num_classes": 10}),
    "cifar100": ("cifar", {"num_classes": 100}),
    "tiny_imagenet": ("tiny_imagenet", {}),
    "imagenet": ("imagenet", {}),
    "cub200": ("cub200", {}),
    "aircraft": ("aircraft", {}),
    "cars": ("cars", {}),
}


def _module(name: str) -> Any:
    return importlib.import_module(f"mixbench.data.{DATASETS[name][0]}")


def cmd_check(args: argparse.Namespace) -> None:
    _module(args.name).check(args.root, **DATASETS[args.name][1])
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
    options = DATASETS[args.command][1]
    cifar.check(args.root, download=args.download, **options)
    for split in ("train", "test"):
        data = cifar.load(args.root, split, **options)
        print(f"{args.command} {split}: {len(data)} images {tuple(data.images.shape[1:])}")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default="data", help="data.root (default: data)")
    parser = argparse.ArgumentParser(description="Check and prepare mixbench datasets on disk.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", parents=[common], help="print OK or the one-line problem")
    check.add_argument("name", choices=sorted(DATASETS))
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
