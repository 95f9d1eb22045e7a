"""The parts of benchmarks/gpu_checks.sh that need code of their own, one subcommand per part, each
run in its own process (so a section that crashes or runs out of time takes nothing else with it).
Every subcommand prints markdown for the report, row by row as it measures (a killed run keeps
what it printed). Each uses the project's real pieces: the composed config, src.build's builders
(build_on: src.build.build_run on synthetic images), src.step's loop (through one_epoch:
_common.run_epoch, src.step.train_epoch), src.data's augmentation, the MLflow store train() wrote.

    header                       machine, versions (the report's top)
    prepare-data                 synthetic CIFAR-10 files in the real format; the MNIST-1D cache
    cifar-report                 (a) images/s per batch size, peak memory, 200-epoch projections
    throughput                   (b) WRN-16-4 steps: B x bf16 x channels_last, ms/step, peak memory
    sync                         (f) host-device synchronisations per training step, and their cost
    ddp1                         (d) DistributedDataParallel on one rank (nccl on a GPU)
    runs-report                  (d, e) the runs a torchrun or joblib sweep logged, and their devices

PeakMemory is a Hydra callback that gpu_checks.sh adds on the command line of real
`python -m src.run -m ...` sweeps: it records each job's peak memory per CUDA device.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when Hydra imports this as a callback
import _common as c  # noqa: E402

from hydra.experimental.callback import Callback  # noqa: E402

GIB = 2**30
CIFAR_SHAPE = (3, 32, 32)
# The CIFAR-10 presets and the schedules their sweeps run (conf/experiment/); smith2018_optimizers
# runs smith2018_cifar10's three batch plans under four optimizers.
PRESETS = {
    "smith2018_cifar10": ("decay_lr", "hybrid", "increase_bs"),
    "smith2018_effective_lr": ("decay_lr", "increase_bs", "increase_lr", "increase_momentum"),
}


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


# --- Hydra callback ---------------------------------------------------------------------------

class PeakMemory(Callback):
    """After each job of a sweep, one JSON line in `path`: the job's number and schedule, its
    status, and the peak memory PyTorch allocated (and reserved) on each CUDA device it used,
    in GiB. Peaks are reset when a job starts, so jobs sharing a process are told apart."""

    def __init__(self, path: str):
        self.path = path

    def on_job_start(self, config, **kwargs) -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            for device in range(torch.cuda.device_count()):
                torch.cuda.reset_peak_memory_stats(device)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        import torch

        allocated, reserved = {}, {}
        if torch.cuda.is_available():
            for device in range(torch.cuda.device_count()):
                peak = torch.cuda.max_memory_allocated(device)
                if peak:
                    allocated[f"cuda:{device}"] = round(peak / GIB, 2)
                    reserved[f"cuda:{device}"] = round(torch.cuda.max_memory_reserved(device) / GIB, 2)
        record = {"job": HydraConfig.get().job.num, "schedule": config.schedule.name,
                  "status": getattr(job_return.status, "name", str(job_return.status)),
                  "peak_allocated_gib": allocated, "peak_reserved_gib": reserved, "pid": os.getpid()}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_peaks(path: str | None) -> list[dict]:
    if not path or not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# --- shared pieces ----------------------------------------------------------------------------

def cifar10_writer():
    """The tests' writer of random images in CIFAR-10's on-disk format (tests/helpers/data_files.py).
    tests/ has no __init__.py: it imports as a namespace package from the repository root, which is
    on sys.path however this runs (_common puts it there; gpu_checks.sh also sets PYTHONPATH)."""
    from tests.helpers.data_files import write_cifar10_files

    return write_cifar10_files


def preset_cfg(overrides, preset: str = "smith2018_cifar10", output_dir=None):
    return c.compose([f"experiment={preset}", *overrides], output_dir)


def synthetic_cifar(n_train: int, n_val: int, device, seed: int = 0):
    """CIFAR-shaped standard-normal images and random labels, resident on `device`, with the
    project's crop-and-flip augmentation (src.data): what load_cifar10 returns, minus the files.
    The test split is the validation images again: the probe times, it reports no accuracy."""
    import torch

    from src.data import Dataset, augment_crop_flip

    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(n_train + n_val, *CIFAR_SHAPE, generator=generator, device=device)
    y = torch.randint(0, 10, (n_train + n_val,), generator=generator, device=device)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], x[n_train:], y[n_train:], 10,
                   name="synthetic_cifar10",
                   source="torch.randn (no file)", augment=augment_crop_flip)


def build_on(cfg, data, bf16=None, channels_last=None):
    """A run of cfg (WRN-16-4, its optimizer and step settings) built by src.build.build_run on
    the synthetic `data`, seeded by trainer.seed, the optimizer starting from the schedule's first
    lr; bf16 / channels_last override the preset's when given. Each epoch is cut with its last
    batch kept (trainer.last_batch=keep: the orders here are whole multiples of B), and the
    schedule's cap is N/10 of these images (only its first epoch's lr is used; the preset's cap
    may exceed the few images here)."""
    cfg = copy.deepcopy(cfg)
    cfg.trainer.last_batch = "keep"
    cfg.schedule.max_batch_size = None
    cfg.trainer.bf16 = cfg.trainer.bf16 if bf16 is None else bf16
    cfg.trainer.channels_last = cfg.trainer.channels_last if channels_last is None else channels_last
    return c.build(cfg, data.x_train.device, data=data)


def micro_for(cfg, batch_size: int) -> int | None:
    micro = cfg.trainer.micro_batch_size
    return micro if micro and batch_size > micro else None


def n_micro(batch_size: int, micro: int | None) -> int:
    return math.ceil(batch_size / micro) if micro else 1


def order_of(n: int, samples: int, device, seed: int):
    """`samples` indices: consecutive seeded permutations of range(n), on `device`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(math.ceil(samples / n))])[:samples].to(device)


