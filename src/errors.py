"""The errors that end a run or a sweep on purpose. Exception classes only, importing nothing of
the project, so that any module can raise them without an import cycle; how each is told on the
command line (one line, an exit status) is src/cli.py's."""

from __future__ import annotations

import signal


class ConfigError(ValueError):
    """A bad config value, or a folder, store or device a key names that cannot be used here;
    the message is one line naming the key, the value and what is allowed or what went wrong
    (whitespace runs, a driver's multi-line text included, are joined into one line here)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class DatasetUnavailable(RuntimeError):
    """The data are neither on disk nor downloadable; the message is one line saying where to
    put which files."""


class Diverged(RuntimeError):
    """The loss stopped being finite: nothing later in the run would mean anything."""


class StoreFailed(RuntimeError):
    """MLflow's store failed under a running job (its disk full, the file made read-only or
    immutable, locked past SQLite's patience, a server gone): the message names the store and
    what it said, in one line, without the SQL."""


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
