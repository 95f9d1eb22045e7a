"""Benchmark 5: start-up. How long until the CLI answers, and until it trains.

1. `python -m src.run --cfg job` (compose and print the config, import nothing heavy), wall
   time of the subprocess. Target: under 2 s.
2. `python -m src.run trainer.epochs=4` from launch to the first optimizer step, split into
   phases. The child is the real CLI run with runpy under a small import hook (defined here)
   that timestamps when src.train and src.tracking start and finish importing and when the
   first train_epoch starts, and ends the process at the first optimizer step. The MLflow store
   exists already (created once before, as a sweep's callback would), each repetition uses a
   new seed so no run is skipped as FINISHED.
Both: median of --reps repetitions, interleaved.

    python benchmarks/startup.py                # ~40 s here
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import _common as c  # noqa: E402

TARGET_CFG_JOB = 2.0


def first_step_child(argv: list[str]) -> None:
    """Run `python -m src.run <argv>` in this process, timestamping the phases, and exit at the
    first optimizer step."""
    import importlib.abc
    import importlib.util
    import runpy

    launched = float(os.environ["BENCH_LAUNCHED"])
    marks: dict[str, float] = {"python started": time.time() - launched}

    def mark(name: str) -> None:
        marks.setdefault(name, time.time() - launched)  # the first time only

    class Hook(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name not in ("src.train", "src.tracking"):
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            real_exec = spec.loader.exec_module

            def exec_module(module):
                mark(f"{name} import starts")
                real_exec(module)
                mark(f"{name} imported")
                if name == "src.train":
                    instrument(module)

            spec.loader.exec_module = exec_module
            return spec

    def instrument(train_module) -> None:
        real_train, real_train_epoch = train_module.train, train_module.train_epoch
        tracking = train_module.tracking
        real_runs_with_config, real_tracked_run = tracking.runs_with_config, tracking.tracked_run

        def train(*args, **kwargs):
            mark("train() called")
            return real_train(*args, **kwargs)

        def runs_with_config(*args, **kwargs):
            try:
                return real_runs_with_config(*args, **kwargs)
            finally:
                mark("resume check done")

        @contextmanager
        def tracked_run(*args, **kwargs):
            mark("data, model, optimizer built")
            with real_tracked_run(*args, **kwargs) as run:
                mark("MLflow run set up")
                yield run

        def train_epoch(learner, *args, **kwargs):
            mark("first train_epoch starts")

            def first_step(*_):
                mark("first optimizer step done")
                print(json.dumps(marks), flush=True)
                os._exit(0)

            learner.optimizer.register_step_post_hook(first_step)
            return real_train_epoch(learner, *args, **kwargs)

        train_module.train, train_module.train_epoch = train, train_epoch
        tracking.runs_with_config, tracking.tracked_run = runs_with_config, tracked_run

    sys.meta_path.insert(0, Hook())
    sys.argv = ["src.run", *argv]
    runpy.run_module("src.run", run_name="__main__", alter_sys=True)


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--first-step-child", nargs=argparse_remainder(), help=argparse_suppress())
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the training run")
    args = p.parse_args()
    if args.first_step_child is not None:
        first_step_child(args.first_step_child)
        return
    args.reps = max(args.reps, 5)
    output_dir = c.temp_dir("bench-startup-")
    train_args = [f"paths.output_dir={output_dir}", f"paths.data_dir={c.REPO / 'data'}",
                  "trainer.epochs=4", f"trainer.device={args.device}", *args.overrides]
    env = {**os.environ}

    def cfg_job():
        subprocess.run([c.PYTHON, "-m", "src.run", "--cfg", "job"], cwd=c.REPO, check=True,
                       capture_output=True)

    def first_step(seed: int):
        env["BENCH_LAUNCHED"] = repr(time.time())
        out = subprocess.run(
            [c.PYTHON, __file__, "--first-step-child", *train_args, f"trainer.seed={seed}"],
            cwd=c.REPO, check=True, capture_output=True, text=True, env=env,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    c.header("5. Start-up", c.device_from(args.device))
    with c.Load():
        from src.stores import prepare_store

        prepare_store(c.compose(train_args).tracking)  # the store exists, as in a sweep
        results: list[dict] = []
        times = c.interleaved(
            {"cfg job": cfg_job, "first step": lambda: results.append(first_step(seed=len(results)))},
            reps=args.reps, max_rounds=args.reps + 2,
        )  # the warm-up round: page cache, .pyc files
        cfg_times = times["cfg job"]
        first_steps = [results[1 + i] for i in times.kept]
        cfg_median = statistics.median(cfg_times)
        print(f"Medians of {args.reps} repetitions (interleaved), seconds. "
              f"Rounds: {c.rounds_cell(times)} ({c.ROUNDS_HEADER}).\n")
        print(c.table(["command", "wall s", "target", "verdict"], [
            ["python -m src.run --cfg job", f"{cfg_median:.2f}", f"< {TARGET_CFG_JOB:.0f}",
             c.verdict(cfg_median < TARGET_CFG_JOB)],
            ["python -m src.run trainer.epochs=4: launch to first optimizer step",
             f"{statistics.median(m['first optimizer step done'] for m in first_steps):.2f}", "(reported)", ""],
        ]))
        print("\nLaunch to first step, by phase (median seconds since launch, and the phase's own median):\n")
        names = list(first_steps[0])
        rows, previous = [], [0.0] * len(first_steps)
        explain = {
            "python started": "interpreter start-up",
            "src.train import starts": "hydra import, compose, validate (which imports torch to check _target_ signatures)",
            "src.tracking import starts": "src.train's imports before src.tracking",
            "src.tracking imported": "mlflow import",
            "src.train imported": "rest of src.train's imports",
            "train() called": "sweep id, signal handler",
            "resume check done": "open the MLflow store (first use in the process), search for a FINISHED run",
            "data, model, optimizer built": "seed, load the data cache, build model, schedule, optimizer",
            "MLflow run set up": "create_run, git commit, params, config.yaml, stale runs",
            "first train_epoch starts": "schedule plan, permutation",
            "first optimizer step done": "first forward, backward and step",
        }
        for name in names:
            now = [m[name] for m in first_steps]
            rows.append([name, f"{statistics.median(now):.2f}",
                         f"{statistics.median(a - b for a, b in zip(now, previous)):.2f}", explain.get(name, "")])
            previous = now
        print(c.table(["phase ends", "since launch", "phase", "what the phase does"], rows))


def argparse_remainder():
    import argparse

    return argparse.REMAINDER


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
