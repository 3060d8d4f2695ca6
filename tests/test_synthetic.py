"""Tests of the synthetic generator (hpa_embed.synthetic), on the ``tiny`` preset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from hpa_embed.io import DataError, read_field, read_labels, read_mask
from hpa_embed.synthetic import (
    KAGGLE2021_FREQUENCIES,
    PRESETS,
    SyntheticConfig,
    field_seed,
    generate_dataset,
    generate_field,
    get_preset,
    read_truth,
    touching_fraction,
)
from hpa_embed.synthetic.annotation import assign_cell_labels, sample_image_labels
from hpa_embed.synthetic.geometry import _reassign_fragments

TINY = get_preset("tiny")
# Every labelled cell shows every label, brightly: for tests of what a pattern looks like.
CLEAN = dataclasses.replace(
    TINY, unlabelled_cell_fraction=0.0, label_show_probability=1.0, faint_fraction=0.0,
    cell_intensity_sd=0.05, image_intensity_sd=0.05, difficulty=0.0, mitotic_fraction=0.0,
    autofluorescence=0.0, background=0.0,
)


@pytest.fixture(scope="module")
def fields():
    return [generate_field(TINY, seed) for seed in range(12)]


# --------------------------------------------------------------------------- config


def test_get_preset_and_unknown_name():
    assert get_preset("standard").size == 1024
    assert {"tiny", "small", "standard"} <= set(PRESETS)
    with pytest.raises(ValueError, match="standard"):
        get_preset("huge")


def test_config_validation_replace_and_dict_round_trip():
    config = dataclasses.replace(TINY, difficulty=0.9, bit_depth=16)
    assert config.difficulty == 0.9 and TINY.difficulty != 0.9
    assert SyntheticConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for bad in ({"bit_depth": 12}, {"difficulty": 1.5}, {"cell_lines": ("HeLa-X",)},
                {"class_frequencies": (0.1,) * 5}, {"size": 10}):
        with pytest.raises(ValueError):
            dataclasses.replace(TINY, **bad)


# --------------------------------------------------------------------------- one field


def test_same_seed_same_field_and_different_seed_different_field():
    a, b, c = generate_field(TINY, 3), generate_field(TINY, 3), generate_field(TINY, 4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.cell_mask, b.cell_mask)
    np.testing.assert_array_equal(a.nucleus_mask, b.nucleus_mask)
    assert a.cell_labels == b.cell_labels and a.image_labels == b.image_labels
    assert not np.array_equal(a.image, c.image)


def test_shapes_dtypes_ranges_and_quantisation(fields):
    for field in fields:
        assert field.image.shape == (4, 256, 256) and field.image.dtype == np.float32
        assert field.image.min() >= 0 and field.image.max() <= 1
        levels = field.image * 255
        np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
        for mask in (field.cell_mask, field.nucleus_mask):
            assert mask.shape == (256, 256) and mask.dtype == np.int32
        assert field.mitotic.dtype == bool and field.mitotic.shape == (field.n_cells,)
        assert field.image_id == "syn_000000"


def test_tiny_has_a_handful_of_cells(fields):
    # generation speed is measured by benchmarks/bench_synthetic.py, not asserted here
    counts = [field.n_cells for field in fields]
    assert 1 <= min(counts) and 5 <= np.median(counts) <= 12


def test_every_cell_has_one_nucleus_inside_it(fields):
    for field in fields:
        ids = np.arange(1, field.n_cells + 1)
        assert set(np.unique(field.cell_mask)) - {0} == set(ids)
        assert set(np.unique(field.nucleus_mask)) - {0} == set(ids)
        in_nucleus = field.nucleus_mask > 0
        np.testing.assert_array_equal(field.nucleus_mask[in_nucleus], field.cell_mask[in_nucleus])
        # One nucleus per cell: a cell's nucleus pixels form a single connected blob.
        for cell_id, box in enumerate(ndi.find_objects(field.nucleus_mask), start=1):
            _, count = ndi.label(field.nucleus_mask[box] == cell_id)
            assert count == 1


def test_image_labels_are_the_union_of_cell_labels(fields):
    for field in fields:
        union = sorted({label for labels in field.cell_labels for label in labels} - {18})
        assert field.image_labels == (union or [18])
        assert len(field.cell_labels) == field.n_cells
        assert all(labels == sorted(labels) and labels for labels in field.cell_labels)
        assert all(labels == [18] or 18 not in labels for labels in field.cell_labels)


def test_spindle_only_in_mitotic_cells():
    shown = 0
    for seed in range(6):
        field = generate_field(TINY, seed, image_labels=[11, 0])
        assert field.mitotic.any()
        for labels, mitotic in zip(field.cell_labels, field.mitotic):
            assert 11 not in labels or mitotic
            shown += 11 in labels
        assert 11 in field.image_labels
    assert shown >= 6


def test_forced_labels_are_checked():
    with pytest.raises(ValueError):
        generate_field(TINY, 0, image_labels=[18, 3])
    with pytest.raises(ValueError):
        generate_field(TINY, 0, image_labels=[19])


# --------------------------------------------------------------------------- crowding


def test_touching_fraction_by_hand():
    mask = np.zeros((6, 9), dtype=np.int32)
    mask[0:2, 0:2] = 1
    mask[0:2, 2:4] = 2  # shares a vertical border with 1
    mask[4:6, 0:2] = 3  # alone
    mask[2:4, 6:8] = 4
    mask[4, 8] = 5  # only a corner (8-adjacency) with 4: not touching
    assert touching_fraction(mask) == pytest.approx(2 / 5)
    assert touching_fraction(np.zeros((4, 4), np.int32)) == 0.0


def test_reassign_fragments_gives_slivers_to_their_neighbour():
    mask = np.zeros((7, 10), dtype=np.int32)
    mask[:, :5] = 1
    mask[:, 5:] = 2
    mask[2:4, 7:9] = 1  # a sliver of cell 1 inside cell 2
    mask[6, 0] = 2  # a sliver of cell 2 inside cell 1
    anchor = np.zeros_like(mask)
    anchor[3, 1], anchor[3, 6] = 1, 2
    expected = np.zeros_like(mask)
    expected[:, :5], expected[:, 5:] = 1, 2
    _reassign_fragments(mask, anchor, 2)
    np.testing.assert_array_equal(mask, expected)
    # a fragment touching no other cell becomes background
    island = np.zeros((5, 9), dtype=np.int32)
    island[1:3, 1:3] = 1
    island[1:3, 6:8] = 1
    anchor = np.zeros_like(island)
    anchor[1, 1] = 1
    _reassign_fragments(island, anchor, 1)
    assert island[1:3, 6:8].sum() == 0 and island[1:3, 1:3].all()


@pytest.fixture(scope="module")
def standard_fields():
    config = get_preset("standard")
    return [generate_field(config, seed) for seed in range(6)]


def test_standard_cells_touch_and_density_varies(standard_fields):
    fractions = [touching_fraction(field.cell_mask) for field in standard_fields]
    assert 0.4 <= np.mean(fractions) <= 0.8, fractions
    covered = [(field.cell_mask > 0).mean() for field in standard_fields]
    assert max(covered) > 2 * min(covered), covered  # sparse and crowded fields
    # sparser fields touch less: rank correlation of coverage and touching is positive
    ranks = np.argsort(np.argsort(covered)), np.argsort(np.argsort(fractions))
    assert np.corrcoef(*ranks)[0, 1] > 0.3
    for field in standard_fields:  # crowding keeps the one-nucleus convention
        in_nucleus = field.nucleus_mask > 0
        np.testing.assert_array_equal(field.nucleus_mask[in_nucleus], field.cell_mask[in_nucleus])
        assert set(np.unique(field.cell_mask)) == set(np.unique(field.nucleus_mask))
        # one piece per cell, holding its nucleus (other pieces only where the border cuts it)
        size = field.cell_mask.shape[0]
        for cell_id, box in enumerate(ndi.find_objects(field.cell_mask), start=1):
            parts, count = ndi.label(field.cell_mask[box] == cell_id)
            held = set(np.unique(parts[field.nucleus_mask[box] == cell_id]))
            cut = set()
            for part, (rows, cols) in enumerate(ndi.find_objects(parts), start=1):
                ends = (rows.start + box[0].start, rows.stop + box[0].start,
                        cols.start + box[1].start, cols.stop + box[1].start)
                if 0 in ends or size in ends:
                    cut.add(part)
            assert len(held) == 1 and set(range(1, count + 1)) <= held | cut


def test_confluence_sets_how_many_cells_touch():
    def mean_fraction(confluence):
        config = dataclasses.replace(get_preset("small"), confluence=confluence)
        return np.mean([touching_fraction(generate_field(config, seed).cell_mask) for seed in range(4)])

    sparse, confluent = mean_fraction((0.15, 0.15)), mean_fraction((1.2, 1.2))
    assert sparse < 0.5 < 0.9 < confluent


def test_touching_cells_abut_without_a_dark_gap(standard_fields):
    """Along a border shared by two cells the reference signal stays well above the
    background, unlike at a free edge."""
    field = max(standard_fields, key=lambda f: touching_fraction(f.cell_mask))
    mask = field.cell_mask
    signal = ndi.gaussian_filter(field.image[0] + field.image[3], 2)
    shared = np.zeros(mask.shape, dtype=bool)
    shared[:, :-1] |= (mask[:, :-1] != mask[:, 1:]) & (mask[:, :-1] > 0) & (mask[:, 1:] > 0)
    background = ndi.binary_erosion(mask == 0, iterations=5)
    inside = ndi.binary_erosion(mask > 0, iterations=5)
    assert shared.sum() > 200
    floor, cells = np.median(signal[background]), np.median(signal[inside])
    assert np.median(signal[shared]) - floor > 0.4 * (cells - floor)


# --------------------------------------------------------------------------- labels


def test_image_label_frequencies_follow_the_table():
    rng = np.random.default_rng(0)
    n = 20000
    sets = [sample_image_labels(TINY, rng) for _ in range(n)]
    counts = np.zeros(19)
    for labels in sets:
        counts[labels] += 1
        assert 1 <= len(labels) <= 4 and (labels == [18] or 18 not in labels)
    frequency = counts / n
    target = np.asarray(KAGGLE2021_FREQUENCIES)
    assert np.all(np.abs(frequency - target) <= 0.01 + 0.1 * target), (frequency, target)
    sizes = np.bincount([len(labels) for labels in sets])
    assert (sizes[1] + sizes[2]) / n > 0.75  # most images carry one or two labels
    assert frequency[0] > frequency[13] > frequency[11]


def test_assign_cell_labels_rules():
    rng = np.random.default_rng(1)
    config = dataclasses.replace(TINY, unlabelled_cell_fraction=0.3, label_show_probability=0.5)
    mitotic = np.array([False, False, True, False, False, False])
    for _ in range(200):
        cells = assign_cell_labels([2, 11, 16], mitotic, config, rng)
        assert sorted({x for c in cells for x in c} - {18}) == [2, 11, 16]
        assert all(11 not in c for c, m in zip(cells, mitotic) if not m)
        assert all(set(c) <= {2, 11, 16} or c == [18] for c in cells)
    assert assign_cell_labels([18], mitotic, config, rng) == [[18]] * 6
    with pytest.raises(ValueError, match="mitotic"):
        assign_cell_labels([11], np.zeros(3, bool), config, rng)
    # unlabelled fraction 1: one cell per label still shows it (the image label must be true)
    config = dataclasses.replace(TINY, unlabelled_cell_fraction=1.0)
    cells = assign_cell_labels([4, 7], np.zeros(5, bool), config, rng)
    assert sum(c != [18] for c in cells) <= 2 and sorted({x for c in cells for x in c} - {18}) == [4, 7]


# --------------------------------------------------------------------------- patterns


def _green_fractions(class_id: int, seeds=range(3)):
    """Share of the cells' green signal (above background) in the nucleus and at the cell rim."""
    nucleus = rim = total = 0.0
    rim_area = area = 0
    for seed in seeds:
        field = generate_field(CLEAN, seed, image_labels=[class_id])
        signal = np.clip(field.image[1] - 0.015, 0, None)  # above the noise floor
        for cell_id, labels in enumerate(field.cell_labels, start=1):
            if class_id not in labels:
                continue
            cell = field.cell_mask == cell_id
            near_edge = cell & (ndi.distance_transform_edt(np.pad(cell, 1))[1:-1, 1:-1] <= 3)
            nucleus += signal[field.nucleus_mask == cell_id].sum()
            rim += signal[near_edge].sum()
            total += signal[cell].sum()
            rim_area += near_edge.sum()
            area += cell.sum()
    return nucleus / total, rim / total, rim_area / area


