#!/usr/bin/env bash
# The GPU benchmark of issue 5/5, run from the repository root on a machine with one CUDA GPU:
#   bash scripts/gpu_bench.sh [OUT] [PART]     OUT defaults to results/bench, PART to all
# PART main (about 7-8 minutes on a shared H200, 425 s for step 1 at 5b521f1):
# 1. every method (and SUMix on Puzzle Mix and on AutoMix) on r18, wrn16_8 and rx50 at batch 128 (bf16,
#    channels_last), rows timed round-robin with each row's floor (its passes, timed in the same rounds), the
#    host syncs counted with CUDA's own sync debug mode beside ours, and the trainer's loop (resident
#    CIFAR-shaped data, crop/flip on the device) against a bare fwd/bwd/step loop          -> OUT/<device>.md|csv
#    each row profiled (top kernels, launches per step: profiles/<device>/<model>/<method>.txt)
#                                                                             -> OUT/profiles-<device>.tar.gz
# 2. the paper's own scale for AlignMixup: ResNet-50 at 224 px, batch 256, its Sinkhorn replayed as a CUDA
#    graph (the default) and not (cuda_graph=false)                               -> OUT/further.tar.gz (scale/)
# PART graphs (5-9 minutes as its budget allows; compiling is most of it):
# 3. eager, the solvers replayed as CUDA graphs (cuda_graph, the default) against the same methods with
#    cuda_graph=false, paired in the same rounds on r18: Co-Mixup, Puzzle Mix, AlignMixup
#                                                                  -> OUT/further.tar.gz (solver-graphs/)
# 4. compile_mode=reduce-overhead (CUDA graphs; the online model, the teachers, the Mix Blocks and the solvers'
#    loops compiled) on r18, one process per group so that one group's failure leaves the others' tables:
#    input-space methods and SUMix with the trainer's loop, the learned methods, Puzzle Mix, Co-Mixup, and
#    AlignMixup last (its 100 Sinkhorn iterations unroll into two large graphs: over 2 minutes of compiling)
#                                                                -> OUT/further.tar.gz (reduce-overhead/<group>/)
# PART all runs both. The device tool's call is 10 minutes long and a lent session has 15 minutes of device
# time, start included: run main, then at once graphs on the still-warm machine with GPU_BENCH_SECONDS set to
# what the lease has left less a minute (about 300 s: the groups above run in order, each bounded, the last
# ones skipped when time runs out). The further runs get what is left of the part's budget (GPU_BENCH_SECONDS,
# default 570 s) and are skipped when under a minute is left; OUT/further.tar.gz is rewritten after each, so a
# call cut short still returns what finished.
# A machine without hydra-core/omegaconf installs them from wheels in .whl/ when present (see
# results/bench/README.md for how to fetch them); nothing is downloaded here.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench}
part=${2:-all}
case $part in all | main | graphs) ;; *) echo "error: PART must be all, main or graphs, got '$part'" >&2; exit 2 ;; esac
mkdir -p "$out"
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
# The device tool returns at most 8 files, 2 folders deep: the profiles (one file per model and method) travel
# as one archive, and the further runs' folders as another. Unpack with: tar -xzf <name>.tar.gz -C results/bench
runs=$(mktemp -d)  # the further runs write here
budget=${GPU_BENCH_SECONDS:-570}
# further NAME SECONDS ARGS...: tools/bench.py ARGS --out $runs/NAME under a timeout of at most SECONDS
further() {
  local name=$1 want=$2 room
  shift 2
  room=$(( budget - ($(date +%s) - start) - 10 ))
  if [ "$room" -lt 60 ]; then echo "[gpu_bench] $name skipped: $room s left"; return 0; fi
  [ "$want" -gt "$room" ] && want=$room
  timeout --kill-after=10 "$want" "$PYTHON" tools/bench.py "$@" --out "$runs/$name" \
    || echo "[gpu_bench] $name failed or ran out of its $want s"
  tar -czf "$out/further.tar.gz" -C "$runs" . || true
  echo "[gpu_bench] + $name: $(( $(date +%s) - start )) s"
}
# CUDA graphs: warm-up long enough to record every graph a row draws (Puzzle Mix: one per grid size)
graphs() {
  local name=$1 want=$2 methods=$3 warmup=$4 loops=$5
  further "$name" "$want" --models r18 --methods "$methods" --compile --steps 20 --warmup "$warmup" \
    --loops "$loops" --profile "$runs/$name/profiles" compile_mode=reduce-overhead
}
if [ "$part" != graphs ]; then
  profiles=$(mktemp -d)
  "$PYTHON" tools/bench.py --methods "all,sumix[base=puzzlemix],sumix[base=automix]" --random-adain --out "$out" \
    --profile "$profiles/profiles/$slug"
  tar -czf "$out/profiles-$slug.tar.gz" -C "$profiles" profiles && rm -rf "$profiles"
  echo "[gpu_bench] all methods: $(( $(date +%s) - start )) s"
  further scale 90 --models resnet50 --data imagenet --image-size 224 --batch-size 256 \
    --methods "alignmixup,alignmixup[cuda_graph=false],mixup" --steps 15 --warmup 3 --loops 0 schedule=alignmix_imagenet
fi
if [ "$part" = all ]; then budget=$(( budget + ${GPU_BENCH_SECONDS:-570} )); fi
if [ "$part" != main ]; then
  further solver-graphs 100 --models r18 --steps 20 --warmup 16 --loops 0 --profile "$runs/solver-graphs/profiles" \
    --methods "comixup,comixup[cuda_graph=false],puzzlemix,puzzlemix[cuda_graph=false],alignmixup,alignmixup[cuda_graph=false]"
  export TORCH_LOGS=recompiles  # a retrace per step would show in the log
  graphs reduce-overhead/input 130 mixup,cutmix,fmix,sumix 10 4
  graphs reduce-overhead/learned 75 automix,adautomix 12 0
  graphs reduce-overhead/puzzlemix 60 puzzlemix 20 0
  graphs reduce-overhead/comixup 60 comixup 12 0
  graphs reduce-overhead/alignmixup 200 alignmixup 10 0
  unset TORCH_LOGS
fi
echo "[gpu_bench] done: $(( $(date +%s) - start )) s"
