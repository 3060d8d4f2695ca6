"""Adapter over HPA Cell Segmentation (package ``hpacellseg``), with weight files the user names.

Checked against the package's source (CellProfiling/HPA-Cell-Segmentation at commit 7b6dbc6,
version 0.1.8) with randomly initialised DPN-UNets: see ``benchmarks/check_hpacellseg.py`` and
``docs/segmentation.md``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from ..io import DataError
from .base import BLUE, RED, YELLOW, check_image, estimate_pixel_size, relabel_masks

# --------------------------------------------------------------------------- HPA Cell Segmentation

HPACELLSEG_INSTALL = "pip install git+https://github.com/CellProfiling/HPA-Cell-Segmentation.git"
#: Pixel size (µm) the DPN-UNet models see: 2048² fields at 0.08 µm scaled by 0.25.
HPACELLSEG_MODEL_PIXEL_SIZE: float = 0.32
#: The package's own ``scale_factor`` (its default, and the HPA's setting for its fields): the
#: models see the images it is given at a quarter of their size, and ``label_cell``'s size
#: filters (nuclei under 2500 px, cells under 5500 px) are in pixels of those images, i.e. at
#: 0.08 µm/px. The adapter resizes each field to that pixel size before the package.
HPACELLSEG_SCALE_FACTOR: float = 0.25
#: The DPN-UNets take sides that are multiples of 32 (five stride-2 stages); ``padding=True``
#: makes the package reflect-pad its scaled images to the next multiple (plus 32 px).
HPACELLSEG_SIDE_MULTIPLE: int = 32

#: The CellSegmentators built in this process, by what they were built from: the tasks a worker
#: process runs (a batch of fields each) load the two models once, not once per task.
_BUILT: dict[tuple, object] = {}


def _to_uint8(plane: np.ndarray) -> np.ndarray:
    return (np.clip(plane, 0, 1) * 255 + 0.5).astype(np.uint8)


def hpacellseg_inputs(
    image: np.ndarray,
    multi_channel_model: bool = True,
    shape: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The per-field channel arrays ``hpacellseg`` expects, from one of our fields.

    Parameters
    ----------
    image : float32 ``[C, H, W]``
        (red, green, blue[, yellow]) in [0, 1].
    multi_channel_model : bool
        True for the 3-channel cell model (microtubules, ER, nuclei): needs the yellow channel.
        False for the 2-channel model, which takes no ER image (``None``).
    shape : (int, int) or None
        Resize the planes to this shape first (bilinear, anti-aliased when shrinking); None
        keeps ``(H, W)``.

    Returns
    -------
    microtubules, er, nuclei : uint8 ``[H, W]`` (er None for the 2-channel model)
        8-bit, as the package reads its PNGs (its models were trained on 8-bit HPA images; the
        package turns them into [0, 1] floats before normalising).
    """
    check_image(image)
    if multi_channel_model and image.shape[0] <= YELLOW:
        raise ValueError(
            "the 3-channel HPA cell model needs the yellow (ER) channel; this field has "
            f"{image.shape[0]} channels (use multi_channel_model=False with a 2-channel model)"
        )

    def plane(index: int) -> np.ndarray:
        values = image[index]
        if shape is not None and tuple(shape) != values.shape:
            from skimage.transform import resize

            shrink = shape[0] < values.shape[0] or shape[1] < values.shape[1]
            values = resize(values.astype(np.float32), shape, order=1, anti_aliasing=shrink,
                            preserve_range=True)
        return _to_uint8(values)

    er = plane(YELLOW) if multi_channel_model else None
    return plane(RED), er, plane(BLUE)


def _check_prediction(prediction: np.ndarray, shape: tuple[int, int], what: str) -> np.ndarray:
    prediction = np.asarray(prediction)
    if prediction.shape != (*shape, 3) or prediction.dtype != np.uint8:
        raise ValueError(
            f"hpacellseg {what} prediction should be uint8 [{shape[0]}, {shape[1]}, 3], got "
            f"{prediction.dtype} {list(prediction.shape)}"
        )
    return prediction


