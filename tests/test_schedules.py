"""The schedule arithmetic alone, no training: the paper's numbers come out of it. And what each
schedule's config holds: the keys it reads, no other (real Hydra composition, real `python -m src.run`)."""

import inspect
import itertools

import pytest
import torch
from helpers.cli import run_cli
from helpers.configs import compose_config, group_options
from hydra.utils import get_method

from src.batching import planned_updates, updates_in_epoch
from src.config import SUPPLIED_BY_LOOP, validate
from src.errors import ConfigError
from src.schedules import Plan, StepSchedule, milestone_epochs, noise_scale

# CIFAR-10 in the paper: N = 50,000, B0 = 128, 200 epochs, steps at 60/120/160, factor 5.
N, EPOCHS = 50_000, 200


def paper(name: str, batch_growth_steps, max_batch_size=None, milestones=(60, 120, 160), **kw) -> StepSchedule:
    args = dict(name=name, lr=0.1, batch_size=128, factor=5, milestones=milestones,
                batch_growth_steps=batch_growth_steps, max_batch_size=max_batch_size,
                n_train=N, epochs=EPOCHS, optimizer_momentum=0.9)
    return StepSchedule.for_run(**{**args, **kw})


UNCAPPED = N  # a cap no step reaches


def test_paper_update_counts_fractional():
    assert planned_updates(paper("decay_lr", 0), N, EPOCHS) == pytest.approx(78_125)
    assert planned_updates(paper("increase_bs", None, UNCAPPED), N, EPOCHS) == pytest.approx(28_875)
    assert round(planned_updates(paper("increase_bs", None, 5120), N, EPOCHS)) == 29_141
    assert planned_updates(paper("hybrid", 1, UNCAPPED), N, EPOCHS) == pytest.approx(34_375)
    # The WRN code steps from its 60th epoch (1-based), our milestone 59 (conf/base/step_schedule.yaml):
    # phases of 59/60/40/41 epochs give other counts than the paper's, so the paper's are 60/60/40/40
    wrn = {"milestones": (59, 119, 159)}
    assert planned_updates(paper("increase_bs", None, UNCAPPED, **wrn), N, EPOCHS) == pytest.approx(28_487.5)
    assert round(planned_updates(paper("increase_bs", None, 5120, **wrn), N, EPOCHS)) == 28_760


def test_carry_counts_are_the_papers_within_a_few_steps():
    """Under trainer.last_batch=carry (the default) every update has B samples, so the loop's
    count is the paper's fractional sum of N/B less what is left unused: samples left over at a
    change of B are trained at the new, larger B (r/B_new steps where the paper counts r/B_old),
    and the fewer than B left at the very end are never trained. Each such change and the end
    lose less than one step, so the count is within (changes of B + 1) steps below the paper's."""
    cases = [  # (schedule, the paper's count, the loop's under carry)
        (paper("decay_lr", 0), 78_125, 78_125),  # 200 x 50,000 is a multiple of 128: nothing left
        (paper("increase_bs", None, UNCAPPED), 28_875, 28_874),
        (paper("increase_bs", None, 5120), 29_140.625, 29_139),
        (paper("increase_lr", None, 5120, lr_boost=5), 6_406.25, 6_405),
        (paper("increase_momentum", None, 5120, lr_boost=5, momentum=0.98), 2_304.6875, 2_304),
    ]
    for schedule, fractional, carried in cases:
        assert planned_updates(schedule, N, EPOCHS) == pytest.approx(fractional)
        assert planned_updates(schedule, N, EPOCHS, "carry") == carried
        changes = len({schedule(e).batch_size for e in range(EPOCHS)}) - 1
        assert 0 <= fractional - carried < changes + 1
    # increase_bs phase by phase, each phase one carried stream of its epochs' samples opened by
    # the leftover of the phase before: 60 epochs at 128 -> 23,437 steps, 64 left; 64 + 3,000,000
    # at 640 -> 4,687, 384 left; 384 + 2,000,000 at 3,200 -> 625, 384 left; at 16,000 -> 125
    increase_bs = paper("increase_bs", None, UNCAPPED)
    sizes = [increase_bs(epoch).batch_size for epoch in range(EPOCHS)]
    by_phase = [(size, len(list(run))) for size, run in itertools.groupby(sizes)]  # from the schedule itself
    assert by_phase == [(128, 60), (640, 60), (3_200, 40), (16_000, 40)]
    leftover, phases = 0, []
    for batch_size, epochs in by_phase:
        phases.append(updates_in_epoch(epochs * N, batch_size, "carry", leftover))
        leftover += epochs * N - phases[-1] * batch_size
    assert phases == [23_437, 4_687, 625, 125]
    assert sum(phases) == planned_updates(increase_bs, N, EPOCHS, "carry")