def one_epoch(run, order, batch_size, micro_batch_size=None, **arm):
    """src.step.train_epoch of the run built by build_on over `order` in batches of batch_size, in
    micro-batches of micro_batch_size (None: each batch in one pass); `arm` replaces what the run
    steps with (its model wrapped in DDP, its generator, its data)."""
    settings = replace(run.settings, micro_batch_size=micro_batch_size)
    return c.run_epoch(run, order, batch_size, settings=settings, **arm)


def timed_steps(run, batch_size, micro, steps, seed=0, **arm):
    """(wall seconds per step, device seconds per step or None): `steps` optimizer steps through
    the project's train_epoch, after a synchronisation; CUDA events around the same block."""
    import torch

    data, device = arm.get("data", run.data), run.data.x_train.device
    order = order_of(data.n_train, batch_size * steps, device, seed)
    c.synchronize(device)
    events = None
    if device.type == "cuda":
        events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        events[0].record()
    start = time.perf_counter()
    one_epoch(run, order, batch_size, micro, **arm)
    if events:
        events[1].record()
    c.synchronize(device)  # train_epoch's closing .item() has waited already; this is for clarity
    wall = (time.perf_counter() - start) / steps
    return wall, (events[0].elapsed_time(events[1]) / 1e3 / steps if events else None)


def steps_for(seconds_per_step: float, block_seconds: float, least: int = 3, most: int = 60) -> int:
    return max(least, min(most, math.ceil(block_seconds / max(seconds_per_step, 1e-6))))


def block_steps(run, batch_size, micro, block_seconds) -> int:
    """Warm up at this batch size (first shapes: cuDNN/cuBLAS choices, allocator growth), then
    time 2 steps to size a timed block of about block_seconds (at least 3 steps)."""
    timed_steps(run, batch_size, micro, 1 if batch_size > 2048 else 2, seed=7)
    probe, _ = timed_steps(run, batch_size, micro, 2, seed=8)
    return steps_for(probe, block_seconds)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> str:
    import torch

    return f"{torch.cuda.max_memory_allocated(device) / GIB:.2f}" if device.type == "cuda" else "n/a"


