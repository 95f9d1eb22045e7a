"""Whatever can go wrong where a store, a folder, a device or a model is opened: one line naming
the key, exit status 2, nothing logged. In-process on real MLflow stores, folders and models;
end to end through `python -m src.run` for a few. (Bad values validation sees:
tests/test_config.py; what must not lose work: tests/test_resume.py.)"""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.cli import run_cli
from helpers.configs import ROOT, TINY, compose_config
from helpers.store import client_for, runs_in
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from src import schema
from src.devices import pick_device
from src.errors import ConfigError
from src.files import check_folder
from src.stores import prepare_store
from src.train import train


def free_port() -> int:
    """A port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tracking(tmp_path: Path, **keys: str):
    """The tracking group as conf/ composes it for a store in tmp_path (experiment "study"), with `keys` set."""
    cfg = compose_config(f"paths.output_dir={tmp_path}")
    OmegaConf.resolve(cfg)
    for key, value in {"experiment": "study", **keys}.items():
        cfg.tracking[key] = value
    return cfg.tracking


def refused(tracking_cfg) -> tuple[str, float]:
    """The one line prepare_store refuses the store with, and the seconds it took."""
    start = time.monotonic()
    with pytest.raises(ConfigError) as error:
        prepare_store(tracking_cfg)
    return str(error.value), time.monotonic() - start


# --- the tracking store ---------------------------------------------------------------------------

def test_a_uri_mlflow_cannot_use(tmp_path):
    message, _ = refused(tracking(tmp_path, uri="foo://bar"))
    assert message.startswith("tracking.uri=foo://bar: MLflow cannot open this store") and "sqlite" in message


def test_a_sqlite_store_whose_folder_cannot_be_created(tmp_path):
    (tmp_path / "a_file").write_text("")
    uri = f"sqlite:///{tmp_path}/a_file/sub/mlflow.db"
    message, _ = refused(tracking(tmp_path, uri=uri))
    assert message.startswith(f"tracking.uri={uri}: cannot create the folder {tmp_path}/a_file/sub"), message


def test_a_store_file_that_is_not_a_database_is_left_alone(tmp_path):
    (tmp_path / "mlflow.db").write_text("my notes, not a database")
    message, _ = refused(tracking(tmp_path))
    assert message.startswith(f"tracking.uri=sqlite:///{tmp_path}/mlflow.db: MLflow cannot open this store"), message
    assert "not a database" in message
    assert (tmp_path / "mlflow.db").read_text() == "my notes, not a database"


def test_an_experiment_name_mlflow_refuses_creates_no_experiment(tmp_path):
    message, _ = refused(tracking(tmp_path, experiment="x" * 501))
    assert message.startswith("tracking.experiment='xxx") and "(501 characters): MLflow refuses this name" in message
    assert [e.name for e in MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_experiments()] == ["Default"]


def test_a_deleted_experiment_says_how_to_restore_it(tmp_path):
    cfg = tracking(tmp_path)
    experiment_id = prepare_store(cfg)
    MlflowClient(cfg.uri).delete_experiment(experiment_id)
    message, _ = refused(cfg)
    assert message.startswith("tracking.experiment='study': deleted in") and f"restore -x {experiment_id}" in message


def test_an_artifact_root_that_cannot_be_created(tmp_path):
    (tmp_path / "a_file").write_text("")
    message, _ = refused(tracking(tmp_path, artifact_root=str(tmp_path / "a_file" / "art")))
    assert message.startswith("tracking.artifact_root="), message


def test_a_server_nothing_listens_on_fails_within_seconds_saying_how_to_start_one(tmp_path):
    port = free_port()
    message, seconds = refused(tracking(tmp_path, uri=f"http://127.0.0.1:{port}"))
    assert seconds < 15, seconds  # MLflow's own retries: ~4.5 minutes
    assert message.startswith(f"tracking.uri=http://127.0.0.1:{port}: no MLflow server answers there"), message
    assert f"mlflow server --host 127.0.0.1 --port {port}" in message


@pytest.mark.slow  # ~6 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_a_server_that_never_answers_fails_within_seconds(tmp_path):
    """A port that accepts connections but never replies (a hung server, a firewall's black
    hole): MLflow would wait 120 s per try."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        port = hung.getsockname()[1]
        message, seconds = refused(tracking(tmp_path, uri=f"http://127.0.0.1:{port}"))
    assert seconds < 15, seconds
    assert "no MLflow server answers there (timed out)" in message, message


# --- folders, devices, models -----------------------------------------------------------------------

