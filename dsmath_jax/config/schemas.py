"""The config schema of every command: `SCHEMAS[command]` is its base config (every key, typed defaults) and
its `validate(config)` (what types cannot check). pretrain and sft share the training schema."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import ml_collections

from dsmath_jax.config import eval as eval_schema
from dsmath_jax.config import mine, rl, rm, train


class Schema(NamedTuple):
    base: Callable[[], ml_collections.ConfigDict]
    validate: Callable[[ml_collections.ConfigDict], None]


SCHEMAS: dict[str, Schema] = {
    "pretrain": Schema(train.base_train_config, train.validate),
    "sft": Schema(train.base_train_config, train.validate),
    "rm": Schema(rm.base_rm_config, rm.validate),
    "rl": Schema(rl.base_rl_config, rl.validate),
    "eval": Schema(eval_schema.base_eval_config, eval_schema.validate),
    "mine": Schema(mine.base_mine_config, mine.validate),
}
