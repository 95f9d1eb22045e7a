"""What a real sweep leaves in MLflow, read back from a real store: the experiment's kind and
description, one parent run with the jobs as child runs, MLflow's context tags, the dataset
input, run names that tell the jobs apart, the option tags, samples/s per epoch, the final model
as a LoggedModel (and src.evaluate on it, by run and by model); then src.figures logging to the
parent and adding no run. Plus the console: the start line, job k of n, plain progress lines and
Hydra's full log prefix when piped; in place and the time of day only on a terminal."""

from __future__ import annotations

import getpass
import json
import os
import pty
import re
import shlex
import shutil
import subprocess
import sys
from urllib.parse import unquote, urlsplit

import pytest
import torch
from helpers.cli import only_sweep_folder, run_cli
from helpers.configs import ROOT, TINY
from mlflow.models import Model as Mlmodel
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from helpers.store import all_runs_in, client_for, history, runs_in, sweep_runs_in

from src import figures, schema
from src.build import build_run
from src.config import compose, validate
from src.data import load_digits
from src.evaluate import evaluate_run
from src.evaluate import main as evaluate_main
from src.errors import ConfigError
from src.progress import CLEAR_LINE
from src.stores import EXPERIMENT_KIND_TAG, MODEL_TRAINING
from src.train import train

SMOKE = "smoke"  # the experiment the smoke preset logs to
# The smoke preset over two optimizers: two jobs that differ in one override; within-epoch
# progress from the first step, a plain line every 1 ms (the console is a pipe here).
SWEEP = ["-m", "experiment=smoke", "optimizer=momentum,nesterov", "schedule=decay_lr", "trainer.threads=1",
         "+tracking.tags.idea=smoke-test", "tracking.note=why this sweep ran",
         "tracking.progress.after_s=0", "tracking.progress.log_every_s=0.001"]
