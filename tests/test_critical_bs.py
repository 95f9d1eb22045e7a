"""critical_bs: the paper's step schedule with B grown only up to cap_factor x the measured B_simple.

On given histories of gns_b_simple (the pure schedule), on a linear regression whose noise scale
is known in closed form (the estimator of src/gns.py feeding the schedule, batches of the size the
schedule asks for), and in the real loop (the cap logged, a resume from a checkpoint)."""

import json
import math

import pytest
import torch
from helpers.cli import run_cli
from helpers.configs import TINY
from helpers.steps import Interrupted, step_sizes
from helpers.store import client_for, history

from src import schema
from src.config import validate
from src.errors import ConfigError
from src.gns import NoiseScaleEstimator
from src.noise_schedules import CriticalBatchSchedule
from src.schedules import StepSchedule
from src.train import train

# The default study's shape: N = 20,000, B0 64, lr 0.05, factor 5 at epochs 6, 12, 16 of 20.
N, EPOCHS, MILESTONES = 20_000, 20, (6, 12, 16)


def critical(**kw) -> CriticalBatchSchedule:
    args = dict(name="critical_bs", lr=0.05, batch_size=64, factor=5, milestones=MILESTONES, max_batch_size=None,
                cap_factor=1.0, n_train=N, epochs=EPOCHS, optimizer_momentum=0.9)
    return CriticalBatchSchedule.for_run(**{**args, **kw})


def step(batch_growth_steps, max_batch_size=None) -> StepSchedule:
    return StepSchedule.for_run(name="step", lr=0.05, batch_size=64, factor=5, milestones=MILESTONES,
                                batch_growth_steps=batch_growth_steps, max_batch_size=max_batch_size,
                                n_train=N, epochs=EPOCHS, optimizer_momentum=0.9)


def plans(schedule, measured: list[float], epochs: int = EPOCHS) -> list:
    """The plan of every epoch, asked for as the loop does: epoch e sees the values of 0..e-1."""
    return [schedule(epoch, {"gns_b_simple": measured[:epoch]}) for epoch in range(epochs)]


def per_phase(got: list, attribute: str) -> list:
    """One value per phase: before the first milestone, then from each milestone on."""
    return [getattr(got[epoch], attribute) for epoch in (0, *MILESTONES)]


def assert_on_decay_lrs_noise_scale(got: list) -> None:
    """lr N / (B (1-m)) of every epoch equals decay_lr's, and it does drop at each milestone."""
    decay = [step(0)(epoch) for epoch in range(EPOCHS)]
    for epoch, (plan, baseline) in enumerate(zip(got, decay)):
        assert plan.momentum == baseline.momentum
        assert plan.lr / plan.batch_size == pytest.approx(baseline.lr / baseline.batch_size, rel=1e-12), epoch


def test_grows_while_the_new_batch_stays_under_the_cap_then_divides_lr():
    # B_simple 400 before every milestone: 64 -> 320 fits; 320 -> 1,600 would pass 400, so B
    # stops at the cap, 400, and lr takes the rest of the factor, 1,600 / 400 = 4; at 400 no
    # growth is left: the whole x5 goes to lr.
    got = plans(critical(), [400.0] * EPOCHS)
    assert per_phase(got, "batch_size") == [64, 320, 400, 400]
    assert per_phase(got, "lr") == pytest.approx([0.05, 0.05, 0.05 / 4, 0.05 / 20])
    assert_on_decay_lrs_noise_scale(got)


