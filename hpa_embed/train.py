"""Training: ``fit`` (history, checkpoints, exact resume, DDP) and the LR finder.

A run directory holds::

    <run>/config.toml                the model, loss, data and train configs of the run
    <run>/history.csv, history.json  one row per epoch: losses per component, accuracy, macro AP
    <run>/targets.parquet            each training cell's cell_id and the class ids it trained on
    <run>/checkpoints/last/          model.safetensors + config.json + trainer_state.safetensors
    <run>/checkpoints/best/          the epoch with the lowest validation loss

Every file is written atomically; ``fit(..., resume=True)`` continues from ``checkpoints/last``
exactly where the run stopped (same batches, same augmentation, same weights as an
uninterrupted run). Under ``torchrun`` the same ``fit`` trains with DistributedDataParallel
(gloo on CPU, NCCL on GPU); rank 0 writes the files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .config import (
    ConfigError,
    DataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    check_training_configs,
    write_config_file,
)
from .data import (
    CellDataset,
    ShuffledBatchSampler,
    augment_batch,
    cell_targets,
    make_batch_sampler,
    make_loader,
)
from .distributed import DistributedContext, all_gather_rows, all_reduce_sum, distributed_context
from .io import DataError, atomic_path
from .losses import CombinedLoss, primary_labels
from .models import (
    CellEmbeddingModel,
    create_model,
    load_checkpoint,
    load_state,
    preprocess,
    save_checkpoint,
)
from .models.checkpoint import STATE_FILE
from .store import CellStore

__all__ = ["FitResult", "fit", "LRFinderResult", "lr_find", "suggest_lr"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- set-up


#: The training cells and their targets, in a run directory (``cell_id``, ``labels``).
TARGETS_FILE = "targets.parquet"


@dataclass
class _Split:
    dataset: CellDataset
    positions: np.ndarray  # int [N]: the cells' positions in the table trained from
    y_primary: np.ndarray  # int [N]: the class balanced sampling draws by
    class_counts: np.ndarray  # int [K]


def _load_split(store: CellStore, cells: pd.DataFrame, data: DataConfig, model: ModelConfig,
                split: str) -> _Split | None:
    positions, targets = cell_targets(cells, data.label_mode, store.scheme, splits=split)
    rows = cells["row"].to_numpy(dtype=np.int64)[positions]
    if len(rows) == 0:
        return None
    num_classes = model.num_classes
    if targets.ndim == 1:
        counts = np.bincount(targets, minlength=num_classes)
        primary = targets
    else:
        counts = targets.sum(axis=0)
        primary = primary_labels(targets, counts)
    groups = cells["image_id"].to_numpy()[positions]  # an image's cells are one MIL bag
    dataset = CellDataset(store, rows, targets, channels=model.channels, groups=groups)
    return _Split(dataset, positions, np.asarray(primary), counts)


def _write_targets(out: Path, cells: pd.DataFrame, training: _Split) -> None:
    """``<out>/targets.parquet``: each training cell's ``cell_id`` and the class ids it trains on."""
    targets = training.dataset.targets.numpy()
    if targets.ndim == 1:  # one class per cell
        offsets, classes = np.arange(len(targets) + 1), targets
    else:  # multi-hot: the classes of each row, in order
        classes = np.nonzero(targets)[1]
        offsets = np.concatenate([[0], np.cumsum(np.count_nonzero(targets, axis=1))])
    labels = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(classes, pa.int64()))
    cell_ids = cells["cell_id"].to_numpy()[training.positions].astype(str)
    with atomic_path(out / TARGETS_FILE) as tmp:
        pq.write_table(pa.table({"cell_id": pa.array(cell_ids), "labels": labels}), tmp)


