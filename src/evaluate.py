"""`python -m src.evaluate run_id=<id> | model=models:/<model id> [KEY=VALUE ...]`: a logged
run's final model, evaluated on the validation and test sets again.

The model is the run's LoggedModel (MLflow 3's `models:/<model id>`, kept by
tracking.log_weights, in torch.export's pt2 format: src.tracking.TrackedRun.log_model); given a
run id, the run's newest READY one; given a model, the run it came from (its source run).
Reads the run's config (its config.yaml artifact), rebuilds the data and the model as the run
built them (src.build.build_run), loads the logged model's weights into it, and prints the
validation and test loss and accuracy next to the run's logged final_val_* and final_test_*
metrics, and whether the data are the ones it trained on (the digest of its dataset input).
Nothing is logged.

The overrides (KEY=VALUE, as src.run takes them) locate the store through conf/config.yaml
(paths.output_dir=..., tracking.uri=...), and those under paths and trainer.device also apply to
the run's config: where the data are on this machine (paths.data_dir=...) and where to evaluate.
The store is only read, never created (src.stores.open_existing_store): a path where no
MLflow store is, or a file that is not one, is refused and left as it is. A missing run or
model, a run without a model, a run or model whose artifact folder is gone, or a model or a
config.yaml that cannot be read (named by their place in the store) is a one-line error and
exit code 2.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

# Keys of the run's own config that an override may change: where things are on this machine
# and where to evaluate, not what the run computed.
MACHINE_KEYS = ("paths.", "trainer.device", "trainer.eval_batch_size")
# The two ways to name what to evaluate; `model=` is also a config group of src.run, which an
# evaluation has no use for (the run's own config builds the model).
ADDRESS_KEYS = ("run_id=", "model=")
MODELS_SCHEME = "models:/"
USAGE = "usage: python -m src.evaluate run_id=<MLflow run id> | model=models:/<model id> [KEY=VALUE ...]"


class EvaluationError(Exception):
    """Nothing to evaluate, in one line (main prints it and exits 2)."""


def split_arguments(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(the address: `run_id=<id>` or `model=models:/<id>`, the other KEY=VALUE overrides)."""
    addresses = [a for a in argv if a.startswith(ADDRESS_KEYS)]
    if len(addresses) != 1 or addresses[0].endswith("="):
        raise EvaluationError(USAGE)
    address = addresses[0]
    if address.startswith("model=") and not (address.startswith(f"model={MODELS_SCHEME}")
                                             and "/" not in address[len(f"model={MODELS_SCHEME}"):]):
        raise EvaluationError(f"{address}: not a model address; {USAGE.split(': ', 1)[1]}")
    return address, [a for a in argv if a != address]


def _local(uri: str) -> str:
    """A store's artifact URI as a path for a local store (file:), else as it is."""
    return unquote(urlsplit(uri).path) if uri.startswith("file:") else uri


def _place(run, name: str) -> str:
    """Where the run's artifact `name` lives: a path for a local store, else its URI."""
    return f"{_local(run.info.artifact_uri.rstrip('/'))}/{name}"


def _download(client, run, name: str, folder: str, address: str) -> str:
    """The run's artifact `name`, downloaded into `folder`; an EvaluationError saying why not: the
    run's whole artifact folder gone, or the one file missing."""
    from mlflow.exceptions import MlflowException

    try:
        return client.download_artifacts(run.info.run_id, name, folder)
    except (MlflowException, OSError):
        pass
    try:
        present = client.list_artifacts(run.info.run_id)
    except (MlflowException, OSError):
        present = []
    if not present:
        raise EvaluationError(f"{address}: its artifacts are gone: nothing at {_place(run, '').rstrip('/')} "
                              "(deleted or moved)")
    raise EvaluationError(f"{address}: no {_place(run, name)}")


def _run_and_model(client, address: str, uri: str):
    """(the run, its LoggedModel) that `address` names; an EvaluationError saying which is not there."""
    from mlflow.exceptions import MlflowException

    key, value = address.split("=", 1)
    if key == "model":
        try:
            model = client.get_logged_model(value[len(MODELS_SCHEME):])
        except MlflowException:
            raise EvaluationError(f"{address}: no such model in {uri}") from None
        if not model.source_run_id:
            raise EvaluationError(f"{address}: a model logged outside a run: no config to rebuild its data from")
        try:
            return client.get_run(model.source_run_id), model
        except MlflowException:
            raise EvaluationError(f"{address}: its run {model.source_run_id} is not in {uri}") from None
    try:
        run = client.get_run(value)
    except MlflowException:
        raise EvaluationError(f"{address}: no such run in {uri}") from None
    outputs = run.outputs.model_outputs if run.outputs else []
    models = [client.get_logged_model(output.model_id) for output in outputs]
    ready = sorted((m for m in models if m.status == "READY"), key=lambda m: m.creation_timestamp)
    if ready:
        return run, ready[-1]  # a run resumed while its model was being logged has two: the last is whole
    if run.info.status != "FINISHED":
        why = f"the run is {run.info.status}, and its model is logged when it finishes"
    elif run.data.params.get("tracking.log_weights") == "False":
        why = "logged with tracking.log_weights=false"
    else:
        why = "it was logged before runs logged their model"
    raise EvaluationError(f"{address}: no logged model: {why}")


