"""The paper's claim on the real default study (slow: two 20-epoch MNIST-1D runs, ~1 minute)."""

import pytest
from conftest import client_for

from src.train import train


@pytest.mark.slow
def test_increase_bs_matches_decay_lr_with_fewer_updates(make_cfg, tmp_path):
    finals = {}
    for schedule in ("decay_lr", "increase_bs"):
        cfg = make_cfg(f"schedule={schedule}", "tracking.sweep_id=claim", output_dir=tmp_path)
        finals[schedule] = train(cfg)
    decay, grow = finals["decay_lr"], finals["increase_bs"]
    assert decay["total_param_updates"] == 20 * 20000 // 64 == 6250  # last_batch=carry: every step 64 samples
    assert grow["total_param_updates"] < 0.4 * decay["total_param_updates"]
    assert decay["final_val_acc"] > 0.8  # it learned (the prototype measured ~85%)
    assert abs(grow["final_val_acc"] - decay["final_val_acc"]) < 0.015
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name("batch-size-study").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"} and len(runs) == 2
