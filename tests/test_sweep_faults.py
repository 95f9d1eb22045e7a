"""What a sweep does when its settings are wrong or its processes die: one line, exit 2 for a
refusal with nothing written, and no run left RUNNING by a process that is gone. Real
`python -m src.run -m` sweeps (joblib's loky workers killed as an out-of-memory kill would),
real MLflow stores in tmp_path."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
from helpers.cli import run_cli
from helpers.configs import ROOT, TINY
from helpers.store import client_for, runs_in, sweep_runs_in
from hydra.core.override_parser.overrides_parser import OverridesParser

from hydra_plugins.study_sweeper.study_sweeper import _product
from src import schema
from src.processes import close_dead_runs
from src.stores import prepare_store


def told(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command ends with; no traceback before it."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args,line", [
    (["-m", "hydra.sweeper.max_batch_size=-1", "trainer.seed=0,1"], "error: hydra.sweeper.max_batch_size=-1: must be"),
    (["-m", "hydra.sweeper.max_batch_size=0", "trainer.seed=0,1"], "error: hydra.sweeper.max_batch_size=0: must be"),
    (["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0", "trainer.seed=0,1"],
     "error: hydra.launcher.n_jobs=0: n_jobs == 0"),
    (["-m", "hydra/launcher=joblib", "hydra.launcher.prefer=fast", "trainer.seed=0,1"],
     "error: hydra.launcher.prefer='fast': prefer=fast is not a valid backend hint"),
    (["-m", "schedule=null"], "error: schedule=null: a config group takes one of its options, not null; allowed: "),
    (["schedule=null"], "error: schedule=null: a config group takes one of its options, not null; allowed: "),
    (["-m", "hydra.sweeper.news_every_s=-1", "trainer.seed=0,1"], "error: hydra.sweeper.news_every_s=-1: must be"),
    (["-m", "trainer.seed=range(0,0)", "schedule.lr=0.1,0.2"],
     "error: trainer.seed=range(0,0): sweeps over no value, so the sweep would run no job"),
    (["-m", "trainer.seed=interval(0,1)"], "error: trainer.seed=interval(0,1): interval() needs a sweeper that samples"),
], ids=["batch-1", "batch0", "n_jobs0", "prefer", "null-group-multirun", "null-group-run", "news-1", "no-job",
        "interval"])
def test_bad_sweep_and_launcher_settings_are_refused_before_anything_is_written(tmp_path, data_dir, args, line):
    out = tmp_path / "out"
    result = run_cli(*args, *TINY, output_dir=out, data_dir=data_dir)
    assert result.returncode == 2, result.stderr[-3000:]
    assert told(result).startswith(line), told(result)
    assert not out.exists()  # no store, no multirun/ folder, no parent run


@pytest.mark.parametrize("multirun", [[], ["-m"]], ids=["run", "multirun"])
def test_a_yaml_syntax_error_in_an_edited_config_names_its_file_and_line(tmp_path, data_dir, multirun):
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    edited = conf / "schedule" / "decay_lr.yaml"
    lines = edited.read_text().splitlines()
    edited.write_text("\n".join([*lines, "lr: [0.1", "  oops: : x"]) + "\n")
    out = tmp_path / "out"
    result = run_cli(*multirun, "--config-path", str(conf), *TINY, output_dir=out, data_dir=data_dir)
    assert result.returncode == 2
    assert told(result).startswith(f"error: {edited}:{len(lines) + 2}:"), told(result)
    assert "not valid YAML" in told(result)
    assert not out.exists()


def test_a_store_path_that_is_a_folder_is_refused_in_seconds(tmp_path, data_dir):
    (tmp_path / "mlflow.db").mkdir()
    start = time.monotonic()
    result = run_cli(*TINY, output_dir=tmp_path, data_dir=data_dir)
    assert time.monotonic() - start < 30  # MLflow alone retried for ~107 s
    assert result.returncode == 2
    assert told(result) == (f"error: tracking.uri=sqlite:///{tmp_path}/mlflow.db: {tmp_path}/mlflow.db is a folder "
                            "(or another non-file), not an SQLite store; move it away or point tracking.uri elsewhere")


@pytest.mark.slow  # ~10 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_hydra_interpolations_validate_and_an_escaped_literal_reaches_the_run(tmp_path, data_dir):
    """${hydra:...} resolves in validation as in the job; \\${...} stays a literal through the
    sweeper's run-name override (it varies, so it is in the name) to the run's tag."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "src.run", "-m", "paths.output_dir=${hydra:runtime.cwd}/out",
         "+tracking.tags.job=${hydra:job.name}", "+tracking.tags.raw=\\${a},\\${b}", *TINY,
         f"paths.data_dir={data_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # tracking tags are not part of a run's identity: the second job finds the first FINISHED
    assert told(result).endswith("0 of 2 jobs failed (1 finished, 1 skipped)"), told(result)
    [run] = runs_in(tmp_path / "out")
    assert run.data.tags["raw"] == "${a}" and run.data.tags["job"] == "run"  # src/run.py's job name
    assert run.info.run_name == "decay_lr tracking.tags.raw=\\${a} seed=0"  # the override as typed