def _resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (pixel centres mapped onto pixel centres)."""
    if labels.shape == tuple(shape):
        return labels
    rows = ((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]).astype(np.intp)
    cols = ((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]).astype(np.intp)
    return labels[np.minimum(rows, labels.shape[0] - 1)[:, None],
                  np.minimum(cols, labels.shape[1] - 1)[None, :]]


def masks_from_hpacellseg(nuclei_label: np.ndarray, cell_label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our masks from the output of ``hpacellseg.utils.label_cell``.

    ``label_cell`` returns ``(nuclei_label, cell_label)``, both uint16 (cells 1..n; the nucleus
    mask carries the ids of the cells, and a cell can end up without a nucleus after its size
    filters). Returns int32 ``(cell_mask, nucleus_mask)`` with ids 1..n, nucleus ids equal to
    cell ids, no cell without a nucleus (see :func:`relabel_masks`).
    """
    nuclei_label = np.asarray(nuclei_label)
    cell_label = np.asarray(cell_label)
    if nuclei_label.ndim != 2 or nuclei_label.shape != cell_label.shape:
        raise ValueError(
            f"label_cell output: nuclei {nuclei_label.shape} and cells {cell_label.shape} must be "
            "2-D masks of the same shape"
        )
    return relabel_masks(cell_label.astype(np.int64), nuclei_label.astype(np.int64))


