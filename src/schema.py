"""The names a run is recorded under: its MLflow experiment, its metrics and its tags.

They are part of the interface (the figures, the reports, the tests and users' own MLflow queries
read them), so they are spelt once, here, and everything that writes or reads a run imports
them. Plain names: no torch, no MLflow, and no file is read on import.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"  # the checkout's conf/, where numbers and names live


@cache
def default_experiment() -> str:
    """The MLflow experiment runs go to unless tracking.experiment says otherwise. Its one
    source is conf/tracking/mlflow.yaml, read from there rather than spelt again."""
    from omegaconf import OmegaConf

    return OmegaConf.load(CONF_DIR / "tracking" / "mlflow.yaml").experiment


# Logged after every epoch, with step = the 0-based epoch.
TRAIN_LOSS = "train_loss"  # mean cross-entropy over the epoch's training samples
VAL_LOSS = "val_loss"  # mean cross-entropy on the validation set
VAL_ACC = "val_acc"  # fraction 0..1
# The held-out test split: logged beside validation, read by the verdicts, figures 3-5 and the
# reports, and by no decision (plateau schedules, the best validation loss and every choice of
# this study read validation only).
TEST_LOSS = "test_loss"  # mean cross-entropy on the test set
TEST_ACC = "test_acc"  # fraction 0..1
LR = "lr"  # as applied at the epoch's first step: the schedule's lr x optimizer.lr_scale (a warm-up ramps it per step)
BATCH_SIZE = "batch_size"
MOMENTUM = "momentum"
NOISE_SCALE = "noise_scale"  # the paper's g = lr / (1 - m) (N / B - 1), units of lr
PARAM_UPDATES = "param_updates"  # optimizer steps so far
SAMPLES_SEEN = "samples_seen"  # samples that went into those steps
WALL_TIME_S = "wall_time_s"  # seconds in training steps so far (validation and logging left out)
EPOCH_METRICS = (TRAIN_LOSS, VAL_LOSS, VAL_ACC, TEST_LOSS, TEST_ACC, LR, BATCH_SIZE, MOMENTUM, NOISE_SCALE,
                 PARAM_UPDATES, SAMPLES_SEEN, WALL_TIME_S)
# Also after every epoch, read from the clock and the device (so they differ between two runs of
# the same config): the epoch's training throughput, its samples / its seconds in training steps;
# and on a CUDA device only, the most memory torch's allocator held during the epoch
# (torch.cuda.max_memory_allocated, reset at each epoch's start), MiB.
SAMPLES_PER_S = "samples_per_s"
GPU_PEAK_MEMORY_MIB = "gpu_peak_memory_mib"

# Also after every epoch, when the gradient noise scale is measured (trainer.gns, or a schedule
# that follows it): smoothed estimates, nan before the first measured step.
GNS_B_SIMPLE = "gns_b_simple"  # tr(Sigma) / |G|^2, in samples
GNS_TRACE = "gns_trace"  # tr(Sigma)
GNS_GRAD_SQ = "gns_grad_sq"  # |G|^2
GNS_METRICS = (GNS_B_SIMPLE, GNS_TRACE, GNS_GRAD_SQ)
GNS_BATCH_CAP = "gns_batch_cap"  # critical_bs: cap_factor x B_simple at the latest milestone, samples

# Logged once, when the run ends.
FINAL_VAL_LOSS = "final_val_loss"
FINAL_VAL_ACC = "final_val_acc"
FINAL_TEST_LOSS = "final_test_loss"
FINAL_TEST_ACC = "final_test_acc"
TOTAL_PARAM_UPDATES = "total_param_updates"
TRAIN_TIME_S = "train_time_s"  # the last wall_time_s
# Seconds of the whole job (data, model, training, validation, logging), earlier attempts of a
# resumed run included.
TOTAL_WALL_TIME_S = "total_wall_time_s"
FINAL_METRICS = (FINAL_VAL_LOSS, FINAL_VAL_ACC, FINAL_TEST_LOSS, FINAL_TEST_ACC, TOTAL_PARAM_UPDATES, TRAIN_TIME_S,
                 TOTAL_WALL_TIME_S)

# A FINISHED run's final model (tracking.log_weights) is its LoggedModel (mlflow.pytorch, pt2
# format); this file, in the model's artifacts, holds its graph and weights, which
# `python -m src.evaluate` reads back.
MODEL_FILE = "data/model.pt2"
# The artifact every run keeps its resolved config in (YAML); src.evaluate rebuilds the run from it.
CONFIG_ARTIFACT = "config.yaml"

# Tags set twice: right after the run opens (START) and with the final metrics (END). The machine's
# 1-, 5- and 15-minute load averages (runnable processes, all users; os.getloadavg's order): the
# context a wall time is read in, not a result, so tags, not metrics. span -> tag name.
LOAD_SPANS = ("1m", "5m", "15m")
LOAD_AVERAGE_START = {span: f"load_{span}_start" for span in LOAD_SPANS}
LOAD_AVERAGE_END = {span: f"load_{span}_end" for span in LOAD_SPANS}
# The model's parameter count (trainable or not), a metric logged once when a run opens.
MODEL_PARAMETERS = "model_parameters"

# The config key of a run's seed, as an override (trainer.seed=0,1,2) and as a logged param: the
# one key the runs of a curve may differ in.
SEED_PARAM = "trainer.seed"

# Tags of a training run.
RUN_NAME_TAG = "mlflow.runName"  # MLflow's own: the name the UI shows (tracking.run_name, or the sweeper's)
SCHEDULE_TAG = "schedule"  # schedule.name
SEED_TAG = "seed"  # SEED_PARAM's value
# The run's config hash without its seed: the runs of one curve of the figures share it, so
# MLflow's "Group by" on it averages over seeds as the figures do.
CURVE_TAG = "curve"
RUN_COLOR_TAG = "mlflow.runColor"  # MLflow 3's colour of a run in its UI's charts and table
# Each schedule's colour, in the figures (src.plots) and in MLflow's UI (RUN_COLOR_TAG), so both
# read alike; a schedule not named here takes the figures' next free colour (and none in the UI).
# Controls in the grey and light tones of their arms.
SCHEDULE_COLORS = {
    "decay_lr": "#1f77b4", "hybrid": "#ff7f0e", "increase_bs": "#2ca02c", "increase_lr": "#d62728",
    "increase_momentum": "#9467bd", "large_batch_scaled": "#8c564b", "large_batch_goyal_range": "#e377c2",
    "adaptive_gns": "#bcbd22", "critical_bs": "#17becf", "constant": "#7f7f7f", "no_anneal": "#c7c7c7",
    "anneal_once": "#aec7e8", "constant_g": "#9edae5",
    "plateau_decay_lr": "#1f77b4", "plateau_increase_bs": "#2ca02c",  # the blog's two arms, as the paper's
}
SWEEP_TAG = "sweep_id"  # the Hydra sweep (or run) folder's name, shared by the jobs of a multirun
# Every sweep that trained or reused the run, space-separated, oldest first: its own sweep_id, then
# each re-run sweep that skipped or resumed it (which leaves sweep_id alone). src.figures reads a
# sweep as the runs that list it here.
SWEEPS_TAG = "sweeps"
CONFIG_HASH_TAG = "config_hash"  # identifies the run for skipping and resuming (tracking.hash_config)
ERROR_TAG = "error"  # why a FAILED run failed, one line
SUPERSEDED_BY_TAG = "superseded_by"  # on a stale RUNNING run closed as KILLED: the run that replaced it
# Where and how a training run ran (not part of its config): report.md's environment block.
DEVICE_TAG = "device"  # the torch device, with the GPU's name on CUDA
THREADS_TAG = "threads"  # torch intra-op threads of the run
CPUS_TAG = "cpus"  # CPUs of the machine (os.cpu_count)
TORCH_VERSION_TAG = "torch_version"
# The process that runs it, for as long as it is RUNNING: a run RUNNING whose process is gone from
# its host (kill -9, an out-of-memory kill, a dead sweep) is closed KILLED by the next run or sweep
# of its experiment on that host (src.processes.close_dead_runs).
PID_TAG = "pid"
HOST_TAG = "host"
ENDED_BY_TAG = "ended_by"  # on a run closed for its process: why, one line
COMMAND_TAG = "command"  # the command line that started the run (shlex-joined sys.argv)
# What the run trained, by the option names of the command line (dataset=digits, model=mlp ...):
# columns to filter and group the UI's runs table by.
DATASET_TAG = "dataset"
MODEL_TAG = "model"
OPTIMIZER_TAG = "optimizer"
PRESET_TAG = "preset"  # the experiment=... preset of the command line, else DEFAULT_PRESET (src.reproduce reads it)
DEFAULT_PRESET = "default"

# A multirun is one parent run (KIND_TAG = SWEEP_KIND, the SWEEP_TAG of its jobs) with its jobs as
# child runs (MLflow's mlflow.parentRunId). Training runs carry no kind; stores written before
# sweeps had parents also hold the figures' old summary runs (kind "summary"), never read.
KIND_TAG = "kind"
SWEEP_KIND = "sweep"
JOBS_TAG = "jobs"  # on a sweep's run: how many jobs it launched
VERDICT_TAG_PREFIX = "verdict."  # on a sweep's run, by src.figures: verdict.<group>.<schedule> -> its verdict
RESULT_TAG = "result"  # on a sweep's run: the sweep's last line ("0 of 3 jobs failed (3 finished)")