NAMES = {"decay_lr optimizer=momentum seed=0", "decay_lr optimizer=nesterov seed=0"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir, blank_store):
    """(store folder, the CompletedProcess, the parent run, the two training runs)."""
    store = tmp_path_factory.mktemp("record")
    shutil.copy(blank_store, store / "mlflow.db")
    result = run_cli(*SWEEP, output_dir=store, data_dir=data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    [parent] = sweep_runs_in(store, SMOKE)
    return store, result, parent, runs_in(store, experiment=SMOKE)


def test_the_experiment_opens_as_model_training_with_a_description(sweep):
    store, *_ = sweep
    experiment = client_for(store).get_experiment_by_name(SMOKE)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING == "custom_model_development"
    assert "increase the batch size" in experiment.tags["mlflow.note.content"]


def test_one_parent_run_with_the_jobs_as_child_runs(sweep):
    store, result, parent, runs = sweep
    assert parent.info.status == "FINISHED" and parent.data.tags[schema.JOBS_TAG] == "2"
    assert parent.data.tags[schema.RESULT_TAG] == "0 of 2 jobs failed (2 finished)"
    assert parent.info.run_name == "optimizer=momentum,nesterov (2 jobs)"
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags[schema.SWEEP_TAG] == run.data.tags[schema.SWEEPS_TAG] == parent.data.tags[schema.SWEEP_TAG]
    # Hydra's launch lines show the user's overrides, not the sweeper's (which reached the jobs: above)
    launched = [line.split(" : ", 1)[1] for line in result.stdout.splitlines() if "[HYDRA] \t#" in line]
    assert len(launched) == 2 and "optimizer=momentum" in launched[0] and "optimizer=nesterov" in launched[1]
    assert all(line.split()[-1].startswith("paths.data_dir=") for line in launched)  # the command line's last
    assert "tracking.parent_run_id" not in result.stdout and "tracking.run_name" not in result.stdout


def test_the_sweep_ends_in_its_table_its_page_and_the_next_command(sweep):
    """The console's last block: a row per job from the final metrics its job returned, the
    parent run's page and the command that serves the store, src.figures on this sweep (run by
    test_figures_log_to_the_parent_run_and_add_no_run), and with 1 seed the seeds a verdict
    needs; the parent run's description holds the same table until src.figures writes its verdict."""
    store, result, parent, runs = sweep
    sweep_id = parent.data.tags[schema.SWEEP_TAG]
    out = result.stdout
    for run in runs:
        metrics = run.data.metrics
        row = (f"{run.info.run_name}  finished  +{100 * metrics[schema.FINAL_TEST_ACC]:.2f}%  +"
               f"{metrics[schema.TOTAL_PARAM_UPDATES]:,.0f}  +{metrics[schema.TRAIN_TIME_S]:,.1f} s")
        assert re.search(rf"(?m)^  {row}$", out), out[-2000:]
        assert (f"| {run.info.run_name} | finished | {100 * metrics[schema.FINAL_TEST_ACC]:.2f}% | "
                f"{metrics[schema.TOTAL_PARAM_UPDATES]:,.0f} | {metrics[schema.TRAIN_TIME_S]:,.1f} s |"
                in parent.data.tags[MLFLOW_RUN_NOTE])
    page = f"http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}"
    assert f"MLflow: {page}?workflowType=machine_learning  (serve the UI: mlflow ui --backend-store-uri sqlite:///" in out
    assert f"\nnext: python -m src.figures --sweep-id {sweep_id} experiment=smoke paths.output_dir={store}\n" in out
    assert ("a verdict needs 3 seeds per schedule (conf/figures.yaml: min_seeds), this sweep has 1: python -m src.run "
            "-m experiment=smoke optimizer=momentum,nesterov schedule=decay_lr ") in out
    assert " trainer.seed=0,1,2 (its FINISHED runs are skipped)" in out
    assert parent.data.tags[MLFLOW_RUN_NOTE].startswith(f"why this sweep ran\n\n**Sweep {sweep_id}**")


def test_mlflow_context_tags_resolved_in_the_launching_process(sweep):
    _, _, parent, runs = sweep
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    for run in [parent, *runs]:
        tags = run.data.tags
        assert tags["mlflow.source.name"] == str(ROOT / "src" / "run.py")
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.user"] == getpass.getuser()
        assert tags["mlflow.source.git.commit"] == commit
        assert tags[schema.COMMAND_TAG].split()[1:3] == ["-m", "experiment=smoke"]
        assert tags["idea"] == "smoke-test"
        assert tags[MLFLOW_RUN_NOTE] == "why this sweep ran" or run is parent and tags[MLFLOW_RUN_NOTE].startswith(
            "why this sweep ran\n\n")  # the parent's adds its table (above)


def test_the_dataset_is_a_dataset_input(sweep):
    _, _, _, runs = sweep
    digits = load_digits(n_val=180, n_test=180, split_seed=0)
    for run in runs:
        [logged] = run.inputs.dataset_inputs
        assert (logged.dataset.name, logged.dataset.digest) == ("digits", digits.digest())
        assert json.loads(logged.dataset.source)["uri"].endswith("sklearn/datasets/data/digits.csv.gz")
        assert json.loads(logged.dataset.profile) == {"n_train": 1437, "n_val": 180, "n_test": 180, "n_classes": 10,
                                                      "input_shape": [64]}
        assert {(t.key, t.value) for t in logged.tags} == {("mlflow.data.context", "training")}


def test_run_names_tell_the_jobs_apart_and_tags_name_the_options(sweep):
    _, _, _, runs = sweep
    assert {run.info.run_name for run in runs} == NAMES
    for run in runs:
        tags = run.data.tags
        assert (tags[schema.DATASET_TAG], tags[schema.MODEL_TAG], tags[schema.PRESET_TAG]) == ("digits", "mlp", "smoke")
        assert run.info.run_name == f"decay_lr optimizer={tags[schema.OPTIMIZER_TAG]} seed=0"


def test_metrics_are_results_load_is_a_tag_and_params_are_the_config(sweep, data_dir):
    """No load average among a run's metrics (they are tags: the context of a wall time); the
    model's parameter count is a metric; params hold what the config means, not how the store or
    the console present a run."""
    _, _, _, runs = sweep
    for run in runs:
        loads = {*schema.LOAD_AVERAGE_START.values(), *schema.LOAD_AVERAGE_END.values()}
        assert not loads & set(run.data.metrics) and loads <= set(run.data.tags)
        assert float(run.data.tags[schema.LOAD_AVERAGE_END["1m"]]) >= 0
        assert not [k for k in run.data.params if k.startswith(("tracking.description", "tracking.ui_url",
                                                                   "tracking.progress"))]
        assert "tracking.experiment" in run.data.params and "schedule.name" in run.data.params
    cfg = compose("experiment=smoke", f"paths.data_dir={data_dir}")
    model = build_run(cfg, torch.device("cpu")).model
    assert runs[0].data.metrics[schema.MODEL_PARAMETERS] == sum(p.numel() for p in model.parameters()) > 0


def test_samples_per_second_every_epoch(sweep):
    store, _, _, runs = sweep
    client = client_for(store)
    for run in runs:
        rate = history(client, run.info.run_id, schema.SAMPLES_PER_S)
        seen = [0] + [v for _, v in history(client, run.info.run_id, schema.SAMPLES_SEEN)]
        seconds = [0] + [v for _, v in history(client, run.info.run_id, schema.WALL_TIME_S)]
        assert [step for step, _ in rate] == [0, 1]
        for epoch, (_, value) in enumerate(rate):  # the epoch's samples over its seconds in training steps
            expected = (seen[epoch + 1] - seen[epoch]) / (seconds[epoch + 1] - seconds[epoch])
            assert value == pytest.approx(expected, rel=1e-6) and value > 0
        # the peak memory of each epoch on a GPU, nothing on a CPU
        peaks = history(client, run.info.run_id, schema.GPU_PEAK_MEMORY_MIB)
        on_gpu = run.data.tags[schema.DEVICE_TAG].startswith("cuda")
        assert [step for step, _ in peaks] == ([0, 1] if on_gpu else [])
        assert all(0 < mib < 2**20 for _, mib in peaks)


def test_the_final_model_is_a_logged_model_with_the_final_metrics(sweep):
    store, _, _, runs = sweep
    client = client_for(store)
    experiment_id = runs[0].info.experiment_id
    models = {m.source_run_id: m for m in client.search_logged_models([experiment_id])}
    assert set(models) == {run.info.run_id for run in runs}  # the runs table's Models column
    for run in runs:
        model = models[run.info.run_id]
        assert model.name == "MLP" and model.status == "READY"
        assert model.params == run.data.params
        assert [(o.model_id, o.step) for o in run.outputs.model_outputs] == [(model.model_id, 2)]  # after 2 epochs
        linked = {m.key: m for m in model.metrics}
        assert set(linked) == set(schema.FINAL_METRICS)  # the final metrics, no per-epoch one
        final_acc = linked[schema.FINAL_TEST_ACC]
        assert final_acc.value == run.data.metrics[schema.FINAL_TEST_ACC] and final_acc.run_id == run.info.run_id
        [dataset] = run.inputs.dataset_inputs
        assert (final_acc.dataset_name, final_acc.dataset_digest) == (dataset.dataset.name, dataset.dataset.digest)
        saved = Mlmodel.load(f"{unquote(urlsplit(model.artifact_location).path)}/MLmodel")
        assert saved.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 64)  # digits: 8 x 8
        assert saved.saved_input_example_info is not None
        assert [m.step for m in client.get_metric_history(run.info.run_id, schema.VAL_ACC)] == [0, 1]  # none copied


