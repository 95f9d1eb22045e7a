import pytest
from conftest import TINY, client_for

from src.tracking import flatten, tracked_run


def test_a_raising_job_ends_failed_with_the_error(make_cfg, shared_store):
    cfg = make_cfg(*TINY, "tracking.sweep_id=raises")
    with pytest.raises(RuntimeError, match="boom"):
        with tracked_run(cfg, {"sweep_id": "raises"}, run_name="raises") as run:
            run.log({"val_loss": 1.0}, step=0)
            raise RuntimeError("boom")
    client = client_for(shared_store)
    [failed] = client.search_runs([client.get_experiment_by_name("batch-size-study").experiment_id],
                                  "tags.sweep_id = 'raises'")
    assert failed.info.status == "FAILED"
    assert failed.data.tags["error"] == "RuntimeError: boom"
    assert failed.data.metrics["val_loss"] == 1.0  # what was logged before the error is kept


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}) == {"a.b": "1", "a.c": "[1, 2]", "d": "None"}
