"""Benchmark 6: a 4-job CPU sweep, Hydra's basic launcher against the joblib launcher.

The same 4 small but real jobs (MNIST-1D with 5,000 samples = 4,000 train / 1,000 validation,
3 epochs with steps after epochs 1 and 2, decay_lr and increase_bs x 2 seeds) run as `python -m src.run -m ...` subprocesses:
  basic   Hydra's default launcher: the jobs one after the other in one process,
          trainer.threads = cores.
  joblib  hydra/launcher=joblib hydra.launcher.n_jobs=2 trainer.threads=1: two worker
          processes of one thread each, two jobs each.
Wall time of the whole command, from launch to exit. Each arm keeps its own MLflow store
(created in a warm-up round, not timed); every repetition uses new seeds, the same in both arms,
so no job is skipped as FINISHED. Median of --reps repetitions, interleaved.

    python benchmarks/parallel_sweeps.py        # ~2 min here
"""

from __future__ import annotations

import os
import statistics
import subprocess

import _common as c  # noqa: E402

JOB = "dataset.n_samples=5000 dataset.n_val=1000 trainer.epochs=3 schedule.milestones=[1,2]"


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2, help="joblib worker processes")
    p.add_argument("--job", default=JOB, help=f"overrides that size each job (default: {JOB!r})")
    p.add_argument("overrides", nargs="*", help="more Hydra overrides for every job")
    args = p.parse_args()
    args.reps = max(args.reps, 5)
    cores = len(os.sched_getaffinity(0))
    arms = {
        f"basic, trainer.threads={cores}": [f"trainer.threads={cores}"],
        f"joblib n_jobs={args.jobs}, trainer.threads=1": [
            "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}", "trainer.threads=1"],
    }
    stores = {name: c.temp_dir("bench-sweep-") for name in arms}

    calls = {name: 0 for name in arms}

    def sweep(name: str):
        def run():
            seeds = f"{2 * calls[name]},{2 * calls[name] + 1}"  # new configs each round, the same in both arms
            calls[name] += 1
            command = [c.PYTHON, "-m", "src.run", "-m", *args.job.split(), "schedule=decay_lr,increase_bs",
                       f"trainer.seed={seeds}", *arms[name],
                       f"trainer.device={args.device}", f"paths.output_dir={stores[name]}",
                       f"paths.data_dir={c.REPO / 'data'}", *args.overrides]
            subprocess.run(command, cwd=c.REPO, check=True, capture_output=True)
        return run

    c.header("6. Parallel sweeps: 4 jobs, basic launcher against joblib", c.device_from(args.device))
    with c.Load():
        from hydra.utils import instantiate

        from src.stores import prepare_store

        for name in arms:  # the data cache and the stores exist before the first round
            cfg = c.compose([*args.job.split(), *args.overrides], stores[name])
            instantiate(cfg.dataset)
            prepare_store(cfg.tracking)
        times = c.interleaved({name: sweep(name) for name in arms}, reps=args.reps, warmup=0,
                              max_rounds=args.reps + 1)
        names = list(arms)
        basic, joblib = names
        ratio = c.median_ratio(times[joblib], times[basic])
        faster = joblib if ratio < 1 else basic
        print(f"4 jobs: {args.job} schedule=decay_lr,increase_bs trainer.seed=<2 new seeds per repetition>; "
              f"median of {args.reps} interleaved repetitions. Rounds: {c.rounds_cell(times)} ({c.ROUNDS_HEADER}).\n")
        print(c.table(["launcher", "sweep wall s (median)", "per repetition"], [
            [name, f"{statistics.median(t):.1f}", " / ".join(f"{v:.1f}" for v in t)] for name, t in times.items()
        ]))
        print()
        print(c.table(["joblib / basic", "faster", "target"], [
            [f"{ratio:.3f}", faster, "the faster one becomes the documented default for CPU sweeps"]]))


if __name__ == "__main__":
    main()
