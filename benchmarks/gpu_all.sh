#!/usr/bin/env bash
# Every GPU measurement issue 8 asks for, in one go, on a CUDA machine (16 cores assumed):
#
#   bash benchmarks/gpu_all.sh [IMAGE_ROOT] [RESULTS_DIR]
#
# IMAGE_ROOT holds train/<class>/*.jpg (default: the ants/bees set beside the repository);
# RESULTS_DIR gets one JSON per benchmark (default: benchmarks/results). The `gpu` tests run
# first: a broken CUDA path stops the script before any timing. Needs the project installed
# (`pip install -e ".[test]"`), so albumentations, hydra-core and mlflow must be on the box.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${1:-../shared/data/hymenoptera_data}"
OUT="${2:-benchmarks/results}"
WORKERS="$(($(nproc) - 1))"
mkdir -p "$OUT"

python -m pytest -m gpu -q -p no:cacheprovider

# (a)-(e) for ResNet-50 at 224 px, eager and compiled (the H100 targets).
THROUGHPUT=(python benchmarks/train_throughput.py --device cuda --model resnet50 --img-size 224
    --batch-size 256 --steps 50 --warmup 10 --repeats 3 --workers "$WORKERS" --data "$DATA")
"${THROUGHPUT[@]}" --out "$OUT/train_throughput_cuda.json"
"${THROUGHPUT[@]}" --compile --out "$OUT/train_throughput_cuda_compile.json"
python benchmarks/step_overhead.py --device cuda --model resnet50 --img-size 224 \
    --batch-size 256 --out "$OUT/step_overhead_cuda.json"
python benchmarks/features_cache.py --epochs 3 --device cuda --out "$OUT/features_cache_cuda.json"
python benchmarks/dataloader.py "$DATA" --workers 8 "$WORKERS" \
    --loaders pipeline pipeline_cached timm --passes 6 --repeats 3 --batch-size 64 \
    --out "$OUT/dataloader_cuda_box.json"
