"""trainer.last_batch=carry in the real loop: every parameter update has exactly the scheduled B
samples, for every schedule, across a milestone where B changes, and after a resume.

The batch behind each update is counted with real PyTorch hooks on an unchanged train(cfg): a
global forward pre-hook adds up the samples the model sees in training mode, a global optimizer
step pre-hook records that sum at each step (micro-batches add up to their batch)."""

import pytest
from helpers.configs import TINY, for_schedule, group_options
from helpers.steps import Interrupted, step_sizes
from helpers.store import client_for, history, only_run

from src import schema
from src.train import train

N_TRAIN = 1437  # digits' training part: a multiple of none of the batch sizes below


def expected_sizes(client, run_id) -> list[int]:
    """[B of epoch e] x (updates of epoch e), for every epoch, from what the run logged."""
    batch_sizes = [int(v) for _, v in history(client, run_id, schema.BATCH_SIZE)]
    updates = [int(v) for _, v in history(client, run_id, schema.PARAM_UPDATES)]
    per_epoch = [b - a for a, b in zip([0, *updates], updates)]
    return [b for b, n in zip(batch_sizes, per_epoch) for _ in range(n)]


def check_carry_counters(client, run_id) -> None:
    """Every epoch makes floor((leftover + N) / B) updates and samples_seen counts their samples."""
    batch_sizes = [int(v) for _, v in history(client, run_id, schema.BATCH_SIZE)]
    updates = [int(v) for _, v in history(client, run_id, schema.PARAM_UPDATES)]
    seen = [int(v) for _, v in history(client, run_id, schema.SAMPLES_SEEN)]
    leftover, total_updates, total_seen = 0, 0, 0
    for batch_size, logged_updates, logged_seen in zip(batch_sizes, updates, seen):
        made = (leftover + N_TRAIN) // batch_size
        leftover = leftover + N_TRAIN - made * batch_size
        total_updates, total_seen = total_updates + made, total_seen + made * batch_size
        assert (logged_updates, logged_seen) == (total_updates, total_seen)
    assert total_seen == len(batch_sizes) * N_TRAIN - leftover  # only the last leftover is unused


# B0 16 grows x5 at the milestones after epochs 1 and 2 (cap 1000): 16, 80, 400 for the
# growing schedules; increase_momentum starts at 16 x 25 = 400; large_batch_scaled trains at
# the cap, 1000; the plateau arms keep 16 over 3 epochs (patience 3), adaptive_gns follows
# its estimate. dropout 0: the sizes are what is checked, not the numbers.
@pytest.mark.parametrize("schedule", group_options("schedule"))
def test_every_update_of_every_schedule_has_exactly_B_samples(make_cfg, shared_store, schedule):
    cfg = make_cfg(*for_schedule(schedule, *TINY, "schedule.batch_size=16", "schedule.max_batch_size=1000"), f"schedule={schedule}", "trainer.resume=false", "model.dropout=0.0", f"tracking.sweep_id=carry-{schedule}")
    assert cfg.trainer.last_batch == "carry"  # the default
    with step_sizes() as sizes:
        final = train(cfg)
    client = client_for(shared_store)
    run_id = only_run(shared_store, f"carry-{schedule}").info.run_id
    assert sizes == expected_sizes(client, run_id)  # each step's samples = that epoch's B
    assert final[schema.TOTAL_PARAM_UPDATES] == len(sizes)
    check_carry_counters(client, run_id)
    if schedule in ("increase_bs", "hybrid", "increase_lr"):  # B changed at a milestone
        assert len(set(sizes)) > 1


@pytest.mark.slow  # ~6 s on 2 idle cores (two runs and a resume): kept out of the default suite's 5 minutes
def test_every_update_has_B_samples_after_a_resume_and_the_numbers_are_unchanged(make_cfg, tmp_path):
    """Stopped in the middle of epoch 3, resumed from the checkpoint of epoch 2: the resumed
    run steps on the batches of an uninterrupted one (the carried leftover is in the checkpoint:
    without it epoch 3 would make 44 steps of 32, not 45) and logs the same numbers."""
    args = ["dataset=digits", "trainer.epochs=6", "trainer.threads=1", "trainer.seed=7", "schedule=increase_bs",
            "schedule.batch_size=16", "schedule.milestones=[2,4]", "schedule.factor=2",
            "trainer.micro_batch_size=24"]  # B 16, 32 (24 + 8), 64 (24 + 24 + 16)
    reference_cfg = make_cfg(*args, "tracking.experiment=reference", output_dir=tmp_path)
    with step_sizes() as reference:
        reference_final = train(reference_cfg)
    client = client_for(tmp_path)
    # epochs 0-2: 89 steps of 16 (13 left), 90 of 16 (10 left), 45 of 32 (7 left)
    epochs_0_to_2 = 89 + 90 + 45
    assert reference[:epochs_0_to_2] == [16] * 179 + [32] * 45

    cfg = make_cfg(*args, "tracking.experiment=interrupted", output_dir=tmp_path)
    with pytest.raises(Interrupted), step_sizes(stop_at_step=epochs_0_to_2 + 20):
        train(cfg)
    with step_sizes() as resumed:
        final = train(cfg)
    assert final["outcome"] == "resumed"
    assert resumed == reference[epochs_0_to_2:]  # epoch 3 on: 45 of 32, then 64s across the milestone
    assert set(resumed[:45]) == {32} and set(resumed[45:]) == {64}
    for name in (schema.FINAL_VAL_LOSS, schema.FINAL_VAL_ACC, schema.TOTAL_PARAM_UPDATES):
        assert final[name] == reference_final[name], name

    runs = {}
    for experiment in ("reference", "interrupted"):
        [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
        runs[experiment] = run.info.run_id
    check_carry_counters(client, runs["interrupted"])
    for name in schema.EPOCH_METRICS:
        if name != schema.WALL_TIME_S:
            assert history(client, runs["interrupted"], name) == history(client, runs["reference"], name), name
