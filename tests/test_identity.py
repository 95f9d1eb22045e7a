"""A run's identity (src.tracking.hash_config: its config_hash tag, its checkpoint's name, whether
a re-run skips it; src.figures' groups by NOT_IDENTITY): the resolved config without any path or
other execution-only key, and the digest of the data it trains on. Moving the data, or another
folder per node, keeps a FINISHED run FINISHED; other data under the same config is another run."""

import shutil

from helpers.configs import compose_config, group_options
from helpers.data_files import write_covtype_cache
from helpers.store import runs_in
from omegaconf import OmegaConf

from src import schema
from src.groups import identity
from src.tracking import NOT_IDENTITY, hash_config
from src.train import train


def _path_valued(node, prefix: str = "") -> list[str]:
    """The dotted keys of an unresolved config whose value interpolates a path (paths.*, or
    Hydra's runtime folders)."""
    found = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _path_valued(value, name + ".")
        elif isinstance(value, str) and ("${paths." in value or "${hydra:" in value):
            found.append(name)
    return found


def _left_out(key: str) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in NOT_IDENTITY)


def test_no_path_valued_key_of_any_option_enters_the_identity():
    """The class, not the two keys of today: every key of every option in conf/ whose value is a
    path (interpolates paths.*, or Hydra's runtime folders) is left out of the identity. A new data
    set with `root: ${paths.data_dir}` fails here until NOT_IDENTITY lists it."""
    compositions = [()] + [(f"{group}={option}",) for group in ("dataset", "model", "optimizer", "schedule",
                                                                "experiment") for option in group_options(group)]
    seen = set()
    for overrides in compositions:
        cfg = compose_config(*overrides)
        seen.update(_path_valued(OmegaConf.to_container(cfg, resolve=False)))
    assert {"dataset.data_dir", "dataset.cache_dir"} <= seen  # the walk finds them
    assert sorted(key for key in seen if not _left_out(key)) == []


def test_paths_never_change_the_hash_the_data_digest_does():
    base = compose_config("dataset=cifar10", "paths.data_dir=/data/a", "paths.output_dir=/out/a")
    moved = compose_config("dataset=cifar10", "paths.data_dir=/elsewhere/b", "paths.output_dir=/out/b",
                           "dataset.download=false")
    assert hash_config(base, "0123456789ab") == hash_config(moved, "0123456789ab")
    assert hash_config(base, "0123456789ab") != hash_config(base, "ba9876543210")
    mnist = compose_config("paths.data_dir=/data/a")
    cached_elsewhere = compose_config("paths.data_dir=/data/a", "dataset.cache_dir=/node7/scratch")
    assert hash_config(mnist, "0123456789ab") == hash_config(cached_elsewhere, "0123456789ab")
    assert hash_config(mnist, "0123456789ab") != hash_config(compose_config("trainer.seed=1"), "0123456789ab")


def _covtype_cfg(data_dir, output_dir):
    return compose_config("dataset=covtype", "dataset.download=false", f"paths.data_dir={data_dir}",
                          f"paths.output_dir={output_dir}", "trainer.epochs=1", "schedule.milestones=[]",
                          "schedule.batch_size=16", "trainer.threads=1", "tracking.sweep_id=identity")


def test_moved_data_keep_a_finished_run_and_other_data_are_another_run(tmp_path):
    """End to end on a real store: the same data in another folder skip the FINISHED run (no
    retraining, no orphaned checkpoint, one figure group); other data under the same config train
    a run of their own, with another config_hash."""
    first, moved, other, out = tmp_path / "first", tmp_path / "moved", tmp_path / "other", tmp_path / "out"
    write_covtype_cache(first, n=400, seed=0)
    shutil.copytree(first, moved)
    write_covtype_cache(other, n=400, seed=1)

    assert train(_covtype_cfg(first, out))["outcome"] == "finished"
    assert train(_covtype_cfg(moved, out))["outcome"] == "skipped"
    [run] = runs_in(out)
    assert not [key for key in identity(run.data.params) if "data_dir" in key or key.startswith("paths.")]

    assert train(_covtype_cfg(other, out))["outcome"] == "finished"
    hashes = {r.data.tags[schema.CONFIG_HASH_TAG] for r in runs_in(out)}
    assert len(hashes) == 2
    assert list((out / "checkpoints").glob("*.pt")) == []  # FINISHED runs leave no checkpoint behind
