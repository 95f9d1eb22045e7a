"""The equal-g grid and the factor sweep read back from made-up runs (tests/helpers/runs.py):
which runs form a set, what each set's verdict is, and when the grid cannot tell."""

from __future__ import annotations

import random

import pytest
from helpers.runs import fake_run

from src import schema
from src.figures import load_options
from src.noise_dial import equal_g_sets, factor_rows, g_controls, grid_verdict

N = 1000
SEEDS = range(6)
JITTER = (0.0, 0.4, -0.3, 0.2, -0.1, 0.3)  # per seed, points


def noise(*key) -> float:
    """A fixed draw per run, in accuracy (sd 0.2 points): paired differences keep a spread."""
    return random.Random(repr(key)).gauss(0.0, 0.002)


def grid_run(g: float, batch_size: int, seed: int, acc: float, momentum: float = 0.9):
    lr = g * (1 - momentum) / (N / batch_size - 1)
    run = fake_run("constant_g", seed, acc + JITTER[seed] / 100 + noise(g, batch_size, momentum, seed),
                   **{"schedule.lr": f"{lr:.4g}", "schedule.batch_size": str(batch_size),
                      "optimizer.momentum": str(momentum)})
    run.run_id = f"g{g}-B{batch_size}-m{momentum}-{seed}"
    run.history[schema.NOISE_SCALE] = [lr / (1 - momentum) * (N / batch_size - 1)] * 3
    return run


def grid(accuracy) -> list:
    """Runs at g 100 and 20, B 10, 20, 50 and 100 (m 0.9) and B 20 at m 0.5; accuracy(g, B, m)."""
    settings = [(g, b, 0.9) for g in (100.0, 20.0) for b in (10, 20, 50, 100)] + [(100.0, 20, 0.5), (20.0, 20, 0.5)]
    return [grid_run(g, b, seed, accuracy(g, b, m), m) for g, b, m in settings for seed in SEEDS]


OPTIONS = load_options()


def test_runs_at_equal_g_form_one_set_against_the_smallest_batch():
    sets = equal_g_sets(grid(lambda g, b, m: 0.8 if g == 100 else 0.9), OPTIONS)
    assert [s.g for s in sets] == [100.0, 20.0]
    for s in sets:
        assert (s.reference.setting.batch_size, s.reference.setting.momentum) == (10, 0.9)
        assert [(a.setting.batch_size, a.setting.momentum) for a in s.arms] == [(20, 0.9), (50, 0.9), (100, 0.9),
                                                                                 (20, 0.5)]
        assert {a.verdict for a in s.arms} == {"matched"}
        assert s.matched_up_to == 100 and s.breaks_at is None
    controls = g_controls(sets, OPTIONS)
    assert [c.verdict for _, _, c in controls] == ["differs"]
    assert grid_verdict(sets, controls) == "holds"


def test_the_batch_size_where_equal_g_stops_matching():
    def accuracy(g, b, m):  # at g 100, B 100 (N/10) ends 6 points lower
        return (0.8 if g == 100 else 0.9) - (0.06 if (g, b) == (100, 100) else 0.0)

    sets = equal_g_sets(grid(accuracy), OPTIONS)
    assert (sets[0].matched_up_to, sets[0].breaks_at) == (50, 100)
    assert (sets[1].matched_up_to, sets[1].breaks_at) == (100, None)
    assert grid_verdict(sets, g_controls(sets, OPTIONS)) == "holds up to B = 50"


def test_a_set_that_differs_at_once_does_not_hold():
    sets = equal_g_sets(grid(lambda g, b, m: (0.8 if g == 100 else 0.9) - 0.05 * (b > 10 and g == 100)), OPTIONS)
    assert sets[0].matched_up_to is None and sets[0].breaks_at == 20
    assert grid_verdict(sets, g_controls(sets, OPTIONS)) == "does not hold here"


def test_a_grid_that_does_not_see_g_cannot_tell():
    """Every run alike whatever g: the arms match, but so do different g's, so the grid has not
    shown it could see a difference."""
    sets = equal_g_sets(grid(lambda g, b, m: 0.85), OPTIONS)
    assert {a.verdict for s in sets for a in s.arms} == {"matched"}
    assert grid_verdict(sets, g_controls(sets, OPTIONS)).startswith("cannot tell here")


def test_factor_rows_go_by_number_and_say_when_b_reached_its_cap():
    runs = []
    for factor, grown in (("10", 1000), ("2", 80), ("5", 500)):
        for seed in SEEDS:
            for schedule, updates in (("decay_lr", 300.0), ("increase_bs", 120.0)):
                run = fake_run(schedule, seed, 0.9 + JITTER[seed] / 100 + noise(factor, schedule, seed), updates,
                               **{"schedule.factor": factor, "schedule.max_batch_size": "1000"})
                run.run_id = f"{schedule}-{factor}-{seed}"
                if schedule == "increase_bs":
                    run.history[schema.BATCH_SIZE] = [64.0, 64.0, float(grown)]
                runs.append(run)
    rows = factor_rows(runs, OPTIONS)
    assert [(r.factor, r.schedule) for r in rows] == [(2.0, "increase_bs"), (5.0, "increase_bs"), (10.0, "increase_bs")]
    assert [r.reached_cap for r in rows] == [False, False, True]
    assert [r.update_ratio for r in rows] == pytest.approx([0.4] * 3)
    assert {r.comparison.verdict for r in rows} == {"matched"}
