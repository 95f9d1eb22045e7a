"""How the commands end: every error told in one line on stderr with an exit status, and the
preflight that refuses a command before it writes anything.

Exit status 2 for a bad config or command line, or a folder, store or device it names that cannot
be used (refused before any MLflow run exists); 1 for a run that failed. Used by the entry point
(src/run.py), the study sweeper (hydra_plugins/study_sweeper) and the readers (src.evaluate,
src.figures); it imports src.config, never the other way round (src/errors.py holds the classes).
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.config import validate
from src.errors import ConfigError, DatasetUnavailable, Diverged, StoreFailed
from src.files import check_folder
from src.schema import CONF_DIR

# "<host>:<pid>" of a study sweep's launching process, in the environment its jobs inherit: a job
# on that host stops when that process is gone (src/run.py; set by hydra_plugins/study_sweeper).
SWEEP_PROCESS_ENV = "STUDY_SWEEP_PROCESS"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _composed_keys(parent: str, overrides: list[str]) -> tuple[str, list[str]]:
    """(`parent` as the message names it, the keys under it) in the config the command composes
    with its group choices (schedule=constant, experiment=smoke: an option's keys are its own) and
    none of its other overrides, one of which is the bad one. A top-level group is named with
    its option (`schedule=constant`). For error messages."""
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from src.config import compose

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


def _cause(error: BaseException) -> BaseException:
    """Hydra's instantiate wraps what the built object raised; the inner error is the story."""
    from hydra.errors import InstantiationException

    return error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error


def _yaml_error(error: BaseException):
    """The YAML syntax error under a composition error (a config file of conf/ or --config-dir
    that does not parse), or None."""
    import yaml

    while error is not None:
        if isinstance(error, yaml.YAMLError):
            return error
        error = error.__cause__ or error.__context__
    return None


def _null_group_override(error: BaseException) -> str | None:
    """`group=null` on the command line (schedule=null): Hydra's ValueError does not name the
    override; the frame that raised it holds it (Overrides.__init__'s `override`). Its text, or
    None for any other error."""
    from hydra.core.override_parser.types import Override

    if not (isinstance(error, ValueError) and str(error).startswith("Config group override must be")):
        return None
    tb, found = error.__traceback__, "a config group override"
    while tb is not None:
        override = tb.tb_frame.f_locals.get("override")
        if isinstance(override, Override):
            found = override.input_line or found
        tb = tb.tb_next
    return found


def _is_store_error(error: BaseException) -> bool:
    """src.stores.is_store_error, without loading MLflow for an error raised before it was
    (a bad config fails in about a second: src/run.py)."""
    if "src.stores" not in sys.modules:
        return False
    from src.stores import is_store_error

    return is_store_error(error)


def needs_traceback(error: BaseException) -> bool:
    """True for a bug, whose traceback helps; False for a bad input or a diverged run, which
    one line tells."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # an OSError names its file (a disk full, a folder removed under a running job)
    told_in_one_line = (ConfigError, DatasetUnavailable, Diverged, StoreFailed, OSError, HydraException,
                        OmegaConfBaseException)
    return (not isinstance(_cause(error), told_in_one_line) and _yaml_error(error) is None
            and _null_group_override(error) is None and not _is_store_error(_cause(error)))


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
    yaml_error = _yaml_error(error)
    if yaml_error is not None:  # a config file that does not parse: its name, line and column
        mark = getattr(yaml_error, "problem_mark", None)
        where = f"{mark.name}:{mark.line + 1}:{mark.column + 1}" if mark else "a config file"
        problem = getattr(yaml_error, "problem", None) or str(yaml_error).splitlines()[0]
        return f"{where}: not valid YAML ({_one_line(problem)})", 2
    null_group = _null_group_override(error)
    if null_group is not None:
        group = null_group.split("=", 1)[0].lstrip("+~")
        options = sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))
        allowed = f"; allowed: {', '.join(options)}" if options else ""
        return f"{null_group}: a config group takes one of its options, not null{allowed}", 2
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
    if isinstance(error, StoreFailed):  # named by src.tracking: under a running job or a sweep's parent run
        return _one_line(text)[:1000], 1
    if _is_store_error(error):  # the store failed where its URI was not at hand: full, read-only, locked
        from src.stores import store_error_text

        return f"the MLflow store failed: {type(error).__name__}: {store_error_text(error)[:500]}", 1
    return f"{type(error).__name__}: {_one_line(text)}", 1


def exit_with_one_line(error: BaseException) -> None:
    """Print the error's one line (after its traceback, for a bug) and exit with its status."""
    message, code = one_line_error(error)
    if needs_traceback(error):
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


@contextmanager
def hydra_config_of(cfg: DictConfig) -> Iterator[None]:
    """Hydra's ${hydra:...} resolver answers from `cfg`'s own hydra node in the block, as it does
    inside the job (`paths.output_dir=${hydra:runtime.cwd}/out` validates as it will run); a
    config composed without it (the tests' compose) is left as it is."""
    from hydra.core.hydra_config import HydraConfig

    if "hydra" not in cfg:
        yield
        return
    holder = HydraConfig.instance()
    saved = holder.cfg
    holder.set_config(cfg)
    try:
        yield
    finally:
        holder.cfg = saved


def check_config(cfg: DictConfig) -> None:
    """validate(cfg) where ${hydra:...} interpolations resolve as they will in the job."""
    with hydra_config_of(cfg):
        validate(cfg)


def preflight(cfg: DictConfig) -> None:
    """What a command makes sure of once, in the process that launches it, before anything is
    written: its folders can be created (paths.data_dir) and written (paths.output_dir), and its
    MLflow store opens, with its experiment (created if missing: parallel first writers of a fresh
    SQLite store would crash MLflow's table creation). Each failure is a ConfigError naming the
    key. A multirun calls it from the study sweeper once every job is validated."""
    from src.stores import prepare_store

    with hydra_config_of(cfg):
        check_folder("paths.output_dir", cfg.paths.output_dir)
        check_folder("paths.data_dir", cfg.paths.data_dir, writable=False)  # read-only data are fine
        prepare_store(cfg.tracking)


class Preflight(Callback):
    """A single run's config validated and its preflight done before Hydra creates the run's
    folder under paths.output_dir. Hydra turns an exception of a callback into a warning and
    goes on, so a refusal ends the command here (SystemExit passes). (Hydra calls
    on_multirun_start before the sweeper has composed the jobs, so a multirun's preflight is the
    study sweeper's.)"""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        try:
            with hydra_config_of(config):
                check_config(config)
                preflight(config)
                # The run folder's own name holds the time, resolved again when Hydra creates it:
                # its parent is what can be checked.
                run_dir = Path(config.hydra.run.dir)
                check_folder("hydra.run.dir", run_dir.parent, value=run_dir)
        except Exception as error:
            exit_with_one_line(error)
