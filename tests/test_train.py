import ddp_fit_script as script
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_torchrun

import hpa_embed.train as train_module
from hpa_embed.config import ConfigError, DataConfig, LossConfig, ModelConfig, TrainConfig, read_config_file
from hpa_embed.data import cell_targets
from hpa_embed.io import DataError
from hpa_embed.models import load_checkpoint
from hpa_embed.store import CellStore
from hpa_embed.train import fit, lr_find, suggest_lr

SMALL = ModelConfig(arch="resnet18", in_chans=4, crop_size=32, embedding_dim=16)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "loss,label_mode",
    [
        (LossConfig(classification="ce", metric=None), "single_label"),
        (LossConfig(classification="ce", miner="semihard"), "single_label"),
        (LossConfig(classification="focal", miner="hard", class_weights="effective_number"), "image_labels"),
        (LossConfig(classification="bce", miner="all"), "true_labels"),
    ],
    ids=["ce", "ce+triplet", "focal+triplet", "bce+triplet-multilabel"],
)
def test_fit_trains_and_logs_every_component(tiny_store_path, tmp_path, loss, label_mode):
    data = DataConfig(label_mode=label_mode, batch_size=8, m_per_class=2, batches_per_epoch=3)
    result = fit(tiny_store_path, tmp_path, SMALL, loss, data, TrainConfig(epochs=2, lr=3e-4), progress=False)
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    for column in ("train_cls", "train_metric", "train_total", "val_total", "val_accuracy", "val_macro_ap"):
        assert np.isfinite(history[column]).all(), column
    assert (history["train_mil"] == 0).all() and (history["val_mil"] == 0).all()  # MIL is off
    expected = loss.w_cls * history["train_cls"] + loss.w_metric * history["train_metric"]
    np.testing.assert_allclose(history["train_total"], expected, rtol=1e-5)
    if loss.metric:
        assert (history["train_triplets_per_batch"] > 0).all()
    else:
        assert (history["train_metric"] == 0).all()
    assert 0 <= history["val_macro_ap"].min() and history["val_macro_ap"].max() <= 1
    # the checkpoint rebuilds the trained model
    model, config, extra = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert config == SMALL and extra["epoch"] == 2
    for name, tensor in weights(result.model).items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    recorded = read_config_file(tmp_path / "config.toml")
    assert (recorded.model, recorded.loss, recorded.data) == (SMALL, loss, data)


def test_fit_mil_recipe_trains_on_whole_images(tiny_store_path, tmp_path, monkeypatch):
    data = DataConfig(label_mode="image_labels", sampler="images", batch_size=16, batches_per_epoch=2)
    loss = LossConfig(classification="bce", mil_weight=1.0)
    batches = []
    real_forward = train_module._Runner.forward_loss

    def record(self, crops, targets, groups, *args, **kwargs):
        batches.append((targets.clone(), groups.clone()))
        return real_forward(self, crops, targets, groups, *args, **kwargs)

    monkeypatch.setattr(train_module._Runner, "forward_loss", record)
    fit(tiny_store_path, tmp_path, SMALL, loss, data, TrainConfig(epochs=1), progress=False)
    history = pd.read_csv(tmp_path / "history.csv")
    assert np.isfinite(history["train_mil"]).all() and (history["train_mil"] > 0).all()
    assert np.isfinite(history["val_mil"]).all() and (history["val_mil"] > 0).all()
    expected = history["train_cls"] + history["train_metric"] + history["train_mil"]
    np.testing.assert_allclose(history["train_total"], expected, rtol=1e-5)
    expected = history["val_cls"] + history["val_metric"] + history["val_mil"]
    np.testing.assert_allclose(history["val_total"], expected, rtol=1e-5)
    # the two training batches hold whole images: all the training cells of each image in them
    store = CellStore.open(tiny_store_path)
    positions, _ = cell_targets(store.cells, "image_labels", splits="train")
    cells_per_image = np.bincount(pd.factorize(store.cells["image_id"].to_numpy()[positions])[0])
    for targets, groups in batches[:2]:
        assert 1 < len(groups) <= 16
        present = groups.unique().numpy()
        np.testing.assert_array_equal(np.bincount(groups.numpy())[present], cells_per_image[present])
        for code in present:
            assert (targets[groups == code] == targets[groups == code][0]).all()


def test_fit_lowers_the_training_loss(tiny_store_path, tmp_path):
    data = DataConfig(label_mode="single_label", sampler="shuffle", batch_size=8, augment=False)
    result = fit(tiny_store_path, tmp_path, SMALL, LossConfig(classification="ce", metric=None), data,
                 TrainConfig(epochs=4, lr=1e-3, schedule="constant"), progress=False)
    losses = result.history["train_total"].to_numpy()
    assert losses[-1] < 0.8 * losses[0], losses