def plan(preset: str, schedule: str, overrides, n_train: int) -> tuple[list[int], int]:
    """(B per epoch, epochs) of the preset's run of `schedule`, as train() would plan it for
    n_train training images and the preset's own number of epochs."""
    cfg = preset_cfg([f"schedule={schedule}", *overrides], preset)
    epochs = cfg.trainer.epochs
    from src.build import make_schedule

    schedule_obj = make_schedule(cfg, n_train, epochs)
    return [schedule_obj(epoch).batch_size for epoch in range(epochs)], epochs


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


# --- subcommands ------------------------------------------------------------------------------

def nccl_version() -> str:
    import torch

    try:
        version = torch.cuda.nccl.version()
    except Exception as error:  # no CUDA build, no NCCL
        return f"n/a ({type(error).__name__})"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def cmd_header(args) -> None:
    import torch

    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    versions = []
    for name in ("hydra-core", "omegaconf", "mlflow-skinny", "mlflow", "SQLAlchemy", "mnist1d", "numpy"):
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    say(f"- Machine: {c.describe_machine(device)}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
        f"NCCL {nccl_version()}",
        f"- Python {platform.python_version()} ({sys.executable}); {', '.join(versions)}")
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        say(f"- cuda:{index}: {props.name}, compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / GIB:.1f} GiB, {props.multi_processor_count} SMs")
    if not torch.cuda.is_available():
        say("- No CUDA device: a dry run (every section on the CPU with tiny sizes); its numbers mean nothing.")
    say(f"- TF32 for float32 matmul: {torch.backends.cuda.matmul.allow_tf32}, for cuDNN convolutions: "
        f"{torch.backends.cudnn.allow_tf32}; cudnn.benchmark: {torch.backends.cudnn.benchmark}")


def cmd_prepare_data(args) -> None:
    if args.cifar:
        started = time.perf_counter()
        cifar10_writer()(args.cifar, args.per_batch)
        print(f"synthetic CIFAR-10 files ({5 * args.per_batch:,} + {args.per_batch:,} images) in {args.cifar}: "
              f"{time.perf_counter() - started:.1f} s", flush=True)
    if args.mnist1d:
        from hydra.utils import instantiate

        started = time.perf_counter()
        cfg = c.compose(args.overrides)
        data = instantiate(cfg.dataset)
        print(f"MNIST-1D cache ({data.n_train:,} train) under {cfg.paths.data_dir}: {time.perf_counter() - started:.1f} s",
              flush=True)


