"""Bad input on the command line: one line naming the key, exit status 2, nothing logged."""

import subprocess
import sys

import pytest
from helpers.configs import ROOT, TINY
from helpers.store import runs_in

# (override, key the message must name): one of each path a bad input takes to the one line;
# tests/test_config.py holds the whole table, checked in-process.
BAD_INPUTS = [
    ("schedule=foo", "schedule=foo"),  # an unknown option, refused while Hydra composes
    ("trainer.epoch=5", "trainer.epoch"),  # an unknown key
    ("trainer.epochs=[1", "trainer.epochs"),  # an override Hydra cannot parse
    ("schedule.factor=inf", "schedule.factor"),  # a range check in src/config.py
    ("schedule.batch_size=5000", "schedule.batch_size"),  # known once the data are loaded
]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory, data_dir):
    """Every bad input run as its own `python -m src.run`, all at once."""
    running = {}
    for number, (override, _) in enumerate(BAD_INPUTS):
        output_dir = tmp_path_factory.mktemp(f"bad{number}")
        command = [sys.executable, "-m", "src.run", *TINY, override,
                   f"paths.output_dir={output_dir}", f"paths.data_dir={data_dir}"]
        running[override] = output_dir, subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for override, (output_dir, process) in running.items():
        _, stderr = process.communicate(timeout=120)
        results[override] = (process.returncode, stderr, output_dir)
    return results


@pytest.mark.parametrize("override,key", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_fast_with_one_line(bad_input_results, override, key):
    returncode, stderr, output_dir = bad_input_results[override]
    assert returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert runs_in(output_dir) == []

