"""A real `python -m src.run` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers.configs import ROOT


def run_cli(*args: str, output_dir: Path, data_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m src.run` writing into output_dir. Flags (-m, --cfg) go first in args: Hydra's
    parser wants them before the overrides."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "src.run", *args, f"paths.output_dir={output_dir}", f"paths.data_dir={data_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def only_sweep_folder(output_dir: Path) -> Path:
    """The one folder a multirun wrote under output_dir/multirun/ (its name is the sweep_id)."""
    [folder] = (output_dir / "multirun").iterdir()
    return folder