@pytest.mark.slow  # ~7 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_evaluate_reproduces_the_logged_accuracy_from_the_run_or_its_model(sweep, data_dir, capsys):
    store, _, _, runs = sweep
    overrides = [f"paths.output_dir={store}", f"paths.data_dir={data_dir}", "tracking.experiment=smoke"]
    for run in runs:
        result = evaluate_run(f"run_id={run.info.run_id}", overrides)
        assert result["val_acc"] == run.data.metrics[schema.FINAL_VAL_ACC]  # same weights, same data, same numbers
        assert result["test_acc"] == run.data.metrics[schema.FINAL_TEST_ACC]
        assert result["val_loss"] == pytest.approx(run.data.metrics[schema.FINAL_VAL_LOSS], rel=1e-6)
        assert result["digest"] == result["logged_digest"]
    [model_id] = [o.model_id for o in runs[0].outputs.model_outputs]
    command = subprocess.run([sys.executable, "-m", "src.evaluate", f"model=models:/{model_id}", *overrides],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert command.returncode == 0, command.stderr[-2000:]
    logged = runs[0].data.metrics[schema.FINAL_TEST_ACC]
    assert f"models:/{model_id} of run {runs[0].info.run_id}" in command.stdout
    assert f"test_acc  {logged:.6f}   logged final_test_acc {logged:.6f}   difference +0.0000 points" in command.stdout
    assert evaluate_main([f"run_id={runs[0].info.run_id}", *overrides]) == 0
    assert "with the data it trained on" in capsys.readouterr().out
    assert evaluate_main(["run_id=0123abcd", *overrides]) == 2
    assert capsys.readouterr().err.startswith("error: run_id=0123abcd: no such run in sqlite:///")
    assert evaluate_main(["model=models:/m-0123abcd", *overrides]) == 2
    assert capsys.readouterr().err.startswith("error: model=models:/m-0123abcd: no such model in sqlite:///")
    assert evaluate_main(["model=mlp", *overrides]) == 2
    assert capsys.readouterr().err.startswith("error: model=mlp: not a model address; python -m src.evaluate run_id=")


def test_figures_log_to_the_parent_run_and_add_no_run(sweep, capsys):
    store, result, parent, _ = sweep
    client = client_for(store)
    before = {run.info.run_id for run in all_runs_in(store, experiment=SMOKE)}
    [told] = [line for line in result.stdout.splitlines() if line.startswith("next: python -m src.figures ")]
    assert figures.main(shlex.split(told)[4:]) == 0  # the sweep's own next command: defaults from conf/, as the runs
    assert {run.info.run_id for run in all_runs_in(store, experiment=SMOKE)} == before
    folder = store / "figures" / parent.data.tags[schema.SWEEP_TAG]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {f"figures/{p.name}" for p in folder.iterdir()} == logged and "figures/report.md" in logged
    assert f"logged to MLflow run {parent.info.run_id}" in capsys.readouterr().out
    # the verdict replaces the sweep's table as the parent run's description
    assert client.get_run(parent.info.run_id).data.tags[MLFLOW_RUN_NOTE].startswith("**Verdict of sweep ")


def test_the_console_names_the_run_its_page_and_the_job_and_shows_progress_as_plain_lines(sweep):
    store, result, _, runs = sweep
    out = result.stdout
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    # the second job: the sweep's ETA, from the first job's duration, once it has ended
    for label in (rf"\[job 1/2 {first.info.run_name}\]", rf"\[job 2/2 {second.info.run_name}, sweep ETA \d+s\]"):
        assert len(re.findall(rf"{label} MLflow run http://127.0.0.1:5000/#/experiments/\d+/runs/\w+\?"
                              rf"workflowType=machine_learning\n", out)) == 1  # one link, no more
        assert re.search(rf"{label} epoch 2/2  lr .* samples/s  ETA 0s", out)
        # within the epoch, as log lines, with the running training loss
        assert re.search(rf"{label} epoch 1/2: step 1/22 \(5%\)  train_loss \d\.\d{{4}}  ", out)
    assert "ETA" not in re.findall(r"\[job 1/2 [^]]*\]", out)[-1]  # nothing to estimate from yet
    page = f"http://127.0.0.1:5000/#/experiments/{first.info.experiment_id}/runs/{first.info.run_id}"
    assert page in out and first.info.run_id not in out.replace(page, "")  # its id once: in its link
    assert out.count("mlflow ui --backend-store-uri sqlite:///") == 1  # once, with the sweep's page at its end
    assert "\r" not in out  # a pipe: nothing drawn in place
    # a pipe, and each job's .log file: Hydra's full prefix (conf/config.yaml, hydra.job_logging)
    full_prefix = r"(?m)^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\]\[src\.[\w.]+\]\[INFO\] - \[job 1/2 [^]]+\] epoch 2/2  lr "
    assert re.search(full_prefix, out), out[-2000:]
    [log_file] = (only_sweep_folder(store) / "0").glob("*.log")
    assert re.search(full_prefix, log_file.read_text())


@pytest.mark.slow  # ~8 s: a real run on a pseudo-terminal
def test_on_a_terminal_the_progress_is_drawn_in_place(tmp_path, data_dir, blank_store, capsys):
    """A real single run with its stdout on a pseudo-terminal, as a shell would give it."""
    shutil.copy(blank_store, tmp_path / "mlflow.db")
    # the default progress settings: epochs of ~0.1 s, far shorter than after_s, still drawn
    command = [sys.executable, "-m", "src.run", "experiment=smoke", "trainer.threads=1", "tracking.log_weights=false",
               f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}"]
    controller, terminal = pty.openpty()
    process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the run has exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait(timeout=120) == 0
    out = b"".join(chunks).decode()
    drawn = [part for part in out.split(CLEAR_LINE) if part.startswith("[decay_lr seed=0] epoch 1/2: step ")]
    assert drawn, out[-2000:]  # redrawn in place, from the first step, with the running loss ...
    assert re.match(r"\[decay_lr seed=0\] epoch 1/2: step 1/22 \(5%\)  train_loss \d\.\d{4}  ", drawn[0]), drawn
    assert "INFO] - [decay_lr seed=0] epoch 1/2: step" not in out  # ... not logged
    assert CLEAR_LINE + "[" in out
    # a logged line (after the cleared progress line): the time of day only (conf/config.yaml,
    # hydra.job_logging) ...
    assert re.search(re.escape(CLEAR_LINE) + r"\d\d:\d\d:\d\d \[decay_lr seed=0\] epoch 2/2  lr ", out), out[-2000:]
    assert re.search(r"(?m)^\d\d:\d\d:\d\d \[decay_lr seed=0\] done: final_val_loss ", out)
    # ... and the run folder's .log file Hydra's full prefix
    [log_file] = (tmp_path / "runs").glob("*/*.log")
    assert re.search(r"(?m)^\[\d{4}-\d\d-\d\d [\d:,]+\]\[src\.[\w.]+\]\[INFO\] - \[decay_lr seed=0\] epoch 2/2  lr ",
                     log_file.read_text())
    assert ": step " not in log_file.read_text()  # the in-place line is the terminal's only
    [run] = runs_in(tmp_path, experiment=SMOKE)
    assert not run.outputs.model_outputs  # tracking.log_weights=false: no model
    assert evaluate_main([f"run_id={run.info.run_id}", f"paths.output_dir={tmp_path}"]) == 2
    assert capsys.readouterr().err == (f"error: run_id={run.info.run_id}: no logged model: logged with "
                                       "tracking.log_weights=false\n")


def test_system_metrics_are_on_by_default_and_need_psutil(make_cfg, monkeypatch):
    assert compose().tracking.system_metrics is True
    monkeypatch.setitem(sys.modules, "psutil", None)  # as if not installed (importlib finds no spec)
    validate(make_cfg(*TINY, "tracking.system_metrics=false"))  # off: nothing more is needed
    with pytest.raises(ConfigError) as error:
        validate(make_cfg(*TINY))
    assert str(error.value) == ("tracking.system_metrics=true: needs psutil: pip install -c requirements/lock.txt "
                                "psutil (or tracking.system_metrics=false)")


def test_system_metrics_are_logged_by_default_and_say_nothing(make_cfg, tmp_path, blank_store, capfd):
    shutil.copy(blank_store, tmp_path / "mlflow.db")
    train(make_cfg("experiment=smoke", "trainer.threads=1", "tracking.system_metrics_every_s=0.05", output_dir=tmp_path))
    [run] = runs_in(tmp_path, experiment=SMOKE)
    sampled = history(client_for(tmp_path), run.info.run_id, "system/cpu_utilization_percentage")
    assert sampled and [step for step, _ in sampled] == list(range(len(sampled)))  # one step per sample
    told = capfd.readouterr()
    assert "system metrics" not in told.out + told.err  # MLflow's INFO lines about its monitor: 4 a run
