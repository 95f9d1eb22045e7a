"""Benchmark 4: what MLflow logging costs a run.

Each repetition runs the project's real src.train.train(cfg) of the default study config twice,
back to back, order alternating, on the same seed (a new seed every repetition, so no run is
ever skipped as FINISHED):
  on   the real tracking (src.tracking) against the real SQLite store in a temp folder, every
       call into it timed by a wrapper (outermost calls only): the resume check
       (runs_with_config), tracked_run's set-up (store and experiment, create_run, config params
       and config.yaml, stale runs) and close (set_terminated), every TrackedRun.log, the dataset
       input, the final model and metrics (log_final: torch.export of the model, its LoggedModel;
       tracking.log_weights=false as an override leaves the model out), join_sweep.
  off  the same run with src.tracking's entry points replaced by no-ops (runs_with_config -> [],
       tracked_run -> src.tracking.Untracked, which logs nothing, join_sweep -> nothing). Data,
       model, training, validation and checkpoints run as usual.
Two settings:
  fresh process  each run in a new process, as a `python -m src.run` job (or a joblib worker's
                 first job) runs: it pays MLflow's per-process cost of opening the store.
  warm process   the runs one after the other in this process after a first, untimed run, as
                 the 2nd and later jobs of a basic-launcher sweep (whose store the sweep callback
                 opened) or of a joblib worker run.
The store and experiment are created once before (as a sweep's callback does). Product code is
not changed. Reported: the median share of the run's wall time spent inside tracking calls (the
precise number: both from the same run) and, as a cross-check, the wall-time ratio on / off
(noisier: two different runs). Target: tracking <= 2% of the run's wall time.

    python benchmarks/logging_overhead.py              # CPU here: 2-epoch runs, ~2.5 min
    python benchmarks/logging_overhead.py --epochs 20  # the default study's run length
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

import _common as c  # noqa: E402

TARGET = 0.02
NOT_TRACKING = "checkpoint.save (not tracking)"


class Switch:
    """Turns src.tracking's calls into timed real calls ("on") or no-ops ("off") by replacing
    module attributes that src.train looks up at call time; `inside` adds up seconds per call."""

    def __init__(self):
        import src.tracking as tracking
        from src import checkpoint

        self.tracking, self.checkpoint = tracking, checkpoint
        self.real = {name: getattr(tracking, name) for name in ("tracked_run", "runs_with_config", "join_sweep")}
        self.real_log, self.real_save = tracking.TrackedRun.log, checkpoint.save
        self.real_log_dataset, self.real_log_final = tracking.TrackedRun.log_dataset, tracking.TrackedRun.log_final
        self.inside: dict[str, float] = {}
        self.depth = 0  # only the outermost tracking call is timed (tracked_run calls runs_with_config)
        checkpoint.save = self._timed(self.real_save, NOT_TRACKING, nested_ok=True)

    def _timed(self, real, label, nested_ok=False):
        def wrapper(*args, **kwargs):
            if self.depth and not nested_ok:
                return real(*args, **kwargs)
            self.depth += not nested_ok
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.inside[label] = self.inside.get(label, 0.0) + time.perf_counter() - start
                self.depth -= not nested_ok

        return wrapper

    def use(self, mode: str) -> None:
        self.inside = {}
        t = self.tracking
        if mode == "on":
            real_tracked_run = self.real["tracked_run"]
            switch = self

            @contextmanager
            def timed_tracked_run(*args, **kwargs):
                manager = real_tracked_run(*args, **kwargs)
                run = switch._timed(manager.__enter__, "tracked_run set-up")()
                try:
                    yield run
                except BaseException:
                    if not manager.__exit__(*sys.exc_info()):
                        raise
                else:
                    switch._timed(manager.__exit__, "tracked_run close")(None, None, None)

            t.tracked_run = timed_tracked_run
            t.runs_with_config = self._timed(self.real["runs_with_config"], "resume check")
            t.join_sweep = self._timed(self.real["join_sweep"], "join_sweep")
            t.TrackedRun.log = self._timed(self.real_log, "TrackedRun.log")
            t.TrackedRun.log_dataset = self._timed(self.real_log_dataset, "TrackedRun.log_dataset")
            t.TrackedRun.log_final = self._timed(self.real_log_final, "TrackedRun.log_final (model, final metrics)")
        else:
            @contextmanager
            def null_tracked_run(*args, **kwargs):
                yield t.Untracked()  # what DDP's other ranks log through: nothing

            t.tracked_run = null_tracked_run
            t.runs_with_config = lambda *args, **kwargs: []
            t.join_sweep = lambda *args, **kwargs: None

    def run(self, mode: str, overrides: list[str], output_dir: str) -> dict:
        import src.train

        self.use(mode)
        cfg = c.compose(overrides, output_dir)
        start = time.perf_counter()
        result = src.train.train(cfg)
        return {"wall": time.perf_counter() - start, "inside": dict(self.inside), "result": result}


def child(mode: str, overrides: list[str], output_dir: str) -> None:
    started = time.perf_counter()
    import src.train  # noqa: F401  (torch, mlflow, hydra)

    imported = time.perf_counter() - started
    print(json.dumps({**Switch().run(mode, overrides, output_dir), "imports": imported}))


def run_child(mode: str, overrides: list[str], output_dir: str) -> dict:
    out = subprocess.run(
        [c.PYTHON, __file__, "--child", mode, "--output-dir", output_dir, *overrides],
        capture_output=True, text=True, cwd=c.REPO, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def tracked_seconds(run: dict) -> float:
    return sum(v for k, v in run["inside"].items() if k != NOT_TRACKING)


def measure(run_one, reps: int, seed0: int, warmup: int) -> tuple[dict, c.Rounds]:
    """Interleaved on/off rounds; run_one(mode, seed) -> one run's record."""
    calls = {"on": [], "off": []}

    def arm(mode):
        return lambda: calls[mode].append(run_one(mode, seed0 + len(calls[mode])))

    times = c.interleaved({"on": arm("on"), "off": arm("off")}, reps=reps, warmup=warmup, max_rounds=reps + 1)
    return {mode: [calls[mode][warmup + i] for i in times.kept] for mode in calls}, times


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--child", choices=["on", "off"], help=argparse_hidden())
    p.add_argument("--output-dir", help=argparse_hidden())
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = p.parse_args()
    if args.child:
        child(args.child, args.overrides, args.output_dir)
        return
    args.reps = max(args.reps, 5)
    device = c.device_from(args.device)
    output_dir = c.temp_dir("bench-logging-")
    # 30/60/80% of 2 or 3 epochs collide: steps after epochs 1 (and 2)
    milestones = {2: ["schedule.milestones=[1]"], 3: ["schedule.milestones=[1,2]"]}.get(args.epochs, [])
    common = [f"trainer.epochs={args.epochs}", *milestones, f"trainer.device={args.device}", *args.overrides]

    c.header("4. Logging overhead: MLflow tracking on against off", device)
    with c.Load():
        from src.stores import prepare_store

        start = time.perf_counter()
        prepare_store(c.compose(common, output_dir).tracking)
        created = time.perf_counter() - start

        fresh, fresh_rounds = measure(
            lambda mode, seed: run_child(mode, [*common, f"trainer.seed={seed}"], output_dir),
            args.reps, seed0=0, warmup=0)  # the store and data cache are warm already
        switch = Switch()
        warm, warm_rounds = measure(
            lambda mode, seed: switch.run(mode, [*common, f"trainer.seed={seed}"], output_dir),
            args.reps, seed0=1000, warmup=0)

        print(f"train(cfg) of the default study config, {args.epochs} epochs{f' ({milestones[0]})' if milestones else ''}; {args.reps} repetitions "
              f"(one run on, one off, same seed) in each setting; seconds, medians. Rounds ({c.ROUNDS_HEADER}): "
              f"fresh {c.rounds_cell(fresh_rounds)}, warm {c.rounds_cell(warm_rounds)}.\n")
        keys = list(dict.fromkeys(k for r in fresh["on"] + warm["on"] for k in r["inside"]))

        def med(runs, key):
            return statistics.median(r["inside"].get(key, 0.0) for r in runs)

        rows = [[f"inside {k}", f"{med(fresh['on'], k):.3f}", f"{med(warm['on'], k):.3f}"] for k in keys]
        rows += [
            ["inside all tracking calls", *(f"{statistics.median(map(tracked_seconds, s['on'])):.3f}" for s in (fresh, warm))],
            ["run wall time, on", *(f"{statistics.median(r['wall'] for r in s['on']):.2f}" for s in (fresh, warm))],
            ["run wall time, off", *(f"{statistics.median(r['wall'] for r in s['off']):.2f}" for s in (fresh, warm))],
        ]
        print(c.table(["seconds (tracking on)", "fresh process", "warm process"], rows))
        print()
        verdict_rows = []
        for label, s in (("fresh process", fresh), ("warm process", warm)):
            share = statistics.median(tracked_seconds(r) / r["wall"] for r in s["on"])
            ratio = c.median_ratio([r["wall"] for r in s["on"]], [r["wall"] for r in s["off"]])
            verdict_rows.append([label, f"{share:.2%}", f"{ratio:.3f}", f"<= {TARGET:.0%}", c.verdict(share <= TARGET)])
        print(c.table(["setting", "tracking calls / run wall time", "wall on / off", "target", "verdict"], verdict_rows))
        # The shares above are of short runs, where the fixed costs weigh most. Projected (not
        # measured) for the default study's length: fixed tracking costs + one log call per epoch,
        # over the measured run stretched by its mean training time per epoch (validation and
        # checkpoints left out of the added epochs, so the projected share is an upper bound).
        default_epochs = 20
        if args.epochs < default_epochs:
            projected = []
            for label, s in (("fresh process", fresh), ("warm process", warm)):
                shares = []
                for r in s["on"]:
                    log_call = r["inside"].get("TrackedRun.log", 0.0) / (args.epochs + 1)  # per epoch, and model_parameters
                    tracked = tracked_seconds(r) + (default_epochs - args.epochs) * log_call
                    wall = r["wall"] + (default_epochs - args.epochs) * r["result"]["train_time_s"] / args.epochs
                    shares.append(tracked / wall)
                share = statistics.median(shares)
                projected.append([f"{label}, projected to {default_epochs} epochs", f"{share:.2%}", "", f"<= {TARGET:.0%}",
                                  f"({'within' if share <= TARGET else 'over'}; projection, not a verdict)"])
            print()
            print(c.table(["setting", "tracking calls / run wall time", "", "target", ""], projected))
        per_epoch = statistics.median(r["inside"].get("TrackedRun.log", 0.0) / (args.epochs + 1) for r in warm["on"])
        print(f"\nTrackedRun.log costs {per_epoch * 1e3:.0f} ms a call (one per epoch, one for model_parameters). One-offs, "
              f"not in the shares: creating the store and experiment {created:.2f} s (once per store, by the "
              f"sweep callback); importing src.train (torch, mlflow, hydra) "
              f"{statistics.median(r['imports'] for r in fresh['on']):.2f} s per process, with tracking on or off "
              f"alike (src.train imports mlflow unconditionally; see startup.py).")


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
