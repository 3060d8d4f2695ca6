import pickle
import sys
import types

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from hpa_embed.io import DataError, read_mask, write_png
from hpa_embed.segment import (
    ClassicalSegmenter,
    HPACellSegmenter,
    Segmenter,
    check_masks,
    estimate_pixel_size,
    hpacellseg_inputs,
    mask_iou,
    masks_from_hpacellseg,
    match_cells,
    match_objects,
    object_f1,
    relabel_masks,
    segment_directory,
    split_touching,
)

PIXEL = 0.25  # µm per pixel of the generated fields


def disc(shape, centre, radius, stretch=(1.0, 1.0)):
    rows, cols = np.indices(shape)
    return (((rows - centre[0]) / stretch[0]) ** 2 + ((cols - centre[1]) / stretch[1]) ** 2
            <= radius**2)


def make_field(cells, size=256, pixel_size=PIXEL, seed=0, channels=4):
    """A field with cells given as (row_um, col_um, nucleus_radius_um, cell_radius_um).

    Returns the image and the true cell and nucleus masks (cells are discs cut by their
    neighbours' Voronoi borders).
    """
    rng = np.random.default_rng(seed)
    shape = (size, size)
    nuclei = np.zeros(shape, dtype=np.int32)
    cell_owner = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf)
    rows, cols = np.indices(shape)
    for k, (r, c, rn, rc) in enumerate(cells, start=1):
        centre = (r / pixel_size, c / pixel_size)
        nuclei[disc(shape, centre, rn / pixel_size)] = k
        distance = np.hypot(rows - centre[0], cols - centre[1])
        inside = (distance <= rc / pixel_size) & (distance < best)
        cell_owner[inside] = k
        best[inside] = distance[inside]
    cell_owner = np.where(nuclei > 0, nuclei, cell_owner)
    sigma = 0.5 / pixel_size
    blue = ndi.gaussian_filter((nuclei > 0).astype(np.float32) * 0.7, sigma)
    cytoplasm = (cell_owner > 0) & (nuclei == 0)
    # a dim line where two cells touch, as between real cells
    edges = ndi.morphological_gradient(cell_owner, size=3) > 0
    red = ndi.gaussian_filter((cytoplasm & ~edges).astype(np.float32) * 0.5, sigma)
    yellow = ndi.gaussian_filter((cytoplasm & ~edges).astype(np.float32) * 0.4, sigma)
    green = red * 0.3
    planes = [red, green, blue, yellow][:channels]
    image = np.stack(planes) + rng.normal(0, 0.01, (channels, *shape))
    return np.clip(image, 0, 1).astype(np.float32), cell_owner, nuclei


THREE_CELLS = [(15, 15, 5, 13), (15, 42, 6, 13), (45, 28, 5, 14)]


def test_classical_is_a_segmenter_and_picklable():
    segmenter = ClassicalSegmenter(pixel_size=0.5)
    assert isinstance(segmenter, Segmenter)
    assert pickle.loads(pickle.dumps(segmenter)) == segmenter


def test_cells_and_nuclei_found_with_the_convention():
    image, true_cells, true_nuclei = make_field(THREE_CELLS)
    cell_mask, nucleus_mask = ClassicalSegmenter(pixel_size=PIXEL).segment(image)
    assert cell_mask.dtype == np.int32 and nucleus_mask.dtype == np.int32
    assert cell_mask.shape == nucleus_mask.shape == image.shape[1:]
    assert check_masks(cell_mask, nucleus_mask) == 3
    assert sorted(np.unique(cell_mask[cell_mask > 0]).tolist()) == [1, 2, 3]
    for cell_id in (1, 2, 3):  # each cell holds exactly one nucleus, of its own id
        assert np.unique(nucleus_mask[cell_mask == cell_id]).tolist() == [0, cell_id]
    assert object_f1(true_nuclei, nucleus_mask).f1 == 1.0
    cells = object_f1(true_cells, cell_mask)
    assert cells.f1 == 1.0 and cells.mean_iou > 0.85


