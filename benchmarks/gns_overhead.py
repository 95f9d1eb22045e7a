"""The cost of measuring the gradient noise scale (trainer.gns, and adaptive_gns which needs it).

Per batch size B, one epoch of src.step.train_epoch with the estimator off against on (the
same model and data, each arm its own copy), interleaved, medians of --reps rounds. With it on,
a measured step trains a batch that is not split anyway as two halves, and after each half the
flattened gradients are copied and their squared norms taken: the cost is the smaller halves'
lower throughput plus O(parameters) work per measured step, so it is largest at small B, and
trainer.gns_every (one measured step in N, default 10) divides it by N.

    python benchmarks/gns_overhead.py                # CPU here: ~1 min
"""

from __future__ import annotations

import copy

import _common as c  # noqa: E402  (puts the repo on sys.path)

import torch  # noqa: E402

from src.gns import NoiseScaleEstimator  # noqa: E402


def main() -> None:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,320,2000", help="batch sizes")
    p.add_argument("--every", default="1,10", help="measure one step in N (trainer.gns_every), one row each")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=cnn1d")
    args = p.parse_args()
    device = c.device_from(args.device)
    # trainer.last_batch=keep (the default is carry): every call is then one whole epoch of the
    # same steps, in both arms, with no leftover carried from one call (or arm) to the next
    cfg = c.compose(["trainer.last_batch=keep", *args.overrides])
    run = c.build(cfg, device)
    data, model = run.data, run.model
    c.header("Gradient-noise-scale measurement: train_epoch with the estimator off and on", device)
    rows = []
    with c.Load():
        for every, batch_size in [(int(e), int(b)) for e in args.every.split(",") for b in args.sizes.split(",")]:
            arms = {}
            for name, noise in (("off", None), ("on", NoiseScaleEstimator(cfg.trainer.gns_memory_epochs * data.n_train, every))):
                arm_model = copy.deepcopy(model)
                optimizer = torch.optim.SGD(arm_model.parameters(), lr=0.01, momentum=0.9)
                order = torch.randperm(data.n_train, generator=torch.Generator().manual_seed(0)).to(device)

                def epoch(arm_model=arm_model, optimizer=optimizer, order=order, noise=noise):
                    c.run_epoch(run, order, batch_size, model=arm_model, optimizer=optimizer, noise=noise)
                    c.synchronize(device)

                arms[name] = epoch
            rounds = c.interleaved(arms, args.reps)
            ratio = c.median_ratio(rounds["on"], rounds["off"])
            rows.append([every, batch_size, c.fmt(c.median(rounds["off"])), c.fmt(c.median(rounds["on"])),
                         f"{ratio:.3f}", f"{100 * (ratio - 1):+.1f}%", c.rounds_cell(rounds)])
        print(f"One epoch of {data.n_train:,} samples per arm and round; median of {args.reps} interleaved rounds. "
              + c.ROUNDS_NOTE + "\n")
        print(c.table(["gns_every", "B", "off s/epoch", "on s/epoch", "on / off", "overhead", c.ROUNDS_HEADER], rows))


if __name__ == "__main__":
    main()