@pytest.mark.slow  # ~18 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_two_sweeps_given_one_sweep_dir_get_two_sweep_ids(tmp_path, data_dir):
    folder = tmp_path / "sweep"
    ids = []
    for schedule in ("decay_lr", "hybrid"):
        result = run_cli("-m", f"schedule={schedule}", f"hydra.sweep.dir={folder}", *TINY, output_dir=tmp_path,
                         data_dir=data_dir)
        assert result.returncode == 0, result.stderr[-3000:]
        [run] = [r for r in runs_in(tmp_path) if r.data.tags[schema.SCHEDULE_TAG] == schedule]
        ids.append(run.data.tags[schema.SWEEP_TAG])
    assert ids == ["sweep", "sweep-2"]
    assert sorted(r.data.tags[schema.SWEEP_TAG] for r in sweep_runs_in(tmp_path)) == ids


def test_a_long_validation_says_how_far_it_has_got(tmp_path, data_dir):
    """A 200-job sweep validates for ~30 s before its first job (or its refusal): it says how far it
    has got every hydra.sweeper.news_every_s seconds; 0 makes that a line per job."""
    result = run_cli("-m", "hydra.sweeper.news_every_s=0", "trainer.seed=0,1,2,-5", *TINY, output_dir=tmp_path,
                     data_dir=data_dir)  # the last job is the bad one
    assert result.returncode == 2
    assert told(result).startswith("error: job 3 (trainer.seed=-5"), told(result)
    news = [line for line in result.stderr.splitlines() if line.startswith("sweep: validated ")]
    assert news == [f"sweep: validated {k} of 4 jobs before starting any" for k in (1, 2, 3)], result.stderr
    assert not list(tmp_path.iterdir())


def test_the_product_of_the_overrides_is_the_basic_sweepers():
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the reference, in a test only

    overrides = OverridesParser.create().parse_overrides(
        ["a=1,2", "b=x", "c=range(0,3)", "+d=choice(p,q)", "a=3,4"])
    assert _product(overrides) == BasicSweeper.split_arguments(overrides, None)[0]
    assert len(_product(overrides)) == 2 * 3 * 2


# ---------------------------------------------------------------- runs left by dead processes


def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_runs_whose_process_is_gone_are_closed_and_the_others_left_alone(tmp_path):
    from helpers.configs import compose_config

    tracking = compose_config(f"paths.output_dir={tmp_path}").tracking
    experiment = prepare_store(tracking)
    client = client_for(tmp_path)
    host = socket.gethostname()
    made = {}
    for name, pid, where in [("dead", dead_pid(), host), ("alive", os.getppid(), host),
                             ("elsewhere", dead_pid(), "another-host"), ("untagged", None, None)]:
        tags = {} if pid is None else {schema.PID_TAG: str(pid), schema.HOST_TAG: where}
        made[name] = client.create_run(experiment, tags=tags).info.run_id
    assert close_dead_runs(client, experiment) == [made["dead"]]
    dead = client.get_run(made["dead"])
    assert dead.info.status == "KILLED" and "ended without closing it" in dead.data.tags[schema.ENDED_BY_TAG]
    for name in ("alive", "elsewhere", "untagged"):
        assert client.get_run(made[name]).info.status == "RUNNING", name


# ---------------------------------------------------------------- joblib workers and the sweep's process


