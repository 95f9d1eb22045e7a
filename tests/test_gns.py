"""The gradient noise scale estimator on a problem with a closed-form answer."""

import math

import pytest
import torch

from src import schema
from src.gns import NoiseScaleEstimator


def test_recovers_b_simple_of_linear_regression():
    """Loss 1/2 (x.w - y)^2 with x ~ N(0, I_d), y = x.w* + eps, eps ~ N(0, s^2), at a fixed w:
    the per-sample gradient g = x (x.(w - w*) - eps) has mean G = D = w - w* and covariance
    Sigma = (|D|^2 + s^2) I + D D^T (Gaussian fourth moments), so
    B_simple = tr(Sigma) / |G|^2 = d (1 + s^2 / |D|^2) + 1."""
    torch.manual_seed(0)
    d, s = 20, 0.5
    w_star = torch.randn(d)
    delta = torch.randn(d) * 0.3
    w = (w_star + delta).requires_grad_()
    truth = d * (1 + s**2 / delta.square().sum().item()) + 1

    estimator = NoiseScaleEstimator(ema=0.99)
    big, parts = 512, 4  # as the loop does: the whole batch's gradient and its parts'
    for _ in range(2000):
        x = torch.randn(big, d)
        y = x @ w_star + s * torch.randn(big)
        part_grads = []
        for x_part, y_part in zip(x.chunk(parts), y.chunk(parts)):
            loss = 0.5 * (x_part @ w - y_part).square().mean()
            part_grads.append(torch.autograd.grad(loss, w)[0])
        whole = torch.stack(part_grads).mean(0)
        small_sq = torch.stack([g.square().sum() for g in part_grads]).mean().item()
        estimator.update(small_sq, big / parts, whole.square().sum().item(), big)
    assert estimator.b_simple == pytest.approx(truth, rel=0.10)
    assert estimator.grad_sq == pytest.approx(delta.square().sum().item(), rel=0.10)


def test_nan_until_the_estimates_make_sense_and_state_round_trip():
    estimator = NoiseScaleEstimator()
    assert math.isnan(estimator.b_simple)
    estimator.update(small_sq=2.0, small_batch=8, big_sq=1.0, big_batch=32)
    copy = NoiseScaleEstimator()
    copy.load_state_dict(estimator.state_dict())
    assert copy == estimator and copy.b_simple == estimator.b_simple > 0


def adaptive(**kw):
    from src.schedules import AdaptiveNoiseScaleSchedule

    args = dict(name="adaptive_gns", lr=0.1, batch_size=64, factor=5, milestones=[6, 12, 16], max_batch_size=2000,
                n_train=20_000, epochs=20, optimizer_momentum=0.9)
    return AdaptiveNoiseScaleSchedule.for_run(**{**args, **kw})


def plans(schedule, estimates):
    return [schedule(epoch, {schema.GNS_B_SIMPLE: estimates[:epoch]}) for epoch in range(len(estimates) + 1)]


def test_adaptive_batch_follows_the_estimate_grows_only_and_respects_the_cap():
    estimates = [30, 150, 120, 200, math.nan, 700, 500, 5000, 100, 100]
    got = plans(adaptive(), estimates)
    sizes = [p.batch_size for p in got]
    # 30 -> B_min 64; 150 -> 192 (>= 1.5 x 64); 120, 200 (< 1.5 x 192) ignored; nan ignored;
    # 700 -> 704; 500 never shrinks it; 5000 -> the cap 2000; then it stays
    assert sizes == [64, 64, 192, 192, 192, 192, 704, 704, 2000, 2000, 2000]
    assert all(b >= a for a, b in zip(sizes, sizes[1:])) and max(sizes) == 2000
    # lr constant until the cap (epoch 8), then / 5 at each later milestone (12, 16)
    assert [p.lr for p in plans(adaptive(), estimates + [100] * 10)] == pytest.approx(
        [0.1] * 12 + [0.02] * 4 + [0.004] * 5)


def test_adaptive_state_round_trip_and_replay():
    estimates = [30, 150, 700, 5000, 100]
    original = adaptive()
    plans(original, estimates[:3])
    resumed = adaptive()
    resumed.load_state_dict(original.state_dict())
    assert plans(resumed, estimates)[3:] == plans(original, estimates)[3:]
    assert adaptive()(5, {schema.GNS_B_SIMPLE: estimates}) == original(5, {schema.GNS_B_SIMPLE: estimates})


def test_adaptive_gns_run_is_deterministic_given_the_seed(make_cfg, shared_store):
    from helpers.configs import TINY
    from helpers.store import client_for, only_run

    from src.train import train

    curves = []
    for repeat in range(2):
        sweep = f"gns-{repeat}"
        train(make_cfg(*TINY, "schedule=adaptive_gns", "schedule.batch_size=16", "trainer.resume=false",
                       "trainer.gns_every=1",  # every step: enough measurements in 3 tiny epochs
                       f"tracking.sweep_id={sweep}"))
        client = client_for(shared_store)
        run = only_run(shared_store, sweep)
        curves.append({name: [None if math.isnan(m.value) else m.value  # nan != nan
                              for m in sorted(client.get_metric_history(run.info.run_id, name), key=lambda m: m.step)]
                       for name in (schema.BATCH_SIZE, *schema.GNS_METRICS, schema.VAL_LOSS)})
    assert curves[0] == curves[1]
    measured = curves[0][schema.GNS_B_SIMPLE]  # nan while the smoothed |G|^2 estimate is still <= 0
    assert len(measured) == 3 and any(v is not None and v > 0 for v in measured)