def test_whole_batch_counts_the_loop_makes():
    # keep: ceil(N/B) steps per epoch; 50000/128 -> 391, /640 -> 79, /3200 -> 16, /5120 -> 10
    assert planned_updates(paper("decay_lr", 0), N, EPOCHS, "keep") == 200 * 391
    assert planned_updates(paper("increase_bs", None, 5120), N, EPOCHS, "keep") == 60 * 391 + 60 * 79 + 40 * 16 + 40 * 10
    # drop: floor(N/B)
    assert planned_updates(paper("decay_lr", 0), N, EPOCHS, "drop") == 200 * 390
    assert planned_updates(paper("increase_bs", None, 5120), N, EPOCHS, "drop") == 60 * 390 + 60 * 78 + 40 * 15 + 40 * 9


def test_paper_figure1_regimes():
    decay, hybrid, grow = paper("decay_lr", 0), paper("hybrid", 1, UNCAPPED), paper("increase_bs", None, UNCAPPED)
    assert [decay(e).batch_size for e in (0, 60, 120, 160, 199)] == [128] * 5
    assert [decay(e).lr for e in (0, 59, 60, 120, 160)] == pytest.approx([0.1, 0.1, 0.02, 0.004, 0.0008])
    assert [hybrid(e).batch_size for e in (0, 60, 120, 160)] == [128, 640, 640, 640]
    assert [hybrid(e).lr for e in (0, 60, 120, 160)] == pytest.approx([0.1, 0.1, 0.02, 0.004])
    assert [grow(e).batch_size for e in (0, 60, 120, 160)] == [128, 640, 3200, 16000]
    assert [grow(e).lr for e in (0, 60, 120, 160)] == pytest.approx([0.1] * 4)


def test_cap_turns_the_rest_of_a_step_into_an_lr_decay():
    capped = paper("increase_bs", None, 5120)
    assert [capped(e).batch_size for e in (0, 60, 120, 160)] == [128, 640, 3200, 5120]
    assert capped(160).lr == pytest.approx(0.1 / (16000 / 5120))
    # already at the cap: the next steps are plain lr decays
    small_cap = paper("increase_bs", None, 640)
    assert [small_cap(e).batch_size for e in (60, 120, 160)] == [640, 640, 640]
    assert [small_cap(e).lr for e in (60, 120, 160)] == pytest.approx([0.1, 0.02, 0.004])


def test_default_cap_is_a_tenth_of_the_training_set():
    assert paper("increase_bs", None, None).max_batch_size == N // 10


@pytest.mark.parametrize("max_batch_size", [UNCAPPED, 5120, 640])
def test_noise_scales_agree_at_every_epoch(max_batch_size):
    """g = lr/(1-m)(N/B - 1): the three regimes differ only by the '-1' term, so they agree to
    within lr/(1-m), the gap between N/B - 1 and N/B."""
    regimes = [paper("decay_lr", 0), paper("hybrid", 1, max_batch_size), paper("increase_bs", None, max_batch_size)]
    for epoch in range(EPOCHS):
        plans = [s(epoch) for s in regimes]
        scales = [noise_scale(p.lr, p.batch_size, p.momentum, N) for p in plans]
        gap = max(p.lr / (1 - p.momentum) for p in plans)
        assert max(scales) - min(scales) <= gap * (1 + 1e-9), (epoch, plans)
        # and their N/B forms agree exactly
        exact = [p.lr / (1 - p.momentum) * N / p.batch_size for p in plans]
        assert max(exact) == pytest.approx(min(exact), rel=1e-12)
    # the scale really does fall x5 at each step, so the test above could fail
    g = [noise_scale(regimes[0](e).lr, 128, 0.9, N) for e in (0, 60, 120, 160)]
    assert [g[i] / g[i + 1] for i in range(3)] == pytest.approx([5, 5, 5])


def test_noise_scale_formula():
    assert noise_scale(0.1, 128, 0.9, 50_000) == pytest.approx(0.1 / 0.1 * (50_000 / 128 - 1))
    assert noise_scale(0.1, 128, 0.0, 50_000) == pytest.approx(0.1 * (50_000 / 128 - 1))