def test_fit_refuses_mismatches(tiny_store_path, tmp_path):
    mil = LossConfig(mil_weight=1.0)
    with pytest.raises(ConfigError, match="mil_weight > 0 needs multi-hot targets.*use label_mode = 'image_"):
        fit(tiny_store_path, tmp_path, SMALL, mil, DataConfig(label_mode="single_label"))
    with pytest.raises(DataError, match="32 px crops but the model config says crop_size=64"):
        fit(tiny_store_path, tmp_path, ModelConfig(arch="resnet18", crop_size=64))


def test_resume_continues_exactly(tiny_store_path, tmp_path, monkeypatch):
    configs = dict(
        model=SMALL,
        loss=LossConfig(classification="bce", miner="semihard"),
        data=DataConfig(label_mode="true_labels", batch_size=8, m_per_class=2, batches_per_epoch=3),
        train=TrainConfig(epochs=3, lr=1e-3, seed=3),
    )
    straight = fit(tiny_store_path, tmp_path / "straight", progress=False, **configs)

    real_epoch, calls = train_module._train_epoch, []

    def crash_in_third_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train_epoch", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_store_path, tmp_path / "resumed", progress=False, **configs)
    monkeypatch.setattr(train_module, "_train_epoch", real_epoch)
    assert len(pd.read_csv(tmp_path / "resumed" / "history.csv")) == 2
    with pytest.raises(DataError, match="a training run is already there; resume it"):
        fit(tiny_store_path, tmp_path / "resumed", progress=False, **configs)
    resumed = fit(tiny_store_path, tmp_path / "resumed", resume=True, progress=False, **configs)

    for name, tensor in weights(straight.model).items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    pd.testing.assert_frame_equal(
        straight.history.drop(columns=["train_cells_per_s"]),
        resumed.history.drop(columns=["train_cells_per_s"]),
    )
    with pytest.raises(ValueError, match="started with other configs"):
        fit(
            tiny_store_path,
            tmp_path / "resumed",
            resume=True,
            progress=False,
            **{**configs, "train": TrainConfig(epochs=3, lr=1e-2, seed=3)},
        )


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_store_path, tmp_path):
    single = fit(
        tiny_store_path,
        tmp_path / "single",
        script.MODEL,
        script.LOSS,
        script.DATA,
        script.TRAIN,
        progress=False,
    )
    run_torchrun("ddp_fit_script.py", tiny_store_path, tmp_path / "ddp")
    ddp, _, _ = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "last")
    for name, tensor in weights(single.model).items():
        torch.testing.assert_close(ddp.state_dict()[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    ddp_history = pd.read_csv(tmp_path / "ddp" / "history.csv")
    np.testing.assert_allclose(ddp_history["train_total"], single.history["train_total"], rtol=1e-4)
    np.testing.assert_allclose(ddp_history["val_total"], single.history["val_total"], rtol=1e-4)
    # AP ranks the cells: a float-rounding swap of two nearly tied scores moves it by ~1e-3
    np.testing.assert_allclose(ddp_history["val_macro_ap"], single.history["val_macro_ap"], atol=3e-3)


def test_lr_find_sweeps_until_the_loss_diverges_and_plots(tiny_store_path, tmp_path):
    data = DataConfig(label_mode="single_label", batch_size=8, m_per_class=2, augment=False)
    loss = LossConfig(classification="ce", metric=None)
    result = lr_find(tiny_store_path, SMALL, loss, data, TrainConfig(optimizer="sgd"), start_lr=1e-4,
                     end_lr=1e4, num_steps=40, out=tmp_path, progress=False)
    # the LR grows geometrically from start_lr; SGD at LR 1e4 diverges long before the end
    np.testing.assert_allclose(result.lrs[:2], [1e-4, 1e-4 * 1e8 ** (1 / 39)], rtol=1e-6)
    assert len(result.lrs) < 40
    assert not np.isfinite(result.losses[-1]) or result.losses[-1] > 4 * result.losses.min()
    # at the start the LR is too small to move the weights: the smoothed loss stays where it began,
    # at the cross-entropy of an untrained 19-class classifier (about log 19)
    assert result.losses[0] == pytest.approx(np.log(19), rel=0.35)
    np.testing.assert_allclose(result.losses[:3], result.losses[0], rtol=0.05)
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert (tmp_path / "lr_find.png").stat().st_size > 5000
    np.testing.assert_allclose(pd.read_csv(tmp_path / "lr_find.csv")["loss"], result.losses, rtol=1e-6)


def test_suggest_lr_is_steepest_descent():
    lrs = np.logspace(-6, 0, 61)
    # loss falls fastest (per log-LR) at 1e-3, then rises
    losses = 2 - np.tanh(np.log10(lrs) + 3) + 0.5 * np.maximum(np.log10(lrs) + 1, 0) ** 2
    assert suggest_lr(lrs, losses) == pytest.approx(1e-3)
