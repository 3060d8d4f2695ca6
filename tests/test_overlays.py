import shutil

import numpy as np
import pytest
from PIL import Image

from hpa_embed.io import find_mask_file, read_field, read_mask
from hpa_embed.segment import ClassicalSegmenter, segment_directory
from hpa_embed.visualise import composite_rgb, mask_outlines, overlay_masks

# two touching cells, one at the image border; '#' marks the outline drawn by hand
TWO_CELLS = """
.........
.1112222.
.1112222.
.1112222.
.1112222.
.....2222
"""
OUTLINE = """
.........
.#######.
.#.##..#.
.#.##..#.
.####..#.
.....####
"""


def picture(text: str) -> np.ndarray:
    rows = text.strip().splitlines()
    return np.array([[0 if c == "." else int(c) if c.isdigit() else 1 for c in row] for row in rows])


def test_outline_pixels_are_the_boundary_pixels():
    mask = picture(TWO_CELLS).astype(np.int32)
    expected = picture(OUTLINE).astype(bool)
    assert (mask_outlines(mask) == expected).all()
    overlay = overlay_masks(np.zeros((4, *mask.shape), np.float32), mask)
    assert overlay.dtype == np.uint8 and overlay.shape == (*mask.shape, 3)
    drawn = overlay.any(axis=-1)
    assert (drawn == expected).all()
    assert (overlay[expected] == 255).all()  # white cell outlines on a black field
    # a thicker outline grows inwards only: still within the cells
    thick = mask_outlines(mask, thickness=2)
    assert (thick >= expected).all() and not thick[mask == 0].any() and thick.sum() > expected.sum()


def test_nuclei_outlined_and_cells_tinted_by_class_colour():
    mask = np.zeros((16, 16), np.int32)
    mask[1:15, 1:9], mask[1:15, 9:15] = 1, 2
    nuclei = np.zeros_like(mask)
    nuclei[5:10, 3:7] = 1
    image = np.zeros((4, 16, 16), np.float32)
    overlay = overlay_masks(image, mask, nuclei, colours={1: "#ff0000"}, alpha=0.5)
    nucleus_outline = mask_outlines(nuclei)
    assert (overlay[nucleus_outline] == [0, 229, 255]).all()  # cyan
    band = (mask == 1) & mask_outlines(mask, thickness=2)
    assert (overlay[band] == [255, 0, 0]).all()  # a tinted cell is outlined in its colour
    cell_interior = (mask == 1) & ~band & ~nucleus_outline
    assert (overlay[cell_interior] == [128, 0, 0]).all()  # half red over black
    assert (overlay[(mask == 2) & ~mask_outlines(mask)] == 0).all()  # not in the mapping: untouched
    assert (overlay[mask == 0] == 0).all()


def test_overlay_on_a_synthetic_field_keeps_the_composite_elsewhere(tiny_dataset, tmp_path):
    image_id = "syn_000000"
    image = read_field(tiny_dataset / "train", image_id)
    cells = read_mask(find_mask_file(tiny_dataset / "truth", image_id))
    nuclei = read_mask(find_mask_file(tiny_dataset / "truth", image_id, "nucleimask"))
    overlay = overlay_masks(image, cells, nuclei)
    composite = composite_rgb(image)
    lines = mask_outlines(cells) | mask_outlines(nuclei)
    assert (overlay[mask_outlines(cells)] == 255).all()
    assert (overlay[~lines] == composite[~lines]).all()
    assert len(np.unique(overlay.reshape(-1, 3), axis=0)) > 1000 and overlay.std() > 20
    # an RGB picture is drawn on as it is
    again = overlay_masks(composite, cells, nuclei)
    assert (again == overlay).all()
    with pytest.raises(ValueError, match="cell mask"):
        overlay_masks(image, cells[:-1])
    with pytest.raises(ValueError, match="nucleus mask"):
        overlay_masks(image, cells, nuclei[:, :-1])


def test_segment_directory_writes_overlays_also_for_masks_already_there(tiny_dataset, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in (tiny_dataset / "train").glob("syn_00000[01]_*"):
        shutil.copy(path, images)
    out = tmp_path / "masks"
    segmenter = ClassicalSegmenter()
    first = segment_directory(images, out, segmenter, workers=1, progress=False, image_ids=["syn_000000"])
    assert first.done == ["syn_000000"] and not list(out.glob("*_overlay.png"))
    report = segment_directory(images, out, segmenter, workers=1, progress=False, overlay=True)
    assert sorted(report.done) == ["syn_000001"] and report.skipped == ["syn_000000"]
    for image_id in ("syn_000000", "syn_000001"):
        with Image.open(out / f"{image_id}_overlay.png") as overlay:
            assert overlay.mode == "RGB" and overlay.size == (256, 256)
        with Image.open(out / f"{image_id}_cellmask.png") as mask:
            assert mask.mode.startswith("I")  # still a 16-bit label image
    again = segment_directory(images, out, segmenter, workers=1, progress=False, overlay=True)
    assert sorted(again.skipped) == ["syn_000000", "syn_000001"] and not again.done
