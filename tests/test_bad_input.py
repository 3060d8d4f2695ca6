"""Bad input: one clear error of the library's own type, naming the file (or id) and the problem."""

import gzip
import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from hpa_embed.config import CropConfig, IndexConfig, read_config_file
from hpa_embed.crops import extract_crops
from hpa_embed.index import CellIndex, UnknownCellError
from hpa_embed.io import (
    DataError,
    HpaEmbedError,
    find_channel_file,
    list_field_ids,
    read_field,
    read_image,
    read_labels,
    read_mask,
    to_unit_float,
    write_mask,
    write_png,
)
from hpa_embed.labels import CHANNELS, RGB_CHANNELS
from hpa_embed.rle import RleError, decode_binary_mask, rle_to_counts
from hpa_embed.segment import ClassicalSegmenter, check_masks, segment_directory

RNG = np.random.default_rng(12)


def write_field(directory, image_id, shape=(16, 24), channels=CHANNELS, value=None):
    """Write uint8 PNG channel files (random, or all ``value``); returns the planes ``[C, H, W]``."""
    directory.mkdir(parents=True, exist_ok=True)
    planes = []
    for channel in channels:
        plane = (RNG.integers(0, 256, shape, dtype=np.uint8) if value is None
                 else np.full(shape, value, np.uint8))
        write_png(directory / f"{image_id}_{channel}.png", plane)
        planes.append(plane)
    return np.stack(planes)


def refused(call, *args, names, says):
    """``call(*args)`` raises a DataError whose one-line message names ``names`` and says ``says``."""
    with pytest.raises(DataError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and str(names) in message and says in message, message
    return info.value


def tiff_bytes(array, **kwargs) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **kwargs)
    return buffer.getvalue()


# --------------------------------------------------------------------------- channel files


def test_missing_channel_file(tmp_path):
    write_field(tmp_path, "A1", channels=("green", "blue", "yellow"))
    error = refused(read_field, tmp_path, "A1", names=tmp_path / "A1_red.png", says="missing red channel")
    assert "no A1_red.* file" in str(error) and ".tif.gz" in str(error)


def test_field_of_blue_and_green_only_names_every_missing_channel(tmp_path):
    # HPA fields with only the reference blue and the protein green exist; they are refused
    write_field(tmp_path, "BG", channels=("green", "blue"))
    error = refused(read_field, tmp_path, "BG", names=tmp_path / "BG_red.png",
                    says="missing red and yellow channels of field 'BG'")
    assert "BG_yellow.*" in str(error) and "the field has green, blue" in str(error)
    refused(read_field, tmp_path, "BG", RGB_CHANNELS, names="BG_red.png", says="missing red channel")


def test_extra_files_are_ignored_and_duplicate_channels_refused(tmp_path):
    raw = write_field(tmp_path, "E1")
    for name in ("E1_red.png.bak", "E1_red_thumb.png", "E1_protein.png", "E1_red.txt", "notes.txt"):
        (tmp_path / name).write_bytes(b"not an image")
    np.testing.assert_array_equal(read_field(tmp_path, "E1"), raw / np.float32(255))
    assert list_field_ids(tmp_path) == ["E1"]
    tifffile.imwrite(tmp_path / "E1_red.tif", raw[0])
    error = refused(read_field, tmp_path, "E1", names="E1_red", says="ambiguous red channel")
    assert "E1_red.png" in str(error) and "E1_red.tif" in str(error)
    refused(find_channel_file, tmp_path, "E1", "red", names="E1_red", says="several files match")


def test_transposed_channel_is_refused(tmp_path):
    raw = write_field(tmp_path, "T1", shape=(16, 24))
    write_png(tmp_path / "T1_yellow.png", raw[3].T.copy())
    refused(read_field, tmp_path, "T1", names=tmp_path / "T1_yellow.png",
            says="yellow channel has shape (24, 16) but T1_red.png has (16, 24)")


# --------------------------------------------------------------------------- broken files


def endless_tiff() -> bytes:
    """A TIFF whose first page points on to a page inside itself that points back: a loop of pages
    (8 bytes inserted into the first page's tags, as a fuzzed file had them)."""
    data = tiff_bytes(np.zeros((12, 16), np.uint8), compression="zlib")
    return data[:46] + b"\x8b@d>\x8b@d>" + data[46:]


def huge_tiff(path) -> bytes:
    """A small TIFF whose header claims 2**31 - 1 rows."""
    path.write_bytes(tiff_bytes(np.zeros((12, 16), np.uint8)))
    with tifffile.TiffFile(path, mode="r+b") as tiff:
        tiff.pages.first.tags["ImageLength"].overwrite(2**31 - 1)
    return path.read_bytes()


