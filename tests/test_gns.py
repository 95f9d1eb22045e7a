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
    B_simple = tr(Sigma) / |G|^2 = d (1 + s^2 / |D|^2) + 1.

    Here |D|^2 ~ 1.0 and B_simple ~ 26: the naive estimate |G|^2 ~ |G_big|^2 would be
    |G|^2 + tr(Sigma) / 64, 40% too large, far outside the tolerance; only the unbiased
    combination of the two norms passes."""
    torch.manual_seed(0)
    d, s = 20, 0.5
    w_star = torch.randn(d)
    delta = torch.randn(d) * 0.3
    w = (w_star + delta).requires_grad_()
    truth = d * (1 + s**2 / delta.square().sum().item()) + 1

    estimator = NoiseScaleEstimator(ema=0.99, every=1)
    big, parts = 64, 4  # as the loop does: the whole batch's gradient and its parts'
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
    estimator = NoiseScaleEstimator(ema=0.95, every=1)
    assert math.isnan(estimator.b_simple)
    estimator.update(small_sq=2.0, small_batch=8, big_sq=1.0, big_batch=32)
    copy = NoiseScaleEstimator(ema=0.5, every=3)  # load_state_dict brings these too
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


def test_the_loop_estimates_the_true_noise_of_a_fixed_model_from_unequal_parts():
    """src.step.train_epoch measuring every step of batches of 96 cut into micro-batches of 80
    and 16, with lr 0 so the model, and so the gradient distribution, stays fixed: the smoothed
    estimates match the exact ones computed from all 1,437 per-sample gradients.

    Parts of unequal sizes b_i: mean_i E|G_i|^2 = |G|^2 + S * mean_i(1/b_i - 1/N) (batches drawn
    without replacement from N; S the trace of the per-sample gradients' covariance, n - 1
    normalised), so the part size that keeps the estimator unbiased is the harmonic mean, 26.7
    here. The arithmetic mean (48) would make the trace estimate 2.6x too large. Expected:
    tr(Sigma) -> S, |G|^2 -> |G|^2 - S / N (the finite-population term)."""
    from torch.func import functional_call, grad, vmap

    from src.batching import BatchStream
    from src.data import load_digits
    from src.models import MLP
    from src.step import Learner, Precision, StepSettings, train_epoch

    torch.manual_seed(0)
    data = load_digits(n_val=360, split_seed=0)
    model = MLP((64,), 10, hidden=[32, 32], dropout=0.0, dropout_after=[], init="torch")
    params = {name: p.detach() for name, p in model.named_parameters()}

    def sample_loss(p, x, y):
        return torch.nn.functional.cross_entropy(functional_call(model, p, (x[None],)), y[None])

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, data.x_train, data.y_train)
    flat = torch.cat([g.flatten(1) for g in per_sample.values()], dim=1).double()
    n = len(flat)
    trace = flat.var(0, correction=1).sum().item()
    grad_sq = flat.mean(0).square().sum().item() - trace / n

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    precision = Precision(torch.device("cpu"), bf16=False, channels_last=False)
    settings = StepSettings(micro_batch_size=80, precision=precision)
    generator = torch.Generator().manual_seed(1)
    estimator = NoiseScaleEstimator(ema=0.98, every=1)
    learner = Learner(model, optimizer, data, BatchStream("carry"), generator, settings, noise=estimator)
    for _ in range(25):  # 14-15 measured steps an epoch; the EMA remembers ~50
        order = torch.randperm(n, generator=generator)
        train_epoch(learner, order, batch_size=96)
    # tolerance: over 4 seeds of the batch order the two estimates fell within 8% of the truth
    assert estimator.trace == pytest.approx(trace, rel=0.2)
    assert estimator.grad_sq == pytest.approx(grad_sq, rel=0.2)