def test_milestones_fractions_or_epochs():
    assert milestone_epochs([0.3, 0.6, 0.8], 200) == (60, 120, 160)
    assert milestone_epochs([0.3, 0.6, 0.8], 20) == (6, 12, 16)
    assert milestone_epochs([60, 120, 160], 200) == (60, 120, 160)
    assert milestone_epochs([], 20) == ()
    with pytest.raises(ValueError, match="milestones"):
        milestone_epochs([0.3, 120], 200)
    assert paper("decay_lr", 0, milestones=[0.3, 0.6, 0.8]).milestones == (60, 120, 160)


def test_constant_never_changes():
    constant = StepSchedule.constant(name="constant", lr=0.1, batch_size=128, n_train=N, epochs=EPOCHS,
                                     optimizer_momentum=0.9)
    assert {constant(e) for e in range(EPOCHS)} == {constant(0)} == {Plan(lr=0.1, batch_size=128, momentum=0.9)}


def test_paper_figure5_raising_the_effective_learning_rate():
    """Figure 5 (B_max = 5120): eps 0.5 with B0 640 -> 6,406 updates ("<6,500"); eps 0.5,
    m 0.98, B0 3200 -> 2,305 ("<2,500"); both start at the base regime's noise scale."""
    boost_lr = paper("increase_lr", None, 5120, lr_boost=5)
    boost_m = paper("increase_momentum", None, 5120, lr_boost=5, momentum=0.98)
    assert (boost_lr(0).lr, boost_lr(0).batch_size, boost_lr(0).momentum) == (pytest.approx(0.5), 640, 0.9)
    assert (boost_m(0).lr, boost_m(0).batch_size, boost_m(0).momentum) == (pytest.approx(0.5), 3200, 0.98)
    assert [boost_m(e).batch_size for e in (0, 60, 120, 160)] == [3200, 5120, 5120, 5120]
    assert round(planned_updates(boost_lr, N, EPOCHS)) == 6_406
    assert round(planned_updates(boost_m, N, EPOCHS)) == 2_305
    base = paper("increase_bs", None, 5120)
    for epoch in range(EPOCHS):  # same noise scale at every epoch, up to the '-1' term
        exact = [(s(epoch).lr / (1 - s(epoch).momentum)) * N / s(epoch).batch_size for s in (base, boost_lr, boost_m)]
        assert max(exact) == pytest.approx(min(exact), rel=1e-12)


def test_large_batch_scaled_after_goyal():
    """Goyal et al.'s 5 epochs of 90 = 11 of 200; lr ramps per step (Plan.lr_end) from B0's lr."""
    big = paper("large_batch_scaled", 0, 5120, scale_to_cap=True, warmup=5 / 90)
    assert big.warmup_epochs == 11
    assert {big(e).batch_size for e in range(EPOCHS)} == {5120}
    scaled = 0.1 * 5120 / 128
    assert [big(e).lr for e in (0, 11, 59, 60, 120, 160)] == pytest.approx(
        [0.1, scaled, scaled, scaled / 5, scaled / 25, scaled / 125])
    assert big(5).lr == pytest.approx(0.1 + (scaled - 0.1) * 5 / 11)
    # each warm-up epoch's steps end where the next epoch's first step starts; none after it
    assert [big(e).lr_end for e in range(11)] == pytest.approx([big(e + 1).lr for e in range(11)])
    assert {big(e).lr_end for e in range(11, EPOCHS)} == {None}
    assert paper("decay_lr", 0, 5120)(0).lr_end is None


def test_the_loop_ramps_lr_per_step():
    """train_epoch with a Plan's ramp sets step i of n to first + (end - first) * i / n: the lr
    each optimizer step ran with, read off the optimizer as it steps."""
    from src.batching import BatchStream
    from src.data import load_digits
    from src.models import MLP
    from src.step import Learner, Precision, StepSettings, train_epoch

    data = load_digits(n_val=180, n_test=180, split_seed=0)
    model = MLP((64,), 10, hidden=[16], dropout=0.0, dropout_after=[], init="torch")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    stepped = []
    optimizer.register_step_pre_hook(lambda opt, args, kwargs: stepped.append(opt.param_groups[0]["lr"]))
    settings = StepSettings(micro_batch_size=None, precision=Precision(torch.device("cpu"), False, False))
    learner = Learner(model, optimizer, data, BatchStream("keep"), torch.Generator(), settings, noise=None)
    train_epoch(learner, torch.arange(400), batch_size=100, lr_ramp=(0.1, 0.5))
    assert stepped == pytest.approx([0.1, 0.2, 0.3, 0.4])
    stepped.clear()
    train_epoch(learner, torch.arange(400), batch_size=100)
    assert stepped == pytest.approx([0.4] * 4)  # no ramp: the optimizer's lr as it was left


