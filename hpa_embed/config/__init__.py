"""The configuration of a run: one frozen dataclass per section, one registry, TOML in and out.

A run is described by one TOML file with a table per section (:data:`SECTIONS`, in the order the
pipeline uses them)::

    [input]
    source = "synthetic"
    preset = "small"

    [model]
    arch = "resnet18"

    [train]
    epochs = 5

A missing table or key takes its default. :func:`read_config_file` reads a file into a
:class:`RunConfig`, refusing an unknown table or key (with the closest known name), a value of
the wrong type and an invalid value, each named by its path (``[data] batch_size``).
:func:`config_template` renders every section with its defaults and documentation. TOML has no
null, so an optional field is written ``"none"`` and ``"none"`` (any case) reads back as None.
"""

from .base import ConfigError, ConfigSection
from .cells import CropConfig, InputConfig, SegmentConfig, SplitConfig
from .inference import EVALUATION_SPLITS, ClassifyConfig, EvaluateConfig, IndexConfig, MapConfig
from .run import SECTIONS, RunConfig, config_template, read_config_file, to_toml, write_config_file
from .training import (
    ARCHITECTURES,
    DataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    check_training_configs,
)

__all__ = [
    "ConfigError",
    "ConfigSection",
    "InputConfig",
    "SegmentConfig",
    "CropConfig",
    "SplitConfig",
    "ModelConfig",
    "LossConfig",
    "DataConfig",
    "TrainConfig",
    "IndexConfig",
    "ClassifyConfig",
    "EvaluateConfig",
    "MapConfig",
    "EVALUATION_SPLITS",
    "RunConfig",
    "ARCHITECTURES",
    "SECTIONS",
    "check_training_configs",
    "read_config_file",
    "write_config_file",
    "to_toml",
    "config_template",
]