@pytest.mark.parametrize("name, make, says", [
    ("truncated.tif", lambda p: tiff_bytes(np.ones((64, 64), np.uint16))[:300], "unreadable or truncated"),
    ("header.tif", lambda p: b"II*\x00\xff\xff\xff\x7f" + bytes(100), "a TIFF without any image"),
    ("empty.png", lambda p: b"", "unreadable or truncated"),
    ("empty.tif", lambda p: b"", "unreadable or truncated"),
    ("notgzip.tif.gz", lambda p: b"plain bytes", "unreadable or truncated"),
    ("truncated.tif.gz", lambda p: gzip.compress(tiff_bytes(np.ones((64, 64), np.uint8)))[:40],
     "unreadable or truncated"),
    ("stack.tif", lambda p: tiff_bytes(np.ones((2, 8, 8), np.uint8)), "several pages"),
    ("planes.tif", lambda p: tiff_bytes(np.ones((3, 8, 8), np.uint8), photometric="rgb",
                                        planarconfig="separate"),
     "expected a 2-D single-channel image, got shape (3, 8, 8)"),
    ("endless.tif", lambda p: endless_tiff(), "several pages"),
    ("huge.tif", huge_tiff, "too large for a field of view"),
])
def test_corrupt_images_are_refused(tmp_path, name, make, says):
    path = tmp_path / name
    path.write_bytes(make(path))
    refused(read_image, path, names=path, says=says)


def test_corrupt_channel_names_its_file_in_a_field(tmp_path):
    write_field(tmp_path, "C1")
    (tmp_path / "C1_blue.png").write_bytes((tmp_path / "C1_blue.png").read_bytes()[:60])
    refused(read_field, tmp_path, "C1", names=tmp_path / "C1_blue.png", says="unreadable or truncated")


# --------------------------------------------------------------------------- pixel types


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int8, np.complex64])
def test_unsupported_pixel_types_are_refused(tmp_path, dtype):
    write_field(tmp_path, "P1", channels=("red", "blue", "yellow"))
    tifffile.imwrite(tmp_path / "P1_green.tif", np.ones((16, 24), dtype))
    refused(read_field, tmp_path, "P1", names=tmp_path / "P1_green.tif",
            says=f"unsupported pixel type {np.dtype(dtype)}")


def test_one_bit_and_grey_palette_images_read_as_intensities(tmp_path):
    bits = RNG.integers(0, 2, (8, 8)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(to_unit_float(read_image(tmp_path / "bits.png")), bits)
    # a palette image holds indices into its palette; here index i is grey 255 - i
    indices = np.arange(64, dtype=np.uint8).reshape(8, 8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette(np.repeat(255 - np.arange(256), 3).astype(np.uint8).tobytes())
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_image(tmp_path / "palette.png"), 255 - indices)


def test_colour_palette_image_is_refused(tmp_path):
    palette = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), "P")
    palette.putpalette(RNG.integers(0, 256, 768, dtype=np.uint8).tobytes())
    palette.save(tmp_path / "colour.png")
    refused(read_image, tmp_path / "colour.png", names="colour.png", says="expected a single-channel image")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_float_tiff_is_refused(tmp_path, bad):
    write_field(tmp_path, "F1", channels=("red", "blue", "yellow"))
    plane = RNG.random((16, 24)).astype(np.float32)
    plane[3, 5] = bad
    tifffile.imwrite(tmp_path / "F1_green.tif", plane)
    refused(read_field, tmp_path, "F1", names=tmp_path / "F1_green.tif",
            says="1 of 384 pixels are NaN or infinite")


# --------------------------------------------------------------------------- constant and tiny fields


@pytest.mark.parametrize("value", [0, 128, 255])
def test_constant_fields_give_finite_values_downstream(tmp_path, value):
    write_field(tmp_path, "K1", shape=(64, 64), value=value)
    image = read_field(tmp_path, "K1")
    np.testing.assert_array_equal(image, np.float32(value / 255))
    cell_mask, nucleus_mask = ClassicalSegmenter().segment(image)
    check_masks(cell_mask, nucleus_mask)
    mask = np.zeros((64, 64), np.int32)
    mask[10:30, 12:40], mask[40:60, 5:20] = 1, 2
    for normalisation in ("field_percentile", "none"):
        cells, crops = extract_crops(image, mask, mask, CropConfig(crop_size=16, normalisation=normalisation))
        scales = cells.filter(like="scale_").to_numpy()
        assert np.isfinite(scales).all() and (scales > 0).all()
        expected = 0 if value == 0 else (255 if normalisation == "field_percentile" else value)
        assert crops.shape == (2, 4, 16, 16) and crops.max() == expected


@pytest.mark.parametrize("shape", [(8, 8), (8, 13), (13, 8)])
def test_tiny_and_non_square_fields_read_and_segment(tmp_path, shape):
    raw = write_field(tmp_path, "S1", shape=shape)
    image = read_field(tmp_path, "S1")
    np.testing.assert_array_equal(image, raw / np.float32(255))
    cell_mask, nucleus_mask = ClassicalSegmenter().segment(image)
    assert cell_mask.shape == nucleus_mask.shape == shape
    check_masks(cell_mask, nucleus_mask)