def test_warmup_rises_from_the_unboosted_lr():
    """A warm-up (the ablation of docs/reproduction.md) starts from schedule.lr, before lr_boost:
    increase_lr warmed up over 5% of 200 epochs goes 0.1 -> 0.5 in 10 epochs, B0 stays 640."""
    warm = paper("increase_lr", None, 5120, lr_boost=5, warmup=0.05)
    assert [warm(e).lr for e in (0, 5, 10, 59)] == pytest.approx([0.1, 0.3, 0.5, 0.5])
    assert warm(9).lr_end == pytest.approx(0.5)
    assert warm(0).batch_size == 640


def test_a_first_batch_above_the_cap_is_refused():
    with pytest.raises(ConfigError, match="schedule.batch_size=128: the first batch .3200"):
        paper("increase_momentum", None, 2000, lr_boost=5, momentum=0.98)


# --- a schedule takes the keys it reads, and refuses the others ----------------------------------------

SCHEDULES = group_options("schedule")


def _composed_schedule(*overrides: str):
    return compose_config(*overrides).schedule


def _taken(node) -> set[str]:
    """The keys the node's _target_ takes from the config (the loop supplies the rest)."""
    parameters = inspect.signature(get_method(node._target_)).parameters
    return set(parameters) - SUPPLIED_BY_LOOP["schedule"] - {"cls", "self"}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_key_a_schedule_composes_is_one_it_reads(schedule):
    """Each option's composed node (its file and the bases it includes) holds only keys its
    _target_ takes: no shared default that one schedule would ignore or another obey."""
    node = _composed_schedule(f"schedule={schedule}")
    assert set(node) - {"_target_"} <= _taken(node), schedule
    validate(compose_config(f"schedule={schedule}"))


# A value each key some schedule reads would take (valid for the range checks, which run first).
SAMPLE_VALUES = {"milestones": "[5]", "factor": "2", "max_batch_size": "2000", "batch_growth_steps": "1",
                 "lr_boost": "5", "momentum": "0.98", "scale_to_cap": "true", "warmup": "0.1", "multiple": "64",
                 "min_growth": "2.0", "cap_factor": "2.0", "grow_batch": "true", "patience": "2", "min_delta": "0.01"}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_key_of_another_schedule_is_refused_naming_it_and_the_schedule(schedule):
    """The class of `schedule=constant schedule.milestones=[5]` (a relabelled decay_lr): every key
    some schedule reads, given to one that does not read it, is refused in one line naming the key
    and the schedule, before anything is built."""
    node = _composed_schedule(f"schedule={schedule}")
    others = sorted(set().union(*(_taken(_composed_schedule(f"schedule={s}")) for s in SCHEDULES)) - _taken(node))
    assert set(others) <= set(SAMPLE_VALUES), "a new schedule key: give it a value in SAMPLE_VALUES"
    for key in others:
        with pytest.raises(ConfigError) as error:
            validate(compose_config(f"schedule={schedule}", f"+schedule.{key}={SAMPLE_VALUES[key]}"))
        message = str(error.value)
        assert message.startswith(f"schedule.{key}: unknown key; schedule {schedule} does not use it"), message
        assert "\n" not in message
    if schedule == "constant":
        assert {"milestones", "factor", "max_batch_size", "batch_growth_steps"} <= set(others)


@pytest.mark.parametrize("override", ["schedule.milestones=[5]", "+schedule.milestones=[5]",
                                      "schedule.factor=2", "schedule.max_batch_size=2000"])
def test_cli_constant_with_a_milestone_is_refused_and_writes_nothing(tmp_path, data_dir, override):
    """End to end: exit 2, one line naming the key and the schedule, no folder written."""
    key = override.lstrip("+").split("=")[0]
    result = run_cli("schedule=constant", override, "dataset=digits", "trainer.epochs=6", output_dir=tmp_path / "out",
                     data_dir=data_dir)
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: {key}: unknown key; schedule") and "constant" in line, line
    assert "milestones, " not in line  # not the default schedule's keys: constant's
    assert not (tmp_path / "out").exists()
