"""Configuration of the synthetic generator: cell-line morphologies, :class:`SyntheticConfig`, presets."""

from __future__ import annotations

from dataclasses import dataclass

from ..config.base import ConfigError, ConfigSection
from ..labels import HPA2021

__all__ = [
    "CellLine",
    "CELL_LINES",
    "KAGGLE2021_FREQUENCIES",
    "SyntheticConfig",
    "PRESETS",
    "get_preset",
]


@dataclass(frozen=True)
class CellLine:
    """Morphology of one cell line, relative to :attr:`SyntheticConfig.cell_radius`.

    Attributes
    ----------
    name : str
        HPA cell-line name, e.g. ``"U-2 OS"``.
    radius_scale : float
        Mean cell radius as a multiple of the config's ``cell_radius``.
    elongation : tuple of float
        Range of the cell's long/short axis ratio (1 = round).
    nucleus_ratio : float
        Mean nucleus radius / cell radius.
    irregularity : float
        Amplitude of the outline's angular wobble (0 = ellipse).
    crowding : float
        Multiplies the config's confluence (cells per area).
    aligned : bool
        Whether neighbouring elongated cells share one orientation (as fibroblast-like lines do).
    """

    name: str
    radius_scale: float
    elongation: tuple[float, float]
    nucleus_ratio: float
    irregularity: float
    crowding: float
    aligned: bool = False


#: Built-in morphologies: large flat spread cells, small crowded round ones, elongated ones.
CELL_LINES: dict[str, CellLine] = {
    line.name: line
    for line in (
        CellLine("U-2 OS", 1.2, (1.0, 1.8), 0.4, 0.22, 0.8),
        CellLine("A-431", 0.85, (1.0, 1.5), 0.5, 0.12, 1.2),
        CellLine("U-251 MG", 1.0, (1.8, 3.0), 0.38, 0.18, 1.0, aligned=True),
        CellLine("HEK 293", 0.8, (1.0, 1.5), 0.52, 0.15, 1.1),
    )
}

#: Approximate image-level class frequencies of the Kaggle 2021 training set (class id order).
KAGGLE2021_FREQUENCIES: tuple[float, ...] = (
    0.40, 0.03, 0.09, 0.04, 0.08, 0.07, 0.05, 0.05, 0.03, 0.03,
    0.03, 0.01, 0.06, 0.13, 0.08, 0.02, 0.30, 0.05, 0.01,
)


