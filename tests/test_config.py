"""What validation refuses, in-process: a table of bad configs, each composed by Hydra as
`python -m src.run` would and checked as the command checks it, each refused with one line that
names the key and the exit status 2. (tests/test_bad_input.py runs a few of them end to end.)"""

import pytest
from omegaconf import OmegaConf
from helpers.configs import DIGITS_N_TEST, DIGITS_N_TRAIN, DIGITS_N_VAL, TINY, compose_config

from src.config import validate, validate_against_data
from src.cli import one_line_error
from src.errors import ConfigError

# (override, key the message must name). TINY runs 3 epochs on digits' 1,437 training samples.
BAD_CONFIGS = [
    # composition: unknown options and keys, types of the structured configs (src/config.py)
    ("schedule=foo", "schedule=foo"),
    ("trainer.epoch=5", "trainer.epoch"),
    ("+trainer.epoch=5", "trainer.epoch"),
    ("+paths.cache=x", "paths.cache"),
    ("trainer.epochs=abc", "trainer.epochs"),
    ("trainer.resume=maybe", "trainer.resume"),
    ("tracking.log_weights=maybe", "tracking.log_weights"),
    ("trainer.epochs=null", "trainer.epochs"),
    ("~trainer.epochs", "trainer.epochs"),
    ("trainer.epochs=[1", "trainer.epochs"),
    # the signature of a built group
    ("+model.hiddn=[4]", "model.hiddn"),
    ("~model.hidden", "model.hidden"),
    ("schedule.lr=fast", "schedule.lr"),
    ("~optimizer.lr_scale", "optimizer.lr_scale"),
    # ranges
    ("trainer.epochs=0", "trainer.epochs"),
    ("schedule.factor=1", "schedule.factor"),
    ("schedule.factor=0.5", "schedule.factor"),
    ("schedule.milestones=[2,1]", "schedule.milestones"),
    ("schedule.milestones=[1,5]", "schedule.milestones"),
    ("schedule.milestones=[0.5,2]", "schedule.milestones"),
    ("schedule.lr=0", "schedule.lr"),
    ("schedule.lr=-0.1", "schedule.lr"),
    ("optimizer.momentum=1.0", "optimizer.momentum"),
    ("optimizer.momentum=-0.1", "optimizer.momentum"),
    ("trainer.last_batch=half", "trainer.last_batch"),
    ("model.init=he", "model.init"),
    ("trainer.device=tpu", "trainer.device"),
    ("trainer.seed=-1", "trainer.seed"),
    ("trainer.seed=4294967296", "trainer.seed"),  # 2**32: numpy refuses it
    ("tracking.progress.refresh_s=0", "tracking.progress.refresh_s"),
    ("+tracking.progress.every_s=1", "tracking.progress.every_s: unknown key; tracking.progress has: after_s"),
    # infinite and nan numbers, wherever they are
    ("schedule.factor=inf", "schedule.factor"),
    ("schedule.lr=inf", "schedule.lr"),
    ("schedule.lr=nan", "schedule.lr"),
    ("optimizer.weight_decay=inf", "optimizer.weight_decay"),
    ("model.dropout=nan", "model.dropout"),
    ("trainer.gns_memory_epochs=-inf", "trainer.gns_memory_epochs"),
    ("schedule.milestones=[1,inf]", "schedule.milestones[1]"),
    ("+schedule.lr_boost=inf", "schedule.lr_boost"),  # a key StepSchedule.for_run takes, unset in decay_lr
    # what MLflow refuses that needs no store to see
    ("tracking.experiment=", "tracking.experiment"),
    ("tracking.uri=' '", "tracking.uri"),
    # known once the data are loaded (validate_against_data), still before any run exists
    ("schedule.batch_size=5000", "schedule.batch_size"),
    ("schedule.max_batch_size=2000", "schedule.max_batch_size"),
]


def refusal(*overrides: str) -> tuple[str, int] | None:
    """(the one line, the exit status) with which `python -m src.run <TINY> <overrides>` refuses
    its config before building anything; None when it accepts it."""
    try:
        cfg = compose_config(*TINY, *overrides)
        validate(cfg)
        validate_against_data(cfg, DIGITS_N_TRAIN, DIGITS_N_VAL, DIGITS_N_TEST)
    except Exception as error:
        return one_line_error(error)
    return None


@pytest.mark.parametrize("override,key", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_a_bad_config_is_one_line_naming_its_key(override, key):
    told = refusal(override)
    assert told is not None, f"{override} was accepted"
    message, code = told
    assert code == 2 and "\n" not in message, message
    assert key in message, message


def test_the_defaults_and_the_edges_of_each_range_are_accepted():
    assert refusal() is None
    for edge in ("trainer.seed=0", "trainer.seed=4294967295", "schedule.factor=1.01", "optimizer.momentum=0",
                 "schedule.batch_size=1437", "tracking.experiment=x"):
        assert refusal(edge) is None, edge


def test_the_debiased_momentum_refuses_what_its_correction_does_not_assume():
    """optimizer=momentum_debiased (src/optim.py) corrects heavy-ball momentum's buffer only: a
    Nesterov or dampening key is refused in one line naming it, as a bad momentum is."""
    assert refusal("optimizer=momentum_debiased") is None
    for override, key in (("+optimizer.nesterov=true", "optimizer.nesterov"),
                          ("+optimizer.dampening=0.1", "optimizer.dampening"),
                          ("optimizer.momentum=1.0", "optimizer.momentum=1.0")):
        message, code = refusal("optimizer=momentum_debiased", override)
        assert code == 2 and "\n" not in message and message.startswith(key), message
    message, _ = refusal("optimizer=momentum_debiased", "+optimizer.nesterov=true")
    assert message.endswith("src.optim.DebiasedMomentumSGD takes: momentum, weight_decay, lr_scale"), message


def test_micro_batches_are_refused_with_plain_batch_norm_only():
    message, code = refusal("model=cnn1d", "model.batch_norm=true", "trainer.micro_batch_size=8")
    assert code == 2 and message.startswith("trainer.micro_batch_size=8: not with model.batch_norm=true"), message
    assert refusal("model=cnn1d", "model.batch_norm=true") is None
    assert refusal("model=cnn1d", "trainer.micro_batch_size=8") is None
    # ghost batch norm: its ghost batches lie whole within a micro-batch that is a multiple of them
    ghost = ("model=cnn1d", "model.batch_norm=true", "+model.ghost_batch_size=4")
    assert refusal(*ghost, "trainer.micro_batch_size=8") is None
    message, code = refusal(*ghost, "trainer.micro_batch_size=6")
    assert code == 2 and message.startswith("trainer.micro_batch_size=6: must be a multiple of"), message


def test_a_config_built_by_hand_names_a_nested_keys_whole_path_and_value():
    cfg = OmegaConf.create(OmegaConf.to_container(compose_config(*TINY)))  # no structured types left
    cfg.tracking.progress.after_s = "soon"
    with pytest.raises(ConfigError, match=r"^tracking\.progress\.after_s='soon': "):
        validate(cfg)


def test_every_signature_problem_is_named_at_once():
    cfg = compose_config(*TINY, "+model.hiddn=[4]", "~model.dropout", "+schedule.n_train=5", "+dataset.colour=1")
    with pytest.raises(ConfigError) as error:
        validate(cfg)
    message = str(error.value)
    assert "\n" not in message
    for problem in ("model.hiddn: unknown key", "model.dropout: missing", "schedule.n_train: unknown key",
                    "dataset.colour: unknown key"):
        assert problem in message, message
