"""`python -m src.evaluate run_id=<id> [KEY=VALUE ...]`: a logged run's final weights, evaluated
on the validation and test sets again.

Reads the run's config (its config.yaml artifact) and its weights (model/state_dict.pt, kept by
tracking.log_weights), rebuilds the data and the model as the run built them (src.build.build_run),
and prints the validation and test loss and accuracy next to the run's logged final_val_*
and final_test_* metrics, and whether the data are the ones it trained on (the digest of its dataset input).
Nothing is logged.

The overrides (KEY=VALUE, as src.run takes them) locate the store through conf/config.yaml
(paths.output_dir=..., tracking.uri=...), and those under paths and trainer.device also apply to
the run's config: where the data are on this machine (paths.data_dir=...) and where to evaluate.
The store is only read, never created (src.stores.open_existing_store): a path where no
MLflow store is, or a file that is not one, is refused and left as it is. A missing run, a run
without weights, a run whose artifact folder is gone, or weights or a config.yaml that cannot be
read (named by their place in the store) is a one-line error and exit code 2.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Keys of the run's own config that an override may change: where things are on this machine
# and where to evaluate, not what the run computed.
MACHINE_KEYS = ("paths.", "trainer.device", "trainer.eval_batch_size")


class EvaluationError(Exception):
    """Nothing to evaluate, in one line (main prints it and exits 2)."""


def split_arguments(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(the run id, the other KEY=VALUE overrides)."""
    run_ids = [a.split("=", 1)[1] for a in argv if a.startswith("run_id=")]
    if len(run_ids) != 1 or not run_ids[0]:
        raise EvaluationError("usage: python -m src.evaluate run_id=<MLflow run id> [KEY=VALUE ...]")
    return run_ids[0], [a for a in argv if not a.startswith("run_id=")]


def _place(run, name: str) -> str:
    """Where the run's artifact `name` lives: a path for a local store, else its URI."""
    root = run.info.artifact_uri.rstrip("/")
    if root.startswith("file:"):
        root = unquote(urlsplit(root).path)
    return f"{root}/{name}"


def _download(client, run, name: str, folder: str) -> str:
    """The run's artifact `name`, downloaded into `folder`; an EvaluationError saying why not: the
    run's whole artifact folder gone, the weights never logged (tracking.log_weights=false, or
    the run did not finish), or the one file missing."""
    from mlflow.exceptions import MlflowException

    from src import schema

    try:
        return client.download_artifacts(run.info.run_id, name, folder)
    except (MlflowException, OSError):
        pass
    try:
        present = client.list_artifacts(run.info.run_id)
    except (MlflowException, OSError):
        present = []
    where = _place(run, name)
    if not present:
        why = f"its artifacts are gone: nothing at {_place(run, '').rstrip('/')} (deleted or moved)"
    elif name != schema.WEIGHTS_ARTIFACT:
        why = f"no {where}"
    elif run.info.status != "FINISHED":
        why = f"no {name}: the run is {run.info.status}, and weights are logged when a run finishes"
    elif run.data.params.get("tracking.log_weights") == "False":
        why = f"no {name}: logged with tracking.log_weights=false"
    else:
        why = f"{where} is gone (deleted or moved)"
    raise EvaluationError(f"run_id={run.info.run_id}: {why}")


def _unreadable(error: BaseException) -> str:
    """Why torch.load could not read a file, in a few words: torch's weights_only advice around
    the reason is no news for a file this project wrote."""
    text = " ".join(str(error).split())
    reason = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation")[0].split(". ")[0]
    return f"{type(error).__name__}: {reason.strip() or 'the file ends early'}"


