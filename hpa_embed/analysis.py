"""Dataset analysis: label counts, labels per image, label combinations."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .io import LabelTable
from .labels import ClassScheme

__all__ = ["LabelStatistics", "label_statistics"]


@dataclass(frozen=True)
class LabelStatistics:
    """Summary of an image-level label table.

    Attributes
    ----------
    scheme : ClassScheme
    n_images : int
    class_counts : pandas.DataFrame
        One row per class: ``class_id``, ``name``, ``images`` (count), ``fraction`` of images.
    labels_per_image : pandas.Series
        Number of images (values) carrying k labels (index k = 1, 2, ...).
    n_combinations : int
        Number of distinct label sets.
    top_combinations : pandas.DataFrame
        The most common label sets: ``labels`` (e.g. ``"0|16"``), ``names``, ``images``, ``fraction``.
    """

    scheme: ClassScheme
    n_images: int
    class_counts: pd.DataFrame
    labels_per_image: pd.Series
    n_combinations: int
    top_combinations: pd.DataFrame

    def to_text(self) -> str:
        """The statistics as plain-text tables."""
        lines = [
            f"{self.n_images} images, scheme {self.scheme.name} ({self.scheme.num_classes} classes), "
            f"{self.n_combinations} distinct label combinations",
            "",
            "Images per class:",
            self.class_counts.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
            "",
            "Labels per image:",
            self.labels_per_image.rename("images").to_frame().to_string(),
            "",
            "Most common label combinations:",
            self.top_combinations.to_string(index=False, float_format=lambda v: f"{v:.3f}"),
        ]
        return "\n".join(lines)


def label_statistics(table: LabelTable, top: int = 10) -> LabelStatistics:
    """Count classes, labels per image and label combinations of a label table.

    Parameters
    ----------
    table : LabelTable
        From :func:`hpa_embed.io.read_labels` (either scheme).
    top : int
        How many of the most common combinations to keep.
    """
    scheme = table.scheme
    Y = table.Y
    n_images = len(table)
    per_class = Y.sum(axis=0)
    class_counts = pd.DataFrame(
        {
            "class_id": scheme.ids,
            "name": scheme.names,
            "images": per_class,
            "fraction": per_class / max(n_images, 1),
        }
    )
    n_labels = Y.sum(axis=1)
    labels_per_image = pd.Series(
        np.bincount(n_labels, minlength=2)[1:], index=pd.RangeIndex(1, max(n_labels.max(initial=1), 1) + 1)
    )
    labels_per_image.index.name = "labels"
    keys = pd.Series(["|".join(map(str, ids)) for ids in scheme.from_multi_hot(Y)])
    combination_counts = keys.value_counts()
    head = combination_counts.head(top)
    top_combinations = pd.DataFrame(
        {
            "labels": head.index,
            "names": [
                " + ".join(scheme.names[int(i)] for i in key.split("|")) for key in head.index
            ],
            "images": head.to_numpy(),
            "fraction": head.to_numpy() / max(n_images, 1),
        }
    )
    return LabelStatistics(
        scheme=scheme,
        n_images=n_images,
        class_counts=class_counts,
        labels_per_image=labels_per_image,
        n_combinations=int(combination_counts.size),
        top_combinations=top_combinations,
    )
