#!/usr/bin/env bash
# The CUDA checks in one run: the test suite (its CUDA tests included), then the GPU part of the
# studies: the dense/sparse crossover, the train-step comparisons and the scaling study. Each stage
# has its own time limit; the log, the JSON of each study and their report land in $OUT (or
# .results/gpu).
#
#   bash benchmarks/gpu.sh            # needs torch with CUDA, numpy, scipy, pytest, pytest-benchmark
#                                     # and, for the comparisons, the original esgp==0.1.0
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-.results/gpu}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
bench=(-q -p no:cacheprovider --benchmark-min-rounds=5 --benchmark-max-time=0.1)

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, numpy, scipy; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'numpy', numpy.__version__, 'scipy', scipy.__version__)"
} | tee "$out/log.txt"

stage() {
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  echo "== $name: $*" >> "$out/log.txt"
  timeout "$limit" "$@" >> "$out/log.txt" 2>&1
  echo "== $name: rc=$? in $(( $(date +%s) - start )) s" | tee -a "$out/log.txt"
}

stage tests 150 $py -m pytest tests -q -p no:cacheprovider
stage product 80 $py -m pytest benchmarks/test_recurrent_product.py "${bench[@]}" -k cuda --benchmark-json="$out/product.json"
# compile=True is checked by the tests; its Triton compilation would eat this stage's time
stage train 120 $py -m pytest benchmarks/test_train_step.py "${bench[@]}" -k "cuda and not compiled" --benchmark-json="$out/train.json"
stage scaling 150 $py -m pytest benchmarks/test_scaling.py "${bench[@]}" -k cuda --benchmark-json="$out/scaling.json"
$py benchmarks/report.py "$out"/*.json > "$out/report.txt" 2>&1
cat "$out/report.txt"
