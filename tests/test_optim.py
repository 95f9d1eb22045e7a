"""SGD momentum without the buffer's warm-up (src/optim.py, optimizer=momentum_debiased): each
step is lr / (1 - m) times a weighted mean of the gradients from the first update on, also after
m changes; it resumes alike from its state_dict; and a real run with it differs from plain
momentum in its steps only, not in the schedule it logs."""

import io

import pytest
import torch
from helpers.cli import run_cli
from helpers.configs import TINY
from helpers.store import client_for, runs_in

from src import schema
from src.groups import optimizer_name
from src.optim import DebiasedMomentumSGD
from src.runs import metric_history


def _steps(optimizer: torch.optim.SGD, weight: torch.nn.Parameter, gradients: list[float]) -> list[float]:
    """How far each of the steps moves the weight (float64: exact enough to compare), given its gradient."""
    moved = []
    for gradient in gradients:
        before = weight.item()
        weight.grad = torch.tensor([gradient], dtype=torch.float64)
        optimizer.step()
        moved.append(before - weight.item())
    return moved


def test_every_step_is_the_effective_lr_times_the_mean_gradient_from_the_first():
    """A constant gradient 1: plain momentum's step builds up as lr (1 - m^t) / (1 - m) (50
    updates to near its steady lr / (1 - m) at m 0.98), the debiased one is lr / (1 - m) from the
    first step, and again at once after m rises, where plain momentum warms up anew."""
    lr, gradients = 0.5, [1.0] * 60
    plain_weight, weight = (torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in range(2))
    plain = torch.optim.SGD([plain_weight], lr=lr, momentum=0.98)
    debiased = DebiasedMomentumSGD([weight], lr=lr, momentum=0.98, weight_decay=0.0)
    assert _steps(plain, plain_weight, gradients)[:2] == pytest.approx([0.5, 0.5 * 1.98])
    assert _steps(debiased, weight, gradients) == pytest.approx([lr / 0.02] * 60)
    assert debiased.param_groups[0]["lr"] == lr  # the schedule's lr, as the loop set it

    # m 0.9 -> 0.98 between epochs (src.build.apply_plan), lr / (1 - m) kept at 5
    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    debiased = DebiasedMomentumSGD([weight], lr=0.5, momentum=0.9, weight_decay=0.0)
    _steps(debiased, weight, [1.0] * 30)
    debiased.param_groups[0].update(lr=0.1, momentum=0.98)
    assert _steps(debiased, weight, [1.0] * 5) == pytest.approx([5.0] * 5)


def test_a_step_weighs_the_gradients_so_far_by_m_to_their_age():
    """Gradients that change: step t is lr / (1 - m) * sum_i m^(t-i) d_i / sum_i m^(t-i)."""
    lr, m = 0.1, 0.9
    gradients = torch.randn(12, generator=torch.Generator().manual_seed(0)).tolist()
    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    moved = _steps(DebiasedMomentumSGD([weight], lr=lr, momentum=m, weight_decay=0.0), weight, gradients)
    for t in range(len(gradients)):
        weights = [m ** (t - i) for i in range(t + 1)]
        mean = sum(w * d for w, d in zip(weights, gradients)) / sum(weights)
        assert moved[t] == pytest.approx(lr / (1 - m) * mean, rel=1e-5)


def test_a_restored_optimizer_steps_as_the_one_that_never_stopped():
    """The buffer's weight so far is in the state_dict (a checkpoint's): restored after 3 steps,
    the 4th step is the uninterrupted one's, not a second warm-up correction."""
    def built():
        weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
        return weight, DebiasedMomentumSGD([weight], lr=0.5, momentum=0.98, weight_decay=0.0)

    weight, optimizer = built()
    _steps(optimizer, weight, [1.0, 2.0, 3.0])
    resumed_weight, resumed = built()
    resumed_weight.data.copy_(weight.data)
    saved = io.BytesIO()  # through torch.save, as a checkpoint: no tensor shared with the original
    torch.save(optimizer.state_dict(), saved)
    saved.seek(0)
    resumed.load_state_dict(torch.load(saved))
    assert _steps(resumed, resumed_weight, [4.0]) == pytest.approx(_steps(optimizer, weight, [4.0]))


@pytest.mark.slow  # ~27-31 s here at load average 6-12: two real runs in one sweep
def test_a_real_run_differs_from_plain_momentum_in_its_steps_only(tmp_path, data_dir):
    """`python -m src.run -m optimizer=momentum,momentum_debiased` with increase_momentum (m 0.98,
    B0 x25) on digits: both log the same lr, B, momentum 0.98 and noise scale per epoch (the
    schedule is the same), and the debiased run's first epoch trains to a different loss."""
    result = run_cli("-m", "optimizer=momentum,momentum_debiased", "schedule=increase_momentum",
                     "schedule.batch_size=8", "schedule.max_batch_size=1000", *TINY,
                     output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {run.data.params["optimizer._target_"]: run for run in runs_in(tmp_path)}
    assert set(runs) == {"torch.optim.SGD", "src.optim.DebiasedMomentumSGD"}
    assert optimizer_name(runs["src.optim.DebiasedMomentumSGD"].data.params) == "momentum_debiased"  # its group label
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    client = client_for(tmp_path)
    plain, debiased = ({name: metric_history(client, runs[target].info.run_id, name)
                        for name in (schema.LR, schema.BATCH_SIZE, schema.MOMENTUM, schema.NOISE_SCALE,
                                     schema.TRAIN_LOSS)}
                       for target in ("torch.optim.SGD", "src.optim.DebiasedMomentumSGD"))
    assert debiased[schema.MOMENTUM] == [0.98] * 3
    assert debiased[schema.BATCH_SIZE] == [200, 1000, 1000]  # B0 8 x 5 x (1 - 0.9) / (1 - 0.98), capped
    for name in (schema.LR, schema.BATCH_SIZE, schema.MOMENTUM, schema.NOISE_SCALE):
        assert debiased[name] == plain[name], name
    assert debiased[schema.TRAIN_LOSS][0] != pytest.approx(plain[schema.TRAIN_LOSS][0], rel=1e-3)
