"""Model config, backbone, first-conv adaptation, heads, checkpoints and state files.

Small randomly initialised ResNet-18s on 32 px inputs; nothing is downloaded.
"""

import json
import math

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from hpa_embed.config import ModelConfig
from hpa_embed.io import DataError
from hpa_embed.models import (
    CellEmbeddingModel,
    ClassifierHead,
    ModelOutput,
    adapt_first_conv,
    create_backbone,
    create_model,
    describe_checkpoint,
    load_checkpoint,
    load_state,
    preprocess,
    save_checkpoint,
    save_state,
)
from hpa_embed.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_checkpoint_config


def small_config(**overrides) -> ModelConfig:
    settings = {"arch": "resnet18", "in_chans": 4, "embedding_dim": 16, "crop_size": 32}
    return ModelConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def model_and_config():
    torch.manual_seed(0)
    config = small_config()
    return create_model(config).eval(), config


@pytest.fixture(scope="module")
def batch():
    return torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(1))


# --------------------------------------------------------------------------- config


def test_model_config_defaults_follow_the_channels():
    config = ModelConfig()
    assert config.channels == ("red", "green", "blue", "yellow")
    assert config.mean[3] == pytest.approx((0.485 + 0.456) / 2)
    rgb = ModelConfig(in_chans=3)
    assert rgb.channels == ("red", "green", "blue") and len(rgb.mean) == len(rgb.std) == 3


@pytest.mark.parametrize(
    "overrides",
    [
        {"arch": "resnet9"},
        {"in_chans": 2},
        {"in_chans": 4, "channels": ("green", "red", "blue", "yellow")},
        {"in_chans": 3, "mean": (0.1, 0.2)},
        {"std": (1.0, 0.0, 1.0, 1.0)},
        {"num_classes": 28},  # hpa2021 has 19
        {"dropout": 1.0},
    ],
)
def test_model_config_rejects_bad_values(overrides):
    with pytest.raises(ValueError):
        ModelConfig(**overrides)


# --------------------------------------------------------------------------- first conv


def hand_weight() -> torch.Tensor:
    # two output filters, 1x1 kernels: filter 0 has taps (R, G, B) = (1, 2, 3), filter 1 (4, -2, 8)
    return torch.tensor([[1.0, 2.0, 3.0], [4.0, -2.0, 8.0]]).view(2, 3, 1, 1)


def test_adapt_first_conv_four_channels_by_hand():
    adapted = adapt_first_conv(hand_weight(), 4)
    # (R, G, B, yellow = (R + G) / 2) * 3/4
    expected = torch.tensor([[0.75, 1.5, 2.25, 1.125], [3.0, -1.5, 6.0, 0.75]]).view(2, 4, 1, 1)
    assert adapted.shape == (2, 4, 1, 1)
    torch.testing.assert_close(adapted, expected)


def test_adapt_first_conv_one_three_five_channels_by_hand():
    torch.testing.assert_close(adapt_first_conv(hand_weight(), 1), torch.tensor([6.0, 10.0]).view(2, 1, 1, 1))
    same = adapt_first_conv(hand_weight(), 3)
    torch.testing.assert_close(same, hand_weight())
    assert same.data_ptr() != hand_weight().data_ptr()
    # timm's cyclic repeat (R, G, B, R, G) scaled by 3/5
    five = torch.tensor([[1.0, 2.0, 3.0, 1.0, 2.0], [4.0, -2.0, 8.0, 4.0, -2.0]]).view(2, 5, 1, 1) * 0.6
    torch.testing.assert_close(adapt_first_conv(hand_weight(), 5), five)
    with pytest.raises(ValueError, match=r"\[O, 3, k, k\]"):
        adapt_first_conv(torch.zeros(2, 4, 1, 1), 4)


def test_adapted_filter_keeps_the_response_to_a_grey_image():
    # equal R, G, B taps and an input with R = G = B and yellow = (R + G) / 2: same response
    weight = torch.randn(5, 1, 3, 3).repeat(1, 3, 1, 1)
    grey = torch.rand(1, 1, 8, 8)
    rgb, rgby = grey.repeat(1, 3, 1, 1), grey.repeat(1, 4, 1, 1)
    torch.testing.assert_close(
        torch.nn.functional.conv2d(rgby, adapt_first_conv(weight, 4)),
        torch.nn.functional.conv2d(rgb, weight),
    )


