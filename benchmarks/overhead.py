"""Benchmarks 1 and 2: the project's training loop against a bare PyTorch loop, and the
project's batch assembly against torch's DataLoader.

1. Harness overhead. Per model (mlp, cnn1d) and batch size B (32 up to N/10), the time of
   src.step.train_epoch over a fresh seeded permutation (what train() gives it each epoch)
   against a plain loop written out below: the same model (a copy with the same initial weights),
   the same optimizer settings, the same resident tensors and batch size, no loss bookkeeping.
   Each repetition times both back to back (order alternating) on the same number of samples
   (a whole number of batches: >= --samples (2,048), >= --min-batches (3) batches and about
   >= --block-seconds (0.25 s) of training: part of an epoch at small B, so that the table fits
   the time budget, and consecutive permutations where one epoch is shorter than that); the ratio is the median of the per-repetition
   ratios. Target: ratio <= 1.05 at every B.

2. Data path. Samples/s of a whole epoch of batches, with no training: the project's assembly
   (randperm, src.batching.batch_indices, index the resident tensors) against torch.utils.data.
   DataLoader over a TensorDataset with shuffle=True: without workers, with 1 and 2 persistent
   workers, and with a batched sampler (sampler=BatchSampler(RandomSampler), batch_size=None:
   one tensor index per batch instead of one per sample). On a GPU the project's tensors live on
   the GPU and DataLoader batches are copied to it (pinned). Target: the project at least as
   fast as the best DataLoader setting at every B.

    python benchmarks/overhead.py                    # CPU here: ~1.5 min
    python benchmarks/overhead.py --device cuda --samples 20000
"""

from __future__ import annotations

import copy
import math

import _common as c  # noqa: E402  (puts the repo on sys.path)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset  # noqa: E402

from src.batching import batch_indices  # noqa: E402

TARGET_OVERHEAD = 1.05


def bare_epoch(model, optimizer, x, y, order, batch_size, device) -> None:
    """The reference: a plain PyTorch loop over resident tensors, nothing else."""
    model.train()
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    c.synchronize(device)


def default_sizes(n_train: int) -> list[int]:
    cap = n_train // 10
    return sorted({b for b in (32, 64, 128, 320, 800) if b < cap} | {cap})


def overhead_table(model_name: str, args, device) -> list[list[object]]:
    # trainer.last_batch=keep (the default is carry): the bare loop below cuts each block as keep
    # does, and each block is then cut alike, with no leftover carried from the block before
    cfg = c.compose([f"model={model_name}", "trainer.last_batch=keep", *args.overrides])
    run = c.build(cfg, device)
    data, model, optimizer = run.data, run.model, run.optimizer

    def project_epoch(order, batch_size):
        c.run_epoch(run, order, batch_size)

    bare_model = copy.deepcopy(model)
    group = optimizer.param_groups[0]
    bare_optimizer = torch.optim.SGD(
        bare_model.parameters(), lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"]
    )
    n = data.n_train
    project_order = torch.Generator().manual_seed(0)
    bare_order = torch.Generator().manual_seed(0)
    rows = []
    for batch_size in args.sizes or default_sizes(n):
        # Size the timed block: >= --samples, >= --min-batches batches and >= --block-seconds long
        # (short blocks make noisy ratios), from an untimed calibration of a few steps.
        probe = torch.randperm(n, generator=torch.Generator().manual_seed(1)).to(device)[: 3 * batch_size]
        project_epoch(probe, batch_size)  # warm
        step = c.timed(lambda: project_epoch(probe, batch_size)) / 3
        batches = max(args.min_batches, math.ceil(args.samples / batch_size), math.ceil(args.block_seconds / step))
        samples = batch_size * batches
        epochs = math.ceil(samples / n)  # a block longer than an epoch runs through several permutations

        def permutation(generator):
            return torch.cat([torch.randperm(n, generator=generator) for _ in range(epochs)])[:samples].to(device)

        def project():
            project_epoch(permutation(project_order), batch_size)

        def bare():
            order = permutation(bare_order)
            bare_epoch(bare_model, bare_optimizer, data.x_train, data.y_train, order, batch_size, device)

        times = c.interleaved({"project": project, "bare": bare}, reps=args.reps)
        ratio = c.median_ratio(times["project"], times["bare"])
        rows.append([
            model_name, batch_size, samples,
            c.fmt(1e6 * c.median(times["bare"]) / samples, 1),
            c.fmt(1e6 * c.median(times["project"]) / samples, 1),
            c.fmt(ratio, 3), f"<= {TARGET_OVERHEAD}", c.verdict(ratio <= TARGET_OVERHEAD),
            c.rounds_cell(times),
        ])
    return rows


