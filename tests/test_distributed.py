"""One run trained by two processes under torchrun (DDP, gloo on CPU) against one process."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, client_for, run_cli

from src.distributed import World, share

# Dropout off: with it, each rank draws its masks from its own generator, so the numbers would
# agree only statistically. Without it they agree to float summation order.
ARGS = [*TINY, "schedule=increase_bs", "schedule.batch_size=30", "model.dropout=0.0"]


def test_shares_cover_a_global_batch_once():
    index = list(range(31))  # 31 = 16 + 15: W does not divide B
    import torch

    shares = [share(torch.tensor(index), World(rank, 2)).tolist() for rank in range(2)]
    assert shares == [index[:16], index[16:]]
    assert share(torch.tensor(index), World()).tolist() == index


@pytest.mark.slow  # ~30 s: three processes
def test_torchrun_two_ranks_make_the_same_updates_as_one_process(tmp_path, data_dir):
    single = run_cli(*ARGS, output_dir=tmp_path / "one", data_dir=data_dir)
    assert single.returncode == 0, single.stderr[-2000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "src.run", *ARGS,
               f"paths.output_dir={tmp_path / 'two'}", f"paths.data_dir={data_dir}"]
    double = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]

    [one] = client_for(tmp_path / "one").search_runs(["1"])
    runs = client_for(tmp_path / "two").search_runs(["1"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 alone logged
    two = runs[0].data.metrics
    assert two["total_param_updates"] == one.data.metrics["total_param_updates"]  # steps, not steps x ranks
    # Tolerance: the gradients are the same sums in another order (float32): 1e-4 relative on
    # the final validation loss, and the accuracy within one validation sample (1/360).
    assert two["final_val_loss"] == pytest.approx(one.data.metrics["final_val_loss"], rel=1e-4)
    assert abs(two["final_val_acc"] - one.data.metrics["final_val_acc"]) <= 1 / 360 + 1e-9
