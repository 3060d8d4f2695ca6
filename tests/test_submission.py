import base64
import zlib

import numpy as np
import pandas as pd
import pytest

from hpa_embed.io import DataError, read_mask, write_mask
from hpa_embed.rle import (
    decode_binary_mask,
    decode_mask_runs,
    encode_binary_mask,
    encode_label_mask,
    rle_to_counts,
)
from hpa_embed.submission import (
    Submission,
    build_submission,
    predictions_from_cells,
    read_submission,
    write_submission,
)


def counts_string(rle):
    return zlib.decompress(base64.b64decode(rle))


def brute_force_counts(mask):
    """Run lengths of a binary mask, column-major, starting with zeros (pycocotools' rleEncode)."""
    counts, previous, run = [], 0, 0
    for value in mask.ravel(order="F").astype(int):
        if value != previous:
            counts.append(run)
            run, previous = 0, value
        run += 1
    counts.append(run)
    return counts


def test_hand_computed_counts_and_strings():
    mask = np.array([[0, 1], [1, 1]], dtype=bool)  # column-major: 0 1 1 1
    rle = encode_binary_mask(mask)
    assert counts_string(rle) == b"13"
    assert rle_to_counts(counts_string(rle)).tolist() == [1, 3]
    # from the fourth value on, a value is stored minus the one two back: 1 - 2 = -1 -> 'O'
    mask = np.zeros((11, 1), dtype=bool)
    mask[5:7] = mask[10:] = True  # runs 5 0s, 2 1s, 3 0s, 1 1
    assert counts_string(encode_binary_mask(mask)) == b"523O"
    assert rle_to_counts(b"523O").tolist() == [5, 2, 3, 1]
    # empty and full masks; a mask starting with a one starts with a zero-length run
    assert rle_to_counts(counts_string(encode_binary_mask(np.zeros((4, 5), bool)))).tolist() == [20]
    assert rle_to_counts(counts_string(encode_binary_mask(np.ones((4, 5), bool)))).tolist() == [0, 20]


