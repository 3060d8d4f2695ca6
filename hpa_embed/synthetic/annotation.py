"""Weak labels as in real HPA data: image-level label sets and the cells that show them.

An image's labels are drawn to match the Kaggle 2021 class imbalance; each cell of the image then
shows some of them (or none), and the image label is the union of what its cells show.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ..labels import MITOTIC_SPINDLE, NEGATIVE
from .config import SyntheticConfig

__all__ = ["sample_image_labels", "assign_cell_labels"]


@functools.lru_cache(maxsize=32)
def _bernoulli_rates(frequencies: tuple[float, ...]) -> np.ndarray:
    """Per-class inclusion rates ``q`` (classes 0..17) whose label sets, conditioned on being
    non-empty and not Negative, have the target marginal frequencies.

    With independent draws, ``P(k) = (1 - p_neg) * q_k / (1 - prod(1 - q))``; a fixed-point
    iteration solves it for ``q``.
    """
    target = np.asarray(frequencies[:NEGATIVE], dtype=float)
    not_negative = 1.0 - frequencies[NEGATIVE]
    rates = target.copy()
    for _ in range(100):
        non_empty = 1.0 - np.prod(1.0 - rates)
        rates = np.clip(target * non_empty / not_negative, 0.0, 0.95)
    return rates


def sample_image_labels(config: SyntheticConfig, rng: np.random.Generator) -> list[int]:
    """Draw one image's label set (sorted class ids; ``[18]`` for a Negative image).

    Over many images each class appears with (about) ``config.class_frequencies``; a set holds
    1..``config.max_labels`` classes, and Negative never comes with another class.
    """
    if rng.random() < config.class_frequencies[NEGATIVE]:
        return [NEGATIVE]
    rates = _bernoulli_rates(tuple(config.class_frequencies))
    while True:
        chosen = np.flatnonzero(rng.random(rates.size) < rates)
        if 1 <= chosen.size <= config.max_labels:
            return chosen.tolist()


def assign_cell_labels(
    image_labels: Sequence[int],
    mitotic: np.ndarray,
    config: SyntheticConfig,
    rng: np.random.Generator,
) -> list[list[int]]:
    """Decide which of its image's labels each cell shows.

    Parameters
    ----------
    image_labels : sequence of int
        The image's label set (``[18]`` for a Negative image).
    mitotic : bool ndarray ``[n]``
        Which cells are mitotic; only they can show the mitotic spindle (11).
    config : SyntheticConfig
        ``unlabelled_cell_fraction`` and ``label_show_probability`` are used.
    rng : numpy Generator

    Returns
    -------
    list of list of int
        Per cell, the sorted classes it shows; ``[18]`` for a cell that shows none. The union
        over cells (without 18) equals ``image_labels`` (without 18).

    Raises
    ------
    ValueError
        When the image is labelled mitotic spindle but no cell is mitotic.
    """
    mitotic = np.asarray(mitotic, dtype=bool)
    n_cells = mitotic.size
    labels = sorted(set(image_labels) - {NEGATIVE})
    if not labels:
        return [[NEGATIVE] for _ in range(n_cells)]
    if MITOTIC_SPINDLE in labels and not mitotic.any():
        raise ValueError("an image labelled mitotic spindle (11) needs at least one mitotic cell")

    def can_show(cell: int, label: int) -> bool:
        return label != MITOTIC_SPINDLE or bool(mitotic[cell])

    labelled = rng.random(n_cells) >= config.unlabelled_cell_fraction
    shown: list[set[int]] = [set() for _ in range(n_cells)]
    for cell in np.flatnonzero(labelled):
        eligible = [label for label in labels if can_show(cell, label)]
        shown[cell] = {label for label in eligible if rng.random() < config.label_show_probability}
        if eligible and not shown[cell]:
            shown[cell] = {eligible[rng.integers(len(eligible))]}
    # Every image label must be shown by some cell, else the image label would be a lie.
    for label in labels:
        if any(label in cell_labels for cell_labels in shown):
            continue
        candidates = [cell for cell in range(n_cells) if can_show(cell, label)]
        preferred = [cell for cell in candidates if labelled[cell]] or candidates
        shown[preferred[rng.integers(len(preferred))]].add(label)
    return [sorted(cell_labels) if cell_labels else [NEGATIVE] for cell_labels in shown]
