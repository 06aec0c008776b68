#!/usr/bin/env bash
# On a CUDA machine, in under 15 minutes: the throughput benchmark, a 3-generation CIFAR-sized run, the streaming
# benchmark and, with several GPUs, a torchrun scaling run
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
# Streaming an image folder (a generated 4,000-JPEG folder): loader and resnet18 training at 224 px on the GPU,
# against torchvision ImageFolder + DataLoader with the same 8 workers (BENCHMARKS.md "Streaming an image folder").
timeout 240 $PY benchmarks/streaming.py --root /tmp/stream-bench-gpu --images 4000 --train-images 2048 --workers 8 \
  --device cuda --out "$OUT/streaming.json" 2>&1 | tee "$OUT/streaming.txt"
# Scaling over every visible GPU: one generation on 1 GPU, then on all of them with torchrun (same global batch);
# images/s per GPU and the scaling efficiency (N-GPU images/s / (N x 1-GPU images/s)) from the runs' metrics.
NGPU=$(nvidia-smi --list-gpus | wc -l)
if [ "$NGPU" -gt 1 ]; then
  for N in 1 "$NGPU"; do
    timeout 120 $PY -m torch.distributed.run --standalone --nproc_per_node "$N" -m labelrefinery run \
      --dataset "$DATASET" --data-dir "$DATA_DIR" --model resnet20 --generations 1 --epochs 3 \
      --batch-size 1024 --lr 0.003 --lr-schedule onecycle --early-stop-patience-epochs 0 \
      --runs-dir "$OUT/runs" --name "ddp-$N" --no-progress 2>&1 | tee "$OUT/ddp-$N.txt"
  done
  $PY - "$OUT" "$NGPU" <<'PYEOF' | tee "$OUT/scaling.txt"
import json, sys
out, n = sys.argv[1], int(sys.argv[2])
def rate(k):  # median images/s over the epochs after the first
    r = sorted(json.loads(l)["images_per_s"] for l in open(f"{out}/runs/ddp-{k}/metrics.jsonl")
               if '"kind": "epoch"' in l)[1:] or [0]
    return r[len(r) // 2]
one, many = rate(1), rate(n)
print(f"1 GPU {one:.0f} images/s; {n} GPUs {many:.0f} images/s ({many / n:.0f} per GPU); "
      f"scaling efficiency {many / (n * one):.2f}")
PYEOF
else
  echo "one GPU visible: no multi-GPU scaling measured" | tee "$OUT/scaling.txt"
fi
