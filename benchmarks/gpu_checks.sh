#!/usr/bin/env bash
# GPU checks in one go (used on a lent H200; any CUDA machine with torch, transformers, peft,
# accelerate, typer, rich installed works). Writes logs and results under ${OUT:-gpu_out}.
# Usage: bash benchmarks/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__)" | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest -q -m gpu tests/core/test_gpu_cuda.py -p no:cacheprovider 2>&1 | tail -25 | tee "$OUT/pytest_gpu.log"
timeout 200 python3 benchmarks/lora/run.py --device cuda --hidden 1024 --layers 8 --batch 8 --seq 512 --steps 30 --out "$OUT" 2>&1 | grep -v -i warn | tail -15
for b in adapters protein; do
  if [ -f benchmarks/$b/run.py ] && grep -q -- "--device" benchmarks/$b/run.py; then
    timeout 150 python3 benchmarks/$b/run.py --device cuda --out "$OUT/$b" 2>&1 | grep -v -i warn | tail -20
  fi
done
ls -R "$OUT"
