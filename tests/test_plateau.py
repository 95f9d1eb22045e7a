"""PlateauSchedule on given validation histories: Keras' ReduceLROnPlateau rule, the blog's
batch arm with its cap and switch to lr decay, and the state a resumed run needs."""

import json
import math

import pytest

from src.schedules import PlateauSchedule
from src.schema import VAL_LOSS

# Losses of finished epochs. With patience 3: new bests at epochs 0, 1 and 5; plateaus (3
# epochs without improving by more than min_delta) end at epochs 4, 8 and 11.
HISTORY = [1.0, 0.9, 0.95, 0.9, 0.91, 0.8, 0.85, 0.85, 0.85, 0.85, 0.85, 0.85]
# Epoch e trains with the plan made from the losses of epochs 0..e-1, so these plateaus change
# the plans of epochs 5, 9 and 12.


def plateau(grow_batch: bool, max_batch_size: int | None = None, **kw) -> PlateauSchedule:
    args = dict(name="plateau", lr=0.1, batch_size=256, factor=5, patience=3, min_delta=1e-4,
                max_batch_size=max_batch_size, grow_batch=grow_batch, n_train=64_000, epochs=60, optimizer_momentum=0.9)
    return PlateauSchedule.for_run(**{**args, **kw})


def plans(schedule: PlateauSchedule, history: list[float]) -> list:
    """The plan of every epoch, asked for as a training loop does."""
    return [schedule(epoch, {VAL_LOSS: history[:epoch]}) for epoch in range(len(history) + 1)]


def test_baseline_divides_lr_at_each_plateau():
    got = plans(plateau(grow_batch=False), HISTORY)
    assert [p.batch_size for p in got] == [256] * 13
    assert [p.lr for p in got] == pytest.approx([0.1] * 5 + [0.02] * 4 + [0.004] * 3 + [0.0008])
    assert {p.momentum for p in got} == {0.9}


def test_batch_arm_grows_batch_at_each_plateau():
    got = plans(plateau(grow_batch=True), HISTORY)  # cap N/10 = 6,400: every growth fits
    assert [p.batch_size for p in got] == [256] * 5 + [1280] * 4 + [6400] * 3 + [6400]
    assert [p.lr for p in got] == pytest.approx([0.1] * 12 + [0.02])  # 6,400 * 5 > cap: this drop is lr


def test_cap_switches_to_lr_decay_for_good_without_resetting_the_wait():
    # A flat loss: a plateau every 3 epochs, after epochs 3, 6, 9 and 12.
    got = plans(plateau(grow_batch=True, max_batch_size=6400), [1.0] * 13)
    assert [p.batch_size for p in got] == [256] * 4 + [1280] * 3 + [6400] * 7
    # The switch is the third plateau; the fourth comes 3 epochs later, not 4: best and wait
    # carry over the phase change (the blog's repeated fit() restarted them).
    assert [p.lr for p in got] == pytest.approx([0.1] * 10 + [0.02] * 3 + [0.004])


def test_growth_up_to_the_cap_itself_is_allowed():
    got = plans(plateau(grow_batch=True, max_batch_size=1280), [1.0] * 7)
    assert [p.batch_size for p in got] == [256] * 4 + [1280] * 4
    assert [p.lr for p in got] == pytest.approx([0.1] * 7 + [0.02])


def test_an_improvement_resets_the_wait():
    # Two epochs without improving (wait 2), then a new best: the wait starts again from 0, so
    # the next plateau ends 3 epochs after the best (epoch 6), not 1 epoch after (epoch 4).
    history = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    got = plans(plateau(grow_batch=False), history)
    assert [p.lr for p in got] == pytest.approx([0.1] * 7 + [0.02])


def test_improvements_smaller_than_min_delta_do_not_count():
    small_steps = [1.0, 1.0 - 5e-5, 1.0 - 9e-5, 1.0 - 9.9e-5]  # each within 1e-4 of the best 1.0
    assert plateau(grow_batch=False)(4, {VAL_LOSS: small_steps}).lr == pytest.approx(0.02)
    big_steps = [1.0, 0.9998, 0.9996, 0.9994]
    assert plateau(grow_batch=False)(4, {VAL_LOSS: big_steps}).lr == pytest.approx(0.1)
    assert plateau(grow_batch=False, min_delta=0.1)(4, {VAL_LOSS: big_steps}).lr == pytest.approx(0.02)


def test_nan_loss_never_improves():
    assert plateau(grow_batch=False)(4, {VAL_LOSS: [1.0, math.nan, math.nan, math.nan]}).lr == pytest.approx(0.02)
    assert plateau(grow_batch=False)(4, {VAL_LOSS: [math.nan, 1.0, 0.9, 0.8]}).lr == pytest.approx(0.1)


def test_replaying_a_history_equals_stepping_through_it():
    stepped = plateau(grow_batch=True, max_batch_size=6400)
    last = plans(stepped, HISTORY)[-1]
    replayed = plateau(grow_batch=True, max_batch_size=6400)
    assert replayed(len(HISTORY), {VAL_LOSS: HISTORY}) == last
    assert replayed(len(HISTORY), {VAL_LOSS: HISTORY}) == last  # losses already seen are not counted again
    assert stepped.state_dict() == replayed.state_dict()
    with pytest.raises(ValueError, match="already seen"):
        replayed(3, {VAL_LOSS: HISTORY[:3]})


def test_state_dict_round_trip_continues_identically():
    history = [1.0] * 14
    original = plateau(grow_batch=True, max_batch_size=6400)
    for epoch in range(8):
        original(epoch, {VAL_LOSS: history[:epoch]})
    state = json.loads(json.dumps(original.state_dict(), allow_nan=False))  # strict JSON
    resumed = plateau(grow_batch=True, max_batch_size=6400)
    resumed.load_state_dict(state)
    rest = range(8, len(history) + 1)
    assert [resumed(e, {VAL_LOSS: history[:e]}) for e in rest] == [original(e, {VAL_LOSS: history[:e]}) for e in rest]
    assert resumed.state_dict() == original.state_dict()
    assert resumed.state_dict()["phase"] == "lr"  # the resumed part crossed the switch


def test_fresh_state_is_json_and_loading_it_restarts():
    schedule = plateau(grow_batch=True)
    fresh = json.loads(json.dumps(schedule.state_dict(), allow_nan=False))
    plans(schedule, [1.0] * 8)
    schedule.load_state_dict(fresh)
    assert schedule(0) == plateau(grow_batch=True)(0)
    assert schedule(8, {VAL_LOSS: [1.0] * 8}) == plateau(grow_batch=True)(8, {VAL_LOSS: [1.0] * 8})


def test_default_cap_is_a_tenth_of_the_training_set():
    assert plateau(grow_batch=True, n_train=435_759).max_batch_size == 43_575
