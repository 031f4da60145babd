"""The run configuration's public home: every section and the loader, as users import them.

Each section is defined in its room and composed by :mod:`tiltmatch.training.config`
(the run config); the checks and YAML reading are :mod:`tiltmatch.settings`. Nothing in the
library imports this module: it only gathers the names (``tiltmatch.config.RunConfig``,
``build_config``, ...) for users, the command line and the experiments.
"""

from __future__ import annotations

from tiltmatch.dtm.config import DTMConfig
from tiltmatch.models.config import ModelConfig
from tiltmatch.settings import (
    MAX_CONFIG_BYTES,
    MAX_EXAMPLES,
    MAX_SEED,
    MAX_YAML_NODES,
    ConfigError,
    describe_validation_error,
    numeric_problems,
    parse_override,
    parse_task_options,
    safe_yaml,
    validation_reasons,
)
from tiltmatch.training.config import (
    EvalConfig,
    LoRAConfig,
    RunConfig,
    SamplerConfig,
    Tracker,
    TrainConfig,
    build_config,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_EXAMPLES",
    "MAX_SEED",
    "MAX_YAML_NODES",
    "ConfigError",
    "DTMConfig",
    "EvalConfig",
    "LoRAConfig",
    "ModelConfig",
    "RunConfig",
    "SamplerConfig",
    "Tracker",
    "TrainConfig",
    "build_config",
    "describe_validation_error",
    "numeric_problems",
    "parse_override",
    "parse_task_options",
    "safe_yaml",
    "validation_reasons",
]