def _check_compatible(store: CellStore, model: ModelConfig, loss: LossConfig, data: DataConfig) -> None:
    if store.crop_size != model.crop_size:
        raise DataError(
            store.path,
            f"the store holds {store.crop_size} px crops but the model "
            f"config says crop_size={model.crop_size}",
        )
    if store.scheme.num_classes != model.num_classes:
        raise DataError(
            store.path,
            f"the store uses {store.scheme.name} ({store.scheme.num_classes} "
            f"classes) but the model has {model.num_classes}",
        )
    check_training_configs(model, loss, data)


def _set_prior_bias(model: CellEmbeddingModel, training: _Split, loss: LossConfig) -> None:
    """Start each class's logit at its training frequency (sigmoid: log-odds; softmax: log p)."""
    n = len(training.dataset)
    frequency = np.clip(training.class_counts / max(n, 1), 1e-4, 1 - 1e-4)
    bias = np.log(frequency) if loss.classification == "ce" else np.log(frequency / (1 - frequency))
    with torch.no_grad():
        model.classifier.linear.bias.copy_(torch.from_numpy(bias.astype(np.float32)))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _create_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    # no weight decay on biases and normalisation parameters
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, nesterov=True)


def _create_scheduler(optimizer, train: TrainConfig, total_steps: int):
    if train.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=train.lr, total_steps=total_steps)
    if train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=train.lr * 1e-3
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def _autocast(train: TrainConfig, device: torch.device):
    """The autocast context for the configured precision (a no-op for float32)."""
    precision = train.precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext(), False
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype), precision == "fp16"


def _set_batchnorm_frozen(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _wrap(model: CellEmbeddingModel, context: DistributedContext) -> nn.Module:
    if context.world_size == 1:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


# --------------------------------------------------------------------------- one epoch


@dataclass
class _Runner:
    """What every step of a run shares: the (possibly DDP-wrapped) network, the loss, the configs."""

    network: nn.Module
    criterion: CombinedLoss
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    device: torch.device

    def forward_loss(
        self, crops: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor, generator=None, augment=False
    ):
        """Preprocess (and augment) uint8 crops, run the network -> (output, total loss, parts)."""
        x = preprocess(crops.to(self.device, non_blocking=True), self.model)
        if augment:
            x = augment_batch(x, generator, self.data.intensity_jitter)
        if self.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast, _ = _autocast(self.train, self.device)
        with autocast:
            output = self.network(x)
        output = type(output)(*(t.float() for t in output))
        total, parts = self.criterion(output, targets.to(self.device), groups.to(self.device))
        return output, total, parts


#: History columns shown on the progress bar of :func:`fit`.
_SHOWN = ("train_total", "val_total", "val_macro_ap")
_COMPONENTS = ("cls", "metric", "mil", "total")


def _train_epoch(
    runner: _Runner, model, optimizer, scheduler, scaler, loader, context, epoch, progress
) -> dict[str, float]:
    runner.network.train()
    if runner.train.batchnorm == "frozen":
        _set_batchnorm_frozen(model)
    generator = torch.Generator().manual_seed(runner.train.seed * 1_000_003 + epoch * 7919 + context.rank)
    n_parts = len(_COMPONENTS)
    sums = torch.zeros(n_parts + 2, dtype=torch.float64)  # components, triplets, cells
    started = time.perf_counter()
    bar = tqdm(
        loader,
        desc=f"epoch {epoch + 1}/{runner.train.epochs}",
        disable=not (progress and context.is_main),
        leave=False,
        unit="batch",
    )
    for crops, targets, groups in bar:
        optimizer.zero_grad(set_to_none=True)
        _, total, parts = runner.forward_loss(crops, targets, groups, generator, augment=runner.data.augment)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(optimizer)
        else:
            total.backward()
        if runner.train.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), runner.train.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        n = len(crops)
        sums[:n_parts] += torch.stack([parts[name].double().cpu() for name in _COMPONENTS]) * n
        sums[n_parts] += parts["triplets"]
        sums[n_parts + 1] += n
    sums = all_reduce_sum(sums, context)
    cells = max(sums[n_parts + 1].item(), 1)
    seconds = time.perf_counter() - started
    row = {f"train_{name}": sums[i].item() / cells for i, name in enumerate(_COMPONENTS)}
    row["train_triplets_per_batch"] = sums[n_parts].item() / max(len(loader), 1) / context.world_size
    row["train_cells_per_s"] = cells / seconds
    return row