@pytest.mark.parametrize("seed", range(3))
def test_counts_match_brute_force_and_round_trip(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        height, width = rng.integers(1, 40, 2)
        mask = rng.random((height, width)) < rng.random()
        rle = encode_binary_mask(mask)
        assert rle_to_counts(counts_string(rle)).tolist() == brute_force_counts(mask)
        np.testing.assert_array_equal(decode_binary_mask(rle, height, width), mask)
        starts, lengths = decode_mask_runs(rle, height, width)
        flat = np.zeros(mask.size, bool)
        for start, length in zip(starts, lengths):
            flat[start : start + length] = True
        np.testing.assert_array_equal(flat, mask.ravel(order="F"))


def test_large_runs_use_multi_character_values():
    mask = np.zeros((300, 300), dtype=bool)
    mask[10:290, 7] = True
    mask[5, 200:] = True
    rle = encode_binary_mask(mask)
    assert rle_to_counts(counts_string(rle)).tolist() == brute_force_counts(mask)
    np.testing.assert_array_equal(decode_binary_mask(rle, 300, 300), mask)


def test_byte_for_byte_pycocotools(hpa_real):
    coco_mask = pytest.importorskip("pycocotools._mask")

    def kaggle_encode(mask):  # the competition's sample code
        mask = np.asfortranarray(mask.astype(bool).reshape(*mask.shape, 1).astype(np.uint8))
        counts = coco_mask.encode(mask)[0]["counts"]
        return base64.b64encode(zlib.compress(counts, zlib.Z_BEST_COMPRESSION)).decode()

    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = rng.random(tuple(rng.integers(1, 50, 2))) < rng.random()
        assert encode_binary_mask(mask) == kaggle_encode(mask)
    cell_mask = read_mask(hpa_real / "reference-masks" / "1000_A12_2_cellmask.png")
    for cell_id, rle in encode_label_mask(cell_mask).items():
        assert rle == kaggle_encode(cell_mask == cell_id)


def test_label_mask_round_trip_on_reference_mask(hpa_real):
    cell_mask = read_mask(hpa_real / "reference-masks" / "1000_A12_2_cellmask.png")
    encoded = encode_label_mask(cell_mask)
    assert sorted(encoded) == np.unique(cell_mask[cell_mask > 0]).tolist() and len(encoded) == 21
    rebuilt = np.zeros_like(cell_mask)
    for cell_id, rle in encoded.items():
        cell = decode_binary_mask(rle, *cell_mask.shape)
        assert not rebuilt[cell].any()
        rebuilt[cell] = cell_id
    np.testing.assert_array_equal(rebuilt, cell_mask)


def test_encode_label_mask_equals_per_object_encoding():
    rng = np.random.default_rng(3)
    mask = rng.choice([0, 0, 3, 7, 500], size=(23, 17)).astype(np.int32)
    mask[:, -1] = 7  # an object that reaches the last pixel (no trailing zero run)
    encoded = encode_label_mask(mask)
    assert sorted(encoded) == [3, 7, 500]
    for object_id, rle in encoded.items():
        assert rle == encode_binary_mask(mask == object_id)
    assert encode_label_mask(np.zeros((4, 4), np.int32)) == {}


@pytest.mark.parametrize("bad, problem", [
    ("not base64!", "base64"),
    (base64.b64encode(b"plain").decode(), "zlib"),
    (base64.b64encode(zlib.compress(b"1\x7f")).decode(), "character"),
    (base64.b64encode(zlib.compress(b"1h")).decode(), "middle"),
    (base64.b64encode(zlib.compress(b"13")).decode(), "pixels"),
])
def test_decode_rejects_bad_masks(bad, problem):
    with pytest.raises(ValueError, match=problem):
        decode_binary_mask(bad, 3, 3)


def two_image_submission():
    cell_mask = np.zeros((6, 8), np.int32)
    cell_mask[:3, :4], cell_mask[3:, 4:] = 4, 9
    probabilities = np.array([[0.9, 0.05, 0.0], [0.2, 0.6, 0.3]])
    part = predictions_from_cells("img_a", cell_mask, probabilities, cell_ids=[9, 4],
                                  min_confidence=0.1)
    empty = predictions_from_cells("img_b", np.zeros((5, 7), np.int32), np.zeros((0, 3)))
    return cell_mask, Submission.concat([part, empty])


def test_predictions_from_cells():
    cell_mask, submission = two_image_submission()
    rows = submission.predictions
    assert rows["cell"].tolist() == [9, 4, 4, 4] and rows["label"].tolist() == [0, 0, 1, 2]
    assert rows["confidence"].tolist() == [0.9, 0.2, 0.6, 0.3]
    np.testing.assert_array_equal(decode_binary_mask(rows["rle"].iloc[0], 6, 8), cell_mask == 9)
    assert submission.images.values.tolist() == [["img_a", 8, 6], ["img_b", 7, 5]]
    with pytest.raises(ValueError, match="not in the cell mask"):
        predictions_from_cells("x", cell_mask, np.zeros((1, 3)), cell_ids=[5])
    with pytest.raises(ValueError, match="one row per cell"):
        predictions_from_cells("x", cell_mask, np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predictions_from_cells("x", cell_mask, np.full((2, 3), 1.5))


def test_write_read_round_trip(tmp_path):
    _, submission = two_image_submission()
    path = write_submission(tmp_path / "submission.csv", submission)
    lines = path.read_text().splitlines()
    assert lines[0] == "ID,ImageWidth,ImageHeight,PredictionString"
    assert lines[2] == "img_b,7,5,"  # every image is listed, also without cells
    assert lines[1].startswith("img_a,8,6,0 0.9 ") and len(lines[1].split(",")[3].split()) == 12
    back = read_submission(path)
    pd.testing.assert_frame_equal(back.images, submission.images)
    expected = submission.predictions.copy()
    expected["cell"] = [1, 2, 2, 2]  # numbered by first appearance when read
    pd.testing.assert_frame_equal(back.predictions, expected)
    assert not list(tmp_path.glob(".*tmp*"))


def test_long_prediction_strings_are_read(tmp_path):
    # 200 cells x 19 classes: far beyond the csv module's default 128 kB field limit
    cell_mask = np.arange(200 * 64, dtype=np.int32).reshape(200, 64) // 64 + 1
    part = predictions_from_cells("big", cell_mask, np.full((200, 19), 0.5))
    path = write_submission(tmp_path / "big.csv", part)
    assert len(read_submission(path).predictions) == 200 * 19


GOOD_MASK = encode_binary_mask(np.eye(3, dtype=bool))


@pytest.mark.parametrize("row, problem", [
    (f"a,3,3,0 0.5 {GOOD_MASK} 1", "multiple of 3"),
    (f"a,3,3,19 0.5 {GOOD_MASK}", "label 19 is outside"),
    (f"a,3,3,-1 0.5 {GOOD_MASK}", "label -1 is outside"),
    (f"a,3,3,x 0.5 {GOOD_MASK}", "not an integer"),
    (f"a,3,3,0 1.5 {GOOD_MASK}", r"outside \[0, 1\]"),
    (f"a,3,3,0 nan {GOOD_MASK}", r"outside \[0, 1\]"),
    ("a,3,3,0 0.5 @@@@", "base64"),
    (f"a,4,3,0 0.5 {GOOD_MASK}", "pixels"),
    ("a,0,3,", "not positive"),
])
def test_read_rejects_malformed_rows(tmp_path, row, problem):
    path = tmp_path / "bad.csv"
    path.write_text(f"ID,ImageWidth,ImageHeight,PredictionString\nok,3,3,\n{row}\n")
    with pytest.raises(DataError, match=problem) as error:
        read_submission(path)
    assert error.value.path == path and error.value.row == 3


def test_read_rejects_bad_header_and_duplicates(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("Id,Width,Height,Prediction\n")
    with pytest.raises(DataError, match="header"):
        read_submission(path)
    path.write_text("ID,ImageWidth,ImageHeight,PredictionString\na,3,3,\na,3,3,\n")
    with pytest.raises(DataError, match="duplicate ID") as error:
        read_submission(path)
    assert error.value.row == 3


def test_build_submission_from_cell_table(tmp_path):
    masks = tmp_path / "masks"
    first = np.zeros((6, 8), np.int32)
    first[:2, :2], first[4:, 5:] = 1, 2
    write_mask(masks / "f1_cellmask.png", first)
    write_mask(masks / "f2_cellmask.npz", np.zeros((4, 4), np.int32))
    cells = pd.DataFrame({"image_id": ["f1", "f1"], "mask_id": [2, 1]})
    probabilities = np.array([[0.25, 0.75], [1.0, 0.0]])
    submission = build_submission(cells, probabilities, masks, image_ids=["f2", "f1"], progress=False)
    assert submission.images["image_id"].tolist() == ["f2", "f1"]
    rows = submission.predictions
    assert list(zip(rows["cell"], rows["label"], rows["confidence"])) == [
        (2, 0, 0.25), (2, 1, 0.75), (1, 0, 1.0), (1, 1, 0.0)]
    np.testing.assert_array_equal(decode_binary_mask(rows["rle"].iloc[0], 6, 8), first == 2)
    with pytest.raises(DataError, match="missing cellmask of field"):
        build_submission(cells, probabilities, masks, image_ids=["f1", "f3"], progress=False)
