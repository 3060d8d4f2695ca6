"""The weak-label recipes: named configurations of a run, from the seed's to the oracle.

Image labels say what an image shows; a cell of the image may show any part of it or nothing.
Each recipe is a different answer to "which label does a cell train on":

========================  ===================================================================
``seed-ce``               cells of single-label images, each with its image's label; softmax
                          cross-entropy, class-balanced batches (the seed project's recipe)
``seed-ce-triplet``       the same, plus a triplet loss on mined triplets
``balanced``              every cell with all its image's labels (multi-hot), BCE + multi-label
                          triplets (at 0.1 of the BCE), class-balanced batches
``mil``                   ``dim-negative``'s targets, the cells of an image forming a bag: a
                          cell-level BCE plus an image-level BCE on the bag's log-sum-exp
                          pooled logits, batches of whole images
``pseudo``                ``dim-negative``, then a second round trained on cell pseudo-labels:
                          a cell keeps an image label where round one supports it, and a
                          cell with none supported becomes Negative
``dim-negative``          ``balanced``, with the dim cells of a labelled image trained as
                          Negative: those whose green signal is below 0.2 of the brightest
                          cell's of their image
``fusion``                ``dim-negative`` with each cell's score blended with its image's
                          (the maximum over the image's cells) at inference
``knn``                   ``dim-negative``'s embeddings classified by a kNN vote of the
                          training cells on the targets they trained on, not the linear head
``oracle``                every cell with its true labels (synthetic truth only): the ceiling
========================  ===================================================================

Negative (class 18). Weak labels name Negative only for images where no cell shows anything, so
a model trained on image labels never learns that a cell of a positive image shows nothing.
Every recipe therefore scores Negative by the complement rule: a cell's Negative score is the
larger of the model's own Negative output and ``1 - max`` of its other classes (a cell that
shows nothing confidently is Negative). ``pseudo`` also trains on it: its round two labels the
cells with no supported label Negative, and ``dim-negative`` the cells that are dim in the
protein channel beside the other cells of their image (a cell that does not express the
protein is not stained). :func:`hpa_embed.classify.score_negative` applies the rule
(``[classify] negative``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .config import ConfigError, LossConfig, RunConfig
from .labels import NEGATIVE

__all__ = ["Recipe", "RECIPES", "recipe_config", "pseudo_labels", "train_pseudo_round", "relative_brightness",
           "dim_negative_labels", "train_dim_negative"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Recipe:
    """A weak-label recipe: what it changes in a run's config.

    Attributes
    ----------
    name : str
    summary : str
        One line for tables.
    configure : callable
        ``RunConfig -> RunConfig``: the recipe's sections on top of a base run (which keeps its
        input, crops, model, optimisation and evaluation settings).
    """

    name: str
    summary: str
    configure: Callable[[RunConfig], RunConfig]


def _sections(data: dict, loss: dict, classify: dict, train: dict | None = None) -> Callable:
    def configure(base: RunConfig) -> RunConfig:
        return base.replace(
            data=dataclasses.replace(base.data, **data),
            loss=dataclasses.replace(LossConfig(), **loss),
            train=dataclasses.replace(base.train, **(train or {})),
            classify=dataclasses.replace(base.classify, **classify),
        )

    return configure


# Class-balanced batches, as the calibration ran the seed's recipe: with shuffled batches the
# rare classes' few single-label images are hardly seen (cell mAP 0.167 against 0.249,
# docs/recipes.md "Calibration: the seed's recipe and standard's difficulty").
_SINGLE = {"label_mode": "single_label", "sampler": "balanced"}
_WEAK = {"label_mode": "image_labels", "sampler": "balanced"}
# A cell of a labelled image below 0.2 of its image's brightest cell's green signal trains as
# Negative (docs/recipes.md, "What the weak labels cost").
_DIM = {"dim_negative": 0.2}
# The triplet term at a tenth of the classification loss: at full weight it cost the linear head
# 0.06-0.09 cell mAP (docs/recipes.md, bench_diagnose.py bce-prior-triplet / -balanced-triplet).
_BCE_TRIPLET = {"classification": "bce", "metric": "triplet", "miner": "semihard", "multilabel_mining": True,
                "w_metric": 0.1}

#: The recipes by name, in the order of the quality table.
RECIPES: dict[str, Recipe] = {recipe.name: recipe for recipe in (
    Recipe("seed-ce", "single-label images, cell = image label, CE",
           _sections(_SINGLE, {"classification": "ce", "metric": None}, {"methods": ("head",)})),
    Recipe("seed-ce-triplet", "the same, CE + triplet",
           _sections(_SINGLE, {"classification": "ce", "metric": "triplet", "miner": "semihard"},
                     {"methods": ("head",)})),
    Recipe("balanced", "all cells, image labels, BCE + multi-label triplet, balanced batches",
           _sections(_WEAK, _BCE_TRIPLET, {"methods": ("head",)})),
    Recipe("mil", "dim-negative in bags of an image's cells: cell BCE + image BCE on LSE-pooled logits",
           _sections({"label_mode": "image_labels", "sampler": "images"},
                     {**_BCE_TRIPLET, "mil_weight": 1.0, "mil_pooling": "lse"}, {"methods": ("head",)},
                     _DIM)),
    Recipe("pseudo", "dim-negative, then a round on cell pseudo-labels (unsupported -> Negative)",
           _sections(_WEAK, _BCE_TRIPLET, {"methods": ("head",)}, {**_DIM, "pseudo_rounds": 1})),
    Recipe("dim-negative", "balanced, the dim cells of labelled images trained as Negative",
           _sections(_WEAK, _BCE_TRIPLET, {"methods": ("head",)}, _DIM)),
    Recipe("fusion", "dim-negative, cell score blended with its image's at inference",
           _sections(_WEAK, _BCE_TRIPLET, {"methods": ("head",), "fusion_weight": 0.5}, _DIM)),
    Recipe("knn", "dim-negative embeddings, kNN vote of the training cells on their training targets",
           _sections(_WEAK, _BCE_TRIPLET, {"methods": ("knn",), "knn_labels": "training_targets"}, _DIM)),
    Recipe("oracle", "every cell with its true labels (synthetic truth): the ceiling",
           _sections({"label_mode": "true_labels", "sampler": "balanced"}, _BCE_TRIPLET,
                     {"methods": ("head",), "knn_labels": "true_labels"})),
)}


def recipe_config(name: str, base: RunConfig | None = None) -> RunConfig:
    """The run config of recipe ``name`` on top of ``base`` (default ``RunConfig()``)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name].configure(base or RunConfig())


