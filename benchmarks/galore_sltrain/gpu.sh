#!/usr/bin/env bash
# The GaLore / SLTrain benchmark at a larger configuration on one CUDA GPU (prepared, not yet run):
# GaLore on a hidden-1024, 12-layer LLaMA (rank 256), SLTrain vs full-rank vs LoRA-only on a hidden-512,
# 8-layer LLaMA for 2000 steps; peak memory is torch.cuda.max_memory_allocated per case process.
# Writes benchmarks/galore_sltrain/results_gpu.{json,md} and copies them to ${OUT:-gpu_out}.
# Usage: bash benchmarks/galore_sltrain/gpu.sh   (about 5-10 minutes on an H100-class GPU)
set -euo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2 || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
timeout 540 python3 benchmarks/galore_sltrain/run.py --large 2>&1 | grep -v -i warn | tail -40
cp benchmarks/galore_sltrain/results_gpu.json benchmarks/galore_sltrain/results_gpu.md "$OUT"/
