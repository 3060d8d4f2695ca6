"""HPACellSegmenter against a fake ``hpacellseg`` that keeps the real package's contract.

The fake follows HPA-Cell-Segmentation 0.1.8 (commit 7b6dbc6; checked against the real source
with ``benchmarks/check_hpacellseg.py``): ``pred_*`` rescale by ``scale_factor``, need sides
that are multiples of 32 unless ``padding``, return uint8 ``[.., .., 3]`` with channel 0 zeroed,
and resize back with ``cv2.resize(pred, (rows, cols))``, which swaps height and width;
``label_cell`` drops nuclei under 2500 px and cells under 5500 px and returns uint16 masks,
nucleus pixels carrying their cell's id.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from scipy import ndimage as ndi

from hpa_embed.io import DataError
from hpa_embed.segment import HPACellSegmenter, check_masks, hpacellseg_inputs
from hpa_embed.segment.hpacellseg import _resize_labels


class RealisticSegmentator:
    """Stands in for ``hpacellseg.cellsegmentator.CellSegmentator`` (no networks)."""

    def __init__(self, nuclei_model="./nuclei_model.pth", cell_model="./cell_model.pth",
                 scale_factor=0.25, device="cuda", padding=False, multi_channel_model=True):
        self.nuclei_model, self.cell_model = nuclei_model, cell_model
        self.scale_factor, self.device, self.padding = scale_factor, device, padding
        self.multi_channel_model = multi_channel_model
        self.model_inputs = []

    def _predict(self, image, objects):
        from skimage.transform import rescale, resize

        target_shape = image.shape
        scaled = rescale(image, self.scale_factor, channel_axis=-1)  # uint8 -> [0, 1] floats
        rows, cols = scaled.shape[:2]
        if self.padding:
            scaled = np.pad(scaled, ((32, 32 - rows % 32), (32, 32 - cols % 32), (0, 0)), mode="reflect")
        elif rows % 32 or cols % 32:
            raise RuntimeError("Sizes of tensors must match except in dimension 1")  # DPN-UNet
        self.model_inputs.append(scaled.shape)
        prediction = np.zeros(scaled.shape, np.float32)
        prediction[..., 2] = objects(scaled) > 0.5
        if self.padding:
            prediction = prediction[32:32 + rows, 32:32 + cols]
        prediction[..., 0] = 0
        if self.scale_factor != 1:  # cv2.resize(pred, (target_shape[0], target_shape[1]))
            prediction = resize(prediction, (target_shape[1], target_shape[0]), order=1)
        return (prediction * 255 + 0.5).astype(np.uint8)

    def pred_nuclei(self, images):
        out = []
        for image in images:
            if image.ndim == 2:
                image = np.dstack((image, image, image))
            out.append(self._predict(image, lambda x: x[..., 2]))
        return out

    def pred_cells(self, images):
        microtubules, er, nuclei = images
        if self.multi_channel_model != (er is not None):
            raise ValueError("ER images go with the 3-channel model only")
        er = er or [np.zeros_like(m) for m in microtubules]
        return [self._predict(np.dstack(planes), lambda x: x.max(axis=-1))
                for planes in zip(microtubules, er, nuclei)]


def label_cell(nuclei_pred, cell_pred):
    """The real one's contract: size filters in pixels, uint16, nucleus id == cell id."""
    cells, _ = ndi.label(cell_pred[..., 2] > 0.22 * 255)
    sizes = np.bincount(cells.ravel())
    cells[sizes[cells] < 5500] = 0
    cells, _ = ndi.label(cells > 0)
    nuclei, _ = ndi.label((nuclei_pred[..., 2] > 0.4 * 255) & (cells > 0))
    nuclei[np.bincount(nuclei.ravel())[nuclei] < 2500] = 0
    return (cells * (nuclei > 0)).astype(np.uint16), cells.astype(np.uint16)


@pytest.fixture
def package():
    package = types.ModuleType("realistic_hpacellseg")
    package.cellsegmentator = types.SimpleNamespace(CellSegmentator=RealisticSegmentator)
    package.utils = types.SimpleNamespace(label_cell=label_cell)
    return package


@pytest.fixture
def weight_files(tmp_path):
    import torch

    paths = [tmp_path / "nuclei.pth", tmp_path / "cell.pth"]
    for path in paths:
        torch.save(torch.nn.Conv2d(3, 3, 1), path)
    return paths


def field(shape, centres, nucleus_radius, cell_radius):
    """Discs: nuclei in blue, cells in red and yellow."""
    rows, cols = np.indices(shape)
    image = np.zeros((4, *shape), np.float32)
    for row, col in centres:
        distance = np.hypot(rows - row, cols - col)
        image[2][distance <= nucleus_radius] = 0.9
        image[0][distance <= cell_radius] = image[3][distance <= cell_radius] = 0.6
    return image


def test_fake_swaps_height_and_width_like_the_package():
    segmentator = RealisticSegmentator(scale_factor=0.25, padding=True)
    (prediction,) = segmentator.pred_nuclei([np.zeros((96, 64), np.uint8)])
    assert prediction.shape == (64, 96, 3) and prediction.dtype == np.uint8