# --------------------------------------------------------------------------- pseudo-labels


def pseudo_labels(
    image_labels: np.ndarray,
    probabilities: np.ndarray,
    image_ids: np.ndarray,
    support: float = 0.5,
    negative: int = NEGATIVE,
) -> np.ndarray:
    """Cell labels from image labels and a model's cell probabilities.

    A cell keeps a label of its image when the model supports it there: its probability of that
    class reaches ``support`` times the highest probability of the class among the image's
    cells (relative within the image, so a model that is uncertain everywhere still ranks the
    cells). A cell with no supported label becomes Negative.

    Parameters
    ----------
    image_labels : bool ``[N, K]``
        Each cell's image labels (multi-hot).
    probabilities : float ``[N, K]``
        The round-one model's cell probabilities.
    image_ids : array-like ``[N]``
        Each cell's image.
    support : float in (0, 1]
    negative : int

    Returns
    -------
    bool ``[N, K]``
    """
    if not 0 < support <= 1:
        raise ValueError(f"support={support!r} must lie in (0, 1]")
    image_labels = np.asarray(image_labels, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _, image_index = np.unique(np.asarray(image_ids, dtype=object), return_inverse=True)
    image_max = np.zeros((image_index.max() + 1, probabilities.shape[1]))
    np.maximum.at(image_max, image_index, probabilities)
    supported = image_labels & (probabilities >= support * image_max[image_index])
    supported[:, negative] |= image_labels[:, negative]
    supported[~supported.any(axis=1), negative] = True
    return supported


def train_pseudo_round(
    store, out: str | os.PathLike, config: RunConfig, checkpoint: str | os.PathLike,
    support: float = 0.5, progress: bool = True,
):
    """Label the training and validation cells with :func:`pseudo_labels` of ``checkpoint``'s
    model and train a new model on them into ``out`` (a :func:`~hpa_embed.train.fit` run).

    Returns the :class:`~hpa_embed.train.FitResult` of the new round.
    """
    from .classify import head_probabilities
    from .embed import embed_store
    from .store import CellStore

    store = store if isinstance(store, CellStore) else CellStore.open(store)
    cells = store.cells
    weak = cells[cells["split"].isin(["train", "val"])]
    embedded = embed_store(checkpoint, store, split=None, progress=progress)
    chosen = embedded.cells["cell_id"].isin(weak["cell_id"]).to_numpy()
    probabilities = head_probabilities(checkpoint, embedded.X[chosen])
    image_Y = store.scheme.to_multi_hot([list(v) if v is not None else [] for v in
                                         embedded.cells["image_labels"][chosen]])
    labelled = image_Y.any(axis=1)
    Y = pseudo_labels(image_Y[labelled], probabilities[labelled],
                      embedded.cells["image_id"].to_numpy()[chosen][labelled], support)
    labels = pd.Series([None] * len(cells), index=cells["cell_id"], dtype=object)
    chosen_ids = embedded.cells["cell_id"].to_numpy()[chosen][labelled]
    labels[chosen_ids] = [np.flatnonzero(row).tolist() for row in Y]
    log.info("pseudo-labels: %d cells, %.1f%% of them Negative", len(Y), 100 * Y[:, NEGATIVE].mean())
    return _fit_on_cell_labels(store, out, config, labels.to_numpy(), progress)


def _fit_on_cell_labels(store, out, config: RunConfig, labels: np.ndarray, progress: bool):
    """``fit`` ``config``'s model into ``out`` on ``labels`` (object ``[N]``: each store row's class
    ids, None for a cell left out), read as label mode ``pseudo_labels``."""
    from .train import fit

    data = dataclasses.replace(config.data, label_mode="pseudo_labels")
    return fit(store, Path(out), config.model, config.loss, data, config.train, resume=True,
               progress=progress, cells=store.cells.assign(pseudo_labels=labels))


# --------------------------------------------------------------------------- dim cells as Negative


def relative_brightness(store, channel: str = "green", percentile: float = 95.0) -> np.ndarray:
    """Each cell's signal in one channel beside the other cells of its image; float64 ``[N]``.

    The ``percentile`` of the channel over the crop's non-zero pixels (in a masked crop, the
    cell's own pixels), in field units (``crop / 255 * scale_<channel>``), divided by the
    highest such value among the cells of the same image: 1 for the brightest cell of each
    image. A crop without a non-zero pixel scores 0. Reads 1,024 crops at a time.
    """
    cells = store.cells
    index = store.channels.index(channel)
    values = np.zeros(len(cells))
    rows = cells["row"].to_numpy()
    for start in range(0, len(rows), 1024):
        crops = store.get_crops(rows[start:start + 1024])
        signal = crops[:, index].reshape(len(crops), -1).astype(np.float64)
        signal[(crops.max(axis=1) == 0).reshape(len(crops), -1)] = np.nan  # outside the cell
        signal[np.isnan(signal).all(axis=1)] = 0.0  # a crop without a non-zero pixel
        values[start:start + len(crops)] = np.nanpercentile(signal, percentile, axis=1)
    values *= cells[f"scale_{channel}"].to_numpy(dtype=np.float64) / 255
    brightest = pd.Series(values).groupby(cells["image_id"].to_numpy()).transform("max").to_numpy()
    return np.divide(values, brightest, out=np.zeros_like(values), where=brightest > 0)


def dim_negative_labels(image_labels: np.ndarray, brightness: np.ndarray, threshold: float,
                        negative: int = NEGATIVE) -> np.ndarray:
    """Image labels, with the dim cells of labelled images made Negative.

    Parameters
    ----------
    image_labels : bool ``[N, K]``
        Each cell's image labels (multi-hot).
    brightness : float ``[N]``
        :func:`relative_brightness`.
    threshold : float in (0, 1)
        A cell below it, in an image with a label other than Negative, gets Negative alone.

    Returns
    -------
    bool ``[N, K]``
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold={threshold!r} must lie in (0, 1)")
    labels = np.array(image_labels, dtype=bool)
    positive = np.delete(labels, negative, axis=1).any(axis=1)
    dim = positive & (np.asarray(brightness) < threshold)
    labels[dim] = False
    labels[dim, negative] = True
    return labels


def train_dim_negative(store, out: str | os.PathLike, config: RunConfig, progress: bool = True):
    """Train ``config``'s first round on :func:`dim_negative_labels` of the training and
    validation cells (threshold ``[train] dim_negative``), into ``out`` (a
    :func:`~hpa_embed.train.fit` run). Returns its :class:`~hpa_embed.train.FitResult`."""
    from .store import CellStore

    if config.data.label_mode != "image_labels":
        raise ConfigError(f"[train] dim_negative works on label_mode = 'image_labels', "
                          f"not {config.data.label_mode!r}")
    store = store if isinstance(store, CellStore) else CellStore.open(store)
    cells = store.cells
    chosen = cells["split"].isin(["train", "val"]).to_numpy() & np.array(
        [value is not None and len(value) > 0 for value in cells["image_labels"]])
    image_Y = store.scheme.to_multi_hot([list(value) for value in cells["image_labels"][chosen]])
    Y = dim_negative_labels(image_Y, relative_brightness(store)[chosen], config.train.dim_negative)
    labels = np.full(len(cells), None, dtype=object)
    labels[np.flatnonzero(chosen)] = [np.flatnonzero(row).tolist() for row in Y]
    log.info("dim cells as Negative: %d of %d cells of labelled images", int(Y[:, NEGATIVE].sum()
             - image_Y[:, NEGATIVE].sum()), len(Y))
    return _fit_on_cell_labels(store, out, config, labels, progress)