@pytest.mark.parametrize("class_id", [0, 2, 4, 5])
def test_nuclear_patterns_sit_in_the_nucleus(class_id):
    in_nucleus, _, _ = _green_fractions(class_id)
    assert in_nucleus > 0.8


@pytest.mark.parametrize("class_id", [6, 14, 16, 17])
def test_cytoplasmic_patterns_avoid_the_nucleus(class_id):
    in_nucleus, _, _ = _green_fractions(class_id)
    assert in_nucleus < 0.1


def test_plasma_membrane_sits_at_the_cell_rim():
    _, at_rim, rim_area = _green_fractions(13)
    assert at_rim > 0.5 and at_rim > 2.5 * rim_area
    _, cytosol_rim, _ = _green_fractions(16)
    assert at_rim > 2 * cytosol_rim


def test_negative_cells_show_only_autofluorescence():
    config = dataclasses.replace(CLEAN, autofluorescence=0.03)
    field = generate_field(config, 0, image_labels=[18])
    labelled = generate_field(config, 0, image_labels=[16])
    assert field.image_labels == [18] and all(labels == [18] for labels in field.cell_labels)
    # same geometry (same seed), far less green
    np.testing.assert_array_equal(field.cell_mask, labelled.cell_mask)
    assert field.image[1].mean() < 0.3 * labelled.image[1].mean()