# --------------------------------------------------------------------------- backbone and model


def test_forward_shapes_and_unit_norm(batch):
    torch.manual_seed(0)
    config = small_config(dropout=0.5)
    model = create_model(config)
    head = model.head
    with torch.no_grad():  # BatchNorm statistics and affine far from identity, so they must be applied
        head.norm.running_mean.uniform_(-1, 1)
        head.norm.running_var.uniform_(0.5, 2)
        head.norm.weight.uniform_(0.5, 2)
        head.norm.bias.uniform_(-1, 1)
    model.eval()
    with torch.no_grad():
        output = model(batch)
        features = model.backbone(batch).double()
    assert isinstance(output, ModelOutput)
    assert output.embedding.shape == (3, 16) and output.embedding.dtype == torch.float32
    assert output.logits.shape == (3, 19) and output.logits.dtype == torch.float32
    # by hand, in float64: Linear -> BatchNorm (running statistics) -> no dropout -> L2-normalise
    z = features @ head.linear.weight.double().T + head.linear.bias.double()
    z = (z - head.norm.running_mean.double()) / torch.sqrt(head.norm.running_var.double() + head.norm.eps)
    z = z * head.norm.weight.double() + head.norm.bias.double()
    embedding = z / torch.linalg.vector_norm(z, dim=1, keepdim=True)
    torch.testing.assert_close(output.embedding.double(), embedding, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(output.embedding.double().norm(dim=1), torch.ones(3, dtype=torch.float64))
    # the classifier as documented: W (sqrt(D) e) + b on the unit embedding
    classifier = model.classifier.linear
    logits = math.sqrt(16) * embedding @ classifier.weight.double().T + classifier.bias.double()
    torch.testing.assert_close(output.logits.double(), logits, atol=1e-5, rtol=1e-5)
    # channels_last input gives the same result
    with torch.no_grad():
        channels_last = model(batch.contiguous(memory_format=torch.channels_last)).embedding
    torch.testing.assert_close(channels_last, output.embedding, atol=1e-5, rtol=1e-4)


def test_classifier_scales_the_unit_embedding_by_sqrt_d():
    head = ClassifierHead(embedding_dim=4, num_classes=2)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, -1.0, 0.0]]))
        head.linear.bias.copy_(torch.tensor([0.0, 1.0]))
    e = torch.tensor([[0.5, 0.5, 0.5, 0.5]])  # unit norm; sqrt(4) * e = (1, 1, 1, 1)
    torch.testing.assert_close(head(e), torch.tensor([[1.0, 1.0]]))


