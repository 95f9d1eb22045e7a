"""Benchmark 3: the claim on this hardware. How much wall time does increase_bs save over
decay_lr here, against what this machine's throughput at each batch size allows?

1. Throughput: the time of one training step at every batch size the two schedules use (their
   B per epoch, and the smaller last batch of an epoch when N is not a multiple of B), through
   src.step.train_epoch on the default data and model: interleaved repetitions in one session
   right before each seed's pair of runs (so a drift in the machine's speed reaches both
   ratios), medians over all sessions (>= --reps). An epoch at B then costs floor(N/B) steps at
   B plus one at N mod B (the runs are pinned to trainer.last_batch=keep for that).
2. Ideal wall-time ratio: sum over epochs of the epoch cost at that epoch's B, increase_bs over
   decay_lr. This is what the hardware allows: the fewer, larger updates are only as much faster
   as the throughput at the larger B is higher.
3. Measured: full training runs of both schedules with the same epochs through the project's
   real src.train.train(cfg) (MLflow store in a temp folder), seeds 0, 1, 2, the two schedules
   of a seed back to back (order alternating). Every run, and every throughput session, in a
   fresh process: in one shared process the run right after a throughput session ran 6-20%
   slower than the same run later, which biased the ratio by the order of the pair. Measured ratio: train_time_s (the training steps
   only, as the throughput measure) increase_bs over decay_lr, per seed, then the median;
   total_wall_time_s (the whole run: validation, checkpoints, logging) beside it. The
   parameter-update ratio is the one the paper reports.
Target: the measured train-time ratio within 10% of the ideal.

    python benchmarks/claim.py                     # CPU here: 8 epochs (the default study has 20), ~2 min
    python benchmarks/claim.py --epochs 20 --device cuda
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess

import argparse

import _common as c  # noqa: E402

import torch  # noqa: E402

from src.batching import planned_updates  # noqa: E402
from src.build import make_schedule  # noqa: E402

SCHEDULES = ("decay_lr", "increase_bs")
TOLERANCE = 0.10


class StepTimer:
    """Seconds per training step at each batch size, measured in sessions spread between the
    full runs (so that a change in the machine's speed during the benchmark reaches both the
    ideal and the measured ratio); medians over all sessions' repetitions."""

    def __init__(self, cfg, sizes: list[int], args, device):
        self.run = c.build(cfg, device)
        self.data = self.run.data
        self.sizes, self.args, self.device = sizes, args, device
        self.order_rng = torch.Generator().manual_seed(0)
        self.steps = {b: max(args.min_steps, math.ceil(args.samples / b)) for b in sizes}
        self.seconds: dict[int, list[float]] = {b: [] for b in sizes}
        self.rounds: list[c.Rounds] = []

    def _arm(self, b):
        n, steps = self.data.n_train, self.steps[b]

        def run():
            order = torch.randperm(n, generator=self.order_rng).to(self.device)
            order = order.repeat(math.ceil(steps * b / n))[: steps * b]  # `steps` whole batches
            c.run_epoch(self.run, order, b)
        return run

    def session(self, reps: int) -> None:
        times = c.interleaved({b: self._arm(b) for b in self.sizes}, reps=reps)
        self.rounds.append(times)
        for b, t in times.items():
            self.seconds[b].extend(t)

    def per_step(self) -> dict[int, float]:
        return {b: c.median(t) / self.steps[b] for b, t in self.seconds.items()}

    def note(self) -> str:
        return "; ".join(c.rounds_cell(r) for r in self.rounds)


def child(args) -> None:
    """One measurement in a fresh process (every run and every throughput session starts from the
    same process state): `run` trains one run and prints its result, `steps` one session."""
    device = c.device_from(args.device)
    if args.child == "run":
        from src.train import train

        print(json.dumps(train(c.compose(args.overrides, args.output_dir))))
        return
    sizes = [int(b) for b in args.sizes.split(",")]
    timer = StepTimer(c.compose(args.overrides), sizes, args, device)
    timer.session(args.session_reps)
    print(json.dumps({"seconds": {str(b): t for b, t in timer.seconds.items()},
                      "steps": {str(b): k for b, k in timer.steps.items()}, "rounds": timer.note()}))