def test_each_milestone_reads_the_measurement_of_the_epoch_before_it():
    # Only epochs 5, 11 and 15 are read: 500 -> 320 (fits), 1,000 -> 1,000 (cut, lr / 1.6),
    # 800 -> B kept (never shrinks), lr / 5. The values in between are traps.
    measured = [10_000.0] * EPOCHS
    measured[5], measured[11], measured[15] = 500.0, 1000.0, 800.0
    schedule = critical()
    got = plans(schedule, measured)
    assert per_phase(got, "batch_size") == [64, 320, 1000, 1000]
    assert per_phase(got, "lr") == pytest.approx([0.05, 0.05, 0.05 / 1.6, 0.05 / 8])
    assert schedule.state_dict()["caps"] == [500.0, 1000.0, 800.0]
    assert_on_decay_lrs_noise_scale(got)
    # B_simple grown again before a later milestone: that milestone grows B again
    measured[15] = 5000.0
    assert per_phase(plans(critical(), measured), "batch_size") == [64, 320, 1000, 2000]


def test_cap_factor_scales_the_cap():
    measured = [400.0] * EPOCHS
    assert per_phase(plans(critical(cap_factor=2.0), measured), "batch_size") == [64, 320, 800, 800]
    assert per_phase(plans(critical(cap_factor=0.5), measured), "batch_size") == [64, 200, 200, 200]


def test_never_past_max_batch_size_so_a_huge_noise_scale_gives_increase_bs_and_a_tiny_one_decay_lr():
    for cap in (None, 1000):  # N/10 = 2,000, or a cap of its own
        got = plans(critical(max_batch_size=cap), [1e9] * EPOCHS)
        assert got == [step(None, cap)(epoch) for epoch in range(EPOCHS)]
        assert max(p.batch_size for p in got) == (cap or N // 10)
    assert plans(critical(), [1.0] * EPOCHS) == [step(0)(epoch) for epoch in range(EPOCHS)]


def test_no_measurement_keeps_the_batch_and_divides_lr():
    """nan (no measured step yet, or the smoothed |G|^2 estimate not yet positive): the drop is
    decay_lr's, and the cap is logged as nan; a later milestone with a measurement grows B."""
    measured = [math.nan] * 12 + [500.0] * 8
    schedule = critical()
    caps = []
    got = []
    for epoch in range(EPOCHS):
        got.append(schedule(epoch, {"gns_b_simple": measured[:epoch]}))
        caps.append(schedule.metrics()["gns_batch_cap"])
    assert per_phase(got, "batch_size") == [64, 64, 64, 320]
    assert per_phase(got, "lr") == pytest.approx([0.05, 0.01, 0.002, 0.002])
    assert all(math.isnan(c) for c in caps[:16]) and caps[16:] == [500.0] * 4  # 12 read epoch 11: nan
    schedule(3)  # metrics() are those of the epoch last planned, not of the latest milestone decided
    assert math.isnan(schedule.metrics()["gns_batch_cap"])
    assert_on_decay_lrs_noise_scale(got)


def test_a_history_too_short_for_a_milestone_is_refused():
    with pytest.raises(ValueError, match="needs gns_b_simple of epoch 5, 3 values given"):
        critical()(6, {"gns_b_simple": [1.0, 2.0, 3.0]})
    assert critical()(5, {}) == critical()(0)  # before the first milestone nothing is needed


def test_state_round_trip_mid_run_reproduces_the_decisions():
    measured = [300.0] * 6 + [900.0] * 6 + [5000.0] * 8
    original = critical()
    first = plans(original, measured, epochs=13)  # past two milestones
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))  # strict JSON
    assert state == {"batch_sizes": [300, 900], "lrs": pytest.approx([0.05 / (320 / 300), 0.05 / (320 / 300) / (1500 / 900)]),
                     "caps": [300.0, 900.0]}
    resumed = critical()
    resumed.load_state_dict(state)
    # the resumed schedule is shown only what a resumed run has: its decisions need no replay,
    # so the values before the milestones it already passed cannot change them
    garbled = [1.0] * 13 + measured[13:]
    rest = [resumed(epoch, {"gns_b_simple": garbled[:epoch]}) for epoch in range(13, EPOCHS)]
    assert rest == [original(epoch, {"gns_b_simple": measured[:epoch]}) for epoch in range(13, EPOCHS)]
    assert resumed.state_dict() == original.state_dict()
    assert first == [resumed(epoch) for epoch in range(13)]  # and the epochs before, from its state


