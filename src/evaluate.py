"""`python -m src.evaluate run_id=<id> [KEY=VALUE ...]`: a logged run's final weights, evaluated
on the validation set again.

Reads the run's config (its config.yaml artifact) and its weights (model/state_dict.pt, kept by
tracking.log_weights), rebuilds the data and the model as the run built them (src.build.build_run),
and prints the validation loss and accuracy next to the run's logged final_val_loss and
final_val_acc, and whether the data are the ones it trained on (the digest of its dataset input).
Nothing is logged.

The overrides (KEY=VALUE, as src.run takes them) locate the store through conf/config.yaml
(paths.output_dir=..., tracking.uri=...), and those under paths and trainer.device also apply to
the run's config: where the data are on this machine (paths.data_dir=...) and where to evaluate.
A missing run, or a run without weights, is a one-line error and exit code 2.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

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


def evaluate_run(run_id: str, overrides: Sequence[str] = ()) -> dict:
    """The run's weights on its validation set: {val_loss, val_acc, logged (the run's final
    metrics), digest (of the data now), logged_digest, device, run_name}."""
    import torch
    from mlflow.exceptions import MlflowException
    from omegaconf import OmegaConf

    from src import devices, schema
    from src.config import compose
    from src.stores import open_store
    from src.build import build_run
    from src.step import evaluate_split

    tracking = compose(*overrides).tracking
    client = open_store(tracking.uri)  # one line naming tracking.uri if it cannot be opened
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise EvaluationError(f"run_id={run_id}: no such run in {tracking.uri}") from None
    with tempfile.TemporaryDirectory() as folder:
        try:
            weights_path = client.download_artifacts(run_id, schema.WEIGHTS_ARTIFACT, folder)
        except (MlflowException, OSError):
            raise EvaluationError(f"run_id={run_id}: no {schema.WEIGHTS_ARTIFACT} (logged with tracking.log_weights=false,"
                                  " or not FINISHED)") from None
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
        cfg = OmegaConf.load(client.download_artifacts(run_id, schema.CONFIG_ARTIFACT, folder))
    cfg.merge_with_dotlist([o for o in overrides if o.startswith(MACHINE_KEYS)])

    device = devices.pick_device(cfg.trainer.device)
    parts = build_run(cfg, device)
    parts.model.load_state_dict(weights)
    val_loss, val_acc = evaluate_split(parts.model, parts.data.x_val, parts.data.y_val, cfg.trainer.eval_batch_size,
                                       parts.settings.precision)
    logged_digests = [d.dataset.digest for d in run.inputs.dataset_inputs]
    return {
        "val_loss": val_loss, "val_acc": val_acc,
        "logged": {name: run.data.metrics.get(name) for name in (schema.FINAL_VAL_LOSS, schema.FINAL_VAL_ACC)},
        "digest": parts.data.digest(), "logged_digest": logged_digests[0] if logged_digests else None,
        "device": str(device), "run_name": run.info.run_name,
    }


def main(argv: Sequence[str] | None = None) -> int:
    from src.cli import one_line_error
    from src.schema import FINAL_VAL_ACC, FINAL_VAL_LOSS

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
    print(f"  val_acc  {result['val_acc']:.6f}   logged {FINAL_VAL_ACC} {logged[FINAL_VAL_ACC]:.6f}   "
          f"difference {100 * (result['val_acc'] - logged[FINAL_VAL_ACC]):+.4f} points")
    print(f"  val_loss {result['val_loss']:.6f}   logged {FINAL_VAL_LOSS} {logged[FINAL_VAL_LOSS]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
