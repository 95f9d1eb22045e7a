"""The errors that end a run or a sweep on purpose, and how each is told in one line."""

from __future__ import annotations

import re
import signal
import sys


class ConfigError(ValueError):
    """A bad config value, or a folder, store or device a key names that cannot be used here;
    the message is one line naming the key, the value and what is allowed or what went wrong."""


class DatasetUnavailable(RuntimeError):
    """The data are neither on disk nor downloadable; the message is one line saying where to
    put which files."""


class Diverged(RuntimeError):
    """The loss stopped being finite: nothing later in the run would mean anything."""


class Stopped(KeyboardInterrupt):
    """A signal ended the job: SIGTERM (kill, SLURM preemption) or SIGINT (Ctrl-C). A
    KeyboardInterrupt, so that everything on the way out treats it as one (the run ends KILLED);
    `where`, added by the loop, says which run and where its checkpoint is. str() is the one line
    the command prints."""

    def __init__(self, signum: signal.Signals, where: str | None = None):
        super().__init__(signum, where)
        self.signal, self.where = signal.Signals(signum), where

    def __str__(self) -> str:
        return f"{self.signal.name}: {self.where or 'before any MLflow run started; run the same command again'}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _composed_keys(parent: str, overrides: list[str]) -> tuple[str, list[str]]:
    """(`parent` as the message names it, the keys under it) in the config the command composes
    with its group choices (schedule=constant, experiment=smoke: an option's keys are its own) and
    none of its other overrides, one of which is the bad one. A top-level group is named with
    its option (`schedule=constant`). For error messages."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import DictConfig, OmegaConf

    from src.config import compose  # here: src.config imports this module

    choices = [o for o in overrides if re.fullmatch(r"[\w/]+=[^,=\[\]{}]+", o)]  # group=option, no sweep
    GlobalHydra.instance().clear()  # called where Hydra may already be initialised (a failing job)
    try:
        config = compose(*choices, return_hydra_config=True)
    except Exception:  # a choice that does not compose either: the default config
        GlobalHydra.instance().clear()
        config = compose(return_hydra_config=True)
    option = config.hydra.runtime.choices.get(parent) if parent else None
    node = OmegaConf.select(config, parent) if parent else config
    keys = [str(k) for k in node if parent or k != "hydra"] if isinstance(node, DictConfig) else []
    return (f"{parent}={option}" if option else parent or "the config"), keys


def needs_traceback(error: BaseException) -> bool:
    """True for a bug, whose traceback helps; False for a bad input or a diverged run, which
    one line tells."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # an OSError names its file (a disk full, a folder removed under a running job)
    told_in_one_line = (ConfigError, DatasetUnavailable, Diverged, OSError, HydraException, OmegaConfBaseException)
    return not isinstance(_cause(error), told_in_one_line)


def _cause(error: BaseException) -> BaseException:
    """Hydra's instantiate wraps what the built object raised; the inner error is the story."""
    from hydra.errors import InstantiationException

    return error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error


def one_line_error(error: BaseException, overrides: list[str] | None = None) -> tuple[str, int]:
    """(one-line message, exit code) for an error that ends a run or a sweep: 2 for a bad
    config or command line, or a folder, store, device or data set it names that cannot be
    used (refused before any MLflow run exists); 1 for a run that failed. `overrides`: the
    command's (a sweep's job's); None: this process's command line."""
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import ConfigTypeError, OmegaConfBaseException, ValidationError

    error = _cause(error)
    text = str(error)
    if isinstance(error, ConfigError):
        return text, 2
    if isinstance(error, DatasetUnavailable):  # raised while the data load, before the run exists
        return f"{type(error).__name__}: {_one_line(text)}", 2
    if isinstance(error, OverrideParseException):
        return f"{error.override}: cannot parse ({text.splitlines()[0]})", 2
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        typed = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
        if isinstance(typed, (ValidationError, ConfigTypeError)) and getattr(typed, "full_key", None):
            # a value OmegaConf refused for a structured config (src/config.py) while composing
            override = re.search(r"Error merging override (\S+)", text)
            return f"{override.group(1) if override else typed.full_key}: {str(typed).splitlines()[0]}", 2
        missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        if missing:
            group, option = missing.groups()
            options = re.findall(r"^\t(\S+)$", text, flags=re.MULTILINE)
            return f"{group}={option}: no such option; allowed: {', '.join(options)}", 2
        unknown = re.search(r"Could not override '([^']+)'", text)
        if unknown:
            key = unknown.group(1)
            parent, _, leaf = key.rpartition(".")
            named, known = _composed_keys(parent, sys.argv[1:] if overrides is None else overrides)
            allowed = f"{named} has: {', '.join(known)}; " if known else ""
            return f"{key}: unknown key; {allowed}to add a new key on purpose, write +{key}=...", 2
        return _one_line(text), 2
    return f"{type(error).__name__}: {_one_line(text)}", 1