def test_non_square_field(package, weight_files):
    # two cells, one near the far end of the long side
    image = field((256, 160), [(60, 60), (200, 100)], nucleus_radius=30, cell_radius=50)
    segmenter = HPACellSegmenter(*weight_files, device="cpu", scale_factor=0.25, package=package)
    cell_mask, nucleus_mask = segmenter.segment(image)
    assert cell_mask.shape == (256, 160) and check_masks(cell_mask, nucleus_mask) == 2
    assert cell_mask[60, 60] != cell_mask[200, 100] and nucleus_mask[200, 100] == cell_mask[200, 100]
    built = segmenter._segmentator
    assert built.scale_factor == 0.25 and built.padding is True
    assert built.model_inputs[0][:2] == (128, 128)  # 256 / 4 = 64 (+ 32 + 32 of padding)


def test_labels_at_the_scale_of_the_size_filters(package, weight_files):
    # a field at 0.32 µm/px (the 2018 set's scale): nuclei of 150-200 px, under label_cell's
    # 2500-px filter, unless labelled at 0.08 µm/px as the adapter does
    image = field((128, 128), [(32, 32), (90, 80)], nucleus_radius=8, cell_radius=20)
    segmenter = HPACellSegmenter(*weight_files, device="cpu", pixel_size=0.32, package=package)
    assert segmenter.resolve_scale_factor(image) == pytest.approx(1.0)
    assert segmenter.package_shape(image) == (512, 512)
    cell_mask, nucleus_mask = segmenter.segment(image)
    assert cell_mask.shape == (128, 128) and check_masks(cell_mask, nucleus_mask) == 2
    assert nucleus_mask[32, 32] == cell_mask[32, 32] > 0 and nucleus_mask[90, 80] > 0
    assert segmenter._segmentator.model_inputs[0][:2] == (192, 192)  # 128 px + 2 x 32


def test_two_channel_model_gets_no_er(package, weight_files):
    image = field((128, 128), [(64, 64)], nucleus_radius=30, cell_radius=50)[:3]
    segmenter = HPACellSegmenter(*weight_files, device="cpu", scale_factor=0.25,
                                 multi_channel_model=False, package=package)
    assert check_masks(*segmenter.segment(image)) == 1


def test_padding_false_needs_sides_multiple_of_32(package, weight_files):
    image = field((128, 128), [(64, 64)], nucleus_radius=30, cell_radius=50)
    unpadded = HPACellSegmenter(*weight_files, device="cpu", scale_factor=0.25, padding=False,
                                package=package)
    assert check_masks(*unpadded.segment(image)) == 1  # 128 / 4 = 32
    with pytest.raises(ValueError, match="padding=True"):
        unpadded.segment(image[:, :100, :100])  # 25 px: the DPN-UNet would fail


def test_inputs_resized_to_the_package_shape():
    image = np.zeros((4, 40, 40), np.float32)
    image[0] = 1.0
    microtubules, er, nuclei = hpacellseg_inputs(image, shape=(80, 60))
    assert microtubules.shape == er.shape == nuclei.shape == (80, 60)
    assert microtubules.dtype == np.uint8 and (microtubules == 255).all() and not nuclei.any()


def test_resize_labels_is_nearest():
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    np.testing.assert_array_equal(_resize_labels(labels, (6, 8)), np.repeat(np.repeat(labels, 2, 0), 2, 1))
    np.testing.assert_array_equal(_resize_labels(np.repeat(np.repeat(labels, 2, 0), 2, 1), (3, 4)), labels)


def test_missing_or_broken_weight_files_are_named(package, weight_files, tmp_path):
    with pytest.raises(DataError, match="nowhere.pth.*not found.*pickles.*runs the code"):
        HPACellSegmenter(tmp_path / "nowhere.pth", weight_files[1], device="cpu", package=package)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(weight_files[0].read_bytes()[:40])
    segmenter = HPACellSegmenter(broken, weight_files[1], device="cpu", scale_factor=0.25, package=package)
    with pytest.raises(DataError, match="broken.pth: unreadable HPA Cell Segmentation model file"):
        segmenter.segment(field((128, 128), [(64, 64)], nucleus_radius=20, cell_radius=40))


def test_tasks_of_one_process_load_the_models_once(package, weight_files, monkeypatch):
    import pickle
    import sys

    import torch

    monkeypatch.setitem(sys.modules, package.__name__, package)  # a worker imports it by name
    loaded = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, **kwargs: loaded.append(path) or load(path, **kwargs))
    image = field((128, 128), [(64, 64)], nucleus_radius=20, cell_radius=45)
    segmenter = HPACellSegmenter(*weight_files, device="cpu", scale_factor=0.25, package=package)
    first = segmenter.segment(image)
    task_copy = pickle.loads(pickle.dumps(segmenter))  # what the next task of a worker gets
    assert task_copy._segmentator is None
    again = task_copy.segment(image)
    assert loaded == list(weight_files)  # each model loaded once
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # a replaced weight file is loaded again
    torch.save(torch.nn.Conv2d(3, 3, 1), weight_files[1])
    HPACellSegmenter(*weight_files, device="cpu", scale_factor=0.25, package=package).segment(image)
    assert loaded == [*weight_files, *weight_files]
