"""`python -m src.reproduce`: every study composes, the runner's commands, the claim rows'
verdicts on runs made up as plain data, and (slow) the runner and the report end to end on a tiny
two-preset sweep in a temp store, where the studies that did not run say "not run"."""

import itertools
import re
import shlex
import subprocess
import sys

import pytest
from helpers.configs import ROOT
from helpers.runs import fake_run
from helpers.store import client_for
from hydra import compose, initialize_config_dir

from src import schema
from src.config import validate
from src.claims import NOT_RUN, evaluate_claim
from src.runs import load_study
from src.studies import RUN_LISTS, load_reproduction, select_studies
from src.schema import CONF_DIR

REPRODUCTION = load_reproduction()
OPTIONS = {"margin_error_fraction": 0.1, "small_loss_error_fraction": 0.175, "confidence": 0.95, "power": 0.8,
           "min_seeds": 3}
CLAIM = {"baseline": "decay_lr", "arms": ["increase_bs"], "expect": "matched"}
NO_CONTROL = " (no control ran beside it: the test's power is not shown)"


def reproduce(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.reproduce", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def jobs_of(sweep: tuple[str, ...]) -> list[list[str]]:
    """The jobs of one `src.run -m` sweep: the product of its comma-separated values."""
    pairs = (item.split("=", 1) for item in sweep)
    choices = [[f"{key}={value}" for value in values.split(",")] for key, values in pairs]
    return [list(job) for job in itertools.product(*choices)]


def test_every_claim_names_a_study_and_every_study_a_run_list():
    studies = REPRODUCTION["studies"]
    assert {claim["study"] for claim in REPRODUCTION["claims"]} <= set(studies)
    assert REPRODUCTION["ablation"]["reference"] in studies
    assert REPRODUCTION["noise_dial"]["study"] in studies
    assert all(study.lists and set(study.lists) <= set(RUN_LISTS) for study in studies.values())
    quick = {path.stem for path in (CONF_DIR / "experiment").glob("*_quick.yaml")}
    reproduction = {s.preset for s in select_studies(REPRODUCTION, ["reproduction"])}
    assert quick | {"default"} <= reproduction  # every quick preset and the default study
    assert all(len(study.seeds) >= 3 for study in studies.values())


def schedules_run_by(study) -> set[str]:
    """The schedule names (schedule.name, what claims name) the study's sweeps run, composed as
    `src.run -m` composes them: a preset's own sweep of schedules included."""
    names = set()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for sweep in study.sweeps:
            for job in jobs_of(sweep):
                named = [item.split("=", 1)[1] for item in job if item.startswith("schedule.name=")]
                if named:  # the override names it, whatever the rest composes to
                    names.update(named)
                    continue
                cfg = compose("config", job, return_hydra_config=True)
                swept = (cfg.hydra.sweeper.params or {}).get("schedule")
                if swept and not any(item.startswith("schedule=") for item in job):
                    names |= {compose("config", [*job, f"schedule={s}"]).schedule.name for s in str(swept).split(",")}
                else:
                    names.add(cfg.schedule.name)
    return names


def test_every_claim_that_expects_an_outcome_runs_a_control_beside_its_arms():
    """A control named but never run would leave the row saying 'not run' at best; a claim with
    none cannot show that its test could have failed (the verdict issue)."""
    studies = {claim["study"] for claim in REPRODUCTION["claims"]}
    run_by = {name: schedules_run_by(REPRODUCTION["studies"][name]) for name in studies}
    for claim in REPRODUCTION["claims"]:
        named = {claim["baseline"], *claim["arms"], *claim.get("controls", [])}
        missing = named - run_by[claim["study"]]
        assert not missing, f"claim {claim['id']}: its study {claim['study']} runs no {sorted(missing)}"
        assert claim.get("expect", "none") == "none" or claim.get("controls"), f"claim {claim['id']} has no control"


@pytest.mark.parametrize("name", sorted(REPRODUCTION["studies"]))
def test_every_job_of_every_study_composes_and_validates(name):
    study = REPRODUCTION["studies"][name]
    for sweep in study.sweeps:
        for job in jobs_of(sweep):
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose("config", job, return_hydra_config=True)
            validate(cfg)
            assert (cfg.hydra.runtime.choices.get("experiment") or "default") == study.preset  # its tag


def test_dry_run_prints_each_sweep_with_seeds_experiment_and_time():
    result = reproduce("run", "default", "blog_covtype_quick", "--seeds", "4,5", "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines() if line.startswith("python -m src.run")]
    assert len(commands) == 6  # the default study's four sweeps, the blog's two (controls included)
    assert all("trainer.seed=4,5" in c for c in commands)
    assert all("hydra/launcher=joblib" in c and "trainer.threads=1" in c for c in commands[:4])
    # the blog's claim is a speed-up: its runs one at a time, alone (its own jobs: 1)
    for blog in commands[4:]:
        assert "tracking.experiment=reproduction/blog_covtype_quick" in blog
        assert not any(item.startswith(("hydra/launcher", "trainer.threads")) for item in blog)
    minutes = 2 * (REPRODUCTION["studies"]["default"].minutes + REPRODUCTION["studies"]["blog_covtype_quick"].minutes)
    assert f"~{minutes:.0f} min expected on 2 CPU cores" in result.stdout


def test_an_unknown_study_is_one_line_and_a_non_zero_exit():
    result = reproduce("run", "nonsense", "--dry-run")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: unknown study or list 'nonsense'")
    assert len(result.stderr.strip().splitlines()) == 1


# --- claim rows on runs made up as plain data ---------------------------------------------------


def arms(diffs_points, times=(1.0, 1.0, 1.0), base_acc=(0.80, 0.85, 0.90)):
    runs = [fake_run("decay_lr", seed, acc) for seed, acc in enumerate(base_acc)]
    for seed, (acc, diff, time) in enumerate(zip(base_acc, diffs_points, times)):
        run = fake_run("increase_bs", seed, acc + diff / 100, updates=100.0)
        run.metrics["train_time_s"] = 1.5 * time
        runs.append(run)
    return runs


def test_a_study_that_did_not_run_is_not_run_never_matched():
    measured, verdict, _ = evaluate_claim(CLAIM, [], OPTIONS)
    assert measured == NOT_RUN and NOT_RUN in verdict and "matched" not in verdict


def test_a_missing_arm_is_not_run_and_the_claim_does_not_hold():
    runs = [fake_run("decay_lr", seed, 0.8) for seed in range(3)]
    measured, verdict, _ = evaluate_claim(CLAIM, runs, OPTIONS)
    assert f"increase_bs: {NOT_RUN}" in measured and f"increase_bs {NOT_RUN}" in verdict
    assert "matched" not in verdict and verdict.endswith("undecided" + NO_CONTROL)


@pytest.mark.parametrize("diffs,word,reading", [
    ([0.1, 0.2, -0.1], "matched", "holds"),
    ([-3.0, -2.8, -3.2], "differs", "does not hold here"),
    ([-0.5, -1.5, -1.0], "inconclusive", "undecided"),
])
def test_verdict_and_reading_from_the_paired_interval(diffs, word, reading):
    """The baseline's error rate is 15% on average, so the margin is 1.5 points."""
    measured, verdict, _ = evaluate_claim(CLAIM, arms(diffs), OPTIONS)
    assert verdict == f"increase_bs **{word}**: {reading}{NO_CONTROL}"
    assert "margin ±1.50 points" in measured
    mean = sum(diffs) / 3
    assert f"({mean:+.2f} [" in measured and "100 updates (0.33x)" in measured
    assert evaluate_claim({**CLAIM, "expect": "none"}, arms(diffs), OPTIONS)[1] == f"increase_bs **{word}**"


def test_one_seed_is_inconclusive_whatever_the_numbers():
    runs = [r for r in arms([0.0, 0.0, 0.0]) if r.seed == "0"]
    measured, verdict, _ = evaluate_claim(CLAIM, runs, OPTIONS)
    assert verdict == "increase_bs **inconclusive (1 seed)**: undecided" + NO_CONTROL


def bounds_in(text: str) -> list[tuple[float, float]]:
    """Every [low, high] interval printed in a cell."""
    return [(float(a), float(b)) for a, b in re.findall(r"\[([-+]?[\d.]+), ([-+]?[\d.]+)\]", text)]


def test_a_seed_that_diverged_counts_at_chance_with_a_bounded_interval():
    """Two seeds match, the third's loss went NaN: that seed is an outcome, counted at chance
    (10% for 10 classes): -80 points; the interval stays within +-100 points (a plain t interval
    would print about -160 to +110), and the cell says how many seeds diverged, with the exact
    binomial interval of that share and the per-seed values."""
    runs = arms([0.1, 0.2, 0.0])
    runs[-1].status = "FAILED"
    runs[-1].tags["error"] = "Diverged: loss is nan (train) / nan (val) after epoch 4: diverged"
    measured, verdict, _ = evaluate_claim(CLAIM, runs, OPTIONS)
    assert verdict == "increase_bs **inconclusive (1 of 3 seeds diverged)**: undecided" + NO_CONTROL
    assert "1 of 3 seeds diverged [1, 91]%, counted at chance" in measured and "seed 2 diverged" in measured
    assert "per seed 80.1 / 85.2 / div." in measured
    [diff] = [b for b in bounds_in(measured) if b[0] < -50]
    assert -100 <= diff[0] < diff[1] <= 100
    runs[-1].tags["error"] = "RuntimeError: out of memory"  # a fault, not a result: only noted
    measured, verdict, _ = evaluate_claim(CLAIM, runs, OPTIONS)
    assert verdict == "increase_bs **inconclusive (2 seeds)**: undecided" + NO_CONTROL
    assert "seed 2 FAILED: RuntimeError: out of memory" in measured


def with_control(runs, diffs_points, name="no_anneal"):
    """A control run beside the arms, `diffs_points` from the baseline's seed by seed."""
    base = {r.seed: r.metrics[schema.FINAL_TEST_ACC] for r in runs if r.schedule == "decay_lr"}
    return runs + [fake_run(name, int(seed), acc + d / 100) for (seed, acc), d in zip(base.items(), diffs_points)]


def test_a_control_that_does_not_differ_turns_the_row_to_cannot_tell():
    """The arm matches either way; only a control that came out different lets "holds" stand."""
    claim = {**CLAIM, "controls": ["no_anneal"]}
    runs = arms([0.1, 0.2, -0.1])
    _, verdict, _ = evaluate_claim(claim, with_control(runs, [-10.0, -12.0, -11.0]), OPTIONS)
    assert verdict == "increase_bs **matched**; no_anneal (control) **differs**: holds"
    _, verdict, _ = evaluate_claim(claim, with_control(runs, [0.1, -0.1, 0.0]), OPTIONS)
    assert verdict.endswith(": cannot tell here: a control that must differ did not (matched)")
    _, verdict, _ = evaluate_claim(claim, runs, OPTIONS)
    assert verdict.endswith(f"cannot tell here: a control that must differ did not ({NOT_RUN})")


def test_identical_pairs_and_bimodal_arms_give_bounded_intervals_of_nonzero_width():
    """An arm identical to the baseline in every seed has no spread of its own: its interval uses
    the spread pooled over the study's other arms, never a zero-width one; an arm at chance in
    half its seeds stays within +-100 points."""
    claim = {**CLAIM, "arms": ["increase_bs", "hybrid"], "expect": "none"}
    runs = arms([0.0, 0.0, 0.0])
    base = {r.seed: r.metrics[schema.FINAL_TEST_ACC] for r in runs if r.schedule == "decay_lr"}
    runs += [fake_run("hybrid", int(seed), acc + d / 100) for (seed, acc), d in zip(base.items(), [0.3, -0.4, 0.2])]
    measured, _, _ = evaluate_claim(claim, runs, OPTIONS)
    identical = re.search(r"increase_bs: [\d.]+% \(\+0\.00 \[([-+\d.]+), ([-+\d.]+)\]", measured)
    assert identical and float(identical[1]) < 0 < float(identical[2])
    bimodal = arms([0.0, -75.0, 0.0], base_acc=(0.85, 0.85, 0.85))
    bimodal += [fake_run("decay_lr", 3, 0.85), fake_run("increase_bs", 3, 0.10)]
    measured, _, _ = evaluate_claim({**CLAIM, "expect": "none"}, bimodal, OPTIONS)
    assert all(-100 <= low < high <= 100 for low, high in bounds_in(measured) if low < 0 and high <= 100)


def test_claim_3b_expects_a_small_loss_within_the_papers_relative_cost():
    """Baseline error 15%: the tolerance is 0.175 x 15 = 2.6 points. A loss of about 1 point is the
    small loss the paper reports; 6 points is larger; an arm that matches is within it too."""
    claim = {**CLAIM, "expect": "small_loss"}
    _, verdict, _ = evaluate_claim(claim, arms([-1.0, -1.2, -0.9]), OPTIONS)
    assert verdict.startswith("increase_bs **small loss (within -2.62)**") and ": holds" in verdict
    _, verdict, _ = evaluate_claim(claim, arms([-6.0, -6.5, -5.8]), OPTIONS)
    assert "**larger loss (beyond -2.62)**" in verdict and ": does not hold here" in verdict


def test_an_arm_with_no_seed_in_common_with_the_baseline_is_inconclusive_not_a_crash():
    """Both finished runs, but in different seeds: nothing to pair, so no difference to print."""
    runs = [fake_run("decay_lr", seed, 0.8) for seed in (0, 1, 2)]
    runs += [fake_run("increase_bs", seed, 0.8) for seed in (3, 4, 5)]
    measured, verdict, short = evaluate_claim({**CLAIM, "checks": {"train_time_s": "lower"}}, runs, OPTIONS)
    assert "increase_bs: no seed finished in both increase_bs and decay_lr" in measured
    assert short.endswith("increase_bs: no seed finished in both increase_bs and decay_lr")
    assert verdict == "increase_bs **inconclusive (0 seeds)**: undecided" + NO_CONTROL


def test_a_divergence_is_read_from_the_error_tag_as_tracking_writes_it():
    from src.errors import Diverged
    from src.reproduce import provisional_reason
    from src.verdict import has_diverged

    run = fake_run("increase_bs", 0, 0.1)
    run.status = "FAILED"
    error = Diverged("loss is nan (train) / nan (val) after epoch 2: diverged")
    run.tags[schema.ERROR_TAG] = f"{type(error).__name__}: {error}"  # src.tracking's tag of a run that raised
    assert has_diverged(run) and provisional_reason({"s": [run]}, 1, None) is None  # a diverged seed is a result
    run.tags[schema.ERROR_TAG] = "RuntimeError: out of memory"
    assert not has_diverged(run) and provisional_reason({"s": [run]}, 1, None) == "fewer than 1 seeds in s (0)"


def test_a_time_check_reads_the_paired_ratio():
    claim = {**CLAIM, "checks": {"train_time_s": "lower"}}
    faster = arms([0.1, 0.2, -0.1], times=(0.5, 0.55, 0.6))
    measured, verdict, _ = evaluate_claim(claim, faster, OPTIONS)
    assert "train time 0.55x [" in measured and verdict.endswith("train time lower: holds" + NO_CONTROL)
    slower = arms([0.1, 0.2, -0.1], times=(1.5, 1.6, 1.55))
    assert evaluate_claim(claim, slower, OPTIONS)[1].endswith("train time higher: does not hold here" + NO_CONTROL)


def test_a_time_check_against_the_blogs_2x_is_not_passed_by_a_ratio_merely_below_1():
    """{lower_than: 0.5}: "about 2x faster" holds only when the whole interval of the ratio lies
    below 0.5; 0.9x faster is reported as measured, not as the blog's result."""
    claim = {**CLAIM, "checks": {"train_time_s": {"lower_than": 0.5}}}
    _, verdict, _ = evaluate_claim(claim, arms([0.1, 0.2, -0.1], times=(0.9, 0.92, 0.95)), OPTIONS)
    assert verdict.endswith("train time vs 0.5x higher: does not hold here" + NO_CONTROL)
    _, verdict, _ = evaluate_claim(claim, arms([0.1, 0.2, -0.1], times=(0.4, 0.42, 0.45)), OPTIONS)
    assert verdict.endswith("train time vs 0.5x lower: holds" + NO_CONTROL)


def test_time_to_the_validation_loss_both_reached_is_timed_per_seed():
    """The blog's speed-up as time to a common validation loss: per seed, the higher of the two
    best losses is the target; each run's training time by the end of its first epoch at or
    below it; the arm's over the baseline's."""
    runs = arms([0.1, 0.2, -0.1])
    for run in runs:
        run.history[schema.WALL_TIME_S] = [10.0, 20.0, 30.0]
        # decay_lr reaches 0.5 at epoch 3; increase_bs at epoch 1 (seeds 0, 1) or 2 (seed 2)
        run.history[schema.VAL_LOSS] = ([0.9, 0.7, 0.5] if run.schedule == "decay_lr" else
                                        [0.5, 0.45, 0.4] if int(run.seed) < 2 else [0.6, 0.5, 0.48])
    claim = {**CLAIM, "checks": {"time_to_val_loss": {"lower_than": 0.5}}}
    measured, verdict, _ = evaluate_claim(claim, runs, OPTIONS)
    [centre] = re.findall(r"time to the validation loss both reached ([\d.]+)x \[", measured)
    assert float(centre) == pytest.approx((1 / 3 * 1 / 3 * 2 / 3) ** (1 / 3), abs=0.005)  # geometric mean
    assert "time to val loss vs 0.5x" in verdict
    for run in runs:  # the arm reaches the baseline's best only at its end: no faster
        if run.schedule == "increase_bs":
            run.history[schema.VAL_LOSS] = [0.9, 0.8, 0.5 - int(run.seed) / 100]
            run.history[schema.WALL_TIME_S] = [10.0, 20.0, 30.0 + int(run.seed)]
    _, verdict, _ = evaluate_claim(claim, runs, OPTIONS)
    assert "time to val loss vs 0.5x higher: does not hold here" in verdict


def test_a_wide_time_spread_keeps_the_ratio_above_zero():
    """Ratios 0.1 to 1.9: a plain t interval of their mean goes below 0; on the log scale the
    interval of the (geometric) mean stays positive."""
    measured, _, _ = evaluate_claim(CLAIM, arms([0.1, 0.2, -0.1], times=(0.1, 1.0, 1.9)), OPTIONS)
    [ratio] = re.findall(r"train time ([\d.]+)x \[([-\d.]+), ([-\d.]+)\]", measured)
    assert 0 < float(ratio[1]) < float(ratio[0]) < float(ratio[2])


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_runner_and_report_on_a_tiny_two_preset_sweep(tmp_path, data_dir):
    """The default study and the blog preset, 1 seed, 4 epochs of a small MNIST-1D (2,500 train
    samples: the constant large batch of 2,000 still fits), into a temp store; then the report.
    Every claim gets its row; the studies that did not run say "not run" and never "matched";
    re-running skips every run and the report counts each once."""
    out = tmp_path / "outputs"
    args = ["run", "default", "blog_covtype_quick", "--seeds", "0", "--epochs", "4", "--jobs", "1",
            "--output-dir", str(out), "--override", "dataset.n_samples=3500", "--override", "dataset.n_val=500",
            "--override", "dataset.n_test=500",
            "--override", f"paths.data_dir={data_dir}"]
    made = reproduce(*args)
    assert made.returncode == 0, made.stderr[-3000:]
    doc = tmp_path / "docs" / "reproduction.md"
    written = reproduce("report", "--output", str(doc), "--output-dir", str(out))
    assert written.returncode == 0, written.stderr[-3000:]
    text = doc.read_text()
    side_by_side = text.split("## The studies side by side")[1].split("## Claim A")[0]
    assert "### default\n" in side_by_side and "| decay_lr | 1 | " in side_by_side
    assert "### default_large\n" in side_by_side and f"{NOT_RUN}: `python -m src.reproduce run default_large`" in side_by_side
    provisional = text.split("\n\n")[1]
    assert provisional.startswith("> **Provisional**: fewer than 3 seeds in default (1), ")
    listed = [name for name, study in REPRODUCTION["studies"].items() if "reproduction" in study.lists]
    for name in listed:  # every study of the reproduction, with the seeds it has
        assert f"{name} ({1 if name in ('default', 'blog_covtype_quick') else 0})" in provisional, name
    table = [line for line in text.splitlines() if re.match(r"\| (\w+) \| ", line) and "---" not in line]
    rows = {line.split(" | ")[0][2:]: line for line in table}
    ids = [str(claim["id"]) for claim in REPRODUCTION["claims"]] + [REPRODUCTION["ablation"]["id"]]
    assert set(ids) <= set(rows)
    ran = {"default", "blog_covtype_quick"}
    for claim in REPRODUCTION["claims"]:
        row = rows[str(claim["id"])]
        cells = row.split(" | ")
        if claim["study"] in ran:
            assert "inconclusive (1 seed)" in cells[4] and "updates" in cells[3], row
            for link in re.findall(r"\]\(([^)]+\.png)\)", cells[5]):
                assert (doc.parent / link).is_file(), link
            assert re.search(r"\]\([^)]+\.png\)", cells[5]), row
        else:
            assert cells[3] == NOT_RUN and cells[4] == f"**{NOT_RUN}**", row
        assert "matched" not in cells[4], row  # 1 seed or no runs: never matched
    assert rows[REPRODUCTION["ablation"]["id"]].split(" | ")[3] == NOT_RUN
    assert "| smith2018_optimizers_quick | " in text and "## What this offline stand-in cannot show" in text

    client = client_for(out)
    counted = load_study(client, "reproduction/default", "default")
    def schedule_of(job: list[str]) -> str:  # a control's schedule.name, else the schedule option
        values = dict(item.split("=", 1) for item in job)
        return values.get("schedule.name", values["schedule"])

    swept = [schedule_of(job) for sweep in REPRODUCTION["studies"]["default"].sweeps for job in jobs_of(sweep)]
    assert sorted(r.schedule for r in counted) == sorted(swept) and "critical_bs" in swept  # one run per job
    assert "no_anneal" in swept  # the control, under its own name
    again = reproduce(*args)
    sweeps = len(REPRODUCTION["studies"]["default"].sweeps) + len(REPRODUCTION["studies"]["blog_covtype_quick"].sweeps)
    assert again.returncode == 0 and again.stderr.count("already FINISHED, nothing trained") == sweeps
    assert len(load_study(client, "reproduction/default", "default")) == len(counted)


def test_side_by_side_table_gives_each_schedule_with_intervals_and_paired_ratios():
    from src.claims import study_table

    runs = arms([0.1, 0.2, -0.1], times=(0.5, 0.6, 0.7))
    lines = study_table(runs, "decay_lr", OPTIONS)
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[2:] if line.startswith("| ")}
    assert rows["decay_lr"][1:5] == ["3", "85.00 [68.18, 94.18]", "(baseline)", "300"]  # the logit scale: below 100
    assert rows["increase_bs"][1] == "3"
    assert rows["increase_bs"][3].startswith("+0.07 [") and rows["increase_bs"][3].endswith("**matched**")
    assert rows["increase_bs"][4] == "100 (0.33x)"
    assert rows["increase_bs"][6].startswith("0.59x [")  # the geometric mean of the per-seed ratios 0.5, 0.6, 0.7
    runs[-1].status, runs[-1].tags["error"] = "FAILED", "Diverged: loss is nan"
    rows = {line.split(" | ")[0][2:]: line for line in study_table(runs, "decay_lr", OPTIONS)[2:]}
    assert "| 2 (+1 diverged) |" in rows["increase_bs"] and "(1 of 3 seeds diverged)**" in rows["increase_bs"]


def test_ablation_compares_with_the_studys_own_baseline_else_the_references():
    from src.ablation import ablation_table
    from src.studies import Study

    def study(name):
        return Study(name, "p", f"changes {name}", (), 1.0, ("ablation",), (0, 1, 2))

    reproduction = {"studies": {name: study(name) for name in ("ref", "own", "borrowed")},
            "ablation": {"id": "A", "reference": "ref", "baseline": "decay_lr", "arms": ["increase_lr"],
                         "also_shown": []}}
    ref = [fake_run("decay_lr", s, 0.98) for s in range(3)] + [fake_run("increase_lr", s, 0.1) for s in range(3)]
    ref[-1].status, ref[-1].tags["error"] = "FAILED", "Diverged: loss is nan"
    own = [fake_run("decay_lr", s, 0.50 + s / 100) for s in range(3)] + [fake_run("increase_lr", s, 0.50 + s / 100)
                                                                          for s in range(3)]
    borrowed = [fake_run("increase_lr", s, 0.98 + s / 10000) for s in range(3)]  # within 0.1 x 2% = 0.2 points
    lines, measured, verdict = ablation_table(reproduction, {"ref": ref, "own": own, "borrowed": borrowed}, OPTIONS)
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    # the diverged seed counts at chance: -88 points in every seed; the spread pooled from "borrowed"
    assert "10.0 / 10.0 / div." in rows["ref"] and "**differs (1 of 3 seeds diverged)**" in rows["ref"]
    [own_bounds] = re.findall(r"\+0\.00 \[([-+\d.]+), ([-+\d.]+)\] \*\*matched\*\* \|", rows["own"])  # its own decay_lr
    assert float(own_bounds[0]) < 0 < float(own_bounds[1])  # identical pairs: a pooled spread, not a zero-width interval
    assert rows["borrowed"].endswith("**matched** (reference's) |")
    assert verdict.startswith("increase_lr: recovered by own, borrowed")
    assert "the preset as it is **differs (1 of 3 seeds diverged)**" in measured
    reading = lines[-1]  # written from the verdicts: sufficient, never a cause
    assert reading.startswith("**Reading** (generated from the verdicts above): **increase_lr** as the preset is: "
                              "differs (1 of 3 seeds diverged) against decay_lr.")
    assert "Sufficient here to recover it (matched): own, borrowed." in reading and "Not sufficient" not in reading
    assert not re.search(r"\b(because|caused?|explains?|due to)\b", reading)
    _, measured, verdict = ablation_table(reproduction, {"own": own}, OPTIONS)
    assert measured == NOT_RUN and NOT_RUN in verdict
    # its own decay_lr ran, but in no seed of its increase_lr: nothing to pair, never recovered
    apart = [fake_run("decay_lr", s, 0.5) for s in range(3)] + [fake_run("increase_lr", s, 0.5) for s in (3, 4, 5)]
    lines, _, verdict = ablation_table(reproduction, {"ref": ref, "own": apart}, OPTIONS)
    own_row = next(line for line in lines if line.startswith("| own |"))
    assert own_row.endswith("| no seed finished in both increase_lr and decay_lr **inconclusive (0 seeds)** |")
    assert verdict.startswith("increase_lr: not recovered")
    assert "Not decided at these seeds: own (inconclusive (0 seeds))." in lines[-1] and "Sufficient" not in lines[-1]
    below = [fake_run("decay_lr", s, 0.9 + s / 1000) for s in range(3)] + [fake_run("increase_lr", s, 0.5 + s / 700)
                                                                           for s in range(3)]  # 40 points below
    lines, _, verdict = ablation_table(reproduction, {"ref": ref, "own": below}, OPTIONS)
    assert "Not sufficient (differs): own." in lines[-1]


def test_a_study_is_its_experiments_runs_with_its_preset_newest_finished_per_config(tmp_path):
    """In a real store: per config hash the newest FINISHED run (a repeat never counts twice), the
    newest run when none finished; runs of another preset and summary runs are left out."""
    client = client_for(tmp_path)
    experiment = client.create_experiment("reproduction/s")

    def made(config, status, preset="p", **tags):
        run = client.create_run(experiment, tags={"preset": preset, "config_hash": config, "schedule": "decay_lr",
                                                  "seed": "0", **tags})
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    made("a", "FINISHED")
    newest_a = made("a", "FINISHED")
    made("a", "FAILED")  # a later failed attempt does not replace a finished run
    only_failed = made("b", "FAILED")
    made("c", "FINISHED", preset="other")
    made("d", "FINISHED", kind="summary")
    made("e", "KILLED", superseded_by="another run")  # closed as stale, trained again
    chosen = {run.run_id for run in load_study(client, "reproduction/s", "p")}
    assert chosen == {newest_a, only_failed}
    assert load_study(client, "reproduction/missing", "p") == []


def test_report_without_a_store_is_one_line_and_exit_2(tmp_path, capsys):
    from src.reproduce import main

    assert main(["report", "--output", str(tmp_path / "r.md"), "--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"error: no MLflow store at {tmp_path}/mlflow.db (run `python -m "
                                       "src.reproduce run` first)\n")
    assert not (tmp_path / "mlflow.db").exists()  # looking creates no store


def test_report_leaves_no_figure_of_an_earlier_report_and_reads_the_confidence(tmp_path, monkeypatch):
    """A group folder an earlier report drew (the runs then varied the model) is gone, from the
    study's src.figures output and from the figures the claims copy beside the report; the
    intervals' level is conf/figures.yaml's; each side-by-side table is computed once."""
    from src import reproduce
    from src.stores import open_store

    out, doc = tmp_path / "outputs", tmp_path / "docs" / "reproduction.md"
    open_store(f"sqlite:///{out}/mlflow.db")  # an empty store: the runs come from load_study below
    runs = arms([0.1, 0.2, -0.1])
    monkeypatch.setattr(reproduce, "load_study",
                        lambda client, experiment, preset: runs if experiment == "reproduction/default" else [])
    monkeypatch.setattr(reproduce, "load_options", lambda: {**OPTIONS, "baselines": ["decay_lr"], "confidence": 0.9})
    tables, study_table = [], reproduce.study_table
    monkeypatch.setattr(reproduce, "study_table", lambda *args: tables.append(args[0]) or study_table(*args))
    stale = out / "reproduction" / "default" / "model=old"
    stale.mkdir(parents=True)
    (stale / "fig5_test_acc_updates.png").write_bytes(b"")
    monkeypatch.setattr(reproduce, "ROOT", tmp_path)
    (tmp_path / "README.md").write_text("<!-- reproduction:summary -->\n<!-- /reproduction:summary -->\n"
                                        "<!-- reproduction:table -->\n<!-- /reproduction:table -->\n")
    args = ["report", "--output", str(doc), "--output-dir", str(out), "--write-readme"]
    assert reproduce.report(reproduce.parse_args(args), REPRODUCTION) == 0
    assert not stale.exists() and (out / "reproduction" / "default" / "fig5_test_acc_updates.png").is_file()
    assert not list(doc.parent.rglob("model=old"))
    text = doc.read_text()
    [row] = [line for line in text.splitlines() if line.startswith("| 1b | ")]
    assert "model=old" not in row and "](reproduction/default/fig5_test_acc_updates.png)" in row
    assert "measured here (mean [90% interval] over seeds)" in text and "[95% interval]" not in text
    assert "| schedule | seeds | final test acc (%, mean [90% interval]) |" in text
    readme = (tmp_path / "README.md").read_text()
    assert "accuracy minus baseline (points, 90% interval)" in readme and "**default** (`" in readme
    assert len(tables) == 1 and tables[0] is runs  # default, the one study of `tables` that ran: once