def test_fields_below_8_pixels_are_reported_by_id(tmp_path):
    write_field(tmp_path / "fields", "ok", shape=(8, 8))
    write_field(tmp_path / "fields", "small", shape=(4, 6))
    with pytest.raises(ValueError, match=r"too small to segment \(8 x 8 pixels at least\)"):
        ClassicalSegmenter().segment(read_field(tmp_path / "fields", "small"))
    report = segment_directory(tmp_path / "fields", tmp_path / "masks", workers=1, progress=False)
    assert report.done == ["ok"] and list(report.failed) == ["small"]
    assert "too small to segment" in report.failed["small"]


# --------------------------------------------------------------------------- label tables


@pytest.mark.parametrize("raw, line, says", [
    (b"ID,Label\na,1\n\xff\xfe,2\n", None, "not UTF-8 text"),
    (b"ID,Label\na,1_0\n", 2, "label '1_0' is not '|'-separated integers"),
    (b"ID,Label\na,--1\n", 2, "label '--1' is not '|'-separated integers"),
    (b"ID,Label\na,\xd9\xa3\n", 2, "is not '|'-separated integers"),  # an Arabic-Indic digit
    (b"ID,Label\na,1\n\"b,2\n", 3, "expected 2 fields, got 1"),  # a quote left open
    (b"ID,Label\na,-1\n", 2, "label -1 of image 'a' is outside the hpa2021 scheme"),
    (b"Id,Target\nx,28\n", 2, "label 28 of image 'x' is outside the hpa2018 scheme"),
    (b"ID,Label\na,1\n a ,2\n", 3, "duplicate ID 'a' (first on line 2)"),
    (b"   \n", 1, "unknown header"),
    (b"ID;Label\na;1\n", 1, "unknown header ['ID;Label']"),
])
def test_bad_label_tables_name_file_and_line(tmp_path, raw, line, says):
    path = tmp_path / "labels.csv"
    path.write_bytes(raw)
    error = refused(read_labels, path, names=path, says=says)
    assert error.row == line


def test_label_table_edge_cases_that_read(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbfID,Label\r\na, 1 | 2 \r\n")  # a spreadsheet's BOM and CRLF
    assert read_labels(path).labels == [[1, 2]]
    path.write_text("ID,Label\n")  # a header alone: an empty table
    assert len(read_labels(path)) == 0


# --------------------------------------------------------------------------- paths


def test_unicode_and_spaces_in_paths(tmp_path):
    directory = tmp_path / "données é" / " a b"
    raw = write_field(directory, "x y", shape=(8, 10))
    np.testing.assert_array_equal(read_field(directory, "x y"), raw / np.float32(255))
    assert list_field_ids(directory) == ["x y"]
    mask = np.arange(80, dtype=np.int32).reshape(8, 10)
    np.testing.assert_array_equal(read_mask(write_mask(directory / "x y_cellmask.png", mask)), mask)
    (directory / "étiquettes ü.csv").write_text("ID,Label\nx y,3\n", encoding="utf-8")
    assert read_labels(directory / "étiquettes ü.csv").image_ids == ["x y"]
    (directory / "x y_red.png").write_bytes(b"broken")
    refused(read_field, directory, "x y", names=directory / "x y_red.png", says="unreadable")


# --------------------------------------------------------------------------- cell ids, configs, RLE


def test_unknown_cell_id_names_the_id(one_faiss_thread):
    X = RNG.standard_normal((10, 8)).astype(np.float32)
    index = CellIndex.build(X, [f"cell-{i}" for i in range(10)], IndexConfig(kind="flat"), progress=False)
    lookups = (lambda: index.search_cell("cell-99", 3), lambda: index.search_cell(["cell-1", "nope é"], 3),
               lambda: index.reconstruct("cell-99"), lambda: index.rows_of(["cell-99"]))
    for lookup in lookups:
        with pytest.raises(UnknownCellError) as info:
            lookup()
        assert isinstance(info.value, HpaEmbedError) and isinstance(info.value, KeyError)
        assert str(info.value) in ("cell id 'cell-99' is not among the 10 cells of the index",
                                   "cell id 'nope é' is not among the 10 cells of the index")


@pytest.mark.parametrize("text, says", [
    ("crop = false\n[model]\ncrop_size = 64\n", "[crop] must be a table"),
    ("model = 3\n[crop]\ncrop_size = 64\n", "[model] must be a table"),
    ("[crop]\nmargin = inf\n", "[crop] margin: expected a finite number, got inf"),
    ("[train]\nlr = nan\n", "[train] lr: expected a finite number, got nan"),
    (f"[train]\nlr = {10**400}\n", "[train] lr: expected a finite number, got 1000000"),
])
def test_bad_config_values_name_table_and_key(tmp_path, text, says):
    path = tmp_path / "run.toml"
    path.write_text(text)
    refused(read_config_file, path, names=path, says=says)


def test_rle_errors_are_the_librarys_own():
    with pytest.raises(RleError, match="base64") as info:
        decode_binary_mask("not base64!", 3, 3)
    assert isinstance(info.value, HpaEmbedError) and isinstance(info.value, ValueError)
    with pytest.raises(RleError, match="outside '0'..'o'"):
        rle_to_counts("3é")  # once read as '3?' = runs [3, 15]