def cmd_cifar_report(args) -> None:
    """(a): read the runs of the preset's sweep back from the MLflow store train() wrote."""
    from mlflow.tracking import MlflowClient

    cfg = preset_cfg(args.overrides)
    micro = cfg.trainer.micro_batch_size
    client = MlflowClient(f"sqlite:///{args.store}/mlflow.db")
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]) if experiment else []
    if not runs:
        say("No runs in the store: the sweep logged nothing (see gpu_checks.log).")
        return
    peaks = {p["schedule"]: p for p in read_peaks(args.peaks)}
    rows, per_b, other_per_epoch, n_train = [], {}, [], None
    run_rows = []
    for run in runs:
        schedule = run.data.tags.get("schedule", "?")

        def history(name):
            return {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}

        batch, wall, seen, acc = history("batch_size"), history("wall_time_s"), history("samples_seen"), history("val_acc")
        previous_wall = previous_seen = 0.0
        for epoch in sorted(batch):
            b = int(batch[epoch])
            seconds, images = wall[epoch] - previous_wall, seen[epoch] - previous_seen
            previous_wall, previous_seen = wall[epoch], seen[epoch]
            n_train = n_train or int(images)
            steps = math.ceil(images / b)
            rows.append([schedule, epoch, f"{b:,}", n_micro(b, micro_for(cfg, b)), steps,
                         f"{seconds:.2f}", f"{seconds / steps * 1e3:.1f}", f"{images / seconds:,.0f}", f"{acc[epoch]:.3f}"])
            per_b.setdefault(b, []).append((epoch == 0, seconds, images / seconds))
        metrics = run.data.metrics
        if "train_time_s" in metrics and batch:
            other_per_epoch.append((metrics["total_wall_time_s"] - metrics["train_time_s"]) / len(batch))
        peak = peaks.get(schedule, {})
        run_rows.append([schedule, run.info.status, len(batch),
                         f"{metrics['train_time_s']:.1f}" if "train_time_s" in metrics else "n/a",
                         f"{metrics['total_wall_time_s']:.1f}" if "total_wall_time_s" in metrics else "n/a",
                         ", ".join(f"{d} {g}" for d, g in peak.get("peak_allocated_gib", {}).items()) or "n/a",
                         ", ".join(f"{d} {g}" for d, g in peak.get("peak_reserved_gib", {}).items()) or "n/a"])
    say(f"N = {n_train:,} training images per epoch, micro-batches of {micro} above that size "
        f"(trainer.micro_batch_size); epoch times are the logged wall_time_s differences (training "
        "steps only: no validation, checkpoint or logging). val_acc is of random labels: ~0.1.\n",
        c.table(["schedule", "epoch", "B", "micro-batches/step", "steps", "train s", "ms/step", "images/s", "val_acc"], rows),
        "", "Runs (peak memory from torch.cuda.max_memory_allocated / max_memory_reserved per job, GiB):\n",
        c.table(["schedule", "status", "epochs", "train_time_s", "total_wall_time_s", "peak allocated GiB",
                 "peak reserved GiB"], run_rows))

    # per B: the epochs that were not a run's first (start-up: CUDA/cuDNN handles, first shapes)
    seconds_at, summary = {}, []
    for b in sorted(per_b):
        later = [(s, r) for first, s, r in per_b[b] if not first]
        used = later or [(s, r) for _, s, r in per_b[b]]
        seconds_at[b] = statistics.median(s for s, _ in used)
        summary.append([f"{b:,}", len(used), "" if later else "first epochs only",
                        f"{seconds_at[b]:.2f}", f"{statistics.median(r for _, r in used):,.0f}"])
    say("", "Images/s per batch size (median over the epochs at that B that were not a run's first):\n",
        c.table(["B", "epochs", "note", "s/epoch", "images/s"], summary))

    # projections to the preset's full runs
    other = statistics.median(other_per_epoch) if other_per_epoch else 0.0
    projection = []
    for schedule in PRESETS["smith2018_cifar10"]:
        batches, epochs = plan("smith2018_cifar10", schedule, args.overrides, n_train)
        missing = sorted(set(batches) - set(seconds_at))
        if missing:
            projection.append([schedule, epochs, "", f"n/a (B {missing} not measured)", ""])
            continue
        train_s = sum(seconds_at[b] for b in batches)
        uses = ", ".join(f"{batches.count(b)} x B={b:,}" for b in sorted(set(batches)))
        projection.append([schedule, epochs, uses, hours(train_s), hours(train_s + epochs * other)])
    say("", f"PROJECTION (not a measurement) of the preset's full runs on this machine: measured seconds per "
        f"epoch at each B, summed over the preset's epochs. 'with the rest' adds {other:.2f} s per epoch, the "
        "median over runs of (total_wall_time_s - train_time_s) / epochs here (validation, checkpoint, logging, "
        "and the run's start-up spread over its epochs: an upper bound).\n",
        c.table(["smith2018_cifar10 schedule", "epochs", "epochs at each B", "training steps", "with the rest"], projection))


