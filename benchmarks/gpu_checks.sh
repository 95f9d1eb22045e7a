#!/usr/bin/env bash
# The study's GPU path, checked on one GPU machine in one go (~6-7 min on one H200 with the default
# budget), each section under its own time limit, the report written as it goes:
#   sync        (f) host-device synchronisations per training step of train_epoch: where, and their cost
#   cifar       (a) smith2018_cifar10's three regimes, 5 epochs with steps after epochs 1, 2, 3 (B 128 ->
#               640 -> 3,200 -> 16,000 x 2 for increase_bs, micro-batches of 2,048), on random images written
#               in CIFAR-10's real file format: images/s per B, peak memory, 200-epoch projections
#   throughput  (b) WRN-16-4 steps, B 128 to 16,000, bf16 and channels_last on and off: ms/step, peak memory
#   ddp         (d) the CLI under torchrun (nproc = GPUs), and DDP around WRN-16-4 on one nccl rank
#   sweep       (e) a 2-job joblib sweep, one GPU per job (only where there are 2 GPUs or more)
#   overhead, claim, datapath   (c) benchmarks 1, 3 and 2 at GPU batch sizes (--device cuda)
#
#   bash benchmarks/gpu_checks.sh                     # on a GPU machine (~6-7 min)
#   GPU_CHECKS_DRY=1 bash benchmarks/gpu_checks.sh    # anywhere: every section on the CPU with tiny
#                                                     # sizes (~6 min on 2 cores); checks the code paths only
# Environment: OUT (report folder; default a new temporary one), PYTHON (default python3, or
# .venv/bin/python when dry), GPU_CHECKS_SECTIONS (a subset of the names above, in any order: to rerun
# what failed), GPU_CHECKS_BUDGET (seconds for all sections together, default 480: a section gets at
# most what is left), GPU_CHECKS_COMMIT (the commit, for a copy of the tree without .git).
# A machine without network: a git-ignored folder .whl of wheels (the project's packages that the
# machine lacks; benchmarks/README.md, "GPU") is installed first into /tmp/site and put on PYTHONPATH.
# Writes $OUT/gpu_checks.md (the report, also printed) and $OUT/gpu_checks.log (all commands' output).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
DRY=${GPU_CHECKS_DRY:-0}
BUDGET=${GPU_CHECKS_BUDGET:-480}  # dry: x3 (below)
SECTIONS=${GPU_CHECKS_SECTIONS:-sync cifar throughput ddp sweep overhead claim datapath}
if [ "$DRY" = 1 ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
OUT=${OUT:-$(mktemp -d /tmp/gpu_checks.XXXXXX)}
mkdir -p "$OUT"
REPORT=$OUT/gpu_checks.md
LOG=$OUT/gpu_checks.log
: >"$REPORT"
: >"$LOG"
WORK=$(mktemp -d /tmp/gpu_checks_work.XXXXXX)
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 HYDRA_FULL_ERROR=1

md() { printf '%s\n' "$@" | tee -a "$REPORT"; }  # a line (or lines) of the report

# --- set-up: packages, devices -----------------------------------------------------------------
if [ "$DRY" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl >>"$LOG" 2>&1; then
    md "error: installing the wheels of .whl failed (see gpu_checks.log)"
    exit 1
  fi
  export PYTHONPATH=/tmp/site:$REPO
else
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PY" -c "import hydra, mlflow, mnist1d, torch" >>"$LOG" 2>&1; then
  md "error: the project's packages do not import with $PY (see gpu_checks.log)"
  exit 1
fi
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>>"$LOG")
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "${GPU_CHECKS_COMMIT:-unknown}")