@dataclass
class HPACellSegmenter:
    """Adapter over HPA Cell Segmentation (``hpacellseg``, DPN-UNet nucleus and cell models).

    The package is not on PyPI: install it with
    ``pip install git+https://github.com/CellProfiling/HPA-Cell-Segmentation.git`` (which also
    installs ``pytorch_zoo``, the models' code) and download its weight files yourself (see
    ``docs/segmentation.md``). Nothing is ever downloaded here: missing files are an error,
    unlike the package's own default.

    The weight files are whole pickled torch modules (the package's format); they are loaded with
    ``torch.load(weights_only=False)``, which runs code stored in the file, so name only files
    you obtained from the HPA.

    Each field is resized to 0.08 µm/px (``scale_factor / 0.25`` times its size) and padded to a
    square with zeros; the package then runs as the HPA runs it (``scale_factor=0.25``), so the
    models see the field at ``scale_factor`` and ``label_cell``'s pixel-count filters hold at
    the scale they were set for; the labels are cropped and resized back (nearest neighbour).
    The square works around the package's resize back from the models' scale, which swaps
    height and width (``cv2.resize`` given ``(rows, cols)``) and so fails on other fields.

    Parameters
    ----------
    nuclei_model, cell_model : path
        Weight files of the nucleus model (``NUCLEI_MODEL_URL`` in ``hpacellseg/constants.py``)
        and of the cell model (``MULTI_CHANNEL_CELL_MODEL_URL``, or ``TWO_CHANNEL_CELL_MODEL_URL``
        with ``multi_channel_model=False``).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; required, and a CUDA device that is not there is
        an error (the package would silently fall back to the CPU).
    scale_factor : float or None
        Resize factor of the field before the models. None: ``pixel_size / 0.32`` so the models
        see the scale they were trained at (0.25 for a 2048² field at 0.08 µm/px).
    pixel_size : float or None
        µm per pixel when ``scale_factor`` is None; None: :func:`estimate_pixel_size`.
    multi_channel_model : bool
        True: cell model on (microtubules, ER, nuclei); False: (microtubules, nuclei).
    padding : bool
        Passed on: the package reflect-pads the scaled images to a multiple of 32 px (plus a
        32 px margin), which the models need unless the field's scaled side already is one
        (True, the HPA's own setting). False refuses such fields with a ValueError.
    package : module or None
        The ``hpacellseg`` package (None: imported on first use). Injectable for tests.
    """

    nuclei_model: str | os.PathLike
    cell_model: str | os.PathLike
    device: str
    scale_factor: float | None = None
    pixel_size: float | None = None
    multi_channel_model: bool = True
    padding: bool = True
    package: ModuleType | None = field(default=None, repr=False)
    _segmentator: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not (
            self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")
        ):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        for what, path in (("nucleus", self.nuclei_model), ("cell", self.cell_model)):
            if not Path(path).is_file():
                raise DataError(path, f"HPA Cell Segmentation {what} model weights not found (download "
                                      "them as described in docs/segmentation.md; nothing is downloaded "
                                      "for you; they are pickles, and loading one runs the code stored "
                                      "in it: name only files obtained from the HPA)")

    # the built models stay in the process that built them; a worker builds its own
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_segmentator"] = None
        if isinstance(state["package"], ModuleType):
            state["package"] = state["package"].__name__
        return state

    def _package(self) -> ModuleType:
        package = self.package
        if isinstance(package, str):
            package = importlib.import_module(package)
        if package is None:
            try:
                package = importlib.import_module("hpacellseg")
            except ImportError as error:
                raise ImportError(
                    f"HPACellSegmenter needs the hpacellseg package: {HPACELLSEG_INSTALL} ({error})"
                ) from error
        for module in ("cellsegmentator", "utils"):
            if not hasattr(package, module):
                importlib.import_module(f"{package.__name__}.{module}")
        return package

    def _build(self) -> object:
        if self._segmentator is None:
            key = self._build_key()
            if key not in _BUILT:
                _BUILT[key] = self._load()
            self._segmentator = _BUILT[key]
        return self._segmentator

    def _build_key(self) -> tuple:
        """What a built CellSegmentator depends on: the package, the model files as they are now
        (path, size, modification time), the device and the settings."""
        package = self.package.__name__ if isinstance(self.package, ModuleType) else self.package
        files = []
        for path in (self.nuclei_model, self.cell_model):
            stat = Path(path).stat()
            files.append((str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns))
        return package, *files, self.device, self.padding, self.multi_channel_model

    def _load(self) -> object:
        """Load the two models and build the package's CellSegmentator."""
        import torch

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device!r} requested but CUDA is not available")
        package = self._package()
        models = []
        for path in (self.nuclei_model, self.cell_model):
            try:
                models.append(torch.load(path, map_location=torch.device(self.device),
                                         weights_only=False))
            except ModuleNotFoundError as error:
                # the pickles name the classes of the models' code (pytorch_zoo.unet.DPNUnet)
                raise ImportError(
                    f"loading {path} needs the module its model was pickled from ({error}); "
                    f"{HPACELLSEG_INSTALL} installs pytorch_zoo with it"
                ) from error
            except Exception as error:  # a truncated or foreign file: any of the unpickler's errors
                raise DataError(path, f"unreadable HPA Cell Segmentation model file, a whole pickled torch "
                                      f"module expected ({type(error).__name__}: {error})") from error
        segmentator = package.cellsegmentator.CellSegmentator(
            nuclei_model=models[0],
            cell_model=models[1],
            scale_factor=HPACELLSEG_SCALE_FACTOR,
            device=self.device,
            padding=self.padding,
            multi_channel_model=self.multi_channel_model,
        )
        # pred_* read the settings from these attributes (kept by CellSegmentator's __init__;
        # set again for stand-ins that do not)
        segmentator.scale_factor = HPACELLSEG_SCALE_FACTOR
        segmentator.padding = self.padding
        return segmentator

    def resolve_scale_factor(self, image: np.ndarray) -> float:
        """The resize factor the models get for ``image``."""
        if self.scale_factor is not None:
            return float(self.scale_factor)
        pixel_size = self.pixel_size if self.pixel_size is not None else estimate_pixel_size(image)
        return float(pixel_size / HPACELLSEG_MODEL_PIXEL_SIZE)

    def package_shape(self, image: np.ndarray) -> tuple[int, int]:
        """Shape of ``image`` resized to the package's scale (0.08 µm/px), before the square."""
        factor = self.resolve_scale_factor(image) / HPACELLSEG_SCALE_FACTOR
        return tuple(max(1, int(round(side * factor))) for side in image.shape[1:])

    def segment(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segment one field; see :meth:`Segmenter.segment`."""
        check_image(image)
        height, width = shape = self.package_shape(image)
        side = max(shape)
        scaled = int(round(side * HPACELLSEG_SCALE_FACTOR))  # skimage's rescale rounds
        if not self.padding and scaled % HPACELLSEG_SIDE_MULTIPLE:
            raise ValueError(
                f"the models would see this field at {scaled} px, not a multiple of "
                f"{HPACELLSEG_SIDE_MULTIPLE}: use padding=True"
            )
        planes = hpacellseg_inputs(image, self.multi_channel_model, shape=shape)
        # zeros (background) to a square: the package's resize back swaps height and width
        microtubules, er, nuclei = (
            None if plane is None else np.pad(plane, ((0, side - height), (0, side - width)))
            for plane in planes
        )
        segmentator = self._build()
        package = self._package()
        try:
            nuclei_pred = segmentator.pred_nuclei([nuclei])[0]
            cell_pred = segmentator.pred_cells([[microtubules], None if er is None else [er], [nuclei]])[0]
            nuclei_pred = _check_prediction(nuclei_pred, (side, side), "nucleus")
            cell_pred = _check_prediction(cell_pred, (side, side), "cell")
            nuclei_label, cell_label = package.utils.label_cell(nuclei_pred, cell_pred)
        except (AttributeError, TypeError) as error:
            # the package pins old NumPy/scikit-image APIs (np.bool, multichannel=)
            raise RuntimeError(
                f"hpacellseg failed ({type(error).__name__}: {error}); it needs numpy<1.24 and "
                "scikit-image<0.20, see docs/segmentation.md"
            ) from error
        labels = [np.asarray(label)[:height, :width] for label in (nuclei_label, cell_label)]
        labels = [_resize_labels(label, image.shape[1:]) for label in labels]
        return masks_from_hpacellseg(*labels)
