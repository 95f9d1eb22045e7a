"""Which process runs a run, and closing the runs whose process is gone.

Every training run and every sweep's parent run records its process (PID_TAG, HOST_TAG) when it
starts. A process killed hard (kill -9, the out-of-memory killer, a sweep stopped under its
workers) cannot close its run, so the next run or sweep of the experiment on that host does
(close_dead_runs, called by src.tracking), and a job of a sweep stops when the sweep's process is
gone (process_is_gone, src/run.py).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from mlflow.tracking import MlflowClient

from src.schema import ENDED_BY_TAG, HOST_TAG, PID_TAG

SEARCH_PAGE = 1000  # runs one search returns (MLflow's default page); RUNNING ones of one host are far fewer


def process_tags() -> dict[str, str]:
    """The tags that say which process runs a run: PID_TAG and HOST_TAG."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def process_is_gone(pid: int) -> bool:
    """Whether process `pid` of this host has ended. A zombie (ended, not yet reaped by its
    parent: a killed worker its launcher has not waited for) has."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    try:  # Linux: the state letter follows the command name in parentheses
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state in ("Z", "X")


def close_dead_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Close the runs of the experiment left RUNNING by a process of this host that is gone (kill
    -9, an out-of-memory kill, a sweep or worker stopped without closing them): KILLED, with why
    in ENDED_BY_TAG. Their checkpoints are kept, so the same config resumes. Runs of other hosts
    are left alone (their processes cannot be seen from here), as are runs logged without a pid.
    Returns their ids."""
    host = socket.gethostname()
    query = f"attributes.status = 'RUNNING' and tags.{HOST_TAG} = '{host}'"
    closed = []
    for run in client.search_runs([experiment_id], query, max_results=SEARCH_PAGE):
        pid = run.data.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and process_is_gone(int(pid)):
            client.set_tag(run.info.run_id, ENDED_BY_TAG, f"its process {pid} on {host} ended without closing it "
                           "(killed: kill -9, out of memory, or its sweep stopped)")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed
