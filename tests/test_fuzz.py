"""Fuzzing the readers: every call returns, or refuses its input with the library's own error.

Each test feeds a reader random or mutated input and fails on any exception that is not an
:class:`~hpa_embed.io.HpaEmbedError`. Example counts come from the hypothesis profile set in
``conftest.py`` (``HYPOTHESIS_PROFILE=thorough`` searches longer).
"""

import base64
import dataclasses
import functools
import gzip
import io
import json
import math
import zlib

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from hpa_embed.config import SECTIONS, read_config_file
from hpa_embed.io import HpaEmbedError, read_field, read_image, read_labels, read_mask
from hpa_embed.labels import CHANNELS
from hpa_embed.rle import _counts_to_chars, decode_binary_mask, encode_binary_mask, encode_label_mask
from hpa_embed.submission import Submission, predictions_from_cells, read_submission, write_submission

SHAPE = (12, 16)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One directory for the whole module: hypothesis runs many examples per test call."""
    return tmp_path_factory.mktemp("fuzz")


def refused_or_returned(call, *args):
    """``call(*args)``, or None when it raises the library's own error; any other error fails."""
    try:
        return call(*args)
    except HpaEmbedError:
        return None


def mutated(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a few bytes overwritten, inserted or deleted, then perhaps truncated."""
    edits = st.lists(st.tuples(st.sampled_from(["set", "insert", "delete"]), st.integers(0, len(data)),
                               st.binary(min_size=1, max_size=4)), max_size=6)

    @st.composite
    def build(draw):
        out = bytearray(data)
        for kind, at, chunk in draw(edits):
            at = min(at, len(out))
            if kind == "set":
                out[at : at + len(chunk)] = chunk
            elif kind == "insert":
                out[at:at] = chunk
            else:
                del out[at : at + len(chunk)]
        if draw(st.booleans()):
            del out[draw(st.integers(0, len(out))):]
        return bytes(out)

    return build()


# --------------------------------------------------------------------------- images


@functools.cache
def valid_images() -> dict[str, bytes]:
    """Valid channel files ``[12, 16]``, suffix -> bytes: PNG, TIFF (16-bit, zlib, gzipped, float
    OME-TIFF) and JPEG."""
    rng = np.random.default_rng(0)
    plane8 = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    plane16 = rng.integers(0, 65536, SHAPE, dtype=np.uint16)

    def encoded(write, *args, **kwargs) -> bytes:
        buffer = io.BytesIO()
        write(buffer, *args, **kwargs)
        return buffer.getvalue()

    tiff = encoded(tifffile.imwrite, plane16)
    return {
        ".png": encoded(Image.fromarray(plane8).save, format="PNG"),
        ".tiff": encoded(tifffile.imwrite, plane8, compression="zlib"),
        ".tif": tiff,
        ".tif.gz": gzip.compress(tiff),
        ".ome.tif": encoded(tifffile.imwrite, rng.random(SHAPE, dtype=np.float32), ome=True),
        ".jpg": encoded(Image.fromarray(plane8).save, format="JPEG"),
    }


SUFFIXES = st.sampled_from([".png", ".tif", ".tiff", ".tif.gz", ".ome.tif", ".jpg"])


@given(suffix=SUFFIXES, data=st.binary(max_size=300))
def test_image_reader_on_random_bytes(workdir, suffix, data):
    path = workdir / f"random{suffix}"
    path.write_bytes(data)
    image = refused_or_returned(read_image, path)
    assert image is None or (image.ndim == 2 and image.size > 0)


@given(suffix=SUFFIXES, data=st.data())
def test_image_and_field_readers_on_corrupt_files(workdir, suffix, data):
    field = workdir / "field"
    field.mkdir(exist_ok=True)
    for old in field.glob("F_green*"):
        old.unlink()
    for channel in CHANNELS:
        if channel != "green":
            (field / f"F_{channel}.png").write_bytes(valid_images()[".png"])
    path = field / f"F_green{suffix}"
    path.write_bytes(data.draw(mutated(valid_images()[suffix])))
    refused_or_returned(read_image, path)
    refused_or_returned(read_mask, path)
    image = refused_or_returned(read_field, field, "F")
    if image is not None:
        assert image.shape == (4, *SHAPE)
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1, "out of [0, 1]"


@given(data=st.data())
def test_mask_reader_on_corrupt_archives(workdir, data):
    buffer = io.BytesIO()
    original = np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE)
    np.savez_compressed(buffer, mask=original)
    path = workdir / "mask.npz"
    path.write_bytes(data.draw(mutated(buffer.getvalue())))
    mask = refused_or_returned(read_mask, path)
    # the archive's CRC guards the array: what still reads is the mask that was written
    assert mask is None or (mask.dtype == np.int32 and np.array_equal(mask, original))


# --------------------------------------------------------------------------- label tables

CSV_CELL = st.text(alphabet='ab1|2 ,"\n\r-+x0978\t\\\ufeffé', max_size=8)
LABEL_HEADERS = st.sampled_from(["ID,Label", "Id,Target", "ID,Label,Extra", "Label,ID", "ID", "",
                                 "ID,ID,Label"])


def check_labels(path):
    table = refused_or_returned(read_labels, path)
    if table is not None:
        assert table.Y.shape == (len(table), table.scheme.num_classes)


@given(text=st.text(max_size=200), raw=st.binary(max_size=200))
def test_label_reader_on_random_text(workdir, text, raw):
    path = workdir / "labels.csv"
    path.write_text(text, encoding="utf-8")
    check_labels(path)
    path.write_bytes(raw)
    check_labels(path)


@given(header=LABEL_HEADERS, rows=st.lists(st.lists(CSV_CELL, max_size=4).map(",".join), max_size=6),
       data=st.data())
def test_label_reader_on_near_valid_rows(workdir, header, rows, data):
    path = workdir / "near.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    check_labels(path)
    path.write_bytes(data.draw(mutated(b"ID,Label\na,0|5\nb,18\nc,16|2|3\n")))
    check_labels(path)


# --------------------------------------------------------------------------- RLE masks

SIDES = st.integers(1, 12)


def packed(counts_string: bytes) -> str:
    """Kaggle's wrapping of a COCO counts string: zlib, then base64."""
    return base64.b64encode(zlib.compress(counts_string)).decode("ascii")


@given(text=st.text(max_size=60), counts=st.binary(max_size=40), height=SIDES, width=SIDES)
def test_rle_decoder_on_random_text(text, counts, height, width):
    for encoded in (text, packed(counts)):
        mask = refused_or_returned(decode_binary_mask, encoded, height, width)
        assert mask is None or (mask.dtype == bool and mask.shape == (height, width))


@given(runs=st.lists(st.integers(-3, 40) | st.integers(-(2**62), 2**62), max_size=12),
       height=SIDES, width=SIDES)
def test_rle_decoder_on_run_lists(runs, height, width):
    counts = np.array(runs, dtype=np.int64)
    chars, _ = _counts_to_chars(counts, np.arange(len(counts)))
    mask = refused_or_returned(decode_binary_mask, packed(chars.tobytes()), height, width)
    if all(run >= 0 for run in runs) and sum(runs) == height * width:
        expected = np.repeat(np.arange(len(runs)) % 2 == 1, runs).reshape((height, width), order="F")
        np.testing.assert_array_equal(mask, expected)
    else:
        assert mask is None


@given(mask=hnp.arrays(np.int32, st.tuples(SIDES, SIDES), elements=st.integers(0, 3)),
       height=SIDES, width=SIDES)
def test_rle_round_trip_and_foreign_shapes(mask, height, width):
    binary = mask > 0
    np.testing.assert_array_equal(decode_binary_mask(encode_binary_mask(binary), *mask.shape), binary)
    encoded = encode_label_mask(mask)
    assert sorted(encoded) == sorted(set(np.unique(mask).tolist()) - {0})
    for cell, rle in encoded.items():
        np.testing.assert_array_equal(decode_binary_mask(rle, *mask.shape), mask == cell)
        other = refused_or_returned(decode_binary_mask, rle, height, width)
        assert (other is not None) == (height * width == mask.size)


# --------------------------------------------------------------------------- submissions


def assert_valid_submission(read) -> None:
    """What ``read_submission`` returned is a valid submission: labels, confidences, images."""
    predictions = read.predictions
    assert predictions["label"].between(0, 18).all()
    assert predictions["confidence"].between(0, 1).all()
    assert set(predictions["image_id"]) <= set(read.images["image_id"])
    assert (read.images["width"] > 0).all() and (read.images["height"] > 0).all()


@given(text=st.text(max_size=200), raw=st.binary(max_size=200))
def test_submission_reader_on_random_text(workdir, text, raw):
    path = workdir / "random_submission.csv"
    for content in (text.encode("utf-8"), raw):
        path.write_bytes(content)
        read = refused_or_returned(read_submission, path)
        if read is not None:
            assert_valid_submission(read)


@pytest.fixture(scope="module")
def submission_bytes(workdir) -> bytes:
    cell_mask = np.zeros((6, 8), np.int32)
    cell_mask[:3, :4], cell_mask[3:, 4:] = 4, 9
    part = predictions_from_cells("img_a", cell_mask, np.array([[0.9, 0.05], [0.2, 0.6]]), cell_ids=[9, 4])
    empty = predictions_from_cells("img_b", np.zeros((5, 7), np.int32), np.zeros((0, 2)))
    path = write_submission(workdir / "valid_submission.csv", Submission.concat([part, empty]))
    return path.read_bytes()


TOKENS = st.sampled_from(["0", "18", "19", "-1", "0.5", "nan", "inf", "1e400", "x", "", "eNoLAAAA",
                          encode_binary_mask(np.eye(3, dtype=bool))])


@given(data=st.data(), rows=st.lists(st.tuples(st.sampled_from(["a", "b", "", "a b"]), st.integers(-1, 4),
                                               st.integers(-1, 4), st.lists(TOKENS, max_size=7)), max_size=4))
def test_submission_reader_on_mutated_submissions(workdir, submission_bytes, data, rows):
    path = workdir / "mutated_submission.csv"
    path.write_bytes(data.draw(mutated(submission_bytes)))
    read = refused_or_returned(read_submission, path)
    if read is not None:
        assert_valid_submission(read)
    lines = ["ID,ImageWidth,ImageHeight,PredictionString"]
    lines += [f"{image_id},{width},{height},{' '.join(tokens)}" for image_id, width, height, tokens in rows]
    path.write_text("\n".join(lines) + "\n")
    read = refused_or_returned(read_submission, path)
    ids = [image_id for image_id, *_ in rows]
    sizes = [size for _, *size, _ in rows]
    if not all(ids) or len(set(ids)) < len(ids) or min(map(min, sizes), default=1) <= 0:
        assert read is None  # an empty or repeated ID, a size that is not positive
    elif read is not None:  # one image per line, with its size
        assert_valid_submission(read)
        assert list(read.images.itertuples(index=False, name=None)) == [row[:3] for row in rows]


# --------------------------------------------------------------------------- run configurations

TOML_SCALARS = (st.booleans() | st.integers(-3, 300) | st.integers()
                | st.floats() | st.sampled_from(["none", "red", "resnet18", "flat", "knn", "head", "cosine"])
                | st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8))