def test_a_folder_that_cannot_be_created_or_written(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=rf"^paths.output_dir={tmp_path}/a_file/out: cannot create the folder"):
        check_folder("paths.output_dir", tmp_path / "a_file" / "out")
    check_folder("paths.data_dir", "/sys", writable=False)  # exists: enough for data that are only read
    if Path("/sys").is_dir():  # Linux's sysfs: no file can be created in it, not even by root
        with pytest.raises(ConfigError, match=r"^paths.output_dir=/sys: cannot write in the folder /sys"):
            check_folder("paths.output_dir", "/sys")


def test_a_device_this_machine_does_not_have():
    absent = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or the first of none
    with pytest.raises(ConfigError, match=rf"^trainer.device={absent}: "):
        pick_device(absent)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^trainer.device=cuda: .*use trainer.device=auto"):
            pick_device("cuda")
        assert pick_device("auto") == torch.device("cpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match=r"^trainer.device=mps: MPS is not available here"):
            pick_device("mps")


@pytest.mark.parametrize("overrides,start,words", [
    (["model=wrn", "model.depth=10", "model.width=1"], "model._target_=src.models.WideResNet: ",
     "cannot take dataset._target_=src.data.load_digits's inputs of shape (64,)"),
    (["model=wrn", "model.depth=11"], "model._target_=src.models.WideResNet: ", "depth=11: must be 6n + 4"),
    (["model=cnn1d", "dataset=cifar10", "dataset.n_val=200"], "model._target_=src.models.CNN1d: ",
     "inputs of shape (3, 32, 32)"),
    (["optimizer=adam", "optimizer.betas=[2,3]"], "optimizer._target_=torch.optim.Adam: cannot be built: ",
     "Invalid beta parameter"),
    (["dataset.n_val=-1"], "dataset.n_val=-1, dataset.n_test=180, dataset.split_seed=0: gives ",
     "0 validation and 180 test samples"),
    (["dataset.n_val=99999"], "dataset.n_val=99999, dataset.n_test=180, dataset.split_seed=0: gives 0 training",
     "each must be >= 1"),
    (["dataset.n_test=0"], "dataset.n_val=180, dataset.n_test=0, dataset.split_seed=0: gives ", "and 0 test samples"),
    (["dataset=mnist1d", "dataset.n_samples=5", "dataset.n_val=2"], "dataset._target_=src.data.load_mnist1d: "
     "cannot make its data: ", "ValueError"),
], ids=["wrn on flat inputs", "wrn of a depth it cannot have", "cnn1d on images", "adam's betas",
        "a negative validation set", "a validation set larger than the data", "no test set",
        "mnist1d of 5 samples"])
def test_a_group_that_cannot_be_built_for_the_data_is_refused_before_any_run(make_cfg, tmp_path, overrides,
                                                                             start, words):
    """Values only a group's constructor, or the data, can refuse: one line naming the group (or
    its keys), from the constructor's own words, and no MLflow run."""
    cfg = make_cfg(*TINY, *overrides, output_dir=tmp_path)
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert str(error.value).startswith(start) and words in str(error.value), str(error.value)
    assert runs_in(tmp_path) == []


def test_an_unreadable_data_cache_is_generated_again(tmp_path, caplog):
    from src.data import load_mnist1d

    fresh = load_mnist1d(n_samples=2000, n_val=500, n_test=500, generator_seed=42, cache_dir=str(tmp_path))
    [cache] = tmp_path.glob("mnist1d_*.npz")
    cache.write_bytes(b"cut short")
    again = load_mnist1d(n_samples=2000, n_val=500, n_test=500, generator_seed=42, cache_dir=str(tmp_path))
    assert "unreadable" in caplog.text
    assert torch.equal(again.x_train, fresh.x_train) and torch.equal(again.y_val, fresh.y_val)
    caplog.clear()
    load_mnist1d(n_samples=2000, n_val=500, n_test=500, generator_seed=42, cache_dir=str(tmp_path))
    assert "unreadable" not in caplog.text  # replaced by a whole file


# --- end to end: one line, exit 2, nothing written --------------------------------------------------

def stderr_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_cli_a_server_nothing_listens_on(tmp_path, data_dir):
    port = free_port()
    start = time.monotonic()
    result = run_cli(*TINY, f"tracking.uri=http://127.0.0.1:{port}", output_dir=tmp_path, data_dir=data_dir)
    assert time.monotonic() - start < 15
    assert result.returncode == 2
    [line] = stderr_lines(result)
    assert line.startswith(f"error: tracking.uri=http://127.0.0.1:{port}: no MLflow server answers there"), line
    assert f"mlflow server --host 127.0.0.1 --port {port}" in line
    assert result.stdout == ""  # nor the retries logged on the way
    assert not list(tmp_path.iterdir())  # not even Hydra's run folder


def test_cli_a_sweep_checks_every_store_before_any_job(tmp_path, data_dir):
    port = free_port()
    result = run_cli("-m", "schedule=decay_lr,increase_bs", *TINY, f"tracking.uri=http://127.0.0.1:{port}",
                     output_dir=tmp_path, data_dir=data_dir)
    assert result.returncode == 2
    [line] = stderr_lines(result)
    assert line.startswith("error: job 0 (schedule=decay_lr "), line
    assert f"): tracking.uri=http://127.0.0.1:{port}: no MLflow server answers there" in line
    assert not list(tmp_path.iterdir())  # no sweep folder


def test_cli_the_figures_open_the_store_the_same_way(tmp_path):
    port = free_port()
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "src.figures", f"--tracking-uri=http://127.0.0.1:{port}",
                             f"--output-dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 15
    assert result.returncode == 2
    [line] = stderr_lines(result)
    assert line.startswith(f"error: --tracking-uri=http://127.0.0.1:{port}: no MLflow server answers there"), line


def test_cli_an_output_folder_that_cannot_be_created(tmp_path, data_dir):
    (tmp_path / "a_file").write_text("")
    result = run_cli(*TINY, output_dir=tmp_path / "a_file" / "out", data_dir=data_dir)
    assert result.returncode == 2
    assert stderr_lines(result) == [f"error: paths.output_dir={tmp_path}/a_file/out: cannot create the folder "
                                    f"{tmp_path}/a_file/out (Not a directory)"]


# Long enough to be stopped mid-way: 40 epochs of 90 steps on digits.
STOPPABLE = ["dataset=digits", "trainer.epochs=40", "schedule.batch_size=16", "schedule.milestones=[]",
             "trainer.threads=1"]


def stop_after_the_first_checkpoint(output_dir: Path, data_dir: Path, signum: int) -> tuple[int, str]:
    """A real `python -m src.run` sent `signum` once its first checkpoint is written: (exit status, stderr)."""
    command = [sys.executable, "-m", "src.run", *STOPPABLE, f"paths.output_dir={output_dir}",
               f"paths.data_dir={data_dir}"]
    # A shell that starts a job in the background (CI's runner may) sets SIGINT to ignored, and a
    # child inherits that, so Python would never see Ctrl-C: the run gets the default back, as a
    # program started from a terminal has it.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    checkpoints = output_dir / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints.exists() and any(checkpoints.glob("*.pt"))):
        time.sleep(0.05)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


@pytest.mark.slow  # ~7 s each, a real run: tests/test_signals.py holds the signal logic in the default suite
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_is_one_line_naming_the_killed_run_and_its_checkpoint(tmp_path, data_dir, signum):
    """SIGTERM (kill, SLURM preemption) or Ctrl-C once the first checkpoint is written: one line
    saying which run was KILLED, where its checkpoint is and how to resume."""
    returncode, stderr = stop_after_the_first_checkpoint(tmp_path, data_dir, signum)
    assert returncode == 128 + signum
    [killed] = runs_in(tmp_path)
    assert killed.info.status == "KILLED"
    [checkpoint] = (tmp_path / "checkpoints").glob("*.pt")
    [line] = [line for line in stderr.splitlines() if line.strip()]
    assert line.startswith(f"stopped: {signal.Signals(signum).name}: [decay_lr seed=0] MLflow run "
                           f"{killed.info.run_id} KILLED after "), line
    assert line.endswith(f"of 40 epochs; checkpoint {checkpoint}; run the same command again to resume"), line


@pytest.mark.slow
def test_the_same_command_resumes_a_run_sigterm_killed(tmp_path, data_dir):
    returncode, _ = stop_after_the_first_checkpoint(tmp_path, data_dir, signal.SIGTERM)
    assert returncode == 128 + signal.SIGTERM
    [killed] = runs_in(tmp_path)
    resumed = run_cli(*STOPPABLE, output_dir=tmp_path, data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming MLflow run {killed.info.run_id}" in resumed.stdout
    [run] = runs_in(tmp_path)
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    steps = [m.step for m in client_for(tmp_path).get_metric_history(run.info.run_id, schema.VAL_LOSS)]
    assert sorted(steps) == list(range(40))  # each epoch once
