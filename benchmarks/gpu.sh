#!/usr/bin/env bash
# The encode/decode comparison in fp16 on CUDA (a few minutes): diffusers AutoencoderTiny fp16 eager vs tinyae fp16
# eager, optimize(precision="fp16") and optimize(..., compile=True); 1024^2, batch 1 and 8, plus 512^2 batch 1.
# Usage: benchmarks/gpu.sh [OUT_DIR]   (needs torch with CUDA and diffusers; PYTHON=... to pick the interpreter)
# Results: OUT_DIR/gpu_*.md (paste into docs/benchmarks.md) and OUT_DIR/gpu_*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
OUT="${1:-${OUT:-bench_out}}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
  echo "benchmarks/gpu.sh: CUDA is not available here (torch $("$PY" -c 'import torch; print(torch.__version__)'))" \
       "- run it on a machine with an NVIDIA GPU and a CUDA build of torch" >&2
  exit 2
}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu_device.txt" || true
# real taef2 weights when ../shared/weights has them, else random weights with its architecture (same speed)
MODEL=()
[ -f ../shared/weights/taef2_decoder.pth ] || MODEL=(--random taef2)
for batch in 1 8; do
  "$PY" benchmarks/bench.py --device cuda ${MODEL[@]+"${MODEL[@]}"} --sizes 1024 --batch "$batch" --repeats 20 --warmup 5 \
    --json "$OUT/gpu_1024_b$batch.json" --markdown "$OUT/gpu_1024_b$batch.md"
done
"$PY" benchmarks/bench.py --device cuda ${MODEL[@]+"${MODEL[@]}"} --sizes 512 --batch 1 --repeats 20 --warmup 5 \
  --json "$OUT/gpu_512_b1.json" --markdown "$OUT/gpu_512_b1.md"
echo "wrote $OUT/gpu_*.md"
# Training (docs/training.md), opt-in because it takes as long as its budgets: TRAIN_MINUTES="10 30 60" runs
# "recover a decoder" and "distil an encoder" on CUDA at batch 32 with the 96 -> 256 px crop schedule.
if [ -n "${TRAIN_MINUTES:-}" ]; then
  # shellcheck disable=SC2086
  "$PY" benchmarks/train.py --device cuda --minutes $TRAIN_MINUTES --batch-size 32 \
    --crop-schedule 96:0,256:4000 --out "$OUT/train"
  echo "wrote $OUT/train/results.md"
fi
