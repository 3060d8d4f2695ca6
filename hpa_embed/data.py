"""Training data over a CellStore: label targets, a batched Dataset, augmentation, batch samplers.

:func:`cell_targets` gives the cells of a table that carry labels of a label mode and their
targets (the one place that decides what a cell's label is); a :class:`CellDataset` also knows
each cell's image (its *group*, the bag of multiple-instance learning).

Batches are read from the store in one fancy-indexed call (``CellDataset.__getitems__``), so
data loading costs one memory-mapped gather per batch, not one Python call per cell. Batch
samplers draw *global* batches and hand each distributed rank its own contiguous slice, so
``world_size`` processes with ``batch_size / world_size`` cells each see exactly the cells one
process with ``batch_size`` would. :class:`ImageBatchSampler` and
:class:`BalancedImageBatchSampler` are the exception: they keep images whole, so each rank gets
whole images of its own.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import ConfigError, DataConfig
from .io import DataError
from .labels import HPA2021, ClassScheme, get_scheme
from .store import CellStore

log = logging.getLogger(__name__)

__all__ = [
    "LABEL_MODES",
    "cell_targets",
    "label_column",
    "channel_positions",
    "CellDataset",
    "augment_batch",
    "ShuffledBatchSampler",
    "BalancedBatchSampler",
    "ImageBatchSampler",
    "BalancedImageBatchSampler",
    "make_loader",
    "make_batch_sampler",
]

#: How a cell gets its label (:func:`cell_targets`).
LABEL_MODES: tuple[str, ...] = ("single_label", "image_labels", "true_labels", "pseudo_labels")


def label_column(label_mode: str) -> str:
    """The cells-table column a label mode reads (``"single_label"`` reads ``"image_labels"``)."""
    if label_mode not in LABEL_MODES:
        raise ConfigError(f"label_mode={label_mode!r}: choose one of {LABEL_MODES}")
    return "image_labels" if label_mode == "single_label" else label_mode


def cell_targets(
    cells: pd.DataFrame,
    label_mode: str,
    scheme: str | ClassScheme = HPA2021,
    splits: str | Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The cells of a table that carry labels in ``label_mode``, and their targets.

    Parameters
    ----------
    cells : DataFrame
        A CellStore, embeddings or predictions table (``image_labels``, ``true_labels``,
        ``split``).
    label_mode : {"single_label", "image_labels", "true_labels", "pseudo_labels"}
        ``"single_label"``: cells of single-label images, each given its image's label (int
        ``y``, the seed's recipe); ``"image_labels"``: cells of labelled images, each given all
        its image's labels (weak, multi-hot); ``"true_labels"``: cells with synthetic truth,
        given their own labels (the oracle); ``"pseudo_labels"``: cells with a
        ``pseudo_labels`` column entry (:func:`hpa_embed.recipes.pseudo_labels`).
    scheme : str or ClassScheme
    splits : str or sequence of str, optional
        Keep only cells of these splits (``"train"``, ``"val"``, ``"test"``).

    Returns
    -------
    positions : int64 ``[n]``
        Positions (0 .. len(cells) - 1) of the selected cells, in table order.
    targets : int64 ``[n]`` (``y``, single_label) or bool ``[n, K]`` (``Y``, the others)
    """
    scheme = get_scheme(scheme)
    column = label_column(label_mode)
    if column not in cells or (column != "image_labels" and cells[column].isna().all()):
        where = {"true_labels": "per-cell truth comes only from a synthetic data set, given as truth when "
                                "cropping", "pseudo_labels": "a first training round makes them"}
        raise ConfigError(f"label_mode={label_mode!r}: the cells carry no {column!r} "
                          f"({where.get(column, 'see hpa_embed.crops.build_store')})")
    values = cells[column].to_numpy()
    counts = np.array([0 if value is None else len(value) for value in values])
    keep = counts == 1 if label_mode == "single_label" else counts >= 1
    if splits is not None:
        if "split" not in cells:
            raise ConfigError("the cell table has no 'split' column; see hpa_embed.crops.assign_splits")
        keep &= cells["split"].isin([splits] if isinstance(splits, str) else list(splits)).to_numpy()
    positions = np.flatnonzero(keep)
    kept = [list(values[i]) for i in positions]
    if label_mode == "single_label":
        y = np.array([value[0] for value in kept], dtype=np.int64)
        if y.size and (y.min() < 0 or y.max() >= scheme.num_classes):
            raise ValueError(f"a label lies outside the {scheme.name} scheme")
        return positions, y
    return positions, scheme.to_multi_hot(kept)


