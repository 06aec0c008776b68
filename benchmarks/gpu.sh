#!/usr/bin/env bash
# On a CUDA machine, in under 5 minutes: the throughput benchmark, then a 3-generation CIFAR-sized run
# (CIFAR-10 when $DATA_DIR holds it, else generated 32x32 data). Results land in $OUT (default benchmarks/out-gpu).
#   bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-benchmarks/out-gpu}
DATA_DIR=${DATA_DIR:-data}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
DATASET=synthetic
[ -d "$DATA_DIR/cifar-10-batches-py" ] && DATASET=cifar10
echo "dataset: $DATASET" | tee -a "$OUT/gpu.txt"
timeout 150 $PY benchmarks/throughput.py --dataset "$DATASET" --data-dir "$DATA_DIR" --model resnet20 \
  --images 16384 --batch-size 512 --repeats 5 --precisions fp32,bf16 --matmul-size 8192 \
  --out "$OUT/throughput.json" 2>&1 | tee "$OUT/throughput.txt"
timeout 130 $PY -m labelrefinery run --dataset "$DATASET" --data-dir "$DATA_DIR" --model resnet20 \
  --generations 3 --epochs 8 --augment online --batch-size 512 --lr 0.003 --lr-schedule onecycle \
  --early-stop-patience-epochs 0 --runs-dir "$OUT/runs" --name gpu-3gen --no-progress 2>&1 | tee "$OUT/run.txt"
