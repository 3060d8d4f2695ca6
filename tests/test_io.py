import gzip

import numpy as np
import pytest
import tifffile
from PIL import Image

from hpa_embed.io import (
    DataError,
    LabelTable,
    atomic_path,
    list_field_ids,
    read_field,
    read_image,
    read_labels,
    read_mask,
    write_labels,
    write_mask,
    write_png,
)
from hpa_embed.labels import CHANNELS, HPA2018, HPA2021, RGB_CHANNELS

RNG = np.random.default_rng(0)


def write_field(directory, image_id, dtype=np.uint8, suffix=".png", shape=(24, 32)):
    """Write a random 4-channel field; returns the raw planes in channel order."""
    high = np.iinfo(dtype).max
    planes = []
    for channel in CHANNELS:
        plane = RNG.integers(0, high, size=shape, endpoint=True).astype(dtype)
        path = directory / f"{image_id}_{channel}{suffix}"
        if suffix == ".png":
            Image.fromarray(plane).save(path)
        elif suffix == ".tif.gz":
            tmp = directory / "tmp.tif"
            tifffile.imwrite(tmp, plane)
            path.write_bytes(gzip.compress(tmp.read_bytes()))
            tmp.unlink()
        elif suffix == ".ome.tif":
            tifffile.imwrite(path, plane[None, None, None], ome=True)  # TCZYX as HPA ships
        else:
            tifffile.imwrite(path, plane)
        planes.append(plane)
    return np.stack(planes)


@pytest.mark.parametrize(
    "dtype,suffix",
    [(np.uint8, ".png"), (np.uint16, ".png"), (np.uint16, ".tif"), (np.uint8, ".tif.gz"),
     (np.uint16, ".tif.gz"), (np.uint16, ".ome.tif")],
)
def test_read_field_scales_by_dtype_in_channel_order(tmp_path, dtype, suffix):
    raw = write_field(tmp_path, "A1", dtype, suffix)
    image = read_field(tmp_path, "A1")
    assert image.dtype == np.float32 and image.shape == (4, 24, 32)
    np.testing.assert_allclose(image, raw / np.iinfo(dtype).max, rtol=1e-6)


def test_read_field_three_channels_ignores_yellow(tmp_path):
    raw = write_field(tmp_path, "B2")
    (tmp_path / "B2_yellow.png").unlink()
    image = read_field(tmp_path, "B2", RGB_CHANNELS)
    assert image.shape == (3, 24, 32)
    np.testing.assert_allclose(image[1], raw[1] / 255)
    with pytest.raises(DataError, match="B2_yellow.*missing yellow channel"):
        read_field(tmp_path, "B2")


def test_channel_shape_mismatch_names_file(tmp_path):
    write_field(tmp_path, "C3")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "C3_blue.png")
    with pytest.raises(DataError, match=r"C3_blue\.png: blue channel has shape \(10, 10\)"):
        read_field(tmp_path, "C3")


def test_truncated_image_names_file(tmp_path):
    write_field(tmp_path, "D4")
    data = (tmp_path / "D4_green.png").read_bytes()
    (tmp_path / "D4_green.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"D4_green\.png: unreadable or truncated image"):
        read_field(tmp_path, "D4")


def test_not_an_image_and_ambiguous_suffix(tmp_path):
    write_field(tmp_path, "E5")
    (tmp_path / "E5_red.png").write_text("hello")
    with pytest.raises(DataError, match="E5_red.png: unreadable"):
        read_image(tmp_path / "E5_red.png")
    tifffile.imwrite(tmp_path / "E5_blue.tif", np.zeros((24, 32), np.uint8))
    with pytest.raises(DataError, match="ambiguous blue channel"):
        read_field(tmp_path, "E5")


def test_colour_image_is_refused_unless_grey(tmp_path):
    grey = RNG.integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png"), grey)
    Image.fromarray(RNG.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DataError, match="single-channel"):
        read_image(tmp_path / "rgb.png")


def test_list_field_ids(tmp_path):
    write_field(tmp_path, "x_1")
    write_field(tmp_path, "x_0", suffix=".tif")
    (tmp_path / "notes.txt").write_text("")
    assert list_field_ids(tmp_path) == ["x_0", "x_1"]
    with pytest.raises(DataError, match="not a directory"):
        list_field_ids(tmp_path / "nope")


def test_real_field_reads(hpa_real):
    image = read_field(hpa_real / "fov", "57_F11_1")
    assert image.shape == (4, 1728, 1728) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 1
    # nuclei (blue) cover a minority of the field; every channel carries signal
    assert 0.05 < (image[2] > 0.2).mean() < 0.5
    assert (image.reshape(4, -1).mean(axis=1) > 0.01).all()


def test_reference_masks_read(hpa_real):
    cells = read_mask(hpa_real / "reference-masks" / "1000_A12_2_cellmask.png")
    nuclei = read_mask(hpa_real / "reference-masks" / "1000_A12_2_nucleimask.png")
    assert cells.dtype == np.int32 and cells.shape == (2048, 2048)
    assert len(np.unique(cells)) - 1 == 21
    # each nucleus id equals the id of the cell that holds it
    inside = nuclei > 0
    assert (cells[inside] == nuclei[inside]).mean() > 0.99


@pytest.mark.parametrize("suffix", [".png", ".npz"])
def test_mask_round_trip(tmp_path, suffix):
    mask = RNG.integers(0, 3000, (40, 50)).astype(np.int32)
    write_mask(tmp_path / f"m{suffix}", mask)
    back = read_mask(tmp_path / f"m{suffix}")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, mask)


