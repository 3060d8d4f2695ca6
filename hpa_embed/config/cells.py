"""Config sections from fields of view to a CellStore: input, segmentation, crops, splits."""

from __future__ import annotations

from dataclasses import dataclass

from ..labels import CHANNELS
from .base import ConfigError, ConfigSection, check_choice, check_positive_int

__all__ = ["InputConfig", "SegmentConfig", "CropConfig", "SplitConfig"]


@dataclass(frozen=True)
class InputConfig(ConfigSection):
    """Where the fields of view come from: a synthetic preset or a Kaggle-layout directory.

    Attributes
    ----------
    source : {"synthetic", "directory"}
        ``"synthetic"``: generate ``n_images`` fields of ``preset`` (with their true masks and
        cell labels); ``"directory"``: read the fields of ``images`` with the labels of ``labels``.
    images : str or None
        Directory of ``<ID>_{red,green,blue,yellow}.png`` fields (source "directory").
    labels : str or None
        Label table of those fields, Kaggle's ``train.csv`` (source "directory").
    truth : str or None
        Root of a synthetic data set whose ``truth/`` scores the run (source "directory"; the
        synthetic source always has its own).
    preset : str
        Synthetic preset: ``"tiny"``, ``"small"`` or ``"standard"`` (checked when the run
        starts, against :data:`hpa_embed.synthetic.PRESETS`).
    n_images : int
        Number of synthetic fields.
    size : int or None
        Synthetic field side in pixels; None keeps the preset's.
    difficulty : float or None
        Synthetic difficulty, 0 (easy) to 1 (hard); None keeps the preset's.
    seed : int
        Seed of the synthetic generator.
    """

    source: str = "synthetic"
    images: str | None = None
    labels: str | None = None
    truth: str | None = None
    preset: str = "small"
    n_images: int = 12
    size: int | None = None
    difficulty: float | None = None
    seed: int = 0

    def __post_init__(self):
        check_choice("source", self.source, ("synthetic", "directory"))
        check_positive_int(self, "n_images")
        if self.source == "directory":
            missing = [name for name in ("images", "labels") if not getattr(self, name)]
            if missing:
                raise ConfigError(f"source='directory' needs {' and '.join(missing)}")
        if self.difficulty is not None and not 0 <= self.difficulty <= 1:
            raise ConfigError(f"difficulty={self.difficulty!r} must lie in [0, 1]")
        if self.size is not None and self.size < 64:
            raise ConfigError(f"size={self.size!r} must be at least 64 pixels")


@dataclass(frozen=True)
class SegmentConfig(ConfigSection):
    """How fields are segmented into cells and nuclei.

    Attributes
    ----------
    segmenter : {"classical", "hpacellseg"}
        ``"classical"``: :class:`~hpa_embed.segment.ClassicalSegmenter` (no weights);
        ``"hpacellseg"``: HPA Cell Segmentation with the weight files named below.
    pixel_size : float or None
        Micrometres per pixel; None measures it per field from the nuclei.
    nuclei_model, cell_model : str or None
        hpacellseg: the nucleus and cell model weight files.
    device : str
        hpacellseg: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    mask_format : {"png", "npz"}
        16-bit PNG label images or compressed ``.npz``.
    """

    segmenter: str = "classical"
    pixel_size: float | None = None
    nuclei_model: str | None = None
    cell_model: str | None = None
    device: str = "cpu"
    mask_format: str = "png"

    def __post_init__(self):
        check_choice("segmenter", self.segmenter, ("classical", "hpacellseg"))
        check_choice("mask_format", self.mask_format, ("png", "npz"))
        if self.segmenter == "hpacellseg" and not (self.nuclei_model and self.cell_model):
            raise ConfigError("segmenter='hpacellseg' needs nuclei_model and cell_model (weight files)")
        if self.pixel_size is not None and not self.pixel_size > 0:
            raise ConfigError(f"pixel_size={self.pixel_size!r} must be positive")


@dataclass(frozen=True)
class CropConfig(ConfigSection):
    """How cells are cut out of a field (see :mod:`hpa_embed.crops`).

    Attributes
    ----------
    crop_size : int
        Side S of the square crops, in pixels.
    channels : list of str
        Channels read and stored, in order (all four, or red, green, blue).
    margin : float
        Margin added on each side of the bounding box, as a fraction of its longer side.
    keep_neighbours : bool
        Keep every pixel of the window (background, neighbouring cells); by default only the
        cell's own pixels are kept and the rest is zero.
    normalisation : {"field_percentile", "none"}
        Divide each channel by a percentile of the field's cell pixels, or keep the dtype scaling.
    percentile : float
        The percentile used by "field_percentile".
    min_scale : float
        Lower bound of the divisor, in [0, 1] field units.
    """

    crop_size: int = 128
    channels: tuple[str, ...] = CHANNELS
    margin: float = 0.1
    keep_neighbours: bool = False
    normalisation: str = "field_percentile"
    percentile: float = 99.9
    min_scale: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))
        check_positive_int(self, "crop_size")
        if self.margin < 0:
            raise ConfigError(f"margin={self.margin!r} must be >= 0")
        check_choice("normalisation", self.normalisation, ("field_percentile", "none"))
        if not 0 < self.percentile <= 100 or not 0 < self.min_scale <= 1:
            raise ConfigError("percentile must lie in (0, 100] and min_scale in (0, 1]")
        unknown = [name for name in self.channels if name not in CHANNELS]
        if unknown or not self.channels:
            raise ConfigError(f"channels must be a non-empty subset of {CHANNELS}, got {self.channels}")


@dataclass(frozen=True)
class SplitConfig(ConfigSection):
    """How images are split into train, val and test (all cells of an image share its split).

    Attributes
    ----------
    fractions : list of float
        Relative sizes of the train, val and test splits.
    seed : int
        Seed of the split (see :func:`hpa_embed.crops.assign_splits`).
    """

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    def __post_init__(self):
        fractions = tuple(float(value) for value in self.fractions)
        if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0 or fractions[0] <= 0:
            raise ConfigError(f"fractions={self.fractions!r}: three non-negative numbers (train, val, "
                              "test), train positive")
        object.__setattr__(self, "fractions", fractions)