def test_unspecific_signal_follows_the_exposure_of_the_field():
    # Real unspecific staining scales with the exposure: Negative cells are not one fixed level
    # that brightness alone would find.
    config = dataclasses.replace(CLEAN, autofluorescence=0.05, image_intensity_sd=0.35)
    levels = []
    for seed in range(12):
        field = generate_field(config, seed, image_labels=[18])
        levels.append(field.image[1][field.cell_mask > 0].mean())
    assert np.std(levels) / np.mean(levels) > 0.2


def test_difficulty_makes_nuclear_bodies_smaller_and_more_diffuse():
    def peakiness(difficulty):
        config = dataclasses.replace(CLEAN, difficulty=difficulty, photons=1e6, read_noise=0.0)
        values = []
        for seed in range(4):
            field = generate_field(config, seed, image_labels=[5])
            green = field.image[1][field.nucleus_mask > 0]
            values.append(np.percentile(green, 99) / max(np.median(green), 1e-3))
        return np.mean(values)

    assert peakiness(0.0) > 1.5 * peakiness(1.0)


# --------------------------------------------------------------------------- data sets


def test_dataset_reads_back(tmp_path):
    out = generate_dataset(tmp_path / "syn", 3, "tiny", seed=5, workers=1, progress=False)
    table = read_labels(out / "train.csv")
    truth = read_truth(out)
    assert table.image_ids == ["syn_000000", "syn_000001", "syn_000002"]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["seed"] == 5 and manifest["n_images"] == 3
    assert SyntheticConfig.from_dict(manifest["config"]) == TINY
    for index, image_id in enumerate(table.image_ids):
        field = generate_field(TINY, field_seed(5, index), image_id)
        np.testing.assert_array_equal(read_field(out / "train", image_id), field.image)
        truth_dir = out / "truth"
        np.testing.assert_array_equal(read_mask(truth_dir / f"{image_id}_cellmask.png"), field.cell_mask)
        np.testing.assert_array_equal(read_mask(truth_dir / f"{image_id}_nucleimask.png"), field.nucleus_mask)
        assert table.labels[index] == field.image_labels
        cells = truth[truth.image_id == image_id].sort_values("cell_id")
        assert cells.cell_id.tolist() == list(range(1, field.n_cells + 1))
        assert cells.labels.tolist() == field.cell_labels
        assert cells.mitotic.tolist() == field.mitotic.tolist()
        assert (cells.cell_line == field.cell_line).all()
        np.testing.assert_array_equal(cells.area, np.bincount(field.cell_mask.ravel())[1:])