def cmd_throughput(args) -> None:
    """(b): WRN-16-4 training steps through train_epoch for each batch size, precision and layout."""
    import torch

    device = c.device_from(args.device)
    cfg = preset_cfg(args.overrides)
    data = synthetic_cifar(args.n_train, args.n_val, device)
    resident = (data.x_train.numel() + data.x_val.numel()) * 4 / GIB
    combos = [(True, True), (True, False), (False, True), (False, False)]
    say(f"Steps of the project's train_epoch (augmentation, ghost BN {cfg.model.ghost_batch_size}, SGD momentum) on "
        f"{args.n_train:,} synthetic CIFAR-shaped images resident on the device ({resident:.2f} GiB, included in the "
        f"peaks); micro-batches of {cfg.trainer.micro_batch_size} above that size, as the preset. Per row: "
        f"warm-up steps, then a block of >= 3 steps and >= ~{args.block_seconds} s; wall = perf_counter after "
        "synchronising (what training sees), device = CUDA events around the same block. fp32 convolutions use "
        "TF32 (PyTorch's default for cuDNN).\n",
        c.table(["bf16", "channels_last", "B", "micro-batches", "steps", "wall ms/step", "device ms/step",
                 "images/s", "peak GiB"], []), )
    rate = {}
    for bf16, channels_last in combos:
        run = build_on(cfg, data, bf16, channels_last)
        sizes = args.sizes if (bf16, channels_last) == combos[0] else args.combo_sizes
        runs = [(b, micro_for(cfg, b)) for b in sizes]
        if (bf16, channels_last) == combos[0] and args.whole_batch:
            runs.append((max(sizes), None))  # the largest batch in one piece: does it fit, and is it faster?
        for b, micro in runs:
            if b > data.n_train:
                continue
            reset_peak(device)
            try:
                steps = block_steps(run, b, micro, args.block_seconds)
                wall, gpu = timed_steps(run, b, micro, steps, seed=b + 1)
            except torch.OutOfMemoryError as error:
                say(f"| {bf16} | {channels_last} | {b:,} | {n_micro(b, micro)} | | out of memory | {str(error)[:80]} | | |")
                torch.cuda.empty_cache()
                continue
            if micro == micro_for(cfg, b):  # the preset's way of running B (not the whole-batch extra)
                rate.setdefault((bf16, channels_last), {})[b] = b / wall
            say(f"| {bf16} | {channels_last} | {b:,} | {n_micro(b, micro)} | {steps} | {wall * 1e3:.1f} | "
                + (f"{gpu * 1e3:.1f}" if gpu is not None else "n/a") + f" | {b / wall:,.0f} | {peak_gib(device)} |")
        del run
        if device.type == "cuda":
            torch.cuda.empty_cache()

    # projections of every CIFAR-10 preset run from the preset's own setting (bf16, channels_last)
    setting = (bool(cfg.trainer.bf16), bool(cfg.trainer.channels_last))
    measured = rate.get(setting, {})
    rows = []
    for preset, schedules in PRESETS.items():
        for schedule in schedules:
            batches, epochs = plan(preset, schedule, args.overrides, args.n_project)
            missing = sorted(set(batches) - set(measured))
            seconds = sum(args.n_project / measured[b] for b in batches) if not missing else None
            rows.append([preset, schedule, ", ".join(f"{batches.count(b)} x {b:,}" for b in sorted(set(batches))),
                         hours(seconds) if seconds else f"n/a (B {missing} not measured)"])
    say("", f"PROJECTION (not a measurement): training steps of each CIFAR-10 preset run, N = {args.n_project:,} "
        f"images per epoch at the images/s above for bf16={setting[0]}, channels_last={setting[1]} (the presets' "
        "setting); validation, checkpoints and logging not included (section (a) measures those). "
        "smith2018_optimizers runs the smith2018_cifar10 plans under 4 optimizers (12 runs).\n",
        c.table(["preset", "schedule", "epochs x B", "training steps"], rows))


def count_syncs(fn):
    """(result, [warning locations]) of fn() under torch.cuda.set_sync_debug_mode('warn'): every
    synchronising CUDA call (a copy to the host, .item(), a blocking copy from pageable host
    memory ...) issues one warning, attributed to the Python line that made it. Without CUDA
    there is nothing to count: (result, None)."""
    import torch

    if not torch.cuda.is_available():
        return fn(), None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    found = [f"{Path(w.filename).relative_to(c.REPO) if Path(w.filename).is_relative_to(c.REPO) else w.filename}:{w.lineno}"
             for w in caught if "synchroniz" in str(w.message)]
    return result, found


