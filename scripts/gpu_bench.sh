#!/usr/bin/env bash
# The GPU benchmark of issue 5/5, in one go (about 4-6 minutes on an H100/H200), run from the repository root on a
# machine with one CUDA GPU:
#   bash scripts/gpu_bench.sh [OUT]      OUT defaults to results/bench
# 1. every method (and SUMix on Puzzle Mix and on AutoMix) on r18, wrn16_8 and rx50 at batch 128 (bf16,
#    channels_last), rows timed round-robin, the host syncs counted with CUDA's own sync debug mode beside
#    ours, and the trainer's loop (resident CIFAR-shaped data, crop/flip on the device) against a bare
#    fwd/bwd/step loop                                                                      -> OUT/<device>.md|csv
#    each row profiled (top kernels, launches per step: profiles/<device>/<model>/<method>.txt)
#                                                                             -> OUT/profiles-<device>.tar.gz
# 2. the paper's own scale for AlignMixup: ResNet-50 at 224 px, batch 256               -> OUT/scale.tar.gz
# 3. compile=true on r18 (vanilla, mixup, AutoMix with its teacher and Mix Block compiled)   -> OUT/compile.tar.gz
#    and, when the run is under 6 minutes by then, compile_mode=reduce-overhead (CUDA graphs) on vanilla,
#    mixup, Co-Mixup and Puzzle Mix (their solvers' loops compiled: one CUDA graph per call)
#                                                               -> OUT/compile-reduce-overhead.tar.gz
# A machine without hydra-core/omegaconf installs them from wheels in .whl/ when present (see
# results/bench/README.md for how to fetch them); nothing is downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench}
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: hydra-core and omegaconf are missing and .whl/ holds no wheels; see results/bench/README.md" >&2
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mixbench-site .whl/*.whl
  export PYTHONPATH=/tmp/mixbench-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
slug=$("$PYTHON" -c "from mixbench.provenance import provenance; import torch; print(provenance(torch.device('cuda')).device_slug)")
start=$(date +%s)
# The device tool returns at most 8 files, 2 folders deep: the profiles (one file per model and method) and
# each further run's folder travel as one archive each. Unpack with: tar -xzf <name>.tar.gz -C results/bench
runs=$(mktemp -d)  # the further runs write here; pack NAME archives $runs/NAME into OUT/NAME.tar.gz
pack() { [ -d "$runs/$1" ] && tar -czf "$out/$1.tar.gz" -C "$runs" "$1"; }
profiles=$(mktemp -d)
"$PYTHON" tools/bench.py --methods "all,sumix[base=puzzlemix],sumix[base=automix]" --random-adain --out "$out" \
  --profile "$profiles/profiles/$slug"
tar -czf "$out/profiles-$slug.tar.gz" -C "$profiles" profiles && rm -rf "$profiles"
echo "[gpu_bench] all methods: $(( $(date +%s) - start )) s"
"$PYTHON" tools/bench.py --models resnet50 --data imagenet --image-size 224 --batch-size 256 \
  --methods alignmixup,mixup --steps 15 --warmup 3 --loops 0 --out "$runs/scale" schedule=alignmix_imagenet || echo "[gpu_bench] scale run failed"
pack scale || true
echo "[gpu_bench] + scale: $(( $(date +%s) - start )) s"
timeout 240 "$PYTHON" tools/bench.py --models r18 --methods mixup,automix --compile --steps 30 --loops 0 \
  --out "$runs/compile" || echo "[gpu_bench] compile run failed or ran out of its 240 s"
pack compile || true
echo "[gpu_bench] + compile: $(( $(date +%s) - start )) s"
if [ $(( $(date +%s) - start )) -lt 360 ]; then  # CUDA graphs, only while the 9-minute call has room
  timeout 170 "$PYTHON" tools/bench.py --models r18 --methods mixup,comixup,puzzlemix --compile --steps 30 --loops 0 \
    --out "$runs/compile-reduce-overhead" compile_mode=reduce-overhead \
    || echo "[gpu_bench] reduce-overhead run failed or ran out of its 170 s"
  pack compile-reduce-overhead || true
fi
echo "[gpu_bench] done: $(( $(date +%s) - start )) s"
