"""Ctrl-C and SIGTERM held back while a write finishes, then acted on.

Python raises KeyboardInterrupt (or the project's Stopped, src/run.py) wherever the main thread
is when the signal comes: inside torch.save's zip writer, which then fails with a RuntimeError
("unexpected pos ...") that hides the signal and ends the run FAILED, or inside SQLAlchemy's
commit or clean-up of a SQLite store, which can leave the store locked by this very process, so
the run cannot be closed KILLED and stays RUNNING. `held()` keeps both signals pending for the
block (a checkpoint, a cache, one call to a local MLflow store: milliseconds to seconds) and
delivers the first one at its end, through the handler that was there before.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)
_holding = threading.local()  # whether an outer held() of this thread holds them already


@contextmanager
def held() -> Iterator[None]:
    """The block runs to its end whatever SIGINT or SIGTERM comes meanwhile; the first that came
    is then delivered as it would have been (a KeyboardInterrupt, Stopped, or the default action),
    also when the block raised. Outside the main thread (where Python runs no handler) and inside
    an outer held(), the block runs as it is. An ignored signal stays ignored."""
    if threading.current_thread() is not threading.main_thread() or getattr(_holding, "on", False):
        yield
        return
    pending: list[int] = []
    before = {signum: signal.getsignal(signum) for signum in HELD}
    replaced = [signum for signum, handler in before.items() if handler not in (signal.SIG_IGN, None)]
    for signum in replaced:
        signal.signal(signum, lambda signum, frame: pending.append(signum))
    _holding.on = True
    try:
        yield
    finally:
        for signum in replaced:
            signal.signal(signum, before[signum])
        _holding.on = False
        if pending:
            _deliver(pending[0], before[pending[0]])


def _deliver(signum: int, handler) -> None:
    """What `handler` would have done with `signum` had it come now."""
    if callable(handler):
        handler(signum, None)
    else:  # SIG_DFL: the default action, ending the process (128 + signum, as the shell sees it)
        os.kill(os.getpid(), signum)


class HeldCalls:
    """`target` whose every method call runs under held(): an MlflowClient of a local store, so
    that no signal lands inside the store's transaction."""

    def __init__(self, target):
        self._target = target

    def __getattr__(self, name: str):
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            with held():
                return attribute(*args, **kwargs)

        return call