def evaluate_run(run_id: str, overrides: Sequence[str] = ()) -> dict:
    """The run's weights on its validation and test sets: {val_loss, val_acc, test_loss, test_acc,
    logged (the run's final metrics), digest (of the data now), logged_digest, device, run_name}."""
    import torch
    import yaml
    from mlflow.exceptions import MlflowException
    from omegaconf import OmegaConf

    from src import devices, schema
    from src.config import compose
    from src.stores import open_existing_store
    from src.build import build_run
    from src.step import evaluate_split

    tracking = compose(*overrides).tracking
    client = open_existing_store(tracking.uri)  # one line naming tracking.uri; creates nothing
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise EvaluationError(f"run_id={run_id}: no such run in {tracking.uri}") from None
    with tempfile.TemporaryDirectory() as folder:
        weights_path = _download(client, run, schema.WEIGHTS_ARTIFACT, folder)
        try:
            with warnings.catch_warnings():  # torch's note on the pickle protocol of a file that is not its own
                warnings.simplefilter("ignore")
                weights = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises what its zip reader or unpickler met
            raise EvaluationError(f"run_id={run_id}: {_place(run, schema.WEIGHTS_ARTIFACT)} is not a weights file "
                                  f"torch can read ({_unreadable(error)})") from None
        try:
            cfg = OmegaConf.load(_download(client, run, schema.CONFIG_ARTIFACT, folder))
        except yaml.YAMLError as error:
            raise EvaluationError(f"run_id={run_id}: {_place(run, schema.CONFIG_ARTIFACT)} is not valid YAML "
                                  f"({' '.join(str(error).split())[:200]})") from None
    cfg.merge_with_dotlist([o for o in overrides if o.startswith(MACHINE_KEYS)])

    device = devices.pick_device(cfg.trainer.device)
    parts = build_run(cfg, device)
    try:
        parts.model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:  # another model's weights, or not a state_dict
        raise EvaluationError(f"run_id={run_id}: {_place(run, schema.WEIGHTS_ARTIFACT)} does not fit the model its "
                              f"config builds ({' '.join(str(error).split())[:200]})") from None
    measured = {}
    for split, x, y in (("val", parts.data.x_val, parts.data.y_val), ("test", parts.data.x_test, parts.data.y_test)):
        measured[f"{split}_loss"], measured[f"{split}_acc"] = evaluate_split(
            parts.model, x, y, cfg.trainer.eval_batch_size, parts.settings.precision)
    logged_digests = [d.dataset.digest for d in run.inputs.dataset_inputs]
    return {
        **measured,
        "logged": {name: run.data.metrics.get(name) for name in (schema.FINAL_VAL_LOSS, schema.FINAL_VAL_ACC,
                                                                  schema.FINAL_TEST_LOSS, schema.FINAL_TEST_ACC)},
        "digest": parts.data.digest(), "logged_digest": logged_digests[0] if logged_digests else None,
        "device": str(device), "run_name": run.info.run_name,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from src.cli import one_line_error
    from src import schema

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run_id, overrides = split_arguments(argv)
        result = evaluate_run(run_id, overrides)
    except EvaluationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a bad override, missing data files ...: one line
        message, code = one_line_error(error)
        print(f"error: {message}", file=sys.stderr)
        return code
    logged = result["logged"]
    data = ("the data it trained on" if result["digest"] == result["logged_digest"]
            else f"OTHER data than it trained on (digest {result['digest']}, logged {result['logged_digest']})")
    print(f"run {run_id} ({result['run_name']}), evaluated on {result['device']} with {data}:")
    for split, acc_name, loss_name in (("val", schema.FINAL_VAL_ACC, schema.FINAL_VAL_LOSS),
                                       ("test", schema.FINAL_TEST_ACC, schema.FINAL_TEST_LOSS)):
        if logged[acc_name] is None:  # a run from before the test split was logged
            print(f"  {split}_acc  {result[f'{split}_acc']:.6f}   ({acc_name} not logged)")
            continue
        print(f"  {split}_acc  {result[f'{split}_acc']:.6f}   logged {acc_name} {logged[acc_name]:.6f}   "
              f"difference {100 * (result[f'{split}_acc'] - logged[acc_name]):+.4f} points")
        print(f"  {split}_loss {result[f'{split}_loss']:.6f}   logged {loss_name} {logged[loss_name]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