def test_touching_nuclei_split_in_two():
    # two nuclei of radius 5 µm, centres 9.8 µm apart: one blob with a narrow waist
    image, _, true_nuclei = make_field([(20, 15, 5, 11), (20, 24.8, 5, 11)], size=200)
    assert ndi.label(true_nuclei > 0)[1] == 1
    cell_mask, nucleus_mask = ClassicalSegmenter(pixel_size=PIXEL).segment(image)
    assert check_masks(cell_mask, nucleus_mask) == 2
    assert object_f1(true_nuclei, nucleus_mask).f1 == 1.0


def test_split_touching_discs_but_not_an_ellipse():
    shape = (80, 120)
    two = disc(shape, (40, 40), 20) | disc(shape, (40, 76), 20)
    labels = split_touching(two, 0.7, 2)
    assert labels.max() == 2 and labels.dtype == np.int32
    assert set(np.unique(labels[:, :45][two[:, :45]])) == {1}
    assert set(np.unique(labels[:, 72:][two[:, 72:]])) == {2}
    ellipse = disc(shape, (40, 60), 20, stretch=(1.0, 2.5))
    assert split_touching(ellipse, 0.7, 2).max() == 1
    assert split_touching(np.zeros(shape, bool)).max() == 0


@pytest.mark.parametrize("background", ["zeros", "noise", "constant"])
def test_empty_field_gives_empty_masks(background):
    rng = np.random.default_rng(1)
    image = {
        "zeros": np.zeros((4, 300, 300), np.float32),
        "noise": rng.normal(0.05, 0.01, (4, 300, 300)).clip(0, 1).astype(np.float32),
        "constant": np.full((4, 300, 300), 0.2, np.float32),
    }[background]
    cell_mask, nucleus_mask = ClassicalSegmenter().segment(image)
    assert cell_mask.shape == (300, 300) and cell_mask.dtype == np.int32
    assert not cell_mask.any() and not nucleus_mask.any()


def test_noise_floor_ignores_texture_inside_cells():
    """The threshold floor comes from the background's noise, not from fibres inside cells: a
    crowded, textured field would otherwise lose the dim rims of its cells."""
    from hpa_embed.segment.base import _noise_sigma

    rng = np.random.default_rng(3)
    plane = rng.normal(0.02, 0.01, (200, 200)).astype(np.float32)
    # 70 % of the field is cells with strong fibre-like texture
    plane[:, 60:] += 0.3 + 0.15 * np.sign(np.sin(np.arange(140) * 1.3))[None, :]
    smoothed = ndi.gaussian_filter(plane, 2)
    assert _noise_sigma(plane, smoothed) == pytest.approx(0.01 * np.sqrt(8 / 9), rel=0.15)
    assert _noise_sigma(plane) > 5 * _noise_sigma(plane, smoothed)  # the texture fools the plain one


def test_confluent_synthetic_field():
    """A confluent synthetic field (every cell touches a neighbour, borders meander) is still
    segmented cell by cell."""
    import dataclasses

    from hpa_embed.synthetic import generate_field, get_preset, touching_fraction

    config = dataclasses.replace(get_preset("standard"), confluence=(1.1, 1.1), cell_lines=("A-431",))
    field = generate_field(config, seed=5)
    assert touching_fraction(field.cell_mask) > 0.9 and field.n_cells > 40
    cell_mask, nucleus_mask = ClassicalSegmenter().segment(field.image)
    check_masks(cell_mask, nucleus_mask)
    assert object_f1(field.nucleus_mask, nucleus_mask, 0.6).f1 >= 0.95
    # (a noise floor inflated by the fibres' texture lost the cells' dim rims: F1 0.59, IoU 0.68)
    cells = object_f1(field.cell_mask, cell_mask, 0.6)
    assert cells.f1 >= 0.9 and cells.mean_iou >= 0.72