def channel_positions(
    available: Sequence[str], wanted: Sequence[str], source="the store"
) -> list[int] | None:
    """Positions of the ``wanted`` channels among the ``available`` ones, None when they are the same.

    Raises :class:`~hpa_embed.io.DataError` naming ``source`` when a wanted channel is missing.
    """
    available, wanted = list(available), list(wanted)
    missing = [name for name in wanted if name not in available]
    if missing:
        raise DataError(source, f"has no {missing} channel (it has {available}); the model needs {wanted}")
    return None if wanted == available else [available.index(name) for name in wanted]


class CellDataset(Dataset):
    """Crops of a :class:`~hpa_embed.store.CellStore` with one target per cell.

    Parameters
    ----------
    store : CellStore
    rows : int array ``[N]``
        Rows of the store's crop array (``store.cells["row"]`` values).
    targets : int ``[N]`` or bool ``[N, K]``
        Single-label class ids or multi-hot labels, aligned with ``rows``.
    channels : sequence of str, optional
        The channels to return, in order (e.g. ``RGB_CHANNELS`` for a 3-channel model);
        default all of the store's channels.
    groups : array ``[N]``, optional
        Each cell's image (any hashable values, e.g. the store's ``image_id`` column): the bag
        it belongs to in multiple-instance learning. Default: every cell its own group.

    Attributes
    ----------
    groups : int64 tensor ``[N]``
        The groups as integer codes 0 .. G-1 (in order of first appearance).

    Items are ``(crop uint8 [C, S, S], target, group)``; :meth:`__getitems__` returns a whole
    batch ``(uint8 [B, C, S, S], int64 [B] | float32 [B, K], int64 [B])`` as tensors.
    """

    def __init__(self, store: CellStore, rows, targets, channels: Sequence[str] | None = None, groups=None):
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        targets = np.asarray(targets)
        if len(targets) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(targets)} targets")
        if groups is not None and len(groups) != len(self.rows):
            raise ValueError(f"{len(self.rows)} rows but {len(groups)} groups")
        codes = np.arange(len(self.rows)) if groups is None else pd.factorize(np.asarray(groups))[0]
        self.groups = torch.from_numpy(codes.astype(np.int64))
        self.multi_label = targets.ndim == 2
        self.targets = torch.from_numpy(
            targets.astype(np.float32) if self.multi_label else targets.astype(np.int64)
        )
        # None keeps the fast path when every channel is used in store order
        self.channel_index = channel_positions(store.channels, channels or store.channels, store.path)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        crops = self.store.get_crops(self.rows[indices])
        if self.channel_index is not None:
            crops = crops[:, self.channel_index]
        return torch.from_numpy(np.ascontiguousarray(crops)), self.targets[indices], self.groups[indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(part[0] for part in self.__getitems__([index]))


def _collate_batch(batch):
    # __getitems__ already returns stacked tensors
    return batch


def augment_batch(
    x: torch.Tensor, generator: torch.Generator | None = None, intensity_jitter: float = 0.1
) -> torch.Tensor:
    """Random flips, 90-degree rotations and brightness jitter of a batch, per sample.

    Only transformations a microscope does not care about: orientation, and one brightness
    factor per cell applied to every channel alike (no change of the ratio between channels).

    Parameters
    ----------
    x : float tensor ``[B, C, S, S]``
    generator : torch.Generator, optional
        Source of randomness (on the CPU), for reproducible augmentation.
    intensity_jitter : float
        Brightness factors are drawn uniformly from ``[1 - j, 1 + j]``.
    """
    n = x.shape[0]
    draws = torch.rand(n, 4, generator=generator)
    flip = (draws[:, 0] < 0.5).to(x.device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    turns = (draws[:, 1] * 4).long().clamp_(max=3)
    if (turns > 0).any():
        x = x.clone()
        for k in (1, 2, 3):
            chosen = (turns == k).nonzero().flatten().to(x.device)
            if len(chosen):
                x[chosen] = torch.rot90(x[chosen], k, dims=(-2, -1))
    if intensity_jitter:
        factor = 1 + intensity_jitter * (2 * draws[:, 2] - 1)
        x = x * factor.to(x.device, x.dtype)[:, None, None, None]
    return x


class _GlobalBatchSampler(Sampler, ABC):
    """Base: subclasses yield global batches; each rank gets its slice of every batch."""

    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by {world_size} processes")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reseed for an epoch (call before iterating, as with ``DistributedSampler``)."""
        self.epoch = epoch

    def _rng(self) -> np.random.RandomState:
        return np.random.RandomState((self.seed * 100_003 + self.epoch) % 2**32)

    @abstractmethod
    def _global_batches(self) -> list[np.ndarray]:
        """The epoch's global batches of dataset indices."""

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch_size // self.world_size
        for batch in self._global_batches():
            yield batch[self.rank * share : (self.rank + 1) * share].tolist()


class ShuffledBatchSampler(_GlobalBatchSampler):
    """Every cell once per epoch in a seeded random order (or in order with ``shuffle=False``).

    With ``drop_last=False`` the last, smaller batch is kept (for evaluation; with several
    processes it is padded by repeating cells so every rank gets the same batch size).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(batch_size, seed, rank, world_size)
        self.n = n
        self.shuffle = shuffle
        self.drop_last = drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _global_batches(self) -> list[np.ndarray]:
        order = self._rng().permutation(self.n) if self.shuffle else np.arange(self.n)
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if batches and len(batches[-1]) < self.batch_size:
            if self.drop_last:
                batches.pop()
            elif self.world_size > 1:
                pad = np.resize(order, self.batch_size - len(batches[-1]))
                batches[-1] = np.concatenate([batches[-1], pad])
        return batches


class BalancedBatchSampler(_GlobalBatchSampler):
    """Class-balanced batches: ``m`` cells of each of ``batch_size / m`` classes per batch.

    pytorch-metric-learning's ``MPerClassSampler`` draws the cells; this wrapper seeds it per
    epoch (it otherwise draws from numpy's global random state) and shards batches by rank.

    Parameters
    ----------
    labels : int array ``[N]``
        One class per cell (for multi-label data, e.g. its rarest label:
        :func:`hpa_embed.losses.primary_labels`).
    m : int
        Cells per class in a batch; must divide ``batch_size``.
    num_batches : int
        Batches per epoch.
    """

    def __init__(
        self,
        labels,
        m: int,
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(batch_size, seed, rank, world_size)
        self.labels = np.asarray(labels)
        self.m = m
        self.num_batches = num_batches
        classes = len(np.unique(self.labels))
        if m * classes < batch_size:
            raise ConfigError(
                f"a balanced batch of {batch_size} with m={m} needs {batch_size // m} classes, "
                f"the data has {classes}: lower the batch size or raise m"
            )

    def __len__(self) -> int:
        return self.num_batches

    def _global_batches(self) -> list[np.ndarray]:
        from pytorch_metric_learning.samplers import MPerClassSampler
        from pytorch_metric_learning.utils import common_functions as pml_common

        sampler = MPerClassSampler(
            self.labels, self.m, self.batch_size, length_before_new_iter=self.num_batches * self.batch_size
        )
        saved, pml_common.NUMPY_RANDOM = pml_common.NUMPY_RANDOM, self._rng()
        try:  # MPerClassSampler draws the whole epoch eagerly inside __iter__
            order = np.fromiter(iter(sampler), dtype=np.int64)
        finally:
            pml_common.NUMPY_RANDOM = saved
        return np.split(order, len(order) // self.batch_size)


def _pack_sizes(sizes: np.ndarray, capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: bins (lists of item sizes, each sum <= capacity)."""
    bins: list[list[int]] = []
    by_room: list[list[int]] = [[] for _ in range(capacity + 1)]  # bins by the room they have left
    for size in sorted((int(size) for size in sizes), reverse=True):
        room = next((room for room in range(size, capacity + 1) if by_room[room]), None)
        if room is None:
            chosen, room = len(bins), capacity
            bins.append([])
        else:
            chosen = by_room[room].pop()
        bins[chosen].append(size)
        by_room[room - size].append(chosen)
    return bins


class _WholeImageBatchSampler(_GlobalBatchSampler):
    """Base: subclasses plan each global batch as ``world_size`` per-rank batches of whole
    images; each rank gets its own part."""

    @abstractmethod
    def _rank_batches(self) -> list[list[np.ndarray]]:
        """The epoch's global batches, each as ``world_size`` per-rank batches of whole images."""

    def _global_batches(self) -> list[np.ndarray]:
        return [np.concatenate(parts) for parts in self._rank_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        for parts in self._rank_batches():
            yield parts[self.rank].tolist()


class ImageBatchSampler(_WholeImageBatchSampler):
    """Batches of whole images: all the cells of an image share a batch (the bags of MIL).

    Which sizes of image share a batch is planned once from the images' cell counts
    (best-fit decreasing, so batches come out nearly full and every epoch has as many); each
    epoch deals the images, in a seeded random order, to the planned places of their size and
    shuffles the batches. An image with more cells than a batch holds gives a random batch of
    them, drawn anew each epoch. A planned batch of a single cell is left out (BatchNorm cannot
    train on one cell), so with ``num_batches=None`` every image appears once per epoch, bar a
    one-cell image that the plan leaves alone in a batch.

    Under DDP every rank gets whole images: the plan packs batches of ``batch_size /
    world_size`` cells, a global batch is ``world_size`` consecutive batches of the epoch, one
    per rank, and the last ``< world_size`` batches of a pass are left out so every rank takes
    the same number of steps (other images each epoch).

    Parameters
    ----------
    groups : int array ``[N]``
        Each cell's image as an integer code (:attr:`CellDataset.groups`).
    batch_size : int
        Most cells in a global batch (batches vary in size below it).
    num_batches : int, optional
        Global batches per epoch; default one pass over the images. When more are asked for
        than a pass holds, the epoch goes on with another pass, freshly dealt.
    seed, rank, world_size
        As for the other samplers.
    """

    def __init__(
        self,
        groups,
        batch_size: int,
        num_batches: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(batch_size, seed, rank, world_size)
        groups = np.asarray(groups)
        order = np.argsort(groups, kind="stable")
        _, starts = np.unique(groups[order], return_index=True)
        self.images = np.split(order, starts[1:]) if len(order) else []  # each image's cells
        capacity = batch_size // world_size
        self.sizes = np.minimum([len(cells) for cells in self.images], capacity).astype(np.int64)
        plan = _pack_sizes(self.sizes, capacity)
        self.plan = [sizes for sizes in plan if sum(sizes) > 1] if capacity > 1 else plan
        self._by_size = {size: np.flatnonzero(self.sizes == size) for size in np.unique(self.sizes)}
        self.num_batches = num_batches

    def __len__(self) -> int:
        passes = len(self.plan) // self.world_size
        return (self.num_batches or passes) if passes else 0

    def _deal(self, rng: np.random.RandomState) -> list[np.ndarray]:
        """One pass: the planned batches filled with randomly drawn images of their sizes."""
        queues = {size: list(rng.permutation(images)) for size, images in self._by_size.items()}
        batches = []
        for sizes in self.plan:
            cells = []
            for size in sizes:
                members = self.images[queues[size].pop()]
                cells.append(members if len(members) == size else rng.choice(members, size, replace=False))
            batches.append(np.concatenate(cells))
        return [batches[i] for i in rng.permutation(len(batches))]

    def _rank_batches(self) -> list[list[np.ndarray]]:
        rng, ranks, wanted = self._rng(), self.world_size, len(self)
        batches: list[np.ndarray] = []
        while len(batches) < wanted * ranks:
            dealt = self._deal(rng)
            batches.extend(dealt[: len(dealt) // ranks * ranks])
        return [batches[i * ranks : (i + 1) * ranks] for i in range(wanted)]


class BalancedImageBatchSampler(_WholeImageBatchSampler):
    """Class-balanced batches of whole images: the bags of MIL, with the rare classes seen.

    Each batch (per process under DDP) is filled image by image: a class drawn uniformly among
    the cells' classes, a cell of that class drawn uniformly, and that cell's image, not yet in
    the batch, with all its cells. The last image that does not fit gives the drawn cell and a
    random choice of its other cells to fill the batch, so every batch holds exactly its share
    of cells. Rare classes are thus drawn as often as common ones, as in
    :class:`BalancedBatchSampler`, but an image's cells stay together.

    Parameters
    ----------
    labels : int array ``[N]``
        One class per cell (for multi-hot cells their rarest label).
    groups : int array ``[N]``
        Each cell's image as an integer code (:attr:`CellDataset.groups`).
    batch_size : int
        Cells in a global batch.
    num_batches : int
        Global batches per epoch.
    seed, rank, world_size
        As for the other samplers.
    """

    def __init__(
        self,
        labels,
        groups,
        batch_size: int,
        num_batches: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(batch_size, seed, rank, world_size)
        labels, groups = np.asarray(labels), np.asarray(groups)
        if labels.shape != groups.shape:
            raise ValueError(f"{len(labels)} labels but {len(groups)} groups")
        if len(labels) < batch_size // world_size:
            raise ConfigError(f"a batch of {batch_size // world_size} cells cannot be drawn from "
                              f"{len(labels)} cells")
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        _, self.image_of = np.unique(groups, return_inverse=True)  # each cell's image, 0..G-1
        order = np.argsort(self.image_of, kind="stable")
        self.images = np.split(order, np.flatnonzero(np.diff(self.image_of[order])) + 1)
        self.num_batches = num_batches

    def __len__(self) -> int:
        return self.num_batches

    def _fill(self, rng: np.random.RandomState, room: int) -> np.ndarray:
        """One batch of ``room`` cells, image by image."""
        cells, taken = [], set()
        while room > 0:
            members = self.by_class[rng.randint(len(self.by_class))]
            cell = members[rng.randint(len(members))]
            image = self.image_of[cell]
            if image in taken:
                continue
            taken.add(image)
            bag = self.images[image]
            if len(bag) > room:
                bag = np.concatenate([[cell], rng.choice(bag[bag != cell], room - 1, replace=False)])
            cells.append(bag)
            room -= len(bag)
        return np.concatenate(cells)

    def _rank_batches(self) -> list[list[np.ndarray]]:
        rng, share = self._rng(), self.batch_size // self.world_size
        return [[self._fill(rng, share) for _ in range(self.world_size)] for _ in range(self.num_batches)]


def make_loader(dataset: CellDataset, batch_sampler: Sampler, num_workers: int = 0) -> DataLoader:
    """A DataLoader that reads whole batches through ``dataset.__getitems__``."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=_collate_batch,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def make_batch_sampler(
    data: DataConfig,
    y_primary: np.ndarray,
    groups=None,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Sampler:
    """The training batch sampler a :class:`~hpa_embed.config.DataConfig` asks for.

    ``fit`` and ``lr_find`` both draw their batches here, so they see the same batches. A
    balanced batch needs ``batch_size / m_per_class`` classes; when the training cells have
    fewer, the batch keeps its size and draws more cells per class (the smallest ``m`` dividing
    the batch that the classes can fill), and says so in the log.

    Parameters
    ----------
    data : DataConfig
    y_primary : int ``[N]``
        One class per training cell (for multi-hot cells their rarest label,
        :func:`hpa_embed.losses.primary_labels`).
    groups : int ``[N]``, optional
        Each training cell's image (:attr:`CellDataset.groups`); needed by ``sampler="images"``
        and ``"balanced_images"``.
    seed, rank, world_size
        Seed of the batches, and this process's place under DDP.
    """
    n_cells, batch = len(y_primary), data.batch_size
    if data.sampler == "shuffle":
        return ShuffledBatchSampler(n_cells, batch, seed=seed, rank=rank, world_size=world_size)
    if data.sampler in ("images", "balanced_images"):
        if groups is None:
            raise ValueError(f"sampler={data.sampler!r} needs each cell's image: pass groups "
                             "(CellDataset.groups)")
        if len(groups) != n_cells:
            raise ValueError(f"{n_cells} cells but {len(groups)} groups")
        if data.sampler == "images":
            return ImageBatchSampler(groups, batch, data.batches_per_epoch, seed=seed, rank=rank,
                                     world_size=world_size)
        return BalancedImageBatchSampler(y_primary, groups, batch,
                                         data.batches_per_epoch or max(1, n_cells // batch),
                                         seed=seed, rank=rank, world_size=world_size)
    classes = len(np.unique(y_primary))
    m = data.m_per_class
    if classes * m < batch:
        fits = [size for size in range(m, batch + 1) if batch % size == 0 and size * classes >= batch]
        if not classes or not fits:
            raise ConfigError(f"a balanced batch of {batch} cannot be drawn from {classes} classes")
        log.warning("the training cells show %d classes; a balanced batch of %d with m_per_class=%d "
                    "needs %d: drawing %d cells of %d classes per batch instead",
                    classes, batch, m, batch // m, fits[0], batch // fits[0])
        m = fits[0]
    batches = data.batches_per_epoch or max(1, n_cells // batch)
    return BalancedBatchSampler(y_primary, m, batch, batches, seed=seed, rank=rank, world_size=world_size)