def data_path_table(args, device) -> list[list[object]]:
    cfg = c.compose(args.overrides)
    data = c.build(cfg, device).data
    n = data.n_train
    x_cpu, y_cpu = data.x_train.cpu(), data.y_train.cpu()
    dataset = TensorDataset(x_cpu, y_cpu)
    on_gpu = device.type == "cuda"
    project_order = torch.Generator().manual_seed(0)

    def consume(loader) -> None:
        for xb, yb in loader:
            if on_gpu:
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        c.synchronize(device)

    rows = []
    for batch_size in args.sizes or default_sizes(n):
        def project():
            order = torch.randperm(n, generator=project_order).to(device)
            for index in batch_indices(order, batch_size, "keep"):
                _ = data.x_train[index], data.y_train[index]
            c.synchronize(device)

        loaders = {
            "workers=0": DataLoader(dataset, batch_size=batch_size, shuffle=True, pin_memory=on_gpu),
            "workers=1": DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=1,
                                    persistent_workers=True, pin_memory=on_gpu),
            "workers=2": DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2,
                                    persistent_workers=True, pin_memory=on_gpu),
            "batched sampler": DataLoader(dataset, sampler=BatchSampler(RandomSampler(dataset), batch_size, False),
                                          batch_size=None, pin_memory=on_gpu),
        }
        arms = {"project": project}
        arms.update({name: (lambda loader=loader: consume(loader)) for name, loader in loaders.items()})
        times = c.interleaved(arms, reps=args.reps)  # warm-up round starts the persistent workers
        rate = {name: n / c.median(t) for name, t in times.items()}
        best = max((name for name in loaders), key=rate.get)
        ratio = c.median_ratio(times[best], times["project"])  # > 1: the project is faster
        rows.append([
            batch_size, f"{rate['project']:,.0f}",
            *(f"{rate[name]:,.0f}" for name in loaders),
            best, c.fmt(ratio, 2), ">= 1", c.verdict(ratio >= 1.0), c.rounds_cell(times),
        ])
        del loaders  # ends the persistent workers
    return rows


def main() -> None:
    p = c.parser(__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,cnn1d")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="batch sizes, comma-separated (default 32,64,128,320,800,N/10)")
    p.add_argument("--samples", type=int, default=2048, help="samples per timed block in benchmark 1 (subset of an epoch)")
    p.add_argument("--min-batches", type=int, default=3, help="at least this many batches per timed block")
    p.add_argument("--block-seconds", type=float, default=0.25, help="timed blocks at least this long (about)")
    p.add_argument("--skip-data-path", action="store_true")
    p.add_argument("--skip-overhead", action="store_true", help="benchmark 2 only")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset.n_samples=105000")
    args = p.parse_args()
    args.reps = max(args.reps, 5)
    device = c.device_from(args.device)

    if not args.skip_overhead:
        c.header("1. Harness overhead: src.step.train_epoch against a bare PyTorch loop", device)
        print(f"Median of {args.reps} interleaved repetitions; each times both loops on the same samples "
              f"(>= {args.samples}, >= {args.min_batches} batches and >= ~{args.block_seconds} s). "
              "Times are microseconds per training sample. "
              f"{c.ROUNDS_NOTE}\n")
        with c.Load():
            rows = [row for model in args.models.split(",") for row in overhead_table(model, args, device)]
            print(c.table(["model", "B", "samples/rep", "bare us/sample", "project us/sample",
                           "project / bare", "target", "verdict", c.ROUNDS_HEADER], rows))
        print()

    if args.skip_data_path:
        return
    c.header("2. Data path: batch assembly, project against torch DataLoader (samples/s)", device)
    print(f"A whole epoch of batches, no training; median of {args.reps} interleaved repetitions. "
          "'best / project' is the median per-repetition time ratio of the fastest DataLoader "
          "setting to the project (>= 1: the project is at least as fast). " + c.ROUNDS_NOTE + "\n")
    with c.Load():
        rows = data_path_table(args, device)
        print(c.table(["B", "project", "DataLoader workers=0", "workers=1", "workers=2", "batched sampler",
                       "best DataLoader", "best / project", "target", "verdict", c.ROUNDS_HEADER], rows))


if __name__ == "__main__":
    main()
