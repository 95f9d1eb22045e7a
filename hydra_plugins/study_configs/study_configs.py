"""Registers the study's structured configs (src/config.py: types/trainer, types/tracking,
types/paths) in Hydra's ConfigStore.

Hydra imports every module of the hydra_plugins namespace package it finds on the path (the
checkout's own folder, or an installed copy) when it starts, before it composes a config, so the
YAML's `/types/<group>@_here_` defaults find their dataclasses in a composition that never imports
src.config: the tests, the benchmarks, a notebook's compose(). (src.config registers them on
import too: `python -m src.run` finds them from any folder.)
"""

from src.config import register_configs

register_configs()