def in_child(*argv: str) -> dict:
    out = subprocess.run([c.PYTHON, __file__, *argv], cwd=c.REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=8, help="epochs of every run (the default study has 20)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samples", type=int, default=4000, help="samples per timed block of the throughput measure")
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--child", choices=["run", "steps"], help=argparse.SUPPRESS)
    p.add_argument("--output-dir", help=argparse.SUPPRESS)
    p.add_argument("--sizes", help=argparse.SUPPRESS)
    p.add_argument("--session-reps", type=int, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. model=cnn1d")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    args.reps = max(args.reps, 5)
    device = c.device_from(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    output_dir = c.temp_dir("bench-claim-")
    # trainer.last_batch=keep (the default is carry): the ideal below costs an epoch as floor(N/B)
    # steps at B plus one at N mod B, so the runs must make those steps too
    common = [f"trainer.epochs={args.epochs}", f"trainer.device={args.device}", "trainer.last_batch=keep",
              *args.overrides]
    cfgs = {name: c.compose([f"schedule={name}", *common], output_dir) for name in SCHEDULES}

    c.header("3. The claim on this hardware: increase_bs against decay_lr", device)
    cfg0 = cfgs["decay_lr"]

    with c.Load():
        n, epochs = c.build(cfg0, device).data.n_train, args.epochs
        plans = {}
        for name, cfg in cfgs.items():
            schedule = make_schedule(cfg, n, epochs)
            plans[name] = (schedule, [schedule(e).batch_size for e in range(epochs)])
        sizes = sorted({b for _, bs in plans.values() for b in bs} | {n % b for _, bs in plans.values() for b in bs if n % b})
        session_reps = max(2, math.ceil(args.reps / len(seeds)))
        seconds: dict[int, list[float]] = {b: [] for b in sizes}
        steps: dict[int, int] = {}
        session_notes: list[str] = []

        results: dict[str, list[dict]] = {name: [] for name in SCHEDULES}
        others: list[float] = []
        retries = 1  # a pair disturbed by other processes is run again, this many in all
        for i, seed in enumerate(seeds):
            # throughput, in a fresh process right before this seed's pair of runs
            session = in_child("--child", "steps", "--device", args.device, "--sizes", ",".join(map(str, sizes)),
                               "--session-reps", str(session_reps), "--samples", str(args.samples),
                               "--min-steps", str(args.min_steps), *common)
            for b in sizes:
                seconds[b].extend(session["seconds"][str(b)])
                steps[b] = session["steps"][str(b)]
            session_notes.append(session["rounds"])
            order = SCHEDULES if i % 2 == 0 else SCHEDULES[::-1]
            pairs = []
            while True:
                pair = {}
                with c.Contention() as contention:
                    for name in order:  # each run in a fresh process, as a `python -m src.run` job
                        pair[name] = in_child("--child", "run", "--device", args.device, "--output-dir", output_dir,
                                              f"schedule={name}", f"trainer.seed={seed}",
                                              f"tracking.experiment=claim-{len(pairs)}", *common)
                pairs.append((contention.others, pair))
                if contention.others <= c.QUIET or not retries:
                    break
                retries -= 1
            quietest, pair = min(pairs, key=lambda p: p[0])
            others.append(quietest)
            for name in SCHEDULES:
                results[name].append(pair[name])

        per_step = {b: c.median(t) / steps[b] for b, t in seconds.items()}

        def epoch_cost(b: int) -> float:
            return (n // b) * per_step[b] + (per_step[n % b] if n % b else 0.0)

        ideal = {name: sum(epoch_cost(b) for b in bs) for name, (_, bs) in plans.items()}
        reps_total = len(next(iter(seconds.values())))
        print(f"Throughput of training steps ({cfg0.model._target_.rsplit('.', 1)[-1]}, N = {n:,}) through "
              f"train_epoch, measured in {len(seeds)} sessions of {session_reps} interleaved repetitions, each in a "
              f"fresh process right before a seed's pair of runs; medians of all {reps_total}. Rounds per session "
              f"({c.ROUNDS_HEADER}): {'; '.join(session_notes)}.\n")
        rows = [[b, f"{per_step[b] * 1e3:.2f}", f"{b / per_step[b]:,.0f}", f"{per_step[b] / b * 1e6:.0f}"] for b in sizes]
        print(c.table(["B", "ms/step", "samples/s", "us/sample"], rows))
        print(f"\nFull runs: src.train.train(cfg), each in a fresh process, {epochs} epochs, seeds {args.seeds}; "
              f"B per epoch: " + "; ".join(f"{name} {bs}" for name, (_, bs) in plans.items()) + "\n")
        dec, inc = results["decay_lr"], results["increase_bs"]
        train_ratio = [b["train_time_s"] / a["train_time_s"] for a, b in zip(dec, inc)]
        wall_ratio = [b["total_wall_time_s"] / a["total_wall_time_s"] for a, b in zip(dec, inc)]
        measured = statistics.median(train_ratio)
        ideal_ratio = ideal["increase_bs"] / ideal["decay_lr"]
        updates = {name: planned_updates(plans[name][0], n, epochs, "keep") for name in SCHEDULES}
        measured_updates = inc[0]["total_param_updates"] / dec[0]["total_param_updates"]
        off = measured / ideal_ratio - 1
        rows = [
            [name, f"{statistics.mean(r['final_val_acc'] for r in results[name]) * 100:.1f}%",
             f"{int(results[name][0]['total_param_updates']):,}",
             f"{ideal[name]:.1f}",
             " / ".join(f"{r['train_time_s']:.1f}" for r in results[name]),
             " / ".join(f"{r['total_wall_time_s']:.1f}" for r in results[name])]
            for name in SCHEDULES
        ]
        print(f"Other processes used {', '.join(f'{o:.2f}' for o in others)} cores during the seeds' pairs of runs "
              f"(a pair above {c.QUIET} is run again, once in all; the quieter one is kept).\n")
        print(c.table(["schedule", "mean final val acc", "param updates", "ideal train s",
                       "train_time_s per seed", "total_wall_time_s per seed"], rows))
        print()
        print(c.table(
            ["increase_bs / decay_lr", "value", "target", "verdict"],
            [
                ["parameter updates", f"{measured_updates:.3f} (planned {updates['increase_bs'] / updates['decay_lr']:.3f})", "", ""],
                ["ideal wall time (throughput)", f"{ideal_ratio:.3f}", "", ""],
                ["measured train time (median of seeds)", f"{measured:.3f} (seeds: {', '.join(f'{r:.3f}' for r in train_ratio)})",
                 f"ideal +-{TOLERANCE:.0%}", f"{c.verdict(abs(off) <= TOLERANCE)} ({off:+.1%})"],
                ["measured total wall time (median of seeds)", f"{statistics.median(wall_ratio):.3f}", "", ""],
            ],
        ))


if __name__ == "__main__":
    main()