@torch.inference_mode()
def _evaluate(runner: _Runner, split: _Split, context) -> dict[str, float]:
    """Validation losses (per component), accuracy and macro AP over a whole split."""
    from sklearn.metrics import average_precision_score

    runner.network.eval()
    dataset = split.dataset
    sampler = ShuffledBatchSampler(
        len(dataset),
        runner.data.eval_batch_size * context.world_size,
        shuffle=False,
        drop_last=False,
        rank=context.rank,
        world_size=context.world_size,
    )
    logits_parts, index_parts = [], []
    sums = torch.zeros(2, dtype=torch.float64)  # metric loss x cells, cells
    for indices in sampler:
        crops, targets, groups = dataset.__getitems__(indices)
        output, _, parts = runner.forward_loss(crops, targets, groups)
        sums += torch.tensor([parts["metric"].item() * len(indices), len(indices)], dtype=torch.float64)
        logits_parts.append(output.logits.float().cpu())
        index_parts.append(torch.as_tensor(indices))
    sums = all_reduce_sum(sums, context)
    logits = torch.cat(logits_parts)
    index = torch.cat(index_parts)
    if context.world_size > 1:  # every rank got batches of equal size; drop the padding repeats
        logits, index = all_gather_rows(logits, context), all_gather_rows(index, context)
        index, first = np.unique(index.numpy(), return_index=True)
        logits = logits[first]
    else:
        order = np.argsort(index.numpy())
        logits = logits[order]
    targets = dataset.targets.numpy()
    if dataset.multi_label:
        scores = torch.sigmoid(logits).numpy()
        Y = targets.astype(bool)
        accuracy = float(Y[np.arange(len(Y)), scores.argmax(1)].mean())
    else:
        scores = torch.softmax(logits, 1).numpy()
        Y = np.eye(runner.model.num_classes, dtype=bool)[targets]
        accuracy = float((scores.argmax(1) == targets).mean())
    present = Y.any(axis=0)
    macro_ap = float(
        np.mean([average_precision_score(Y[:, k], scores[:, k]) for k in np.flatnonzero(present)])
    )
    # The classification term is a mean over cells and the MIL term a mean over whole images:
    # computed once over the whole gathered split, they are exact under DDP too, where the
    # padding of the last batch repeats some cells. The metric term depends on which cells
    # share a batch and stays a mean over batches.
    logits = logits.to(runner.device)
    val_cls = runner.criterion.classification_loss(logits, dataset.targets).item()
    val_mil = runner.criterion.mil_loss(logits, dataset.targets, dataset.groups).item()
    val_metric = sums[0].item() / max(sums[1].item(), 1)
    weights = runner.criterion.config
    val_total = weights.w_cls * val_cls + weights.w_metric * val_metric + weights.mil_weight * val_mil
    row = {"val_cls": val_cls, "val_metric": val_metric, "val_mil": val_mil, "val_total": val_total}
    row.update(val_accuracy=accuracy, val_macro_ap=macro_ap)
    return row


