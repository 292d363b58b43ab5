#!/usr/bin/env bash
# A small paper-like grid on the demo's outputs (run `make demo` first): U-Net real aug/orig
# x3 repeats, StyleGAN2-synthetic x3, DDPM-synthetic, the ensemble, a ratio sweep and Swin on
# real slices, each scored in 3D; then the report (OUT/report/report.json holds every figure).
# Usage: benchmarks/segmenter_grid.sh [OUT]   (default outputs/grid; ~18 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/grid}
mkdir -p "$OUT"
S=(--profile demo --set "tracking.tracking_uri=sqlite:///$(realpath "$OUT")/mlflow.db")
run() {
  local name=$1; shift
  synthmri train-segmenter "${S[@]}" --real data/slices --out "$OUT/models/$name" "$@"
  synthmri evaluate-segmenter "${S[@]}" --model "$OUT/models/$name" --data data/slices --out "$OUT/eval/$name"
}
run unet-real-aug --train real --aug --repeats 3
run unet-real-orig --train real --no-aug --repeats 3
run unet-sg2-aug --train synthetic --synthetic data/synthetic-stylegan2 --aug --repeats 3
run unet-ddpm-aug --train synthetic --synthetic data/synthetic-ddpm --aug --repeats 1
run unet-ensemble-aug --train synthetic --synthetic data/synthetic-ddpm --synthetic data/synthetic-stylegan2 --aug --repeats 1
for share in 0 0.5 1; do
  run "unet-ratio-$share" --train ratio --real-share "$share" --synthetic data/synthetic-stylegan2 --repeats 1 \
      --set segmenter.ratio_total=256
done
run swin-real-aug --arch swin --train real --aug --repeats 1
evaluations=()
for d in "$OUT"/eval/*; do evaluations+=(--evaluation "$d"); done
synthmri report "${S[@]}" --out "$OUT/report" "${evaluations[@]}"
