"""The equal-g grid and a sweep over a number read back from made-up runs (tests/helpers/runs.py):
which runs form a set, what each set's verdict is, when the grid cannot tell, and a factor sweep's
schedules across its factors in numeric order."""

from __future__ import annotations

import random
from helpers.runs import fake_run

from src import schema
from src.figures import load_options, write_all
from src.groups import group_runs
from src.noise_dial import equal_g_sets, g_controls, grid_verdict

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
    assert grid_verdict(sets, g_controls(sets, OPTIONS)) == (
        "does not hold here (g 100: differs from B 20, matched at no larger B)")


def test_a_grid_that_does_not_see_g_cannot_tell():
    """Every run alike whatever g: the arms match, but so do different g's, so the grid has not
    shown it could see a difference."""
    sets = equal_g_sets(grid(lambda g, b, m: 0.85), OPTIONS)
    assert {a.verdict for s in sets for a in s.arms} == {"matched"}
    assert grid_verdict(sets, g_controls(sets, OPTIONS)).startswith("cannot tell here")


def test_a_sweep_over_a_number_is_drawn_and_tabled_across_it_in_numeric_order(tmp_path):
    """schedule.factor=10,2,5: groups and the across table go 2, 5, 10 (not as strings), each
    schedule against its baseline with its update ratio, and whether B reached its cap."""
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
    assert [g.label for g in group_runs(runs)] == [f"schedule.factor={f}" for f in (2, 5, 10)]
    write_all(tmp_path, "fake-sweep", "reproduction/factor_sweep", runs)
    assert (tmp_path / "across_schedule.factor.png").stat().st_size > 0
    md = (tmp_path / "report.md").read_text()
    rows = [line.split(" | ") for line in md.split("## Across schedule.factor")[1].splitlines() if line.startswith("| ")]
    assert [(r[0], r[1], r[4], r[5], r[6]) for r in rows[1:]] == [
        ("| 2", "increase_bs", "matched", "0.40x", "no |"), ("| 5", "increase_bs", "matched", "0.40x", "no |"),
        ("| 10", "increase_bs", "matched", "0.40x", "yes: lr decay took the rest |")]


def test_a_sweep_over_a_word_has_no_across_section(tmp_path):
    runs = [fake_run(s, seed, 0.9 + JITTER[seed] / 100, **{"model.name": m}) for s in ("decay_lr", "increase_bs")
            for m in ("mlp", "cnn") for seed in SEEDS]
    for run in runs:
        run.run_id = f"{run.run_id}-{run.params['model.name']}"
    write_all(tmp_path, "fake-sweep", "e", runs)
    assert "## Across" not in (tmp_path / "report.md").read_text()
    assert not list(tmp_path.glob("across_*"))