# --------------------------------------------------------------------------- fit


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes
    ----------
    history : pandas.DataFrame
        One row per epoch (also ``<run>/history.csv``).
    checkpoint : Path
        The best checkpoint (lowest validation loss; the last one when there is no validation split).
    model : CellEmbeddingModel
        The model after the last epoch, in eval mode.
    """

    history: pd.DataFrame
    checkpoint: Path
    model: CellEmbeddingModel


def _write_history(out: Path, history: list[dict]) -> None:
    frame = pd.DataFrame(history)
    with atomic_path(out / "history.csv") as tmp:
        frame.to_csv(tmp, index=False)
    with atomic_path(out / "history.json") as tmp:
        tmp.write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")


def _config_dicts(configs: dict) -> dict[str, dict]:
    return {section: config.to_dict() for section, config in configs.items()}


def fit(
    store: CellStore | str | os.PathLike,
    out: str | os.PathLike,
    model: ModelConfig | None = None,
    loss: LossConfig | None = None,
    data: DataConfig | None = None,
    train: TrainConfig | None = None,
    resume: bool = False,
    progress: bool = True,
    cells: pd.DataFrame | None = None,
) -> FitResult:
    """Train a cell embedding model on a CellStore.

    Parameters
    ----------
    store : CellStore or path
        Cells with a ``split`` column (``train`` is trained on, ``val`` validated on).
    out : path
        The run directory (see the module docstring).
    model, loss, data, train : configs
        Defaults: ResNet-50, 4 channels; CE + semi-hard triplet; single-label cells; 10 epochs.
    resume : bool
        Continue from ``<out>/checkpoints/last`` exactly where it stopped (refused when its
        configs differ from these: to train longer, start a new run from the checkpoint).
        Without it, an existing run in ``out`` is refused rather than overwritten.
    progress : bool
        Show a tqdm bar per epoch.
    cells : DataFrame, optional
        The store's table with more label columns (e.g. ``pseudo_labels``), rows unchanged;
        default the store's own.
    """
    model_config = model or ModelConfig()
    loss_config = loss or LossConfig()
    data_config = data or DataConfig()
    train_config = train or TrainConfig()
    store = store if isinstance(store, CellStore) else CellStore.open(store)
    out = Path(out)
    _check_compatible(store, model_config, loss_config, data_config)
    context = distributed_context(train_config.device)
    configs = {"model": model_config, "loss": loss_config, "data": data_config, "train": train_config}
    last = out / "checkpoints" / "last"
    state = None
    if resume and (last / STATE_FILE).is_file():
        state = load_state(last / STATE_FILE)
        if state["configs"] != _config_dicts(configs):
            raise ConfigError(
                f"{out}: the run was started with other configs; resume it with the ones "
                f"in {out / 'config.toml'}"
            )
    elif (out / "history.csv").exists() and not resume:
        raise DataError(out, "a training run is already there; resume it or choose another directory")
    _seed_everything(train_config.seed)

    if cells is not None and not np.array_equal(cells["row"].to_numpy(), store.cells["row"].to_numpy()):
        raise ValueError("cells must be the store's table (same rows, same order) with more columns")
    cells = store.cells if cells is None else cells
    training = _load_split(store, cells, data_config, model_config, "train")
    if training is None:
        raise DataError(
            store.path, f"no training cells (split 'train', label_mode={data_config.label_mode!r})"
        )
    validation = _load_split(store, cells, data_config, model_config, "val")
    batch = data_config.batch_size
    sampler = make_batch_sampler(data_config, training.y_primary, training.dataset.groups, train_config.seed,
                                 context.rank, context.world_size)
    if len(sampler) == 0:
        raise DataError(store.path, f"{len(training.dataset)} training cells make no batch of {batch}")
    loader = make_loader(training.dataset, sampler, data_config.num_workers)

    network_model = create_model(model_config)
    if train_config.classifier_bias == "prior":
        _set_prior_bias(network_model, training, loss_config)
    network_model = network_model.to(context.device)
    if train_config.channels_last:
        network_model = network_model.to(memory_format=torch.channels_last)
    if context.world_size > 1 and context.device.type == "cuda" and train_config.batchnorm == "train":
        network_model = nn.SyncBatchNorm.convert_sync_batchnorm(network_model)
    criterion = CombinedLoss(loss_config, model_config.num_classes, training.class_counts).to(context.device)
    optimizer = _create_optimizer(network_model, train_config)
    scheduler = _create_scheduler(optimizer, train_config, train_config.epochs * len(sampler))
    _, use_scaler = _autocast(train_config, context.device)
    scaler = torch.amp.GradScaler(context.device.type) if use_scaler else None

    history: list[dict] = []
    best_loss, bad_epochs, start_epoch = math.inf, 0, 0
    if state is not None:
        network_model, _, _ = _restore(network_model, last, context)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        best_loss, bad_epochs, start_epoch = state["best_loss"], state["bad_epochs"], state["epoch"]
        torch.set_rng_state(state["torch_rng"][context.rank])
        log.info("resuming %s after epoch %d", out, start_epoch)
    if context.is_main:
        write_config_file(out / "config.toml", configs)
        _write_targets(out, cells, training)

    runner = _Runner(None, criterion, model_config, train_config, data_config, context.device)
    frozen = None
    # one line that stays: the epochs done and the last epoch's figures, without logging set up
    epochs_bar = tqdm(total=train_config.epochs, initial=start_epoch, desc="fit", unit="epoch",
                      disable=not (progress and context.is_main))
    for epoch in range(start_epoch, train_config.epochs):
        if bad_epochs >= (train_config.early_stopping_patience or math.inf):
            break
        want_frozen = epoch < train_config.freeze_backbone_epochs
        if want_frozen != frozen:  # DDP must be rebuilt when the set of trained parameters changes
            network_model.freeze_backbone(want_frozen)
            runner.network, frozen = _wrap(network_model, context), want_frozen
        sampler.set_epoch(epoch)
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "backbone_frozen": want_frozen}
        row.update(
            _train_epoch(
                runner, network_model, optimizer, scheduler, scaler, loader, context, epoch, progress
            )
        )
        if validation is not None:
            row.update(_evaluate(runner, validation, context))
        monitored = row.get("val_total", row["train_total"])
        improved = monitored < best_loss
        best_loss, bad_epochs = (monitored, 0) if improved else (best_loss, bad_epochs + 1)
        history.append(row)
        log.info(
            "epoch %d: %s",
            epoch + 1,
            ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)),
        )
        epochs_bar.set_postfix({name: f"{row[name]:.3g}" for name in _SHOWN if name in row}, refresh=False)
        epochs_bar.update()
        rng_states = all_gather_rows(torch.get_rng_state()[None], context)
        if context.is_main:
            extra = {
                "epoch": epoch + 1,
                "history": history[-1],
                "loss": loss_config.to_dict(),
                "data": data_config.to_dict(),
            }
            # ``last`` is the commit point of an epoch: written after the best checkpoint and the
            # history, so a run killed before it redoes the epoch and writes them all again
            if improved:
                save_checkpoint(out / "checkpoints" / "best", network_model, model_config, extra=extra)
            _write_history(out, history)
            save_checkpoint(
                last,
                network_model,
                model_config,
                extra=extra,
                state={
                    "epoch": epoch + 1,
                    "history": history,
                    "best_loss": best_loss,
                    "bad_epochs": bad_epochs,
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict() if scaler is not None else {},
                    "torch_rng": list(rng_states),
                    "configs": _config_dicts(configs),
                },
            )
        if context.world_size > 1:
            dist.barrier()

    epochs_bar.close()
    best = out / "checkpoints" / "best"
    network_model.eval()
    return FitResult(pd.DataFrame(history), best if best.exists() else last, network_model)


def _restore(model: CellEmbeddingModel, checkpoint: Path, context: DistributedContext):
    loaded, config, extra = load_checkpoint(checkpoint, map_location=context.device)
    model.load_state_dict(loaded.state_dict())
    return model, config, extra


# --------------------------------------------------------------------------- LR finder


@dataclass
class LRFinderResult:
    """An LR sweep: ``lrs`` and smoothed ``losses`` (float ``[n]``) and the suggested LR."""

    lrs: np.ndarray
    losses: np.ndarray
    suggestion: float


def suggest_lr(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The LR of steepest descent of the smoothed loss (per unit of log LR).

    The first and last tenths of the sweep are ignored: the start is flat noise and the end
    is where the loss diverges.
    """
    n = len(lrs)
    if n < 3:
        raise ValueError("an LR sweep needs at least 3 points")
    lo, hi = n // 10, max(n - n // 10, n // 10 + 2)
    gradient = np.gradient(losses[lo:hi], np.log(lrs[lo:hi]))
    return float(lrs[lo + int(np.argmin(gradient))])


