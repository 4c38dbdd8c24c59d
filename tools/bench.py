"""Time one training step of every method on every model on this device -> results/bench/<device>.md|csv.

    python tools/bench.py                           # all methods; CUDA: r18, wrn16_8, rx50 at batch 128
                                                    # CPU: r18 at 32 px, batch 32, 15 rounds
    python tools/bench.py --methods mixup,cutmix --models r18 --steps 50   # 50 round-robin rounds
    python tools/bench.py --methods "puzzlemix,sumix[base=puzzlemix]" --models r18   # a row per variant
    python tools/bench.py --models swin_t --image-size 224 --batch-size 64 schedule=vit_cifar
    python tools/bench.py --data digits model.width=8 device=cpu --out /tmp/bench

After the rows, vanilla runs twice more per model: through the trainer's own data path (a CIFAR-shaped
synthetic set resident on the device, crop/flip on the device) and as a bare fwd/bwd/step loop on a fixed
batch; the table under the rows gives both and the trainer's share of the bare loop's speed
(mixbench/bench/data_path.py; ``--loops 0`` skips it).

Any further ``key=value`` is a ``tools/train.py`` override applied to every row (device=, precision=,
channels_last=, schedule=, model.width=, ...).  Batches are synthetic and already on the device, so no dataset
is needed and the data pipeline is not timed in the rows; see mixbench/bench/ for what is measured.  Each row
also counts the host syncs of its steps (reads of device values on the host, blocking host-device copies; see
mixbench/engine/host_syncs.py and kernel_syncs.py) and names where they are, and gets its floor: the
time of the network passes its method's step runs, each pass unit timed on its own in the same rounds
(mixbench/bench/passes.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mixbench.bench.benchmark import run_benchmark
from mixbench.bench.report import to_markdown, write_report
from mixbench.bench.request import resolve_request
from mixbench.cli import fail
from mixbench.config import ConfigError
from mixbench.errors import OneLineArgumentParser


def main() -> None:
    parser = OneLineArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--methods",
        default="all",
        help="comma-separated names, all for every method (vanilla is always added); a variant "
        "name[key=value,...] sets method options for its row alone, e.g. all,sumix[base=puzzlemix]",
    )
    parser.add_argument("--models", help="comma-separated model configs (default: depends on the device)")
    parser.add_argument(
        "--data", default="cifar100", help="data config giving image size, classes, normalisation"
    )
    parser.add_argument("--batch-size", type=int, help="default: 128 on CUDA, 32 on CPU")
    parser.add_argument(
        "--image-size", type=int, help="training resolution in px (default: the data config's)"
    )
    parser.add_argument("--steps", type=int, help="timed steps per row (default: 30 on CUDA, 15 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 5 on CUDA, 2 on CPU)")
    parser.add_argument(
        "--out", type=Path, default=Path("results/bench"), help="folder of <device>.md and .csv"
    )
    parser.add_argument(
        "--loops",
        type=int,
        help="windows of the trainer-vs-bare comparison per model (default 12 on CUDA, 8 on CPU; 0 skips)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="also profile each row (3 untimed steps) into DIR/<model>/<method>.txt: top kernels, launches",
    )
    parser.add_argument(
        "--random-adain",
        action="store_true",
        help="time StyleMix/StyleCutMix with random AdaIN weights in the release layout (cost only)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (warm-up includes compiling)"
    )

    args, overrides = parser.parse_known_args()
    try:
        request, runtime = resolve_request(
            args.methods,
            args.models,
            args.data,
            args.batch_size,
            args.image_size,
            args.steps,
            args.warmup,
            args.compile,
            overrides,
            loop_windows=args.loops,
            profile_dir=args.profile,
            random_adain=args.random_adain,
        )
        report = run_benchmark(request, runtime)
    except ConfigError as error:
        fail(str(error))
    markdown_path, csv_path = write_report(report, args.out)
    print(to_markdown(report), end="")
    print(f"wrote {markdown_path} and {csv_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
