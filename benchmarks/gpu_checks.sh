#!/usr/bin/env bash
# GPU checks in one go (used on a lent H200; any CUDA machine with torch, transformers, peft,
# accelerate, typer, rich, timm, tifffile installed works; openslide-python, openslide-bin and
# imagecodecs for the pathology parts). Writes logs and results under ${OUT:-gpu_out}.
# Usage: bash benchmarks/gpu_checks.sh [PART ...]   PART: tests lora decode less (default: all)
#   tests   pytest -m gpu (core CUDA checks, GPU JPEG decoding vs OpenSlide)
#   lora    benchmarks/lora/run.py on a 1024-wide, 8-layer LLaMA (ours vs peft)
#   decode  benchmarks/pathology_decode/run.py --device cuda (GPU decode rate, ResNet-18 extraction / forward,
#           also with CPU threads decoding a share of each batch)
#   less    benchmarks/select/throughput.py --device cuda (batched vs one-at-a-time per-example gradients)
#   overlap the decode diagnostics (overlap.py, decoders_probe.py --graph, cpu_processes.py) and their report;
#           decoders_probe.py --nvimgcodec also needs nvidia-nvimgcodec-cu13 and nvidia-nvjpeg installed
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
parts=${*:-tests lora decode less}
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)" \
  | tee -a "$OUT/gpu.txt"
for part in $parts; do
  echo "=== $part ($(date +%T))"
  case $part in
    tests)
      timeout 200 python3 -m pytest -q -m gpu tests/domains/pathology/test_pathology_readers_gpu.py \
        tests/core/test_gpu_cuda.py -p no:cacheprovider 2>&1 | tail -25 ;;
    lora)
      timeout 200 python3 benchmarks/lora/run.py --device cuda --hidden 1024 --layers 8 --batch 8 --seq 512 \
        --steps 30 --out "$OUT" 2>&1 | grep -v -i warn | tail -15 ;;
    decode)  # the repo's results.json is copied first so that the GPU run is added beside the CPU one
      mkdir -p "$OUT/decode" && cp benchmarks/pathology_decode/results.json "$OUT/decode/"
      # with CPU threads decoding a share of each batch beside nvJPEG (decode_threads): one core is left to the
      # main thread and one to the batch-ahead reader thread
      # --passes: the tissue tiles 12 times over (about 40 batches: the pipeline's steady state, as on a real
      # slide, not dominated by its first and last batch); --switch-intervals: also with a shorter GIL interval
      OMP_NUM_THREADS=1 timeout 420 python3 benchmarks/pathology_decode/run.py --grid 96 --batch-size 128 \
        --repeats 5 --device cuda --tag ${DECODE_TAG:-h200-steady} --out "$OUT/decode" --passes 12 \
        --switch-intervals 0.0005 0.0001 \
        --decode-threads $(( $(nproc) > 3 ? $(nproc) - 2 : 1 )) --cpu-shares 0.3 0.4 0.5 0.6 \
        2>&1 | grep -v -i warn | tail -40 ;;
    less)
      OMP_NUM_THREADS=1 timeout 120 python3 benchmarks/select/throughput.py --device cuda 2>&1 | tail -12
      cp benchmarks/select/results_throughput_cuda.* "$OUT/" ;;
    overlap)
      mkdir -p "$OUT/overlap"
      cp benchmarks/pathology_decode/gpu_*.json "$OUT/overlap/" 2>/dev/null
      OMP_NUM_THREADS=1 timeout 200 python3 benchmarks/pathology_decode/overlap.py --out "$OUT/overlap" \
        2>&1 | grep -v -i warn | tail -5 && mv "$OUT/overlap/overlap.json" "$OUT/overlap/gpu_overlap.json"
      OMP_NUM_THREADS=1 timeout 200 python3 benchmarks/pathology_decode/decoders_probe.py "$OUT/overlap" --graph \
        2>&1 | grep -v -i warn | tail -5 && mv "$OUT/overlap/probe.json" "$OUT/overlap/gpu_decoders_graph.json"
      OMP_NUM_THREADS=1 timeout 200 python3 benchmarks/pathology_decode/cpu_processes.py "$OUT/overlap" \
        2>&1 | grep -v -i warn | tail -5 && mv "$OUT/overlap/procs.json" "$OUT/overlap/gpu_cpu_processes.json"
      echo "copy $OUT/overlap/gpu_*.json into benchmarks/pathology_decode/, then run gpu_overlap_report.py" ;;
    *) echo "unknown part $part" ;;
  esac
done
echo "=== done ($(date +%T))"