def start_joblib_sweep(tmp_path: Path, data_dir: Path) -> tuple[subprocess.Popen, Path, list[int]]:
    """A 3-job joblib sweep, 2 workers, long enough to be killed in; returns it once both
    workers train (with its log file and the workers' pids)."""
    log = tmp_path / "sweep.log"
    command = [sys.executable, "-m", "src.run", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               "trainer.seed=0,1,2", "dataset=digits", "trainer.epochs=200", "schedule.milestones=[50,100]",
               "trainer.threads=1", f"paths.output_dir={tmp_path / 'out'}", f"paths.data_dir={data_dir}"]
    with log.open("w") as sink:
        sweep = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                 env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while log.read_text().count("epoch 2/200 ") < 2:
        assert sweep.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    children = Path(f"/proc/{sweep.pid}/task/{sweep.pid}/children").read_text().split()
    workers = [int(c) for c in children if b"popen_loky_posix" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(workers) == 2
    return sweep, log, workers


def gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
               for pid in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow  # ~30 s: a joblib sweep of two workers
def test_a_killed_worker_stops_the_sweep_in_one_line_with_no_run_left_running(tmp_path, data_dir):
    sweep, log, workers = start_joblib_sweep(tmp_path, data_dir)
    os.kill(workers[0], signal.SIGKILL)  # as the out-of-memory killer would
    assert sweep.wait(timeout=60) == 1
    output = log.read_text()
    assert "Traceback" not in output, output[-3000:]
    last = output.strip().splitlines()[-1]
    assert "stopped: a worker process died (exit codes {SIGKILL(-9)}): killed (kill -9) or out of memory" in last, last
    assert gone_within(workers, 10)
    runs = runs_in(tmp_path / "out")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}  # the third job never started
    [parent] = sweep_runs_in(tmp_path / "out")
    assert parent.info.status == "FAILED" and "a worker process died" in parent.data.tags[schema.RESULT_TAG]


@pytest.mark.slow  # ~30 s
def test_sigterm_to_a_sweep_stops_its_workers_and_closes_its_runs(tmp_path, data_dir):
    sweep, log, workers = start_joblib_sweep(tmp_path, data_dir)
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=60) == 128 + signal.SIGTERM
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("stopped: SIGTERM: sweep ") and "run the same command again to resume" in last, last
    assert gone_within(workers, 10)
    assert {r.info.status for r in runs_in(tmp_path / "out")} == {"KILLED"}
    [parent] = sweep_runs_in(tmp_path / "out")
    assert parent.info.status == "KILLED"


@pytest.mark.slow  # ~40 s
def test_a_sweep_killed_hard_stops_its_workers_and_the_next_run_closes_its_parent(tmp_path, data_dir):
    sweep, log, workers = start_joblib_sweep(tmp_path, data_dir)
    sweep.kill()  # SIGKILL: nothing of the sweep's process runs again
    sweep.wait(timeout=10)
    assert gone_within(workers, 15)  # orphaned workers trained on for minutes before
    assert {r.info.status for r in runs_in(tmp_path / "out")} == {"KILLED"}  # each closed its own run
    [parent] = sweep_runs_in(tmp_path / "out")
    assert parent.info.status == "RUNNING"  # no process left to close it ...
    result = run_cli(*TINY, output_dir=tmp_path / "out", data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    [parent] = sweep_runs_in(tmp_path / "out")  # ... until the next run of its experiment on this host
    assert parent.info.status == "KILLED" and str(sweep.pid) in parent.data.tags[schema.ENDED_BY_TAG]


@contextmanager
def locked(store: Path) -> Iterator[Callable[[], AbstractContextManager]]:
    """The store locked by another process, as SQLite sees a store whose every write fails."""
    import sqlite3

    @contextmanager
    def strike() -> Iterator[None]:
        lock = sqlite3.connect(store / "mlflow.db", isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            lock.execute("ROLLBACK")
            lock.close()

    yield strike


@contextmanager
def immutable(store: Path) -> Iterator[Callable[[], AbstractContextManager]]:
    """The store file and its folder made immutable (chattr +i: root, a filesystem that has it);
    tried on a scratch file first, so that a machine without it skips before the job starts."""
    probe = store.parent / "probe"
    probe.touch()
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not possible here (needs root and ext4 or the like)")
    subprocess.run(["chattr", "-i", str(probe)], check=True)

    @contextmanager
    def strike() -> Iterator[None]:
        paths = [str(store / "mlflow.db"), str(store)]
        subprocess.run(["chattr", "+i", *paths], check=True)
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *paths], check=True)

    yield strike


