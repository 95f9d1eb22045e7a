#!/usr/bin/env bash
# The overhead (1, 2) and claim (3) benchmarks on a GPU, in one go (~3-5 min on one GPU, plus
# ~30 s to generate the larger MNIST-1D on first use). Run from anywhere, with a Python whose torch
# has CUDA and the project installed (pip install -c requirements/lock.txt -e .):
#     PYTHON=.venv/bin/python bash benchmarks/gpu.sh
# Output goes to stdout and, when $OUT is set, to $OUT/benchmarks_gpu.md too; paste it into the
# GPU section of benchmarks/README.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
out=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && out="$OUT/benchmarks_gpu.md"; fi
{
  echo "# GPU benchmarks, $(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  echo
  # 1 and 2 on the default MNIST-1D (N = 20,000, B up to N/10 = 2,000), whole epochs per timed block
  timeout 300 "$PY" benchmarks/overhead.py --device cuda --samples 20000 --min-batches 10
  # 1 at GPU-sized batches: MNIST-1D with N = 100,000 (N/10 = 10,000)
  timeout 300 "$PY" benchmarks/overhead.py --device cuda --samples 50000 --min-batches 10 --skip-data-path \
    --sizes 128,512,2000,5000,10000 dataset.n_samples=105000 dataset.n_val=5000
  # 3: the default study (20 epochs), 3 seeds
  timeout 300 "$PY" benchmarks/claim.py --device cuda --epochs 20 --samples 20000
} 2>&1 | tee "$out"
exit 0
