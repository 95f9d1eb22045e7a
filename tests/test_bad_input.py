"""Bad input on the command line: one line naming the key, exit status 2, nothing logged."""

import subprocess
import sys

import pytest
from helpers.configs import ROOT, TINY
from helpers.store import runs_in

# (override, key the message must name). TINY runs 3 epochs on 1,437 training samples.
BAD_INPUTS = [
    ("schedule=foo", "schedule=foo"),
    ("trainer.epoch=5", "trainer.epoch"),
    ("+trainer.epoch=5", "trainer.epoch"),
    ("+model.hiddn=[4]", "model.hiddn"),
    ("trainer.epochs=abc", "trainer.epochs"),
    ("schedule.lr=fast", "schedule.lr"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("schedule.factor=1", "schedule.factor"),
    ("schedule.factor=0.5", "schedule.factor"),
    ("schedule.milestones=[2,1]", "schedule.milestones"),
    ("schedule.milestones=[1,5]", "schedule.milestones"),
    ("schedule.milestones=[0.5,2]", "schedule.milestones"),
    ("schedule.batch_size=5000", "schedule.batch_size"),
    ("schedule.lr=0", "schedule.lr"),
    ("schedule.lr=-0.1", "schedule.lr"),
    ("optimizer.momentum=1.0", "optimizer.momentum"),
    ("optimizer.momentum=-0.1", "optimizer.momentum"),
    ("trainer.last_batch=half", "trainer.last_batch"),
    ("model.init=he", "model.init"),
    ("trainer.device=tpu", "trainer.device"),
    ("trainer.epochs=[1", "trainer.epochs"),
    ("~optimizer.lr_scale", "optimizer.lr_scale"),
    # the structured configs of the plain groups (src/config.py), checked while Hydra composes
    ("trainer.resume=maybe", "trainer.resume"),
    ("trainer.epochs=null", "trainer.epochs"),
    ("~trainer.epochs", "trainer.epochs"),
    ("+paths.cache=x", "paths.cache"),
    ("tracking.log_weights=maybe", "tracking.log_weights"),
    ("tracking.progress.refresh_s=0", "tracking.progress.refresh_s"),
    # the signature of a built group: every problem at once
    ("~model.hidden", "model.hidden"),
]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory, data_dir):
    """Every bad input run as its own `python -m src.run`, four at a time (each takes ~1 s)."""
    results, running = {}, []
    for number, (override, _) in enumerate(BAD_INPUTS):
        output_dir = tmp_path_factory.mktemp(f"bad{number}")
        command = [sys.executable, "-m", "src.run", *TINY, override,
                   f"paths.output_dir={output_dir}", f"paths.data_dir={data_dir}"]
        running.append((override, output_dir, subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if len(running) == 4 or number == len(BAD_INPUTS) - 1:
            for name, out, process in running:
                _, stderr = process.communicate(timeout=120)
                results[name] = (process.returncode, stderr, out)
            running = []
    return results


@pytest.mark.parametrize("override,key", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_fast_with_one_line(bad_input_results, override, key):
    returncode, stderr, output_dir = bad_input_results[override]
    assert returncode == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert runs_in(output_dir) == []


def test_every_signature_problem_is_named_at_once(make_cfg):
    from src.config import validate
    from src.errors import ConfigError

    cfg = make_cfg(*TINY, "+model.hiddn=[4]", "~model.dropout", "+schedule.n_train=5", "+dataset.colour=1")
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    message = str(error.value)
    assert "\n" not in message
    for problem in ("model.hiddn: unknown key", "model.dropout: missing", "schedule.n_train: unknown key",
                    "dataset.colour: unknown key"):
        assert problem in message, message
