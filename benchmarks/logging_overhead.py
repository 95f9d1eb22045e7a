"""Benchmark 4: what MLflow logging costs a run.

Each repetition runs the project's real src.train.train(cfg) twice, in fresh processes (so each
pays MLflow's per-process costs, as a `python -m src.run` job does), back to back, order
alternating, on the same seed:
  on   the real tracking (src.tracking) against the real SQLite store in a temp folder, every
       call of it timed by a wrapper: the resume check (runs_with_config), tracked_run's set-up
       (store and experiment check, create_run, config params and config.yaml, stale runs) and
       close (set_terminated), every TrackedRun.log.
  off  the same run with src.tracking's three entry points replaced, in the child process only,
       by no-ops defined here (runs_with_config -> [], tracked_run -> a run whose log does
       nothing, join_sweep -> nothing). Everything else (data, model, training, validation,
       checkpoints) runs as usual.
The store and experiment are created once before the first repetition (a sweep's callback
does that once per sweep; its one-off cost is printed). Product code is not changed.
Reported: the median over repetitions of the time inside tracking calls as a share of the run's
wall time (the precise number), and the side-by-side wall-time ratio on / off (noisier: it
includes run-to-run timing noise). Target: tracking <= 2% of the run's wall time.

    python benchmarks/logging_overhead.py              # CPU here: 5 epochs per run, ~1.5 min
    python benchmarks/logging_overhead.py --epochs 20  # the default study's run length
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager

import _common as c  # noqa: E402

TARGET = 0.02


# --- the child: one run, tracking on (timed) or off (no-ops) ---------------------------------

def child(mode: str, overrides: list[str], output_dir: str) -> None:
    started = time.perf_counter()
    import src.tracking as tracking
    from src import checkpoint
    import src.train
    imported = time.perf_counter() - started

    inside: dict[str, float] = {}

    def timing(owner, name, label=None):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                key = label or name
                inside[key] = inside.get(key, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)

    if mode == "on":
        real_tracked_run = tracking.tracked_run

        @contextmanager
        def timed_tracked_run(*args, **kwargs):
            manager = real_tracked_run(*args, **kwargs)
            start = time.perf_counter()
            run = manager.__enter__()
            inside["tracked_run set-up"] = time.perf_counter() - start
            try:
                yield run
            except BaseException:
                if not manager.__exit__(*sys.exc_info()):
                    raise
            else:
                start = time.perf_counter()
                manager.__exit__(None, None, None)
                inside["tracked_run close"] = time.perf_counter() - start

        tracking.tracked_run = timed_tracked_run
        timing(tracking, "runs_with_config", "resume check")
        timing(tracking, "join_sweep")
        timing(tracking.TrackedRun, "log", "TrackedRun.log")
    else:
        class NullRun:
            run_id = "off"

            def log(self, metrics, step=0):
                pass

            def last_logged_epoch(self):
                return -1

        @contextmanager
        def null_tracked_run(*args, **kwargs):
            yield NullRun()

        tracking.tracked_run = null_tracked_run
        tracking.runs_with_config = lambda *args, **kwargs: []
        tracking.join_sweep = lambda *args, **kwargs: None
    timing(checkpoint, "save", "checkpoint.save (not tracking)")

    cfg = c.compose(overrides, output_dir)
    start = time.perf_counter()
    result = src.train.train(cfg)
    wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "inside": inside, "imports": imported, "result": result}))


# --- the parent --------------------------------------------------------------------------------

def run_child(mode: str, overrides: list[str], output_dir: str) -> dict:
    out = subprocess.run(
        [c.PYTHON, __file__, "--child", mode, "--output-dir", output_dir, *overrides],
        capture_output=True, text=True, cwd=c.REPO, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--child", choices=["on", "off"], help=argparse_hidden())
    p.add_argument("--output-dir", help=argparse_hidden())
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = p.parse_args()
    if args.child:
        child(args.child, args.overrides, args.output_dir)
        return
    args.reps = max(args.reps, 5)
    device = c.device_from(args.device)
    output_dir = tempfile.mkdtemp(prefix="bench-logging-")
    common = [f"trainer.epochs={args.epochs}", f"trainer.device={args.device}", *args.overrides]

    c.header("4. Logging overhead: MLflow tracking on against off", device)
    with c.Load():
        from src.tracking import prepare_store

        start = time.perf_counter()
        prepare_store(c.compose(common, output_dir).tracking)
        created = time.perf_counter() - start
        runs = {"on": [], "off": []}
        for rep in range(args.reps + 1):  # rep 0: warm-up (data cache, page cache), not counted
            overrides = [*common, f"trainer.seed={rep}"]  # a new config: never skipped as FINISHED
            for mode in (("on", "off") if rep % 2 else ("off", "on")):
                result = run_child(mode, overrides, output_dir)
                if rep:
                    runs[mode].append(result)
        on, off = runs["on"], runs["off"]
        tracked = [sum(v for k, v in r["inside"].items() if "not tracking" not in k) for r in on]
        share = [t / r["wall"] for t, r in zip(tracked, on)]
        ratio = c.median_ratio([r["wall"] for r in on], [r["wall"] for r in off])
        keys = list(on[0]["inside"])
        print(f"train(cfg) of the default study config, {args.epochs} epochs, {args.reps} repetitions "
              f"(each: one run on, one off, fresh processes, same seed). Seconds, medians.\n")
        rows = [[k, f"{statistics.median(r['inside'].get(k, 0.0) for r in on):.3f}"] for k in keys]
        rows += [
            ["all tracking calls", f"{statistics.median(tracked):.3f}"],
            ["run wall time, on", f"{statistics.median(r['wall'] for r in on):.2f}"],
            ["run wall time, off", f"{statistics.median(r['wall'] for r in off):.2f}"],
        ]
        print(c.table(["time inside (on)", "s"], rows))
        print()
        median_share = statistics.median(share)
        print(c.table(["measure", "value", "target", "verdict"], [
            ["tracking calls / run wall time (median)", f"{median_share:.2%}", f"<= {TARGET:.0%}",
             c.verdict(median_share <= TARGET)],
            ["wall time on / off (median of pairs)", f"{ratio:.3f}", "", ""],
        ]))
        print(f"\nOne-offs, not in the share: creating the store and experiment {created:.2f} s (once per "
              f"store, by the sweep callback); importing src.train in a child (torch, mlflow, hydra) "
              f"{statistics.median(r['imports'] for r in on):.2f} s per process, on and off alike "
              f"(src.train imports src.tracking, hence mlflow, unconditionally: see startup.py).")


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