def linear_regression_plans(schedule, d=20, noise_sd=2.0, steps_per_epoch=300, epochs=8, seed=0):
    """Per-sample loss 1/2 (x.w - y)^2, x ~ N(0, I_d), y = x.w* + eps, eps ~ N(0, s^2), at a fixed w
    (lr 0: a known, constant noise scale): B_simple = d (1 + s^2 / |w - w*|^2) + 1 = 101 here
    (tests/test_gns.py). Each epoch draws steps_per_epoch batches of the B the schedule plans,
    measures each as the loop does (its two halves and the whole) into the estimator, and hands
    the schedule the smoothed B_simple. Returns (plans, B_simple logged per epoch, the truth)."""
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(d, generator=generator, dtype=torch.float64)
    delta /= delta.norm()  # w - w*, |w - w*|^2 = 1
    truth = d * (1 + noise_sd**2) + 1
    estimator = NoiseScaleEstimator(memory=steps_per_epoch * schedule(0).batch_size, every=1)  # one epoch at the first B
    got, measured = [], []
    for epoch in range(epochs):
        plan = schedule(epoch, {"gns_b_simple": measured})
        got.append(plan)
        size, half = plan.batch_size, plan.batch_size // 2
        x = torch.randn(steps_per_epoch, size, d, generator=generator, dtype=torch.float64)
        residual = x @ delta - noise_sd * torch.randn(steps_per_epoch, size, generator=generator, dtype=torch.float64)
        per_sample = x * residual[..., None]  # the gradient of each sample's loss
        halves_sq = (per_sample[:, :half].mean(1).square().sum(1) + per_sample[:, half:].mean(1).square().sum(1)) / 2
        whole_sq = per_sample.mean(1).square().sum(1)
        harmonic = 2 / (1 / half + 1 / (size - half))
        for small_sq, big_sq in zip(halves_sq.tolist(), whole_sq.tolist()):
            estimator.update(small_sq, harmonic, big_sq, size)
        measured.append(estimator.b_simple)
    return got, measured, truth


def test_on_a_known_noise_scale_grows_while_under_it_and_decays_lr_after():
    """B_simple = 101: B0 16 grows x4 to 64 (under the cap), then only to the measured cap
    (~101, not 256), after which the drops divide lr (B moves at most to a newer, noisy measure
    of the same cap); g stays on decay_lr's schedule throughout."""
    milestones = (2, 4, 6)
    args = dict(name="critical_bs", lr=0.1, batch_size=16, factor=4, milestones=milestones, max_batch_size=None,
                n_train=100_000, epochs=8, optimizer_momentum=0.9)
    schedule = CriticalBatchSchedule.for_run(**args, cap_factor=1.0)
    got, measured, truth = linear_regression_plans(schedule)
    caps = schedule.state_dict()["caps"]
    assert caps == [measured[m - 1] for m in milestones]
    # the estimator after 600 steps at B = 16, 64 and ~101 (EMA memory ~100 steps): over seeds
    # 0-19 within -39%..+92% of the truth at 16 (halves of 8), within 18% at 64 and ~101
    assert caps[0] == pytest.approx(truth, rel=1.0) and caps[1:] == pytest.approx([truth] * 2, rel=0.2)
    sizes = [got[e].batch_size for e in (0, *milestones)]
    assert sizes == [16, 64, math.floor(caps[1]), max(math.floor(caps[1]), math.floor(caps[2]))]
    assert 64 < sizes[2] < 256  # cut by the cap
    lrs = [got[e].lr for e in (0, *milestones)]
    assert lrs == pytest.approx([0.1, 0.1, 0.1 / (256 / sizes[2]), 0.1 / (256 / sizes[2]) / (4 * sizes[2] / sizes[3])])
    assert lrs[3] < lrs[2] / 2.5  # at the cap, most of the last drop is an lr decay
    baseline = StepSchedule.for_run(**args, batch_growth_steps=0)  # decay_lr
    for epoch, plan in enumerate(got):
        assert plan.lr / plan.batch_size == pytest.approx(baseline(epoch).lr / baseline(epoch).batch_size, rel=1e-12)