@dataclass(frozen=True)
class SyntheticConfig(ConfigSection):
    """Everything that shapes a synthetic field of view. Frozen: derive variants with
    :func:`dataclasses.replace`.

    Attributes
    ----------
    size : int
        Field side in pixels (fields are square).
    cell_radius : float
        Typical cell radius in pixels before the cell line's ``radius_scale``; also sets the
        pixel size of subcellular structures (dots, fibres, rims scale with it).
    cell_radius_sd : float
        Log-normal spread of the radius from cell to cell.
    confluence : tuple of float
        Range of cells per field area, as a multiple of ``area / (pi * radius**2)``; one value is
        drawn per field, log-uniformly (as many sparse as confluent fields), so density varies
        between fields from scattered cells to a monolayer where almost every cell touches.
    cell_lines : tuple of str
        Keys of :data:`CELL_LINES`; each field shows one cell line, drawn uniformly.
    mitotic_fraction : float
        Probability that a cell is mitotic.
    unlabelled_cell_fraction : float
        Fraction of cells in a labelled image that show none of the image's labels.
    label_show_probability : float
        Probability that a labelled cell shows each one of its image's labels (at least one is
        always shown).
    class_frequencies : tuple of float
        Target image-level frequency of each of the 19 classes.
    max_labels : int
        Most labels one image carries (1..4); label sets above it are redrawn.
    image_intensity_sd, cell_intensity_sd : float
        Log-normal spread of the green brightness per image and per cell.
    faint_fraction : float
        Fraction of cells stained very faintly (5-25 % of their brightness).
    background : float
        Camera offset added to every pixel, in [0, 1] units.
    autofluorescence : float
        Unspecific green signal in every cell's cytoplasm (what a Negative cell shows), relative
        to the labelled signal: it scales with the field's exposure and varies from cell to cell.
    blur_sigma : float
        Optical blur (Gaussian sigma, pixels).
    photons : float
        Photons at full scale: Poisson (shot) noise has variance ``value / photons``.
    read_noise : float
        Standard deviation of the Gaussian read noise, in [0, 1] units.
    bit_depth : int
        8 or 16: the quantisation of the written (and returned) images.
    difficulty : float
        0 (easy) .. 1 (hard): makes confusable classes look alike (smaller, more numerous, more
        diffuse structures) and raises noise, blur and faint staining.
    """

    size: int = 1024
    cell_radius: float = 110.0
    cell_radius_sd: float = 0.15
    confluence: tuple[float, float] = (0.12, 1.1)
    cell_lines: tuple[str, ...] = tuple(CELL_LINES)
    mitotic_fraction: float = 0.04
    unlabelled_cell_fraction: float = 0.15
    label_show_probability: float = 0.7
    class_frequencies: tuple[float, ...] = KAGGLE2021_FREQUENCIES
    max_labels: int = 4
    image_intensity_sd: float = 0.35
    cell_intensity_sd: float = 0.3
    faint_fraction: float = 0.05
    background: float = 0.01
    autofluorescence: float = 0.04
    blur_sigma: float = 0.8
    photons: float = 400.0
    read_noise: float = 0.006
    bit_depth: int = 8
    difficulty: float = 0.3

    def __post_init__(self) -> None:
        def check(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(f"SyntheticConfig: {message}")

        check(self.size >= 64, f"size must be >= 64 pixels, got {self.size}")
        check(self.cell_radius >= 8, f"cell_radius must be >= 8 pixels, got {self.cell_radius}")
        check(
            len(self.confluence) == 2 and 0 < self.confluence[0] <= self.confluence[1],
            f"confluence must be a (low, high) range of positive numbers, got {self.confluence}",
        )
        unknown = [name for name in self.cell_lines if name not in CELL_LINES]
        check(bool(self.cell_lines), "cell_lines must name at least one cell line")
        check(not unknown, f"unknown cell line(s) {unknown}; known: {sorted(CELL_LINES)}")
        for name in ("mitotic_fraction", "unlabelled_cell_fraction", "label_show_probability",
                     "faint_fraction", "difficulty", "background", "autofluorescence"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"{name} must lie in [0, 1], got {value}")
        check(
            len(self.class_frequencies) == HPA2021.num_classes
            and all(0.0 <= f < 1.0 for f in self.class_frequencies)
            and sum(self.class_frequencies[:-1]) > 0,
            f"class_frequencies must be {HPA2021.num_classes} numbers in [0, 1)",
        )
        check(1 <= self.max_labels <= 4, f"max_labels must lie in 1..4, got {self.max_labels}")
        check(self.bit_depth in (8, 16), f"bit_depth must be 8 or 16, got {self.bit_depth}")
        check(self.photons > 0, f"photons must be positive, got {self.photons}")
        for name in ("cell_radius_sd", "image_intensity_sd", "cell_intensity_sd", "blur_sigma",
                     "read_noise"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0")


PRESETS: dict[str, SyntheticConfig] = {
    # Unit tests: a handful of cells, generated in a few tens of milliseconds.
    "tiny": SyntheticConfig(size=256, cell_radius=45.0, confluence=(0.45, 0.65), difficulty=0.3),
    # The demo: HPA-like at half the usual resolution.
    "small": SyntheticConfig(size=512, cell_radius=65.0, difficulty=0.3),
    # Benchmarks and calibration: 1024 px. Its difficulty puts the seed's recipe near the cell mAP
    # it reached on real data (0.31 at the quality table's budget, docs/recipes.md "Calibration").
    "standard": SyntheticConfig(size=1024, cell_radius=110.0, difficulty=0.3),
}


def get_preset(name: str) -> SyntheticConfig:
    """The preset called ``name`` (see :data:`PRESETS`).

    Raises ``ValueError`` listing the valid names for an unknown one.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown synthetic preset {name!r}; choose one of {sorted(PRESETS)}"
        ) from None
