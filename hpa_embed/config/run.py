"""The whole run: the section registry, :class:`RunConfig`, TOML in and out, the template."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import textwrap
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io import DataError, atomic_path
from .base import ConfigError, ConfigSection, plain_text
from .cells import CropConfig, InputConfig, SegmentConfig, SplitConfig
from .inference import ClassifyConfig, EvaluateConfig, IndexConfig, MapConfig
from .training import DataConfig, LossConfig, ModelConfig, TrainConfig, check_training_configs

__all__ = ["SECTIONS", "RunConfig", "read_config_file", "write_config_file", "to_toml", "config_template"]


#: TOML table name -> config class, in pipeline order.
SECTIONS: dict[str, type[ConfigSection]] = {
    "input": InputConfig,
    "segment": SegmentConfig,
    "crop": CropConfig,
    "split": SplitConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "index": IndexConfig,
    "classify": ClassifyConfig,
    "evaluate": EvaluateConfig,
    "map": MapConfig,
}


@dataclass(frozen=True)
class RunConfig:
    """Every section of a run (:data:`SECTIONS`), each defaulting to its own defaults.

    Checks what no section can check alone: the model reads the crops the crop section makes
    (same size, channels it stores), cross-entropy needs single-label cells, a balanced batch
    needs no more classes than the scheme has.
    """

    input: InputConfig = field(default_factory=InputConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    map: MapConfig = field(default_factory=MapConfig)

    def __post_init__(self):
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"[{name}] must be a {cls.__name__}")
        if self.model.crop_size != self.crop.crop_size:
            raise ConfigError(f"[model] crop_size = {self.model.crop_size} but [crop] crop_size = "
                              f"{self.crop.crop_size}: the model trains on the stored crops, set both alike")
        missing = [name for name in self.model.channels if name not in self.crop.channels]
        if missing:
            raise ConfigError(f"[model] needs channels {list(self.model.channels)} but [crop] stores only "
                              f"{list(self.crop.channels)}")
        check_training_configs(self.model, self.loss, self.data)
        if self.map.method is not None and self.map.method not in self.classify.methods:
            raise ConfigError(f"[map] method = {self.map.method!r} is not among [classify] methods "
                              f"{list(self.classify.methods)}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: getattr(self, name).to_dict() for name in SECTIONS}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> RunConfig:
        """Build from ``{table: {key: value}}``; errors name the table and key."""
        document = _share_crop_size(document)
        sections = {}
        for name, table in document.items():
            if name not in SECTIONS:
                close = difflib.get_close_matches(name, list(SECTIONS), n=1)
                hint = f"did you mean [{close[0]}]?" if close else f"known tables: {', '.join(SECTIONS)}"
                raise ConfigError(f"[{name}]: unknown table; {hint}")
            if not isinstance(table, Mapping):
                raise ConfigError(f"[{name}] must be a table")
            try:
                sections[name] = SECTIONS[name].from_dict(table)
            except (ConfigError, TypeError, ValueError) as error:
                raise ConfigError(f"[{name}] {error}") from None
        return cls(**sections)

    def replace(self, **sections: ConfigSection) -> RunConfig:
        """A copy with whole sections replaced (checked again)."""
        return dataclasses.replace(self, **sections)


def _share_crop_size(document: Mapping[str, Any]) -> dict[str, Any]:
    """The crop size set in one of [crop] and [model] holds for both (the model reads the crops)."""
    document = dict(document)
    sizes = {name: document[name]["crop_size"] for name in ("crop", "model")
             if isinstance(document.get(name), Mapping) and "crop_size" in document[name]}
    if len(sizes) == 1:
        (size,) = sizes.values()
        for name in ("crop", "model"):
            if isinstance(document.get(name, {}), Mapping):  # a non-table is refused by from_dict
                document[name] = {**document.get(name, {}), "crop_size": size}
    return document


def read_config_file(path: str | os.PathLike) -> RunConfig:
    """Read a TOML run configuration; tables and keys left out take their defaults.

    Raises :class:`~hpa_embed.io.DataError` naming the file, the table and the key for invalid
    TOML, an unknown table or key, a wrong type or an invalid value.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DataError(path, f"not valid TOML ({error})") from error
    try:
        return RunConfig.from_dict(document)
    except ConfigError as error:
        raise DataError(path, str(error)) from None


def _toml_value(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _sections(configs: RunConfig | Mapping[str, ConfigSection]) -> dict[str, ConfigSection]:
    if isinstance(configs, RunConfig):
        return {name: getattr(configs, name) for name in SECTIONS}
    for name, config in configs.items():
        if name not in SECTIONS or not isinstance(config, SECTIONS[name]):
            raise ValueError(f"section {name!r} does not hold a {SECTIONS.get(name, 'known config')}")
    return dict(configs)


def _render(name: str, cls: type[ConfigSection], values: Mapping[str, Any], comments: bool) -> list[str]:
    lines = []
    if comments:
        summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
        lines.extend(f"# {line}" for line in textwrap.wrap(plain_text(summary), 96))
    lines.append(f"[{name}]")
    docs = cls.field_docs() if comments else {}
    for key, value in values.items():
        if key in docs:
            lines.extend(f"# {line}" for line in textwrap.wrap(docs[key], 96))
        lines.append(f"{key} = {_toml_value(value)}")
    lines.append("")
    return lines


def to_toml(configs: RunConfig | Mapping[str, ConfigSection]) -> str:
    """Render a run (or some of its sections) as TOML that :func:`read_config_file` reads back."""
    lines = []
    for name, config in _sections(configs).items():
        lines.extend(_render(name, type(config), config.to_dict(), comments=False))
    return "\n".join(lines)


def config_template() -> str:
    """Every section with its declared defaults and each key's documentation: a file to start from."""
    lines = [
        "# hpa-embed run configuration: every key with its default. A missing table or key takes",
        "# its default, so keep only what you change. Run it with: hpa-embed run THIS.toml --out DIR",
        "",
    ]
    for name, cls in SECTIONS.items():
        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    for f in dataclasses.fields(cls)}
        lines.extend(_render(name, cls, defaults, comments=True))
    return "\n".join(lines)


def write_config_file(path: str | os.PathLike, configs: RunConfig | Mapping[str, ConfigSection]) -> Path:
    """Write a run (or some of its sections) as a TOML file, atomically."""
    path = Path(path)
    text = to_toml(configs)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