def test_cap_factor_must_be_positive(make_cfg, tmp_path, data_dir):
    for value in (0, -1.5):
        with pytest.raises(ConfigError, match=rf"^schedule.cap_factor={value}: must be > 0"):
            validate(make_cfg("schedule=critical_bs", f"schedule.cap_factor={value}"))
    validate(make_cfg("schedule=critical_bs"))
    result = run_cli(*TINY, "schedule=critical_bs", "schedule.cap_factor=0", output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: schedule.cap_factor=0: must be > 0.0"]


# digits (N = 1,437, cap N/10 = 143), B0 16, 5 epochs, milestones after epochs 1, 2 and 3, every
# step measured, a one-layer MLP that learns from the first epoch (the default deep MLP is still
# at chance after 5 epochs here, where B_simple is not yet measurable): B_simple grows ~40 -> ~400.
LOOP = ["dataset=digits", "trainer.epochs=5", "schedule.milestones=[1,2,3]", "trainer.threads=1",
        "schedule=critical_bs", "schedule.batch_size=16", "trainer.gns_every=1",
        "model.hidden=[64]", "model.dropout_after=[]"]


def logged(client, run_id) -> dict[str, list]:
    names = [*schema.EPOCH_METRICS, schema.GNS_B_SIMPLE, schema.GNS_BATCH_CAP]
    return {name: [None if math.isnan(v) else v for _, v in history(client, run_id, name)]
            for name in names if name != schema.WALL_TIME_S}


@pytest.mark.slow  # ~4 s on 2 idle cores (two runs and a resume): kept out of the default suite's 5 minutes
def test_the_loop_logs_the_cap_and_a_resumed_run_makes_the_same_decisions(make_cfg, tmp_path):
    """The decisions re-derived from what the run logged; then the same run stopped in the middle
    of epoch 3 (after two milestones) and resumed from the checkpoint of epoch 2: the same batch
    sizes, caps and numbers at every epoch."""
    train(make_cfg(*LOOP, "tracking.experiment=reference", output_dir=tmp_path))
    client = client_for(tmp_path)
    [run] = client.search_runs([client.get_experiment_by_name("reference").experiment_id])
    reference = logged(client, run.info.run_id)

    sizes, caps, measured = reference["batch_size"], reference[schema.GNS_BATCH_CAP], reference[schema.GNS_B_SIMPLE]
    assert caps[0] is None and caps[1:4] == measured[0:3] and caps[4] == caps[3]  # cap_factor 1
    for milestone in (1, 2, 3):
        ceiling = min(143, math.floor(caps[milestone]))
        assert sizes[milestone] == max(sizes[milestone - 1], min(sizes[milestone - 1] * 5, ceiling))
    assert 16 < sizes[1] < 80  # grown, and cut by the measured cap
    for epoch in range(5):  # on decay_lr's noise scale
        assert reference["lr"][epoch] / sizes[epoch] == pytest.approx(0.05 / 5 ** min(epoch, 3) / 16, rel=1e-9)

    cfg = make_cfg(*LOOP, "tracking.experiment=interrupted", output_dir=tmp_path)
    with pytest.raises(Interrupted), step_sizes(stop_at_step=int(reference["param_updates"][2]) + 3):
        train(cfg)
    assert train(cfg)["outcome"] == "resumed"
    [run] = client.search_runs([client.get_experiment_by_name("interrupted").experiment_id])
    assert logged(client, run.info.run_id) == reference