def source_line(location: str) -> str:
    path, _, line = location.rpartition(":")
    try:
        return (c.REPO / path).read_text().splitlines()[int(line) - 1].strip()[:90]
    except (OSError, ValueError, IndexError):
        return ""


def cmd_sync(args) -> None:
    """(f): synchronisations per training step of src.train.train_epoch, where they come from,
    what they cost, and per epoch of a whole src.train.train run."""
    import torch

    from src.train import train

    device = c.device_from(args.device)
    cfg = preset_cfg(args.overrides)
    data = synthetic_cifar(args.n_train, 500, device)
    built = build_on(cfg, data)
    if device.type != "cuda":
        say("No CUDA device: synchronisations cannot be counted (torch.cuda.set_sync_debug_mode needs one); "
            "the rest of this section runs for its code paths only.\n")

    def run(b, steps, generator=None, on=data):
        order = order_of(on.n_train, b * steps, device, steps)
        return one_epoch(built, order, b, micro_for(cfg, b), batch_order=generator or built.batch_order, data=on)

    rows, locations = [], Counter()
    for b in args.sizes:
        run(b, 2)  # warm-up: first shapes, cuDNN/cuBLAS handles
        _, few = count_syncs(lambda: run(b, args.steps[0]))
        _, many = count_syncs(lambda: run(b, args.steps[1]))
        if many is None:
            rows.append([f"{b:,}", n_micro(b, micro_for(cfg, b)), "n/a", "n/a"])
            continue
        per_step = (len(many) - len(few)) / (args.steps[1] - args.steps[0])
        locations.update({f"B={b}: {where}": n for where, n in Counter(many).items()})
        rows.append([f"{b:,}", n_micro(b, micro_for(cfg, b)), f"{per_step:g}", f"{len(few) - per_step * args.steps[0]:g}"])
    say(f"train_epoch under torch.cuda.set_sync_debug_mode('warn'), bf16={cfg.trainer.bf16}, channels_last="
        f"{cfg.trainer.channels_last}, the augmentation's generator on the CPU as train() passes it: warnings "
        f"counted over {args.steps[0]} and {args.steps[1]} steps; per step = the difference / "
        f"{args.steps[1] - args.steps[0]}, per call = what is left (the epoch's closing .item()).\n",
        c.table(["B", "micro-batches", "syncs per step", "syncs per train_epoch call"], rows))
    if locations:
        say("", f"Where ({args.steps[1]} steps; file:line of the Python call that synchronised):\n",
            c.table(["B: location", "count", "source"],
                    [[where, n, f"`{source_line(where.split(': ', 1)[1])}`"] for where, n in locations.most_common(12)]))

    # Cross-check with the profiler: the CUDA runtime calls that block the host.
    b, steps = args.sizes[0], args.steps[1]
    try:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            run(b, steps)
        blocking = {e.key: e.count for e in prof.key_averages()
                    if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")}
        say("", f"Profiler cross-check, B={b}, {steps} steps: "
            + (", ".join(f"{k} {v} ({v / steps:.2f}/step)" for k, v in sorted(blocking.items())) or "no blocking CUDA runtime calls")
            + ".")
    except Exception as error:  # CUPTI missing, or the profiler refused: say so, keep going
        say("", f"Profiler cross-check failed: {type(error).__name__}: {str(error)[:200]}")

    # What the augmentation's draws cost: a CPU generator (train()'s: the draws are copied to the
    # device, blocking) against one on the device (no copy) and no augmentation at all.
    arms = {"CPU generator (as train())": (torch.Generator(), data),
            "device generator": (torch.Generator(device=device), data),
            "no augmentation": (None, replace(data, augment=None))}
    steps = block_steps(built, b, micro_for(cfg, b), args.block_seconds)
    times = c.interleaved({name: (lambda g=g, d=d: run(b, steps, g, d)) for name, (g, d) in arms.items()}, reps=args.reps)
    base = c.median(times["CPU generator (as train())"]) / steps
    say("", f"Cost of the augmentation's draws, B={b}: {steps} steps per block, median of {args.reps} "
        "interleaved blocks, wall ms/step:\n",
        c.table(["augmentation draws", "ms/step", "vs train()'s"],
                [[name, f"{c.median(t) / steps * 1e3:.2f}", f"{c.median(t) / steps / base:.3f}"] for name, t in times.items()]))

    # Whole runs: syncs per epoch of src.train.train beyond its steps (validation, checkpoint, logging).
    if not args.cifar:
        return
    b = args.train_batch
    counted = {}
    for epochs in (1, 2):
        run_cfg = preset_cfg([*args.overrides, f"paths.data_dir={args.cifar}", f"dataset.n_train={args.train_n}",
                              f"dataset.n_val={args.train_n // 4}", "schedule=constant", "~schedule.milestones",
                              f"schedule.batch_size={b}", "~schedule.max_batch_size", f"trainer.epochs={epochs}", "trainer.resume=false"],
                             output_dir=c.temp_dir("gpu-sync-"))
        _, counted[epochs] = count_syncs(lambda: train(run_cfg))
    steps_per_epoch = math.ceil(args.train_n / b)
    if counted[2] is None:
        say("", f"src.train.train ran 1 and 2 epochs ({args.train_n:,} images, B={b}); syncs not counted (no CUDA).")
        return
    extra = Counter(counted[2])
    extra.subtract(counted[1])
    say("", f"src.train.train, {args.train_n:,} images, B={b} ({steps_per_epoch} steps per epoch): "
        f"{len(counted[1])} syncs in a 1-epoch run (start-up included), {len(counted[2])} in a 2-epoch run: "
        f"{len(counted[2]) - len(counted[1])} per epoch, {steps_per_epoch} steps' worth of them counted per step above.\n",
        c.table(["location (the 2nd epoch's)", "count", "source"],
                [[where, n, f"`{source_line(where)}`"] for where, n in extra.most_common(10) if n > 0]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cmd_ddp1(args) -> None:
    """(d): DistributedDataParallel around WRN-16-4 on one rank (nccl on a GPU, gloo on the CPU),
    through train_epoch: does the backend start here, and what does DDP cost or warn about?"""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    device = c.device_from(args.device)
    cfg = preset_cfg(args.overrides)
    data = synthetic_cifar(args.n_train, 500, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    started = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    say(f"- {backend} process group of 1 rank: started in {time.perf_counter() - started:.1f} s"
        + (f" (NCCL {nccl_version()})" if backend == "nccl" else ""))
    try:
        rows = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for wrapped in (False, True):
                run = build_on(cfg, data)
                model = run.model
                if wrapped:
                    model = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
                b = args.batch
                micro = micro_for(cfg, b)
                timed_steps(run, b, micro, 2, model=model)
                wall, _ = timed_steps(run, b, micro, args.steps, seed=1, model=model)
                rows.append(["DDP, 1 rank" if wrapped else "plain", f"{b:,}", n_micro(b, micro), f"{wall * 1e3:.1f}"])
        say(f"- bf16={cfg.trainer.bf16}, channels_last={cfg.trainer.channels_last}, {args.steps} steps per block:\n",
            c.table(["model", "B", "micro-batches", "wall ms/step"], rows))
        messages = Counter(" ".join(str(w.message).split())[:240] for w in caught)
        say("", "Warnings while training (unique): " + ("none" if not messages else ""))
        for message, n in messages.most_common(8):
            say(f"- ({n}x) {message}")
    finally:
        dist.destroy_process_group()


def cmd_runs_report(args) -> None:
    """(d, e): the runs a torchrun job or a joblib sweep logged: status, epochs, times; and the
    CUDA devices each job allocated memory on (PeakMemory)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{args.store}/mlflow.db")
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments], order_by=["attributes.start_time ASC"]) if experiments else []
    rows = []
    for run in runs:
        m = run.data.metrics
        rows.append([run.data.tags.get("schedule", "?"), run.info.status,
                     len(client.get_metric_history(run.info.run_id, "val_loss")),
                     f"{m['final_val_acc']:.3f}" if "final_val_acc" in m else "n/a",
                     f"{m['train_time_s']:.1f}" if "train_time_s" in m else "n/a",
                     f"{m['total_wall_time_s']:.1f}" if "total_wall_time_s" in m else "n/a"])
    say(c.table(["schedule", "status", "epochs", "final val acc", "train_time_s", "total_wall_time_s"], rows)
        if rows else "No runs in the store.")
    peaks = read_peaks(args.peaks)
    if peaks:
        say("", "Devices per job (where each job allocated memory; PeakMemory callback):\n",
            c.table(["job", "schedule", "status", "pid", "peak allocated GiB per device"],
                    [[p["job"], p["schedule"], p["status"], p["pid"],
                      ", ".join(f"{d} {g}" for d, g in p["peak_allocated_gib"].items()) or "no CUDA memory (CPU)"]
                     for p in sorted(peaks, key=lambda p: p["job"])]))
        used = {d for p in peaks for d in p["peak_allocated_gib"]}
        say("", f"{len(peaks)} jobs used {len(used)} distinct CUDA devices: {', '.join(sorted(used)) or 'none'}.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, *, device=True):
        q = sub.add_parser(name)
        q.set_defaults(fn=fn)
        if device:
            q.add_argument("--device", default="auto")
        return q

    def ints(text):
        return [int(v) for v in text.split(",")]

    add("header", cmd_header, device=False)
    q = add("prepare-data", cmd_prepare_data, device=False)
    q.add_argument("--cifar", help="folder for synthetic CIFAR-10 files")
    q.add_argument("--per-batch", type=int, default=10000, help="images per CIFAR-10 file (6 files)")
    q.add_argument("--mnist1d", action="store_true", help="fill the MNIST-1D cache of the composed config")
    q = add("cifar-report", cmd_cifar_report, device=False)
    q.add_argument("--store", required=True)
    q.add_argument("--peaks")
    q = add("throughput", cmd_throughput)
    q.add_argument("--sizes", type=ints, default=[128, 512, 640, 2048, 3200, 5120, 16000])
    q.add_argument("--combo-sizes", type=ints, default=[128, 2048, 16000], help="sizes for the other 3 combinations")
    q.add_argument("--whole-batch", action="store_true", help="also the largest B without micro-batches")
    q.add_argument("--n-train", type=int, default=50000)
    q.add_argument("--n-val", type=int, default=1000)
    q.add_argument("--n-project", type=int, default=50000, help="N of the projections")
    q.add_argument("--block-seconds", type=float, default=0.5)
    q = add("sync", cmd_sync)
    q.add_argument("--sizes", type=ints, default=[128, 4096])
    q.add_argument("--steps", type=ints, default=[2, 6], help="two step counts; per step = difference")
    q.add_argument("--n-train", type=int, default=8192)
    q.add_argument("--block-seconds", type=float, default=0.3)
    q.add_argument("--reps", type=int, default=3)
    q.add_argument("--cifar", help="synthetic CIFAR-10 folder: also count syncs per epoch of src.train.train")
    q.add_argument("--train-n", type=int, default=4096)
    q.add_argument("--train-batch", type=int, default=512)
    q = add("ddp1", cmd_ddp1)
    q.add_argument("--batch", type=int, default=2048)
    q.add_argument("--steps", type=int, default=5)
    q.add_argument("--n-train", type=int, default=8192)
    q = add("runs-report", cmd_runs_report, device=False)
    q.add_argument("--store", required=True)
    q.add_argument("--peaks")
    for q in sub.choices.values():
        q.add_argument("overrides", nargs="*", help="Hydra overrides (the preset's, for WRN sections)")
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
