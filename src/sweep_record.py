"""The parent run of a multirun in MLflow: start_sweep creates it in the launching process before
any job starts, end_sweep closes it with the sweep's last line, sweep_so_far reads how far its
jobs have got (for a job's console). The jobs' own runs are src.tracking's."""

from __future__ import annotations

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from omegaconf import DictConfig

from src.processes import close_dead_runs, process_tags
from src.schema import COMMAND_TAG, JOBS_TAG, KIND_TAG, RESULT_TAG, RUN_NAME_TAG, SWEEP_KIND, SWEEP_TAG
from src.stores import prepare_store, store_lock, store_named
from src.tracking import writing_client


def start_sweep(tracking: DictConfig, folder: str, name: str, jobs: int, command: str) -> tuple[str, str, str]:
    """Create the parent run of a multirun, in the launching process, before its jobs start;
    returns (its id, the sweep's id, its experiment's id); each job gets the first two as
    tracking.parent_run_id and tracking.sweep_id. The sweep's id is its folder's name, made unique in the experiment
    (`<folder>-2`, `-3` ...) when an earlier sweep was given the same hydra.sweep.dir: the figures
    read a sweep by its id, and two sweeps must not merge there. The run carries the id, MLflow's
    context tags (resolved here, where sys.argv is the command), the command, tracking.tags and
    tracking.note, the number of jobs, and this process (pid, host)."""
    experiment_id = prepare_store(tracking)
    client = writing_client(tracking.uri)
    # two sweeps started at once in one folder get two ids
    with store_lock(tracking.uri, "tracking.uri"), store_named(tracking.uri):
        close_dead_runs(client, experiment_id)
        sweep_id, number = folder, 1
        while client.search_runs([experiment_id], f"tags.{SWEEP_TAG} = '{sweep_id}' and tags.{KIND_TAG} = "
                                 f"'{SWEEP_KIND}'", max_results=1):
            number += 1
            sweep_id = f"{folder}-{number}"
        tags = {**tracking.tags, SWEEP_TAG: sweep_id, KIND_TAG: SWEEP_KIND, JOBS_TAG: str(jobs), COMMAND_TAG: command,
                RUN_NAME_TAG: name, **process_tags()}
        if tracking.note:
            tags[MLFLOW_RUN_NOTE] = tracking.note
        return client.create_run(experiment_id, tags=resolve_tags(tags)).info.run_id, sweep_id, experiment_id


def end_sweep(tracking: DictConfig, run_id: str, status: str, result: str, description: str | None = None) -> list[str]:
    """Close a sweep's parent run: FINISHED, FAILED (a job failed) or KILLED, with the sweep's
    last line as its RESULT_TAG and `description`, if given, as its description (MLflow's note,
    markdown); first close the runs its stopped or killed workers left RUNNING
    (close_dead_runs), whose ids it returns."""
    client = writing_client(tracking.uri)
    with store_named(tracking.uri):
        closed = close_dead_runs(client, client.get_run(run_id).info.experiment_id)
        tags = {RESULT_TAG: result, **({MLFLOW_RUN_NOTE: description} if description is not None else {})}
        client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        client.set_terminated(run_id, status)
    return closed


def sweep_so_far(tracking: DictConfig) -> tuple[int | None, list[float]]:
    """(how many jobs the sweep of parent run tracking.parent_run_id launched, the seconds each
    of its child runs that has ended took, start to end); (None, []) for a run outside a sweep
    (a parent that is not a sweep's has no count). Read when a job starts, for its console: which
    job of how many, and the sweep's ETA (src.progress.SweepPace)."""
    if not tracking.parent_run_id:
        return None, []
    client = MlflowClient(tracking.uri)
    parent = client.get_run(tracking.parent_run_id)
    jobs = int(parent.data.tags[JOBS_TAG]) if JOBS_TAG in parent.data.tags else None
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{tracking.parent_run_id}'")
    ended = [(run.info.end_time - run.info.start_time) / 1000 for run in children
             if run.info.status != "RUNNING" and run.info.end_time]
    return jobs, ended