def test_train_mode_embedding_is_unit_norm():
    torch.manual_seed(0)
    model = create_model(small_config(dropout=0.5)).train()
    embedding = model(torch.rand(4, 4, 32, 32)).embedding
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(4))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_file_is_adapted_to_four_channels(tmp_path, suffix):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(weights=None)
    state = source.state_dict()  # includes fc.*, which must be ignored
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    backbone, features = create_backbone("resnet18", 4, weights=path)
    assert features == 512
    loaded = backbone.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], adapt_first_conv(state["conv1.weight"], 4))
    torch.testing.assert_close(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    assert not any(key.startswith("fc.") for key in loaded)
    # a 3-channel model takes the filters unchanged; a model built from the config does the same
    rgb, _ = create_backbone("resnet18", 3, weights=path)
    torch.testing.assert_close(rgb.state_dict()["conv1.weight"], state["conv1.weight"])
    model = create_model(small_config(pretrained=str(path)))
    torch.testing.assert_close(model.backbone.conv1.weight, loaded["conv1.weight"])
    assert model.backbone.eval()(torch.rand(1, 4, 32, 32)).shape == (1, 512)


def test_pretrained_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing\.pth: weights file not found"):
        create_backbone("resnet18", 4, weights=tmp_path / "missing.pth")
    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(DataError, match=r"resnet18\.pth: does not match a 4-channel torchvision resnet34"):
        create_backbone("resnet34", 4, weights=wrong)
    with pytest.raises(DataError, match=r"resnet18\.pth: .*shape mismatches"):
        create_backbone("resnet50", 3, weights=wrong)
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(DataError, match="does not hold a state dict"):
        create_backbone("resnet18", 3, weights=not_a_dict)
    pickled = tmp_path / "object.pth"
    torch.save({"conv1.weight": torch.zeros(1), "evil": CellEmbeddingModel}, pickled)
    with pytest.raises(DataError, match=r"object\.pth: unreadable weights file"):
        create_backbone("resnet18", 3, weights=pickled)
    keras = tmp_path / "weights.h5"
    keras.write_bytes(b"\0")
    with pytest.raises(DataError, match=r"weights\.h5: unknown weights file type"):
        create_backbone("resnet18", 3, weights=keras)


def test_freeze_backbone_keeps_batchnorm_in_eval():
    model = create_model(small_config())
    model.freeze_backbone(True).train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    assert not model.backbone.bn1.training and model.head.norm.training
    before = model.backbone.bn1.running_mean.clone()
    model(torch.rand(4, 4, 32, 32)).embedding.sum().backward()
    torch.testing.assert_close(model.backbone.bn1.running_mean, before)
    assert model.backbone.conv1.weight.grad is None and model.head.linear.weight.grad is not None
    model.freeze_backbone(False)
    assert all(p.requires_grad for p in model.backbone.parameters()) and model.backbone.bn1.training


def test_preprocess_by_hand():
    config = ModelConfig(in_chans=3, mean=(0.5, 0.0, 0.25), std=(0.5, 1.0, 0.25))
    crops = np.zeros((2, 3, 2, 2), dtype=np.uint8)
    crops[0, :, 0, 0] = (255, 51, 0)
    x = preprocess(crops, config)
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2, 2)
    torch.testing.assert_close(x[0, :, 0, 0], torch.tensor([1.0, 0.2, -1.0]))
    torch.testing.assert_close(x[1, :, 1, 1], torch.tensor([-1.0, 0.0, -1.0]))
    # float input in [0, 1], 16-bit input and a single crop give the same numbers
    torch.testing.assert_close(preprocess(crops[0].astype(np.float32) / 255, config)[0], x[0])
    torch.testing.assert_close(preprocess(crops.astype(np.uint16) * 257, config), x)
    with pytest.raises(ValueError, match=r"expected \[N, 3, S, S\]"):
        preprocess(np.zeros((1, 4, 2, 2), np.uint8), config)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, model_and_config, batch):
    model, config = model_and_config
    directory = save_checkpoint(tmp_path / "ckpt", model, config, {"epoch": 3, "map": 0.41})
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]
    meta = json.loads((directory / CONFIG_FILE).read_text())
    assert (meta["format"], meta["version"]) == ("hpa_embed.checkpoint", 1)
    assert meta["class_scheme"]["names"][18] == "Negative"
    summary = describe_checkpoint(directory)
    assert "resnet18, 4 channels" in summary and "epoch: 3" in summary
    loaded, loaded_config, extra = load_checkpoint(directory)
    assert loaded_config == config and extra == {"epoch": 3, "map": 0.41}
    assert not loaded.training
    with torch.inference_mode():
        expected, got = model(batch), loaded(batch)
    assert torch.equal(expected.embedding, got.embedding) and torch.equal(expected.logits, got.logits)


def test_checkpoint_replace_is_complete_or_nothing(tmp_path, model_and_config, monkeypatch):
    model, config = model_and_config
    directory = save_checkpoint(tmp_path / "ckpt", model, config, {"epoch": 1})
    save_checkpoint(directory, model, config, {"epoch": 2})
    assert read_checkpoint_config(directory)[1] == {"epoch": 2}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(directory, model, config, {"epoch": 3})
    assert read_checkpoint_config(directory)[1] == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary left behind
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(directory, model, config, {"bad": object()})