def test_sixteen_bit_round_trip(tmp_path):
    config = dataclasses.replace(TINY, bit_depth=16)
    out = generate_dataset(tmp_path, 1, config, workers=1, progress=False)
    field = generate_field(config, field_seed(0, 0), "syn_000000")
    image = read_field(out / "train", "syn_000000")
    np.testing.assert_array_equal(image, field.image)
    assert not np.allclose(image * 255, np.rint(image * 255), atol=1e-3)  # finer than 8 bit


def test_worker_count_does_not_change_output(tmp_path):
    one = generate_dataset(tmp_path / "one", 4, TINY, seed=2, workers=1, progress=False)
    two = generate_dataset(tmp_path / "two", 4, TINY, seed=2, workers=2, progress=False)
    assert (one / "train.csv").read_text() == (two / "train.csv").read_text()
    assert (one / "truth" / "cells.csv").read_text() == (two / "truth" / "cells.csv").read_text()
    for index in range(4):
        image_id = f"syn_{index:06d}"
        np.testing.assert_array_equal(
            read_field(one / "train", image_id), read_field(two / "train", image_id)
        )


def test_resume_skips_existing_fields_and_refuses_another_config(tmp_path):
    out = generate_dataset(tmp_path, 2, TINY, workers=1, progress=False)
    first = out / "train" / "syn_000000_green.png"
    first.write_bytes(first.read_bytes())  # same content, new mtime we can recognise
    stamp = first.stat().st_mtime_ns - 10**9
    import os

    os.utime(first, ns=(stamp, stamp))
    (out / "train.csv").unlink()
    generate_dataset(out, 3, TINY, workers=1, progress=False)
    assert first.stat().st_mtime_ns == stamp  # not regenerated
    assert (out / "train" / "syn_000002_green.png").is_file()
    assert len(read_labels(out / "train.csv")) == 3
    # a field with a missing file is regenerated
    (out / "truth" / "syn_000001_cellmask.png").unlink()
    generate_dataset(out, 3, TINY, workers=1, progress=False)
    assert (out / "truth" / "syn_000001_cellmask.png").is_file()
    with pytest.raises(DataError, match="different"):
        generate_dataset(out, 3, dataclasses.replace(TINY, difficulty=0.9), workers=1, progress=False)
    with pytest.raises(DataError, match="different"):
        generate_dataset(out, 3, TINY, seed=1, workers=1, progress=False)


def test_read_truth_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_truth(tmp_path)
    path = tmp_path / "truth" / "cells.csv"
    path.parent.mkdir()
    path.write_text("image_id,cell_id,labels\nx,1,0\n")
    with pytest.raises(DataError, match="missing column"):
        read_truth(tmp_path)
    path.write_text("image_id,cell_id,labels,cell_line,mitotic,area\nx,1,0|a,A-431,False,10\n")
    with pytest.raises(DataError, match="line 2"):
        read_truth(tmp_path)
    path.write_text("image_id,cell_id,labels,cell_line,mitotic,area\nx,1,0|16,A-431,False,10\n")
    assert read_truth(tmp_path).labels.tolist() == [[0, 16]]


def test_generate_dataset_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_images"):
        generate_dataset(tmp_path, 0, TINY, progress=False)
    with pytest.raises(ValueError, match="preset"):
        generate_dataset(tmp_path, 1, "nope", progress=False)