def test_png_mask_refuses_ids_beyond_16_bit(tmp_path):
    with pytest.raises(ValueError, match="0..65535"):
        write_mask(tmp_path / "m.png", np.array([[70000]]))


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "out.png"
    write_png(target, np.full((4, 4), 7, np.uint8))
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    np.testing.assert_array_equal(read_image(target), np.full((4, 4), 7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def write_csv(path, text):
    path.write_text(text)
    return path


def test_read_labels_2021(tmp_path):
    path = write_csv(tmp_path / "train.csv", "ID,Label\na,8|5|0\nb,18\n\nc,16\n")
    table = read_labels(path)
    assert table.scheme is HPA2021 and table.image_ids == ["a", "b", "c"]
    assert table.labels == [[0, 5, 8], [18], [16]]
    assert table.Y.shape == (3, 19) and table.Y.sum() == 5 and table.Y[0, 8]
    frame = table.to_frame()
    assert list(frame["image_id"]) == ["a", "b", "c"] and frame["Negative"].tolist() == [0, 1, 0]


def test_read_labels_2018(tmp_path):
    path = write_csv(tmp_path / "train.csv", "Id,Target\nx,25 0\ny,27\n")
    table = read_labels(path)
    assert table.scheme is HPA2018 and table.labels == [[0, 25], [27]]
    assert table.Y.shape == (2, 28)


@pytest.mark.parametrize(
    "text,message",
    [
        ("ID,Label\na,3|19\n", r"line 2: label 19 of image 'a' is outside the hpa2021 scheme"),
        ("ID,Label\na,1\nb,2,7\n", r"line 3: expected 2 fields, got 3"),
        ("ID,Label\na,1\na,2\n", r"line 3: duplicate ID 'a' \(first on line 2\)"),
        ("ID,Label\na,one\n", r"line 2: label 'one' is not '\|'-separated integers"),
        ("ID,Label\na,\n", r"line 2: image 'a' has no label"),
        ("Image,Classes\na,1\n", r"line 1: unknown header"),
        ("", "empty file"),
        ("Id,Target\nx,1|2\n", r"line 2: label '1\|2' is not ' '-separated integers"),
    ],
)
def test_read_labels_errors_name_file_and_line(tmp_path, text, message):
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(DataError, match=message) as info:
        read_labels(path)
    assert "bad.csv" in str(info.value)


def test_read_labels_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_labels(tmp_path / "nope.csv")


def test_write_labels_round_trip_both_schemes(tmp_path):
    for scheme, labels in ((HPA2021, [[0, 16], [11]]), (HPA2018, [[27, 3], [0]])):
        table = LabelTable(["i1", "i2"], labels, scheme)
        back = read_labels(write_labels(tmp_path / f"{scheme.name}.csv", table))
        assert back.scheme is scheme
        assert back.labels == [sorted(ids) for ids in labels]


def test_real_label_table(hpa_real):
    table = read_labels(hpa_real / "labels.csv")
    assert table.image_ids == ["57_F11_1", "56_F11_1"] and table.labels == [[13, 16], [13, 16]]


def test_upper_case_suffixes_are_listed_and_read(tmp_path):
    planes = (np.arange(4 * 6 * 5, dtype=np.uint8).reshape(4, 6, 5) * 3)
    for channel, plane in zip(("red", "green", "blue", "yellow"), planes):
        Image.fromarray(plane).save(tmp_path / f"F1_{channel}.PNG")
    assert list_field_ids(tmp_path) == ["F1"]
    np.testing.assert_array_equal(read_field(tmp_path, "F1"), planes.astype(np.float32) / 255)
