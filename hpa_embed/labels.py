"""The HPA location-class tables (ids, names, display colours) for the 2021 and 2018 schemes.

This is the one place that knows the class tables; everything else asks a :class:`ClassScheme`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ClassScheme", "HPA2021", "HPA2018", "SCHEMES", "get_scheme", "CHANNELS", "RGB_CHANNELS", "NEGATIVE",
    "MITOTIC_SPINDLE",
]

#: Channel order used everywhere: a field is float32 ``[4, H, W]`` in this order.
CHANNELS: tuple[str, ...] = ("red", "green", "blue", "yellow")
#: The channels of a 3-channel model.
RGB_CHANNELS: tuple[str, ...] = ("red", "green", "blue")
#: 2021 classes with a rule of their own: Negative (a cell that shows none of the other
#: patterns; never together with another class in an image label) and the mitotic spindle
#: (only mitotic cells show it).
NEGATIVE = 18
MITOTIC_SPINDLE = 11

# 20 well-separated display colours (tab20 reordered so neighbours in the table differ).
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173",
    "#3182bd", "#e6550d", "#31a354", "#756bb1",
)


@dataclass(frozen=True)
class ClassScheme:
    """A location-class table.

    Attributes
    ----------
    name : str
        ``"hpa2021"`` (19 classes, Kaggle 2021) or ``"hpa2018"`` (28 classes, Kaggle 2018).
    names : tuple of str
        Class names; the class id is the position in this tuple.
    colours : tuple of str
        Display colour (``"#rrggbb"``) per class.
    """

    name: str
    names: tuple[str, ...]
    colours: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def ids(self) -> np.ndarray:
        """Class ids, int64 ``[K]``."""
        return np.arange(self.num_classes)

    def to_multi_hot(self, labels: list[list[int]]) -> np.ndarray:
        """Lists of class ids -> multi-hot bool ``[N, K]``.

        Raises ``ValueError`` naming the offending id when one lies outside the scheme.
        """
        Y = np.zeros((len(labels), self.num_classes), dtype=bool)
        for row, ids in enumerate(labels):
            for class_id in ids:
                if not 0 <= class_id < self.num_classes:
                    raise ValueError(
                        f"label {class_id} is outside the {self.name} scheme "
                        f"(ids 0..{self.num_classes - 1})"
                    )
                Y[row, class_id] = True
        return Y

    def from_multi_hot(self, Y: np.ndarray) -> list[list[int]]:
        """Multi-hot bool ``[N, K]`` -> lists of class ids."""
        return [np.flatnonzero(row).tolist() for row in np.asarray(Y, dtype=bool)]


HPA2021 = ClassScheme(
    name="hpa2021",
    names=(
        "Nucleoplasm",
        "Nuclear membrane",
        "Nucleoli",
        "Nucleoli fibrillar center",
        "Nuclear speckles",
        "Nuclear bodies",
        "Endoplasmic reticulum",
        "Golgi apparatus",
        "Intermediate filaments",
        "Actin filaments",
        "Microtubules",
        "Mitotic spindle",
        "Centrosome",
        "Plasma membrane",
        "Mitochondria",
        "Aggresome",
        "Cytosol",
        "Vesicles and punctate cytosolic patterns",
        "Negative",
    ),
    colours=_PALETTE[:19],
)

HPA2018 = ClassScheme(
    name="hpa2018",
    names=(
        "Nucleoplasm",
        "Nuclear membrane",
        "Nucleoli",
        "Nucleoli fibrillar center",
        "Nuclear speckles",
        "Nuclear bodies",
        "Endoplasmic reticulum",
        "Golgi apparatus",
        "Peroxisomes",
        "Endosomes",
        "Lysosomes",
        "Intermediate filaments",
        "Actin filaments",
        "Focal adhesion sites",
        "Microtubules",
        "Microtubule ends",
        "Cytokinetic bridge",
        "Mitotic spindle",
        "Microtubule organizing center",
        "Centrosome",
        "Lipid droplets",
        "Plasma membrane",
        "Cell junctions",
        "Mitochondria",
        "Aggresome",
        "Cytosol",
        "Cytoplasmic bodies",
        "Rods & rings",
    ),
    colours=_PALETTE[:28],
)

SCHEMES: dict[str, ClassScheme] = {HPA2021.name: HPA2021, HPA2018.name: HPA2018}


def get_scheme(name: str | ClassScheme) -> ClassScheme:
    """Look up a scheme by name (``"hpa2021"`` or ``"hpa2018"``); a scheme passes through."""
    if isinstance(name, ClassScheme):
        return name
    try:
        return SCHEMES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown class scheme {name!r}; choose one of {sorted(SCHEMES)}") from None
