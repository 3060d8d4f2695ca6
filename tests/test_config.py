"""The run configuration: sections, the registry, TOML in and out, errors naming the key."""

import dataclasses
import json
import tomllib

import pytest

from hpa_embed.config import (
    SECTIONS,
    ConfigError,
    CropConfig,
    DataConfig,
    EvaluateConfig,
    InputConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    config_template,
    read_config_file,
    to_toml,
    write_config_file,
)
from hpa_embed.io import DataError
from hpa_embed.synthetic import SyntheticConfig


def test_every_section_is_registered_in_pipeline_order():
    assert list(SECTIONS) == ["input", "segment", "crop", "split", "model", "loss", "data", "train", "index",
                              "classify", "evaluate", "map"]
    assert [f.name for f in dataclasses.fields(RunConfig)] == list(SECTIONS)
    for cls in SECTIONS.values():
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen


def test_section_dict_round_trip_through_json():
    model = ModelConfig(arch="resnet34", in_chans=3, pretrained="weights/r34.pth", mean=(0.1, 0.2, 0.3))
    loss = LossConfig(classification=None, miner=None, class_weights="effective_number")
    for config in (model, loss, CropConfig(crop_size=48, channels=("red", "green", "blue")),
                   SyntheticConfig(size=300, confluence=(0.2, 0.4))):
        assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_run_toml_round_trip(tmp_path):
    config = RunConfig(
        input=InputConfig(preset="tiny", n_images=5, difficulty=0.2),
        crop=CropConfig(crop_size=48),
        model=ModelConfig(arch="resnet18", crop_size=48, pretrained=None),
        loss=LossConfig(miner=None),
        evaluate=EvaluateConfig(split="heldout"),
    )
    path = write_config_file(tmp_path / "run.toml", config)
    assert read_config_file(path) == config
    assert 'miner = "none"' in path.read_text()


def test_missing_tables_and_keys_take_defaults(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepochs = 3\n")
    config = read_config_file(path)
    assert config.train == TrainConfig(epochs=3)
    assert config.model == ModelConfig() and config.input == InputConfig()


def test_crop_size_given_once_holds_for_model_and_crops(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[model]\ncrop_size = 64\n")
    assert read_config_file(path).crop.crop_size == 64
    path.write_text("[crop]\ncrop_size = 48\n")
    assert read_config_file(path).model.crop_size == 48
    path.write_text("[crop]\ncrop_size = 48\n[model]\ncrop_size = 64\n")
    with pytest.raises(DataError, match=r"\[model\] crop_size = 64 but \[crop\] crop_size = 48"):
        read_config_file(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("[data]\nbatch_sise = 3\n", r"\[data\] batch_sise: unknown key; did you mean batch_size\?"),
        ("[trainer]\nepochs = 3\n", r"\[trainer\]: unknown table; did you mean \[train\]\?"),
        ("[data]\nbatch_size = '64'\n", r"\[data\] batch_size: expected an integer, got '64'"),
        ("[data]\nbatch_size = 64.0\n", r"\[data\] batch_size: expected an integer"),
        ("[data]\naugment = 1\n", r"\[data\] augment: expected true or false, got 1"),
        ("[train]\nlr = 'fast'\n", r"\[train\] lr: expected a number"),
        ("[crop]\nchannels = 'red'\n", r"\[crop\] channels: expected a list"),
        ("[split]\nfractions = [0.8, 0.2]\n", r"\[split\] fractions: expected a list of 3 values"),
        ("[data]\nbatch_size = 0\n", r"\[data\] batch_size=0 must be a positive integer"),
        ("[model]\narch = 'resnet9'\n", r"\[model\] arch='resnet9' is not one of"),
        ("[input]\nsource = 'directory'\n", r"\[input\] source='directory' needs images and labels"),
        ("[map]\nsample_size = 10\n", r"\[map\] sample_size=10 must be none or an integer > n_neighbors"),
        ("[model\n", "not valid TOML"),
    ],
)
def test_errors_name_the_file_table_and_key(tmp_path, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_config_file(path)
    assert str(info.value).startswith(str(path))


def test_configs_that_cannot_train_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="mil_weight > 0 needs multi-hot targets"):
        RunConfig(loss=LossConfig(mil_weight=1.0), data=DataConfig(label_mode="single_label"))
    with pytest.raises(ConfigError, match="needs 32 classes, the scheme has 19: raise m_per_class"):
        RunConfig(data=DataConfig(batch_size=64, m_per_class=2))
    with pytest.raises(ConfigError, match=r"\[model\] needs channels .*yellow.* \[crop\] stores only"):
        RunConfig(crop=CropConfig(channels=("red", "green", "blue")))


def test_template_documents_every_key_and_reads_back_as_the_defaults():
    text = config_template()
    assert read_config_from_text(text) == RunConfig()
    for name, cls in SECTIONS.items():
        assert f"[{name}]" in text
        docs = cls.field_docs()
        for f in dataclasses.fields(cls):
            assert f.name in docs, f"{name}.{f.name} has no documentation"
            assert f"\n{f.name} = " in text
    # documentation is plain text above its key
    assert "# Side S of the square crops, in pixels.\ncrop_size = 128" in text
    assert "``" not in text and ":class:" not in text


def read_config_from_text(text):
    return RunConfig.from_dict(tomllib.loads(text))


def test_to_toml_of_some_sections_reads_back(tmp_path):
    text = to_toml({"model": ModelConfig(arch="resnet18"), "train": TrainConfig(epochs=2)})
    config = read_config_from_text(text)
    assert config.model.arch == "resnet18" and config.train.epochs == 2
    with pytest.raises(ValueError, match="does not hold"):
        to_toml({"model": TrainConfig()})