TOML_VALUES = st.recursive(TOML_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=8)


def quoted(key: str) -> str:
    return json.dumps(key, ensure_ascii=False)


def known_or_any(names) -> st.SearchStrategy[str]:
    """Mostly one of ``names``, sometimes any short text."""
    return st.sampled_from([*names, None]).flatmap(
        lambda name: st.text(max_size=6) if name is None else st.just(name))


def toml_value(value) -> str:
    """A TOML literal of a bool, int, float, str, list or dict (inline table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return "{" + ", ".join(f"{quoted(key)} = {toml_value(item)}" for key, item in value.items()) + "}"


@given(text=st.text(alphabet='[]="\'.,{}#\n abcdefnrtu0123456789-_+:', max_size=120),
       raw=st.binary(max_size=80))
def test_config_reader_on_random_text(workdir, text, raw):
    path = workdir / "random.toml"
    path.write_text(text, encoding="utf-8")
    refused_or_returned(read_config_file, path)
    path.write_bytes(raw)
    refused_or_returned(read_config_file, path)


@st.composite
def toml_documents(draw) -> str:
    """TOML text with known and unknown tables and keys holding values of any type, and values
    where a table belongs."""
    top, tables = [], []
    for name in draw(st.lists(known_or_any(SECTIONS), max_size=5, unique=True)):
        if draw(st.integers(0, 3)) == 0:
            top.append(f"{quoted(name)} = {toml_value(draw(TOML_VALUES))}")
            continue
        known = [f.name for f in dataclasses.fields(SECTIONS[name])] if name in SECTIONS else ["x"]
        tables.append(f"[{quoted(name)}]")
        for key in draw(st.lists(known_or_any(known), max_size=4, unique=True)):
            tables.append(f"{quoted(key)} = {toml_value(draw(TOML_VALUES))}")
    return "\n".join(top + tables) + "\n"


@given(text=toml_documents())
def test_config_reader_on_wrong_types_and_unknown_keys(workdir, text):
    path = workdir / "run.toml"
    path.write_text(text, encoding="utf-8")
    refused_or_returned(read_config_file, path)
