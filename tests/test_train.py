"""train(cfg) on tiny real data, with a real MLflow store in a temp folder."""

import math

import pytest
from helpers.configs import TINY, TINY_MNIST1D, for_schedule, group_options
from helpers.store import client_for, history, only_run

from src import schema
from src.batching import planned_updates
from src.build import make_schedule
from src.train import train


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in ("dataset", "model", "optimizer", "schedule") for o in group_options(g)],
)
def test_every_option_composes_and_trains_an_epoch(make_cfg, shared_store, group, option):
    extra = {
        ("dataset", "mnist1d"): TINY_MNIST1D,
        ("dataset", "cifar10"): ["dataset.n_val=200"],  # 1,000 random images in CIFAR-10's format (conftest)
        ("dataset", "covtype"): [],
        ("model", "wrn"): ["dataset=cifar10", "dataset.n_val=200", "model.depth=10", "model.width=1"],  # WRN-10-1: quick on CPU
    }.get((group, option), ["dataset=digits"])
    if group == "schedule":  # room for increase_momentum's B0 x25 under the cap (N = 1,437)
        extra += for_schedule(option, "schedule.batch_size=16", "schedule.max_batch_size=1000")
    extra += for_schedule(option if group == "schedule" else "decay_lr", "schedule.milestones=[]")  # one epoch
    cfg = make_cfg(f"{group}={option}", *extra, "trainer.epochs=1", "trainer.threads=1",
                   "trainer.resume=false",  # several options give the same one-epoch config
                   f"tracking.sweep_id=option-{group}-{option}")
    final = train(cfg)
    assert math.isfinite(final[schema.FINAL_VAL_LOSS]) and 0 <= final[schema.FINAL_VAL_ACC] <= 1
    run = only_run(shared_store, f"option-{group}-{option}")
    assert run.info.status == "FINISHED"
    assert run.data.metrics[schema.FINAL_VAL_ACC] == final[schema.FINAL_VAL_ACC]  # what was logged is what ran
    assert run.data.metrics[schema.TOTAL_PARAM_UPDATES] == final[schema.TOTAL_PARAM_UPDATES] >= 1


def test_every_metric_every_epoch_and_exact_counters(make_cfg, shared_store):
    cfg = make_cfg(*TINY, "trainer.epochs=4", "schedule=increase_bs", "schedule.batch_size=16",
                   "schedule.milestones=[1,2,3]", "schedule.factor=2", "tracking.sweep_id=counters")
    final = train(cfg)
    client = client_for(shared_store)
    run = only_run(shared_store, "counters")
    for name in schema.EPOCH_METRICS:
        assert [s for s, _ in history(client, run.info.run_id, name)] == [0, 1, 2, 3], name
    n_train = 1437
    sizes = [v for _, v in history(client, run.info.run_id, schema.BATCH_SIZE)]
    assert sizes == [16, 32, 64, 128]
    updates = [v for _, v in history(client, run.info.run_id, schema.PARAM_UPDATES)]
    # last_batch=carry (the default): 1437 // 16 = 89 steps, 13 left; (13 + 1437) // 32 = 45, 10
    # left; (10 + 1437) // 64 = 22, 39 left; (39 + 1437) // 128 = 11, 68 left
    assert updates == [89, 89 + 45, 89 + 45 + 22, 89 + 45 + 22 + 11]  # cumulative optimizer steps
    # the samples that went into them: every sample of each epoch but the leftover carried on
    assert [v for _, v in history(client, run.info.run_id, schema.SAMPLES_SEEN)] == [
        n_train - 13, 2 * n_train - 10, 3 * n_train - 39, 4 * n_train - 68]
    assert final[schema.TOTAL_PARAM_UPDATES] == updates[-1]
    wall = [v for _, v in history(client, run.info.run_id, schema.WALL_TIME_S)]
    assert all(b > a for a, b in zip(wall, wall[1:]))
    for name in schema.FINAL_METRICS:
        assert name in run.data.metrics
    assert run.data.tags[schema.SCHEDULE_TAG] == "increase_bs" and run.data.tags[schema.SEED_TAG] == "0"
    assert run.data.params["schedule.factor"] == "2"
    config_yaml = client.download_artifacts(run.info.run_id, schema.CONFIG_ARTIFACT)
    assert "increase_bs" in open(config_yaml).read()


def test_loop_makes_the_planned_whole_batch_count(make_cfg):
    for last_batch in ("carry", "keep", "drop"):
        cfg = make_cfg(*TINY, "trainer.epochs=5", "schedule=increase_bs", f"trainer.last_batch={last_batch}",
                       f"tracking.sweep_id=planned-{last_batch}")
        final = train(cfg)
        schedule = make_schedule(cfg, n_train=1437)
        assert final[schema.TOTAL_PARAM_UPDATES] == planned_updates(schedule, 1437, 5, last_batch)


def test_same_seed_same_numbers(make_cfg, shared_store):
    client = client_for(shared_store)
    curves = []
    for repeat in range(2):
        # resume=false: the second run would otherwise be skipped as already FINISHED
        train(make_cfg(*TINY, "schedule=hybrid", "trainer.resume=false", f"tracking.sweep_id=same-seed-{repeat}"))
        run_id = only_run(shared_store, f"same-seed-{repeat}").info.run_id
        curves.append({n: history(client, run_id, n) for n in schema.EPOCH_METRICS if n != schema.WALL_TIME_S})
    assert curves[0] == curves[1]
    train(make_cfg(*TINY, "schedule=hybrid", "trainer.seed=1", "tracking.sweep_id=other-seed"))
    run_id = only_run(shared_store, "other-seed").info.run_id
    assert history(client, run_id, schema.TRAIN_LOSS) != curves[0][schema.TRAIN_LOSS]


def test_a_split_batch_makes_one_update_with_the_unsplit_gradient():
    """Micro-batches of 64 accumulate into the gradient of the whole batch of 256: one update,
    parameters equal to float32 rounding (atol 1e-6; an MLP without dropout or batch norm)."""
    import copy

    import torch

    from src.batching import BatchStream
    from src.data import load_digits
    from src.models import MLP
    from src.step import Learner, Precision, StepSettings, train_epoch

    torch.manual_seed(0)
    data = load_digits(n_val=180, n_test=180, split_seed=0)
    whole = MLP((64,), 10, hidden=[32, 32], dropout=0.0, dropout_after=[], init="torch")
    split = copy.deepcopy(whole)
    before = [p.detach().clone() for p in whole.parameters()]
    precision = Precision(torch.device("cpu"), bf16=False, channels_last=False)
    results = []
    for model, micro in ((whole, None), (split, 64)):
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # lr 1: parameters move by the gradient
        order = torch.randperm(256, generator=torch.Generator().manual_seed(1))
        settings = StepSettings(micro_batch_size=micro, precision=precision)
        learner = Learner(model, optimizer, data, BatchStream("keep"), torch.Generator(), settings, noise=None)
        results.append(train_epoch(learner, order, batch_size=256))
    assert results[0][1:] == results[1][1:] == (1, 256)  # one update, 256 samples, either way
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-6)  # the same mean loss
    moved = [p.detach() for p in whole.parameters()]
    for a, b in zip(moved, split.parameters()):
        assert torch.allclose(a, b.detach(), atol=1e-6)
    assert not torch.allclose(moved[0], before[0])  # the step did move them