# Sizes: the real ones, or tiny ones for a dry run on the CPU (every code path, numbers meaningless).
if [ "$DRY" = 1 ]; then
  DEV=cpu
  SCALE=3               # section limits x3: the CPU is slow, and shared
  CIFAR_PER_BATCH=50    # 250 training + 50 test images
  # WRN-10-1, ghost batches of 8, micro-batches of 64, B 8 -> 40 -> 200 (the cap), float32
  WRN=(trainer.device=cpu model.depth=10 model.width=1 model.ghost_batch_size=8 trainer.micro_batch_size=64
       schedule.batch_size=8 schedule.max_batch_size=200 trainer.bf16=false trainer.channels_last=false
       trainer.eval_batch_size=50)
  MN=(dataset.n_samples=1500 dataset.n_val=300)
  MN_BIG=()             # benchmark 1 uses MN too
  SYNC=(--sizes 8,200 --n-train 250 --train-n 200 --train-batch 40 --block-seconds 0.05)
  THROUGHPUT=(--sizes 8,40,200 --combo-sizes 8,40,200 --whole-batch --n-train 250 --n-val 50
              --n-project 250 --block-seconds 0.05)
  DDP1=(--batch 128 --steps 2 --n-train 250)
  NPROC=2               # gloo on the CPU: the real multi-rank path
  OVERHEAD=(--models mlp --sizes 32,120 --samples 300 --block-seconds 0.02 "${MN[@]}")
  DATAPATH=(--sizes 120 "${MN[@]}")
  CLAIM=(--epochs 4 --seeds 0 --samples 200 "${MN[@]}")
else
  DEV=cuda
  SCALE=1
  CIFAR_PER_BATCH=10000 # the real sizes: 50,000 training + 10,000 test images
  WRN=()
  MN=()                 # the default study: MNIST-1D, 20,000 training samples
  MN_BIG=(dataset.n_samples=105000 dataset.n_val=5000)  # N = 100,000: B up to N/10 = 10,000
  SYNC=()
  THROUGHPUT=(--whole-batch)
  DDP1=()
  NPROC=$GPUS
  OVERHEAD=(--models mlp,cnn1d --sizes 128,512,2000,5000,10000 --samples 50000 --min-batches 10 "${MN_BIG[@]}")
  DATAPATH=(--sizes 128,512,2000)
  CLAIM=(--epochs 20 --samples 20000)
fi

[ "$DRY" = 1 ] && BUDGET=${GPU_CHECKS_BUDGET:-$((480 * SCALE))}

# Data, prepared in the background on the CPU while the first sections use the GPU (only what the
# chosen sections need; a section waits for its data).
wanted() { for name in "$@"; do case " $SECTIONS " in *" $name "*) return 0 ;; esac; done; return 1; }
CIFAR_PID=
MNIST1D_PID=
MNIST1D_BIG_PID=
if wanted sync cifar; then
  timeout 300 "$PY" benchmarks/gpu_probe.py prepare-data --cifar "$WORK/cifar" --per-batch $CIFAR_PER_BATCH >>"$LOG" 2>&1 &
  CIFAR_PID=$!
fi
if wanted ddp sweep claim datapath overhead; then
  timeout 300 "$PY" benchmarks/gpu_probe.py prepare-data --mnist1d "${MN[@]}" >>"$LOG" 2>&1 &
  MNIST1D_PID=$!
