"""One run trained by two processes under torchrun (DDP, gloo on CPU) against one process."""

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.configs import ROOT, TINY
from helpers.store import runs_in

from src import schema
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

    [one] = runs_in(tmp_path / "one")
    runs = runs_in(tmp_path / "two")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # rank 0 alone logged
    one, two = one.data.metrics, runs[0].data.metrics
    assert two[schema.TOTAL_PARAM_UPDATES] == one[schema.TOTAL_PARAM_UPDATES]  # steps, not steps x ranks
    # Tolerance: the gradients are the same sums in another order (float32): 1e-4 relative on
    # the final validation loss, and the accuracy within one validation sample (1/360).
    assert two[schema.FINAL_VAL_LOSS] == pytest.approx(one[schema.FINAL_VAL_LOSS], rel=1e-4)
    assert abs(two[schema.FINAL_VAL_ACC] - one[schema.FINAL_VAL_ACC]) <= 1 / 360 + 1e-9