def lr_find(
    store: CellStore | str | os.PathLike,
    model: ModelConfig | None = None,
    loss: LossConfig | None = None,
    data: DataConfig | None = None,
    train: TrainConfig | None = None,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 200,
    smoothing: float = 0.98,
    diverge: float = 4.0,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> LRFinderResult:
    """Exponential LR sweep (fastai's LR range test) on the training split.

    The LR grows from ``start_lr`` to ``end_lr`` over ``num_steps`` batches; the loss is
    smoothed with an exponential moving average (bias-corrected) and the sweep stops once it
    exceeds ``diverge`` times its best value. With ``out``, the curve is saved as
    ``<out>/lr_find.png`` and the numbers as ``<out>/lr_find.csv``.
    """
    model_config = model or ModelConfig()
    loss_config = loss or LossConfig()
    data_config = data or DataConfig()
    train_config = train or TrainConfig()
    store = store if isinstance(store, CellStore) else CellStore.open(store)
    _check_compatible(store, model_config, loss_config, data_config)
    _seed_everything(train_config.seed)
    device = distributed_context(train_config.device).device
    training = _load_split(store, store.cells, data_config, model_config, "train")
    if training is None:
        raise DataError(store.path, "no training cells")
    sampler = make_batch_sampler(data_config, training.y_primary, training.dataset.groups, train_config.seed)
    network = create_model(model_config).to(device)
    criterion = CombinedLoss(loss_config, model_config.num_classes, training.class_counts).to(device)
    optimizer = _create_optimizer(network, train_config)
    factor = (end_lr / start_lr) ** (1 / max(num_steps - 1, 1))
    network.train()
    runner = _Runner(network, criterion, model_config, train_config, data_config, device)
    generator = torch.Generator().manual_seed(train_config.seed)
    lrs, losses = [], []
    average, best, step = 0.0, math.inf, 0
    bar = tqdm(total=num_steps, desc="lr-find", disable=not progress, leave=False)
    epoch = 0
    while step < num_steps:
        sampler.set_epoch(epoch)
        for indices in sampler:
            lr = start_lr * factor**step
            for group in optimizer.param_groups:
                group["lr"] = lr
            crops, targets, groups = training.dataset.__getitems__(indices)
            optimizer.zero_grad(set_to_none=True)
            _, total, _ = runner.forward_loss(crops, targets, groups, generator, augment=data_config.augment)
            total.backward()
            optimizer.step()
            average = smoothing * average + (1 - smoothing) * total.item()
            smoothed = average / (1 - smoothing ** (step + 1))
            lrs.append(lr)
            losses.append(smoothed)
            best = min(best, smoothed)
            step += 1
            bar.update()
            if step >= num_steps or not math.isfinite(smoothed) or smoothed > diverge * best:
                step = num_steps
                break
        epoch += 1
    bar.close()
    result = LRFinderResult(np.array(lrs), np.array(losses), suggest_lr(np.array(lrs), np.array(losses)))
    if out is not None:
        from .visualise import plot_lr_find

        out = Path(out)
        with atomic_path(out / "lr_find.csv") as tmp:
            pd.DataFrame({"lr": result.lrs, "loss": result.losses}).to_csv(tmp, index=False)
        plot_lr_find(result.lrs, result.losses, result.suggestion, out / "lr_find.png")
    log.info("LR finder suggests %.3g", result.suggestion)
    return result