fi
MNIST1D_BIG_PID=$MNIST1D_PID
if [ ${#MN_BIG[@]} -gt 0 ] && wanted overhead; then
  timeout 300 "$PY" benchmarks/gpu_probe.py prepare-data --mnist1d "${MN_BIG[@]}" >>"$LOG" 2>&1 &
  MNIST1D_BIG_PID=$!
fi

md "# GPU checks, $(date -u '+%Y-%m-%d %H:%M') UTC, commit $COMMIT" ""
if [ "$DRY" = 1 ]; then md "**Dry run** (GPU_CHECKS_DRY=1): tiny sizes on the CPU; the numbers mean nothing." ""; fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null \
  | sed 's/^/- nvidia-smi: /' | tee -a "$REPORT"
"$PY" benchmarks/gpu_probe.py header 2>>"$LOG" | tee -a "$REPORT"
md "- Sections: $SECTIONS; budget ${BUDGET} s" ""

# --- running sections under time limits ---------------------------------------------------------
SUMMARY=()
SECTION_END=0

# bounded SECONDS COMMAND...: run COMMAND for at most SECONDS (x SCALE), never past the section's end.
bounded() {
  local want=$(($1 * SCALE)) left=$((SECTION_END - SECONDS))
  shift
  local limit=$((want < left ? want : left))
  if [ "$limit" -lt 5 ]; then
    md "(no time left for: $*)"
    return 124
  fi
  timeout -k 10 "$limit" "$@"
}

# probe SECONDS SUBCOMMAND ARGS...: a gpu_probe.py part; its markdown goes to the report.
probe() {
  local want=$1
  shift
  bounded "$want" "$PY" benchmarks/gpu_probe.py "$@" 2>>"$LOG" | tee -a "$REPORT"
}

# cli SECONDS NAME ARGS...: `python -m src.run ARGS`, or another command, all output to the log;
# the report gets its exit status and the lines that say how its jobs ended.
cli() {
  local want=$1 name=$2
  shift 2
  local part=$WORK/$name.log
  bounded "$want" "$@" >"$part" 2>&1
  local rc=$?
  cat "$part" >>"$LOG"
  md "" "\`$name\`: exit $rc$([ $rc = 124 ] && echo ' (time limit)')."
  grep -E "jobs failed|^error|Error|\] done:" "$part" | tail -n 8 | sed 's/^/    /' | tee -a "$REPORT"
  return $rc
}

# section NAME LIMIT TITLE: run section_NAME with at most LIMIT seconds (and what the budget has left).
section() {
  local name=$1 limit=$(($2 * SCALE)) title=$3
  wanted "$name" || return 0
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 20 ]; then
    md "## $title" "" "Skipped: ${left} s of the ${BUDGET} s budget left." ""
    SUMMARY+=("| $name | 0 | skipped (budget) |")
    return 0
  fi
  SECTION_END=$((SECONDS + (limit < left ? limit : left)))
  local start=$SECONDS
  md "## $title" ""
  "section_$name"
  local rc=$?
  local took=$((SECONDS - start))
  md "" "_Section $name: ${took} s, exit $rc (limit $((SECTION_END - start)) s)._" ""
  echo "[gpu_checks] $name: ${took} s, exit $rc (elapsed ${SECONDS} s)" >&2
  SUMMARY+=("| $name | $took | $([ $rc = 0 ] && echo ok || echo "exit $rc") |")
}

section_sync() {
  wait $CIFAR_PID 2>/dev/null
  probe 200 sync --device $DEV --cifar "$WORK/cifar" "${SYNC[@]}" "${WRN[@]}"
}

section_cifar() {
  wait $CIFAR_PID 2>/dev/null
  local store=$WORK/cifar_runs peaks=$WORK/cifar_peaks.jsonl
  # increase_bs first: the regime that reaches B = 16,000. The sweep leaves 40 s of the section for
  # the report, which reads what the runs logged, whole or not.
  cli $(((SECTION_END - SECONDS) / SCALE - 40)) smith2018_cifar10 "$PY" -m src.run -m experiment=smith2018_cifar10 \
    "hydra.sweeper.params.schedule='increase_bs,hybrid,decay_lr'" trainer.epochs=5 'schedule.milestones=[1,2,3]' paths.data_dir="$WORK/cifar" paths.output_dir="$store" \
    +hydra.callbacks.peak_memory._target_=benchmarks.gpu_probe.PeakMemory \
    +hydra.callbacks.peak_memory.path="$peaks" "${WRN[@]}"
  local rc=$?
  md ""
  probe 40 cifar-report --store "$store" --peaks "$peaks" "${WRN[@]}" || return $?
  return $rc
}

section_throughput() {
  probe 300 throughput --device $DEV "${THROUGHPUT[@]}" "${WRN[@]}"
}

section_ddp() {
  wait $MNIST1D_PID 2>/dev/null
  local store=$WORK/ddp_runs
  md "torchrun --standalone --nproc_per_node=$NPROC -m src.run (the default study, increase_bs, 3 epochs)." \
     "With one process torchrun's WORLD_SIZE is 1 and src/distributed.py trains without DDP: this checks the" \
     "launch; the multi-rank nccl path needs 2 GPUs or more (the dry run uses 2 gloo ranks on the CPU)."
  cli 45 torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m src.run \
    schedule=increase_bs trainer.epochs=3 'schedule.milestones=[1,2]' paths.output_dir="$store" "${MN[@]}"
  local rc=$?
  md ""
  probe 20 runs-report --store "$store"
  md "" "DistributedDataParallel around WRN-16-4 on one rank, through train_epoch:" ""
  probe 40 ddp1 --device $DEV "${DDP1[@]}" "${WRN[@]}" || return $?
  return $rc
}

section_sweep() {
  if [ "$GPUS" -lt 2 ] && [ "$DRY" != 1 ]; then
    md "Skipped: this machine has $GPUS GPU; a sweep with one GPU per job needs 2 or more."
    return 0
  fi
  wait $MNIST1D_PID 2>/dev/null
  local store=$WORK/sweep_runs peaks=$WORK/sweep_peaks.jsonl
  [ "$DRY" = 1 ] && md "Dry run: on the CPU, for the commands and the report; the one-GPU-per-job check needs 2 GPUs."
  cli 120 joblib_sweep "$PY" -m src.run -m hydra/launcher=joblib hydra.launcher.n_jobs=2 \
    schedule=decay_lr,increase_bs trainer.epochs=3 'schedule.milestones=[1,2]' paths.output_dir="$store" \
    +hydra.callbacks.peak_memory._target_=benchmarks.gpu_probe.PeakMemory \
    +hydra.callbacks.peak_memory.path="$peaks" "${MN[@]}"
  local rc=$?
  md ""
  probe 30 runs-report --store "$store" --peaks "$peaks" || return $?
  return $rc
}

section_overhead() {
  wait $MNIST1D_BIG_PID 2>/dev/null
  bounded 300 "$PY" benchmarks/overhead.py --device $DEV --skip-data-path "${OVERHEAD[@]}" 2>>"$LOG" | tee -a "$REPORT"
}

section_claim() {
  wait $MNIST1D_PID 2>/dev/null
  bounded 300 "$PY" benchmarks/claim.py --device $DEV "${CLAIM[@]}" 2>>"$LOG" | tee -a "$REPORT"
}

section_datapath() {
  wait $MNIST1D_PID 2>/dev/null
  bounded 120 "$PY" benchmarks/overhead.py --device $DEV --skip-overhead "${DATAPATH[@]}" 2>>"$LOG" | tee -a "$REPORT"
}

# Most telling first: a killed run keeps the sections it finished. Limits: expected time on one
# H200 (measured there for the WRN steps, estimated for the rest) with room to spare.
section sync 75 "(f) Host-device synchronisations per training step"
section cifar 180 "(a) smith2018_cifar10 on synthetic CIFAR-10: images/s per batch size, peak memory"
section throughput 100 "(b) WRN-16-4 training steps: batch size x bf16 x channels_last"
section ddp 100 "(d) DDP: torchrun, and DistributedDataParallel on one rank"
section sweep 120 "(e) A 2-job sweep, one GPU per job"
section overhead 90 "(c) Benchmark 1 at GPU batch sizes: harness overhead"
section claim 150 "(c) Benchmark 3 on the GPU: the claim"
section datapath 60 "(c) Benchmark 2 on the GPU: data path"

wait 2>/dev/null  # the background data preparation, where no section waited for it
md "## Summary" "" "| section | seconds | result |" "|---|---|---|" "${SUMMARY[@]}" "" \
   "Total ${SECONDS} s. Report: $REPORT; full log: $LOG"
rm -rf "$WORK"
exit 0
