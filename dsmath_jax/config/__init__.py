"""Config schemas, one per command, and the one loader every command, the quickstart and the sweeps use.

    train    `dsmath pretrain` / `dsmath sft`: base_train_config, the 1.3B / 7B / tiny settings, arithmetic SFT
    rl       `dsmath rl`: base_rl_config, METHODS, REWARDS, the loss choices, paper_grpo, tiny_rl_overrides
    rm       `dsmath rm`: base_rm_config, KINDS, LABEL_MODES, tiny_rm_overrides
    eval     `dsmath eval`: base_eval_config, MODES, PROTOCOLS, tiny
    mine     `dsmath mine`: base_mine_config, tiny_mine_overrides
    schemas  SCHEMAS: command -> (base config, validate)
    loader   load_config(spec, overrides, command=...): import, get_config, overrides, lock, validate
    checks   ConfigError and the checks the schemas share
    args     parse_arg: the "a,b,tiny" argument of an experiment file's get_config

Each schema module's base config has every key with a typed default (`placeholder(type)` where None is
allowed); its `validate(config)` checks what types cannot (choices, ranges, no key the schema lacks and none
missing). The experiment files under configs/ are small `get_config(arg)` files built from these.
"""

from dsmath_jax.config.checks import ConfigError
from dsmath_jax.config.loader import load_config
from dsmath_jax.config.schemas import SCHEMAS

__all__ = ["SCHEMAS", "ConfigError", "load_config"]