def two_cells_field(gains, border, size=256, seed=0):
    """Two cells side by side with flat cytoplasm of brightness ``gains`` (left, right), touching
    along the column ``border`` (µm), nuclei of radius 5 µm at columns 14 and 42 µm (so the
    middle between them is at 28 µm). No dim line between the cells: only the step of
    brightness marks the border. Returns the image and the true cell mask."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((size, size)) * PIXEL
    body = ((rows - 32) / 13) ** 2 + ((cols - 32) / 27) ** 2 <= 1
    cells = np.where(body, np.where(cols < border, 1, 2), 0)
    nuclei = ((rows - 32) ** 2 + (cols - 14) ** 2 <= 25) | ((rows - 32) ** 2 + (cols - 42) ** 2 <= 25)
    gain = np.array([0.0, *gains], np.float32)[cells]
    sigma = 0.5 / PIXEL
    # microtubules dimmer over the nucleus, no ER there: each nucleus is a dark hole in the reference
    red = ndi.gaussian_filter(gain * np.where(nuclei, 0.6, 1.0), sigma)
    yellow = ndi.gaussian_filter(gain * 0.8 * ~nuclei, sigma)
    blue = ndi.gaussian_filter(0.7 * nuclei.astype(np.float32), sigma)
    image = np.stack([red, 0.3 * red, blue, yellow]) + rng.normal(0, 0.01, (4, size, size))
    return np.clip(image, 0, 1).astype(np.float32), cells.astype(np.int32)


@pytest.mark.parametrize("gains, border", [
    ((0.8, 0.4), 22.0),  # the dim cell is the larger: a watershed pulled to the middle (28 µm)
    ((0.4, 0.8), 36.0),  # between the nuclei gave the bright one 9-10 µm of it (F1 0.5 and 0)
    ((0.8, 0.4), 36.0),
    ((0.4, 0.8), 22.0),
])
def test_border_between_unequal_cells_follows_the_intensity_edge(gains, border):
    image, true_cells = two_cells_field(gains, border)
    cell_mask, nucleus_mask = ClassicalSegmenter(pixel_size=PIXEL).segment(image)
    assert check_masks(cell_mask, nucleus_mask) == 2
    row = cell_mask[int(32 / PIXEL)]
    left = row[int(14 / PIXEL)]
    found = (np.flatnonzero(row == left).max() + 1) * PIXEL
    assert abs(found - border) <= 1.5, f"border found at {found} µm, true {border} µm"
    scores = object_f1(true_cells, cell_mask, 0.6)
    assert scores.f1 == 1.0 and scores.mean_iou > 0.85


def test_cell_altitude_raises_a_wall_at_a_step():
    """The flooded landscape has a ridge where a bright cell meets a dim one (the negated
    reference alone only steps down from the dim side to the bright one)."""
    from hpa_embed.segment.classical import _cell_altitude

    reference = np.ones((20, 60), np.float32)
    reference[:, 30:] = 2.0  # dim (left) | bright (right)
    plain = _cell_altitude(reference, 0.5, 0.0, 1.0)[10]
    assert np.all(np.diff(plain) <= 1e-6)  # monotone: no wall
    walled = _cell_altitude(reference, 0.5, 1.5, 1.0)[10]
    # the wall stands above the dim side's level, at the step
    assert walled.max() > walled[5] + 0.1 and abs(int(walled.argmax()) - 29.5) <= 1
    np.testing.assert_allclose(walled[:20], -1.0, atol=1e-3)
    np.testing.assert_allclose(walled[40:], -2.0, atol=1e-3)


def test_three_channel_field_works():
    image, true_cells, _ = make_field(THREE_CELLS, channels=3)
    cell_mask, nucleus_mask = ClassicalSegmenter(pixel_size=PIXEL).segment(image)
    assert check_masks(cell_mask, nucleus_mask) == 3
    assert object_f1(true_cells, cell_mask).f1 == 1.0


def test_cytoplasm_without_nucleus_is_not_a_cell():
    image, true_cells, _ = make_field(THREE_CELLS)
    # a cell whose nucleus is not stained: cytoplasm only, beside cell 2 across a dim 1 µm line
    shape = image.shape[1:]
    beside = ~ndi.binary_dilation(true_cells > 0, iterations=int(1 / PIXEL))
    blob = disc(shape, (30 / PIXEL, 56 / PIXEL), 8.5 / PIXEL) & beside
    blob = ndi.gaussian_filter(blob.astype(np.float32), 2) * 0.5
    image[0] = np.clip(image[0] + blob, 0, 1)
    image[3] = np.clip(image[3] + blob, 0, 1)
    cell_mask, nucleus_mask = ClassicalSegmenter(pixel_size=PIXEL).segment(image)
    assert check_masks(cell_mask, nucleus_mask) == 3
    # the unstained cell is left out rather than given to cell 2
    core = disc(shape, (30 / PIXEL, 57 / PIXEL), 5 / PIXEL)
    assert (cell_mask[core] > 0).mean() < 0.2
    assert object_f1(true_cells, cell_mask).f1 == 1.0


def test_cytoplasm_of_a_cell_far_from_its_nucleus_is_kept():
    # one long cell: cytoplasm reaching 20 µm beyond its nucleus, no valley on the way
    image, true_cells, _ = make_field([(20, 14, 5, 12)], size=256)
    arm = disc(image.shape[1:], (20 / PIXEL, 34 / PIXEL), 9 / PIXEL, stretch=(1.0, 1.5))
    true_cells = np.where(arm & (true_cells == 0), 1, true_cells)
    cytoplasm = ndi.gaussian_filter(((true_cells == 1) & (image[2] < 0.2)).astype(np.float32),
                                    2) * 0.5
    image[0], image[3] = cytoplasm, cytoplasm * 0.8
    cell_mask, nucleus_mask = ClassicalSegmenter(pixel_size=PIXEL).segment(image)
    assert check_masks(cell_mask, nucleus_mask) == 1
    assert object_f1(true_cells, cell_mask, 0.8).f1 == 1.0


def test_scale_handling_at_two_sizes():
    """The same scene at 0.25 and 0.125 µm/px gives the same objects, pixel size measured."""
    cells = [(12, 12, 5, 11), (12, 34, 6, 11), (34, 22, 5, 12)]
    masks = {}
    for size, pixel_size in ((192, 0.25), (384, 0.125)):
        image, true_cells, true_nuclei = make_field(cells, size=size, pixel_size=pixel_size)
        measured = estimate_pixel_size(image, nucleus_diameter=10.8)
        assert measured == pytest.approx(pixel_size, rel=0.2)
        cell_mask, nucleus_mask = ClassicalSegmenter().segment(image)  # pixel size measured
        assert check_masks(cell_mask, nucleus_mask) == 3
        assert object_f1(true_nuclei, nucleus_mask).f1 == 1.0
        assert object_f1(true_cells, cell_mask).f1 == 1.0
        masks[size] = cell_mask
    coarse = masks[384][::2, ::2]
    assert object_f1(masks[192], coarse, 0.8).f1 == 1.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="C, H, W"):
        ClassicalSegmenter().segment(np.zeros((2, 64, 64), np.float32))
    with pytest.raises(ValueError, match="C, H, W"):
        ClassicalSegmenter().segment(np.zeros((64, 64), np.float32))
    with pytest.raises(ValueError, match="pixel_size"):
        ClassicalSegmenter(pixel_size=0).segment(np.zeros((4, 64, 64), np.float32))


# --------------------------------------------------------------------------- conventions


def test_check_masks_and_relabel():
    cells = np.array([[1, 1, 0, 5, 5], [1, 1, 0, 5, 5], [0, 0, 0, 9, 9]])
    nuclei = np.array([[3, 0, 0, 0, 7], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    with pytest.raises(ValueError, match="outside the cell"):
        check_masks(cells, nuclei)
    cell_mask, nucleus_mask = relabel_masks(cells, nuclei)
    # cell 9 has no nucleus and is dropped; 1 -> 1, 5 -> 2
    np.testing.assert_array_equal(
        cell_mask, [[1, 1, 0, 2, 2], [1, 1, 0, 2, 2], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        nucleus_mask, [[1, 0, 0, 0, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert check_masks(cell_mask, nucleus_mask) == 2
    with pytest.raises(ValueError, match="no nucleus"):
        check_masks(cells, np.where(cells == 1, 1, 0))
    with pytest.raises(ValueError, match="same shape"):
        check_masks(cells, nuclei[:2])


def test_reference_masks_follow_the_convention(hpa_real):
    folder = hpa_real / "reference-masks"
    cell_mask = read_mask(folder / "1000_A12_2_cellmask.png")
    nucleus_mask = read_mask(folder / "1000_A12_2_nucleimask.png")
    assert check_masks(cell_mask, nucleus_mask, name="1000_A12_2") == 21


def test_real_field(hpa_real):
    from hpa_embed.io import read_field

    image = read_field(hpa_real / "fov", "57_F11_1")
    cell_mask, nucleus_mask = ClassicalSegmenter().segment(image)
    n_cells = check_masks(cell_mask, nucleus_mask)
    assert 9 <= n_cells <= 13
    # no nucleus split in two: every nucleus is one connected piece
    for nucleus_id in range(1, n_cells + 1):
        assert ndi.label(nucleus_mask == nucleus_id)[1] == 1


# --------------------------------------------------------------------------- hpacellseg adapter


class FakeCellSegmentator:
    """Stands in for hpacellseg.cellsegmentator.CellSegmentator; records its calls."""

    instances: list = []

    def __init__(self, nuclei_model, cell_model, scale_factor, device, padding,
                 multi_channel_model):
        self.kwargs = dict(nuclei_model=nuclei_model, cell_model=cell_model,
                           scale_factor=scale_factor, device=device, padding=padding,
                           multi_channel_model=multi_channel_model)
        self.calls = []
        FakeCellSegmentator.instances.append(self)

    def pred_nuclei(self, images):
        self.calls.append(("pred_nuclei", images, self.scale_factor))
        (image,) = images
        prediction = np.zeros((*image.shape, 3), np.uint8)
        prediction[..., 2] = image  # "nucleus" class = the blue channel
        return [prediction]

    def pred_cells(self, images):
        self.calls.append(("pred_cells", images, self.scale_factor))
        microtubules = images[0][0]
        return [np.zeros((*microtubules.shape, 3), np.uint8)]


def fake_package(label_cell):
    package = types.ModuleType("fake_hpacellseg")
    package.cellsegmentator = types.SimpleNamespace(CellSegmentator=FakeCellSegmentator)
    package.utils = types.SimpleNamespace(label_cell=label_cell)
    return package


@pytest.fixture
def weight_files(tmp_path):
    import torch

    paths = []
    for name in ("nuclei.pth", "cell.pth"):
        torch.save(torch.nn.Conv2d(3, 3, 1), tmp_path / name)  # a whole pickled module
        paths.append(tmp_path / name)
    return paths


def test_hpacellseg_inputs():
    image = np.zeros((4, 8, 10), np.float32)
    image[0], image[2], image[3] = 1.0, 0.5, 0.2
    microtubules, er, nuclei = hpacellseg_inputs(image)
    assert microtubules.dtype == er.dtype == nuclei.dtype == np.uint8
    assert microtubules.shape == (8, 10)
    assert (microtubules == 255).all() and (nuclei == 128).all() and (er == 51).all()
    assert hpacellseg_inputs(image[:3], multi_channel_model=False)[1] is None
    with pytest.raises(ValueError, match="yellow"):
        hpacellseg_inputs(image[:3])


def test_masks_from_hpacellseg():
    # label_cell output: uint16, sparse ids, cell 4 lost its nucleus to a size filter
    cells = np.array([[7, 7, 0, 4], [7, 7, 0, 4]], dtype=np.uint16)
    nuclei = np.array([[7, 0, 0, 0], [0, 0, 0, 0]], dtype=np.uint16)
    cell_mask, nucleus_mask = masks_from_hpacellseg(nuclei, cells)
    assert cell_mask.dtype == nucleus_mask.dtype == np.int32
    np.testing.assert_array_equal(cell_mask, [[1, 1, 0, 0], [1, 1, 0, 0]])
    np.testing.assert_array_equal(nucleus_mask, [[1, 0, 0, 0], [0, 0, 0, 0]])
    with pytest.raises(ValueError, match="same shape"):
        masks_from_hpacellseg(nuclei[:1], cells)


def test_hpacellseg_adapter_with_fake_package(weight_files):
    seen = {}

    def label_cell(nuclei_pred, cell_pred):
        seen["shapes"] = (nuclei_pred.shape, cell_pred.shape, nuclei_pred.dtype)
        cells = np.zeros(nuclei_pred.shape[:2], np.uint16)
        cells[:10, :10], cells[20:, 20:] = 3, 8
        nuclei = np.where(nuclei_pred[..., 2] > 100, cells, 0).astype(np.uint16)
        return nuclei, cells

    image = np.zeros((4, 32, 32), np.float32)
    image[2, 2:6, 2:6] = 1.0  # a nucleus in cell 3 only: cell 8 has none and is dropped
    FakeCellSegmentator.instances.clear()
    segmenter = HPACellSegmenter(*weight_files, device="cpu", scale_factor=0.25,
                                 package=fake_package(label_cell))
    cell_mask, nucleus_mask = segmenter.segment(image)
    assert check_masks(cell_mask, nucleus_mask) == 1
    assert (cell_mask[:10, :10] == 1).all() and not cell_mask[20:, 20:].any()
    assert seen["shapes"] == ((32, 32, 3), (32, 32, 3), np.uint8)
    (built,) = FakeCellSegmentator.instances
    assert built.kwargs["device"] == "cpu" and built.kwargs["multi_channel_model"] is True
    assert isinstance(built.kwargs["nuclei_model"], __import__("torch").nn.Conv2d)
    (name, images, scale), (name2, cell_images, scale2) = built.calls
    assert name == "pred_nuclei" and name2 == "pred_cells" and scale == scale2 == 0.25
    assert images[0].dtype == np.uint8 and images[0][3, 3] == 255
    assert [len(channel) for channel in cell_images] == [1, 1, 1]  # mt, er, nuclei lists
    # a second field reuses the built models; pickling drops them
    segmenter.segment(image)
    assert len(FakeCellSegmentator.instances) == 1
    clone = pickle.loads(pickle.dumps(segmenter))
    assert clone._segmentator is None and clone.package == "fake_hpacellseg"


def test_hpacellseg_adapter_errors(weight_files, tmp_path, monkeypatch):
    with pytest.raises(DataError, match="missing.pth: HPA Cell Segmentation nucleus model weights not found"):
        HPACellSegmenter(tmp_path / "missing.pth", weight_files[1], device="cpu")
    with pytest.raises(ValueError, match="device"):
        HPACellSegmenter(*weight_files, device="gpu")
    monkeypatch.setitem(sys.modules, "hpacellseg", None)  # import fails
    segmenter = HPACellSegmenter(*weight_files, device="cpu", scale_factor=0.25)
    with pytest.raises(ImportError, match="pip install git\\+https://github.com/CellProfiling"):
        segmenter.segment(np.zeros((4, 16, 16), np.float32))
    import torch

    if not torch.cuda.is_available():
        cuda = HPACellSegmenter(*weight_files, device="cuda", package=fake_package(None))
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            cuda.segment(np.zeros((4, 16, 16), np.float32))


# --------------------------------------------------------------------------- directories


def write_field(folder, image_id, image):
    for name, plane in zip(("red", "green", "blue", "yellow"), image):
        write_png(folder / f"{image_id}_{name}.png", (plane * 255 + 0.5).astype(np.uint8))


def test_segment_directory_resumes_and_skips_bad_fields(tmp_path, caplog):
    images, out = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    for k, image_id in enumerate(("a", "b")):
        write_field(images, image_id, make_field(THREE_CELLS, seed=k)[0])
    write_field(images, "bad", make_field(THREE_CELLS)[0])
    blue = (images / "bad_blue.png").read_bytes()
    (images / "bad_blue.png").write_bytes(blue[: len(blue) // 3])  # truncated PNG

    segmenter = ClassicalSegmenter(pixel_size=PIXEL)
    report = segment_directory(images, out, segmenter, workers=1, progress=False)
    assert sorted(report.done) == ["a", "b"] and report.skipped == []
    assert list(report.failed) == ["bad"] and "bad_blue.png" in report.failed["bad"]
    assert report.n_cells == {"a": 3, "b": 3}
    assert "bad" in caplog.text
    cell_mask = read_mask(out / "a_cellmask.png")
    nucleus_mask = read_mask(out / "a_nucleimask.png")
    assert check_masks(cell_mask, nucleus_mask) == 3
    assert Image.open(out / "a_cellmask.png").mode.startswith("I;16")
    assert not list(out.glob(".*tmp*"))  # no temporary files left behind

    (out / "b_cellmask.png").unlink()  # b half-done: redone; a complete: skipped
    report = segment_directory(images, out, segmenter, workers=2, progress=False)
    assert report.skipped == ["a"] and report.done == ["b"] and list(report.failed) == ["bad"]


def test_segment_directory_npz(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    write_field(images, "a", make_field(THREE_CELLS)[0])
    report = segment_directory(images, tmp_path / "out", ClassicalSegmenter(pixel_size=PIXEL),
                               workers=1, mask_format="npz", progress=False)
    assert report.done == ["a"]
    cell_mask = read_mask(tmp_path / "out" / "a_cellmask.npz")
    assert check_masks(cell_mask, read_mask(tmp_path / "out" / "a_nucleimask.npz")) == 3
    with pytest.raises(ValueError, match="mask_format"):
        segment_directory(images, tmp_path / "out", mask_format="tif")


# --------------------------------------------------------------------------- metrics


def random_mask(rng, shape=(40, 50), n_objects=6, max_id=1000):
    """Rectangles with sparse random ids painted over each other."""
    mask = np.zeros(shape, dtype=np.int32)
    ids = rng.choice(np.arange(1, max_id), size=n_objects, replace=False)
    for object_id in ids:
        r, c = rng.integers(0, shape[0] - 5), rng.integers(0, shape[1] - 5)
        h, w = rng.integers(3, 15, size=2)
        mask[r : r + h, c : c + w] = object_id
    return mask


def brute_force_iou(true_mask, pred_mask):
    true_ids = np.unique(true_mask[true_mask > 0])
    pred_ids = np.unique(pred_mask[pred_mask > 0])
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for i, t in enumerate(true_ids):
        for j, p in enumerate(pred_ids):
            a, b = true_mask == t, pred_mask == p
            iou[i, j] = (a & b).sum() / (a | b).sum()
    return iou, true_ids, pred_ids


@pytest.mark.parametrize("seed", range(5))
def test_mask_iou_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    true_mask, pred_mask = random_mask(rng), random_mask(rng, max_id=70000)
    iou, true_ids, pred_ids = mask_iou(true_mask, pred_mask)
    expected, expected_true, expected_pred = brute_force_iou(true_mask, pred_mask)
    np.testing.assert_array_equal(true_ids, expected_true)
    np.testing.assert_array_equal(pred_ids, expected_pred)
    np.testing.assert_allclose(iou, expected)


def test_mask_iou_hand_computed_and_empty():
    true_mask = np.zeros((4, 4), dtype=np.int32)
    true_mask[:2, :2] = 5  # 4 px
    pred_mask = np.zeros((4, 4), dtype=np.int32)
    pred_mask[:2, :3] = 9  # 6 px, 4 shared
    iou, true_ids, pred_ids = mask_iou(true_mask, pred_mask)
    assert true_ids.tolist() == [5] and pred_ids.tolist() == [9]
    assert iou[0, 0] == pytest.approx(4 / 6)
    iou, true_ids, pred_ids = mask_iou(true_mask, np.zeros_like(true_mask))
    assert iou.shape == (1, 0) and pred_ids.size == 0
    # a mask without background pixels
    iou, _, _ = mask_iou(np.full((3, 3), 2), np.full((3, 3), 7))
    assert iou.tolist() == [[1.0]]


def test_mask_iou_rejects_bad_input():
    with pytest.raises(ValueError, match="shape"):
        mask_iou(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(ValueError, match="integer"):
        mask_iou(np.zeros((3, 3)), np.zeros((3, 3), int))


def test_match_objects_one_to_one_and_greedy():
    true_mask = np.zeros((10, 20), dtype=np.int32)
    true_mask[:, :10] = 1
    true_mask[:, 10:] = 2
    pred_mask = np.zeros_like(true_mask)
    pred_mask[:, :9] = 4  # IoU with 1: 90/100
    pred_mask[:, 9:20] = 3  # IoU with 2: 100/110; with 1: 10/200
    true_ids, pred_ids, ious = match_objects(true_mask, pred_mask, 0.6)
    assert true_ids.tolist() == [2, 1] and pred_ids.tolist() == [3, 4]
    np.testing.assert_allclose(ious, [100 / 110, 0.9])
    # below the threshold nothing matches
    assert len(match_objects(true_mask, pred_mask, 0.95)[2]) == 0


@pytest.mark.parametrize("seed", range(3))
def test_match_objects_brute_force_low_threshold(seed):
    """Greedy matching equals a brute-force greedy pass over the IoU matrix."""
    rng = np.random.default_rng(seed)
    true_mask, pred_mask = random_mask(rng, n_objects=10), random_mask(rng, n_objects=10)
    expected, t_ids, p_ids = brute_force_iou(true_mask, pred_mask)
    pairs = []
    iou = expected.copy()
    while iou.size and iou.max() >= 0.1:
        i, j = np.unravel_index(iou.argmax(), iou.shape)
        pairs.append((t_ids[i], p_ids[j]))
        iou[i, :] = -1
        iou[:, j] = -1
    true_ids, pred_ids, _ = match_objects(true_mask, pred_mask, 0.1)
    assert sorted(zip(true_ids.tolist(), pred_ids.tolist())) == sorted(
        (int(a), int(b)) for a, b in pairs
    )


def test_object_f1():
    true_mask = np.zeros((10, 30), dtype=np.int32)
    true_mask[:, :10], true_mask[:, 10:20], true_mask[:, 20:] = 1, 2, 3
    pred_mask = np.zeros_like(true_mask)
    pred_mask[:, :10] = 7  # exact
    pred_mask[:, 10:16] = 8  # IoU 0.6 with 2 -> matched at 0.6
    pred_mask[:3, 20:] = 9  # IoU 0.3 with 3 -> not matched
    scores = object_f1(true_mask, pred_mask, 0.6)
    assert (scores.n_true, scores.n_pred, scores.n_matched) == (3, 3, 2)
    assert scores.precision == pytest.approx(2 / 3) and scores.recall == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(2 / 3)
    assert scores.mean_iou == pytest.approx((1.0 + 0.6) / 2)
    assert object_f1(np.zeros((3, 3), int), np.zeros((3, 3), int)).f1 == 1.0
    only_true = object_f1(true_mask, np.zeros_like(true_mask))
    assert only_true.f1 == 0.0 and only_true.recall == 0.0 and np.isnan(only_true.mean_iou)


def test_match_cells_takes_best_iou_above_half():
    truth = np.zeros((20, 20), dtype=np.int32)
    truth[0:10, 0:10], truth[10:20, 10:20] = 1, 2
    predicted = np.zeros((20, 20), dtype=np.int32)
    predicted[0:10, 2:10] = 5  # inside true 1: IoU 80/100
    predicted[10:20, 10:13] = 6  # inside true 2: IoU 30/100 -> no match
    predicted[0:2, 12:20] = 7  # on background only
    matches = match_cells(predicted, truth)
    assert matches["mask_id"].tolist() == [5, 6, 7]
    assert matches["true_id"].tolist() == [1, 0, 0]
    assert matches["iou"].tolist() == pytest.approx([0.8, 0.3, 0.0])


@pytest.mark.parametrize("min_iou", [0.0, 0.2, 0.5])
def test_match_cells_matches_brute_force(min_iou):
    """Every cell gets the true cell of highest IoU (lowest id on ties), from per-pair IoUs."""
    rng = np.random.default_rng(0)
    true_mask = random_mask(rng, n_objects=10, max_id=40)
    # a "segmentation": the truth renumbered, shifted and partly painted over by other cells
    new_ids = rng.permutation(np.arange(100, 141))
    cell_mask = np.roll(np.where(true_mask > 0, new_ids[true_mask], 0), (1, 2), axis=(0, 1))
    cell_mask = np.maximum(cell_mask, random_mask(rng, n_objects=4, max_id=30))
    matches = match_cells(cell_mask, true_mask, min_iou)
    assert matches["mask_id"].tolist() == np.unique(cell_mask[cell_mask > 0]).tolist()
    for cell_id, true_id, iou in zip(matches["mask_id"], matches["true_id"], matches["iou"]):
        best_id, best_iou = 0, 0.0
        for candidate in np.unique(true_mask[true_mask > 0]):
            a, b = cell_mask == cell_id, true_mask == candidate
            pair_iou = (a & b).sum() / (a | b).sum()
            if pair_iou > best_iou:
                best_id, best_iou = int(candidate), pair_iou
        assert iou == pytest.approx(best_iou)
        assert true_id == (best_id if best_iou >= min_iou else 0)
    assert 0 < (matches["true_id"] > 0).sum() < len(matches)  # some cells matched, some not


def test_match_cells_without_true_cells_or_cells():
    cell_mask = np.zeros((6, 6), np.int32)
    cell_mask[1:3, 1:3] = 4
    matches = match_cells(cell_mask, np.zeros_like(cell_mask), min_iou=0.0)
    assert matches["true_id"].tolist() == [0] and matches["iou"].tolist() == [0.0]
    assert len(match_cells(np.zeros_like(cell_mask), cell_mask)) == 0
    with pytest.raises(ValueError, match="shape"):
        match_cells(cell_mask, cell_mask[:5])
