#!/usr/bin/env bash
# Draw every method's mixing into results/gallery/<method>.png (digits at 32 px, PreActResNet18 width 16).
# Methods whose mixing depends on the network (gradient saliency, learned masks, feature alignment) are first
# trained for a few epochs so that their figures show a trained network rather than random weights.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then  # PY=<python> uses an environment that already has mixbench's requirements
  bash scripts/setup.sh
  PY=.venv/bin/python
fi
EPOCHS=${GALLERY_EPOCHS:-10}
COMMON=(data.image_size=32 model.width=16 schedule.epochs=$EPOCHS schedule.metric_window=$((EPOCHS < 10 ? EPOCHS : 10)) runs_root=runs/gallery)
NETWORK_DEPENDENT=(puzzlemix comixup alignmixup alignmixup_ae automix adautomix)
methods=$($PY -c "from mixbench.methods import METHODS; print(' '.join(n for n, c in sorted(METHODS.items()) if not getattr(c, 'needs_external_weights', False)))")
for method in $methods; do
  if [[ " ${NETWORK_DEPENDENT[*]} " == *" $method "* ]]; then
    $PY tools/train.py experiment=quickstart method="$method" "${COMMON[@]}" progress=false
  fi
  $PY tools/show_mix.py method="$method" "${COMMON[@]}"
done