def _model_weights(model, uri: str, folder: str, address: str) -> dict:
    """The LoggedModel's weights (state_dict), read from its pt2 file; an EvaluationError naming
    the place of what is gone or cannot be read."""
    import mlflow.pytorch
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from src import schema

    root = _local(model.artifact_location.rstrip("/"))
    try:
        local = download_artifacts(artifact_uri=model.artifact_location, dst_path=folder, tracking_uri=uri)
    except (MlflowException, OSError):
        raise EvaluationError(f"{address}: its model's artifacts are gone: nothing at {root} (deleted or moved)") from None
    if not (Path(local) / schema.MODEL_FILE).is_file():
        raise EvaluationError(f"{address}: {root}/{schema.MODEL_FILE} is gone (deleted or moved)")
    exporter = logging.getLogger("torch.export")  # logs the traceback of a file it cannot read, then raises
    level = exporter.level
    exporter.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():  # MLflow's and torch's notes on a model saved by another version
            warnings.simplefilter("ignore")
            return mlflow.pytorch.load_model(local).state_dict()
    except Exception as error:  # what torch.export's zip reader or MLflow's pt2 check met
        raise EvaluationError(f"{address}: {root}/{schema.MODEL_FILE} is not a model torch can read "
                              f"({_unreadable(error)})") from None
    finally:
        exporter.setLevel(level)


def _unreadable(error: BaseException) -> str:
    """Why a model file could not be read, in a few words: its first sentence."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text.split('. ')[0].strip() or 'the file ends early'}"


def evaluate_run(address: str, overrides: Sequence[str] = ()) -> dict:
    """The model that `address` names (`run_id=<id>` or `model=models:/<id>`, as split_arguments
    gives it) on its run's validation and test sets: {val_loss, val_acc, test_loss, test_acc,
    logged (the run's final metrics), digest (of the data now), logged_digest, device, run_id,
    run_name, model_uri}."""
    import yaml
    from omegaconf import OmegaConf

    from src import devices, schema
    from src.config import compose
    from src.stores import open_existing_store
    from src.build import build_run
    from src.step import evaluate_split

    tracking = compose(*overrides).tracking
    client = open_existing_store(tracking.uri)  # one line naming tracking.uri; creates nothing
    run, model = _run_and_model(client, address, tracking.uri)
    with tempfile.TemporaryDirectory() as folder:
        try:
            cfg = OmegaConf.load(_download(client, run, schema.CONFIG_ARTIFACT, folder, address))
        except yaml.YAMLError as error:
            raise EvaluationError(f"{address}: {_place(run, schema.CONFIG_ARTIFACT)} is not valid YAML "
                                  f"({' '.join(str(error).split())[:200]})") from None
        weights = _model_weights(model, tracking.uri, folder, address)
    cfg.merge_with_dotlist([o for o in overrides if o.startswith(MACHINE_KEYS)])

    device = devices.pick_device(cfg.trainer.device)
    parts = build_run(cfg, device)
    try:
        parts.model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:  # another model's weights
        raise EvaluationError(f"{address}: the weights of models:/{model.model_id} do not fit the model its "
                              f"run's config builds ({' '.join(str(error).split())[:200]})") from None
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
        "device": str(device), "run_id": run.info.run_id, "run_name": run.info.run_name,
        "model_uri": f"{MODELS_SCHEME}{model.model_id}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    from src.cli import one_line_error
    from src import schema

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        address, overrides = split_arguments(argv)
        result = evaluate_run(address, overrides)
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
    print(f"{result['model_uri']} of run {result['run_id']} ({result['run_name']}), evaluated on {result['device']} "
          f"with {data}:")
    for split, acc_name, loss_name in (("val", schema.FINAL_VAL_ACC, schema.FINAL_VAL_LOSS),
                                       ("test", schema.FINAL_TEST_ACC, schema.FINAL_TEST_LOSS)):
        print(f"  {split}_acc  {result[f'{split}_acc']:.6f}   logged {acc_name} {logged[acc_name]:.6f}   "
              f"difference {100 * (result[f'{split}_acc'] - logged[acc_name]):+.4f} points")
        print(f"  {split}_loss {result[f'{split}_loss']:.6f}   logged {loss_name} {logged[loss_name]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
