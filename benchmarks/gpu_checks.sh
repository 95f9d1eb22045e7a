#!/usr/bin/env bash
# Every check of the project that needs a GPU, as one prepared script for one GPU machine (~9 min):
#   1. smith2018_cifar10, a few epochs per regime on synthetic CIFAR-shaped data (random images
#      written in CIFAR-10's real on-disk format by tests/helpers/data_files.py), and images/s
#      per batch size;
#   2. the overhead and claim benchmarks on the GPU (benchmarks/gpu.sh);
#   3. a 2-job sweep (joblib, one GPU per job) and a short nccl DDP run (world size = GPUs);
#   4. what a GPU run records in MLflow: gpu_peak_memory_mib and samples_per_s per epoch, MLflow's
#      GPU system metrics (psutil and nvidia-ml-py installed), src.evaluate on its weights on the GPU,
#      and tests/test_mlflow_record.py there.
# Needs the project importable with a CUDA torch: pip install -c requirements/lock.txt -e .
# (or, without network, the wheels of hydra-core, omegaconf, mlflow, mnist1d, hydra-joblib-launcher
# on PYTHONPATH). Output: stdout, and $OUT/gpu_checks.md when $OUT is set.
#     PYTHON=python3 bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
work=$(mktemp -d)
out=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && out="$OUT/gpu_checks.md"; fi
{
  echo "# GPU checks, $(date -u '+%Y-%m-%d %H:%M') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")

  echo "## 1. smith2018_cifar10 on synthetic CIFAR-10 (50,000 + 10,000 random images), 4 epochs per regime"
  PYTHONPATH=tests "$PY" -c "from helpers.data_files import write_cifar10_files; write_cifar10_files('$work/data', per_batch=10000)"
  # Steps after epochs 1, 2, 3: B 128 -> 640 -> 3200 -> 16000 for increase_bs (micro-batches of 2048).
  timeout 420 "$PY" -m src.run -m experiment=smith2018_cifar10 trainer.epochs=4 'schedule.milestones=[1,2,3]' \
    paths.data_dir="$work/data" paths.output_dir="$work/out5" 2>&1 | grep -E "epoch|jobs failed|error"
  "$PY" - "$work/out5" <<'PYEOF'
import sys
from collections import defaultdict
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
rate = defaultdict(list)  # batch size -> images/s of the epochs trained at it
for run in client.search_runs(["1"]):
    get = lambda name: {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
    batch, wall, seen = get("batch_size"), get("wall_time_s"), get("samples_seen")
    for step in sorted(batch):
        if step == 0:
            continue  # the first epoch includes cuDNN's autotuning
        rate[int(batch[step])].append((seen[step] - seen[step - 1]) / (wall[step] - wall[step - 1]))
print("| batch size | training images/s (median over epochs and regimes) |\n|---|---|")
for b in sorted(rate):
    values = sorted(rate[b])
    print(f"| {b} | {values[len(values) // 2]:,.0f} |")
PYEOF

  echo "## 2. Overhead and claim on the GPU"
  PYTHON="$PY" bash benchmarks/gpu.sh

  echo "## 3. A 2-job sweep, one GPU per job ($gpus GPUs), and an nccl DDP run"
  timeout 300 "$PY" -m src.run -m hydra/launcher=joblib hydra.launcher.n_jobs=2 schedule=decay_lr,increase_bs \
    trainer.epochs=3 paths.output_dir="$work/out7" 2>&1 | grep -E "jobs failed|error|cuda"
  timeout 300 "$PY" -m torch.distributed.run --standalone --nproc_per_node="$gpus" -m src.run \
    schedule=increase_bs trainer.epochs=3 paths.output_dir="$work/ddp" 2>&1 | grep -E "done|error"

  echo "## 4. What a GPU run records in MLflow (WRN-16-4, 3 epochs of 10,000 synthetic images)"
  PYTHONPATH=tests "$PY" -c "from helpers.data_files import write_cifar10_files; write_cifar10_files('$work/small', per_batch=2000)"
  timeout 300 "$PY" -m src.run experiment=smoke dataset=cifar10 model=wrn trainer.epochs=3 'schedule.milestones=[1,2]' \
    tracking.system_metrics=true tracking.system_metrics_every_s=1 paths.data_dir="$work/small" \
    paths.output_dir="$work/out8" 2>&1 | grep -E "epoch 3/3|done|error"
  run_id=$("$PY" - "$work/out8" <<'PYEOF'
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
[run] = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
for name in ("gpu_peak_memory_mib", "samples_per_s"):
    values = sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)
    print(f"{name} per epoch: {', '.join(f'{m.value:,.0f}' for m in values)}", file=sys.stderr)
print("GPU system metrics:", ", ".join(sorted(k for k in run.data.metrics if k.startswith("system/gpu"))), file=sys.stderr)
print(run.info.run_id)
PYEOF
)
  "$PY" -m src.evaluate run_id="$run_id" tracking.experiment=smoke paths.data_dir="$work/small" paths.output_dir="$work/out8"
  timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_mlflow_record.py 2>&1 | tail -3
} 2>&1 | tee "$out"
exit 0