@contextmanager
def full(store: Path) -> Iterator[Callable[[], AbstractContextManager]]:
    """The store's own filesystem filled: a 64 MiB tmpfs (root) holding the store alone, filled
    to the last byte by another file mid-run, as a full disk fails every write of SQLite's."""
    store.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(store)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    @contextmanager
    def strike() -> Iterator[None]:
        filler = store / "filler"
        descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(descriptor, b"\0" * 2**16):
                pass
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(descriptor)
        try:
            yield
        finally:
            filler.unlink()

    try:
        yield strike
    finally:
        # lazily: this process's MLflow client, cached by MLflow, keeps the store open
        subprocess.run(["umount", "--lazy", str(store)], check=True)


@pytest.mark.slow  # ~60 s locked (a run waits out SQLite's busy timeout), ~15 s immutable or full
@pytest.mark.parametrize("fault,said", [
    (locked, "database is locked"),
    (immutable, "unable to open database file"),  # its journal cannot be created beside it
    (full, "database or disk is full"),
], ids=["locked", "immutable", "full"])
def test_a_store_that_fails_under_a_running_job_is_one_line_and_no_run_stays_running(tmp_path, data_dir, fault, said):
    """The store fails every write mid-run (its disk full, its file immutable or locked): one line
    naming the store, without SQL, the checkpoint kept; the run that could not be closed then is
    closed by the next run on this host."""
    out, store, log = tmp_path / "out", tmp_path / "store", tmp_path / "run.log"
    uri = f"sqlite:///{store}/mlflow.db"
    command = [sys.executable, "-m", "src.run", "dataset=digits", "trainer.epochs=200", "schedule.milestones=[50,100]",
               "trainer.threads=1", f"tracking.uri={uri}", f"paths.output_dir={out}", f"paths.data_dir={data_dir}"]
    with fault(store) as strike:
        with log.open("w") as sink:
            job = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            deadline = time.monotonic() + 120
            while "epoch 3/200 " not in log.read_text():
                assert job.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            with strike():
                assert job.wait(timeout=180) == 1
        finally:
            job.kill()  # a failed assertion leaves no job training on
            job.wait()
        output = log.read_text()
        assert "[SQL:" not in output and "Traceback" not in output and "autoflush" not in output, output[-3000:]
        assert output.count("could not close MLflow run") == 1, output[-3000:]  # told once
        last = output.strip().splitlines()[-1]
        assert last == f"error: the MLflow store {uri} failed: MlflowException: (sqlite3.OperationalError) {said}", last
        assert list((out / "checkpoints").glob("*.pt"))  # kept, to resume from
        assert run_cli(*TINY, f"tracking.uri={uri}", output_dir=out, data_dir=data_dir).returncode == 0
        assert "RUNNING" not in {r.info.status for r in runs_in(store)}


def test_a_store_that_fails_under_a_sweeps_parent_run_is_named(tmp_path):
    """The parent run closed on a store that fails every write (as once its disk is full): one line
    naming the store, as a job's run gets (it said only 'the MLflow store failed')."""
    from helpers.configs import compose_config

    from src.cli import one_line_error
    from src.errors import StoreFailed
    from src.sweep_record import end_sweep, start_sweep

    store = tmp_path / "store"
    tracking = compose_config(f"paths.output_dir={store}").tracking
    parent, *_ = start_sweep(tracking, "sweep", "trainer.seed=0,1 (2 jobs)", 2, "python -m src.run -m")
    with immutable(store) as strike, strike(), pytest.raises(StoreFailed) as raised:
        end_sweep(tracking, parent, "FINISHED", "sweep sweep: 0 of 2 jobs failed (2 finished)")
    line, code = one_line_error(raised.value)
    assert line.startswith(f"the MLflow store sqlite:///{store}/mlflow.db failed: MlflowException: "
                           "(sqlite3.OperationalError) "), line
    assert "[SQL:" not in line and code == 1
    assert client_for(store).get_run(parent).info.status == "RUNNING"  # closed by the next run on this host
