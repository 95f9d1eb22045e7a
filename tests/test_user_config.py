"""A user's own settings without editing conf/: MLFLOW_TRACKING_URI picks the store (MLflow's
convention), and a local/default.yaml in a config folder of the user's (conf/local/, git-ignored,
or --config-dir) overrides paths and tracking, read after every other default."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers.configs import ROOT
from helpers.store import runs_in


def src_run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.run", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # ~8 s on 2 idle cores: kept out of the default suite's 5 minutes
def test_mlflow_tracking_uri_is_where_the_runs_go(tmp_path, data_dir, blank_store):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(blank_store, elsewhere / "mlflow.db")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{elsewhere}/mlflow.db"}
    shown = src_run("--cfg", "job", "--resolve", env=env)
    assert f"  uri: sqlite:///{elsewhere}/mlflow.db\n" in shown.stdout
    result = src_run("experiment=smoke", f"paths.output_dir={tmp_path / 'out'}",
                     f"paths.data_dir={data_dir}", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [r.info.status for r in runs_in(elsewhere, experiment="smoke")] == ["FINISHED"]
    assert not (tmp_path / "out" / "mlflow.db").exists()


def test_a_local_config_overrides_paths_and_tracking_and_the_command_line_wins(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text(
        f"paths:\n  data_dir: {tmp_path}/my_data\ntracking:\n  uri: http://my-server:5000\n")
    shown = src_run("--cfg", "job", "--resolve", "--config-dir", str(tmp_path), env={})
    assert f"  data_dir: {tmp_path}/my_data\n" in shown.stdout and "  uri: http://my-server:5000\n" in shown.stdout
    overridden = src_run("--cfg", "job", "--config-dir", str(tmp_path), "tracking.uri=sqlite:///x.db", env={})
    assert "  uri: sqlite:///x.db\n" in overridden.stdout
    plain = src_run("--cfg", "job", "--resolve", env={})
    assert "  uri: sqlite:///outputs/mlflow.db\n" in plain.stdout  # no local config: the defaults