def test_checkpoint_corruption_errors(tmp_path, model_and_config):
    model, config = model_and_config
    directory = save_checkpoint(tmp_path / "ckpt", model, config)
    weights = directory / WEIGHTS_FILE
    data = weights.read_bytes()

    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"model\.safetensors: corrupt or truncated"):
        load_checkpoint(directory)
    weights.write_bytes(data)

    config_path = directory / CONFIG_FILE
    good = config_path.read_text()
    config_path.write_text(good[:-20])
    with pytest.raises(DataError, match=r"config\.json: not valid JSON"):
        load_checkpoint(directory)

    meta = json.loads(good)
    config_path.write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(DataError, match="format version 2 is not supported"):
        load_checkpoint(directory)

    config_path.write_text(json.dumps({**meta, "model": {**meta["model"], "embedding_dim": 32}}))
    with pytest.raises(DataError, match=r"model\.safetensors: weights do not match .*shape mismatches"):
        load_checkpoint(directory)

    config_path.write_text(json.dumps({**meta, "model": {**meta["model"], "arch": "resnet34"}}))
    with pytest.raises(DataError, match="missing keys"):
        load_checkpoint(directory)

    with pytest.raises(DataError, match=r"nowhere.*config\.json: not found"):
        load_checkpoint(tmp_path / "nowhere")
    # a crash between moving the old checkpoint aside and renaming the new one in is reported
    (tmp_path / ".gone.old-1a2b3c4d").mkdir()
    with pytest.raises(DataError, match=r"interrupted save left .*\.gone\.old-1a2b3c4d"):
        load_checkpoint(tmp_path / "gone")


# --------------------------------------------------------------------------- state files


def test_state_round_trip_resumes_an_optimizer_exactly(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    x = torch.randn(5, 3)

    def step(net, optimizer, scheduler):
        optimizer.zero_grad()
        net(x).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()

    step(net, optimizer, scheduler)
    state = {
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "numpy_rng": np.random.RandomState(7).get_state(),
        "history": [{"epoch": 0, "loss": 1.5, "best": math.inf}],
        "torch_rng": torch.get_rng_state(),
    }
    path = save_state(tmp_path / "trainer.safetensors", state)
    loaded = load_state(path)
    assert loaded["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.95)
    assert set(loaded["optimizer"]["state"]) == {0, 1}
    assert loaded["history"] == state["history"]
    rng = np.random.RandomState()
    rng.set_state(loaded["numpy_rng"])
    assert rng.randint(1 << 30) == np.random.RandomState(7).randint(1 << 30)

    resumed = torch.nn.Linear(3, 2)
    resumed.load_state_dict(loaded["model"])
    resumed_optimizer = torch.optim.AdamW(resumed.parameters(), lr=0.1, betas=(0.8, 0.95))
    resumed_optimizer.load_state_dict(loaded["optimizer"])
    resumed_scheduler = torch.optim.lr_scheduler.StepLR(resumed_optimizer, step_size=1, gamma=0.5)
    resumed_scheduler.load_state_dict(loaded["scheduler"])
    step(net, optimizer, scheduler)
    step(resumed, resumed_optimizer, resumed_scheduler)
    assert torch.equal(net.weight, resumed.weight) and torch.equal(net.bias, resumed.bias)


def test_state_file_errors(tmp_path):
    with pytest.raises(TypeError, match=r"state\['bad'\]\[1\]"):
        save_state(tmp_path / "s.safetensors", {"bad": [1, object()]})
    path = save_state(tmp_path / "s.safetensors", {"x": torch.arange(1000)})
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_state(path)
    save_file({"x": torch.zeros(1)}, str(path))
    with pytest.raises(DataError, match="not a hpa_embed state file"):
        load_state(path)


def test_pretrained_from_own_checkpoint_loads_its_backbone(tmp_path):
    from hpa_embed.config import ModelConfig
    from hpa_embed.models import create_model, save_checkpoint

    config = ModelConfig(arch="resnet18", in_chans=4, crop_size=32, embedding_dim=8)
    trained = create_model(config)
    checkpoint = save_checkpoint(tmp_path / "run", trained, config)
    warm = create_model(ModelConfig(arch="resnet18", in_chans=4, crop_size=32, embedding_dim=16,
                                    pretrained=str(checkpoint)))
    for name, tensor in trained.backbone.state_dict().items():
        assert torch.equal(warm.backbone.state_dict()[name], tensor), name
