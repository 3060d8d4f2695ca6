import numpy as np
import pandas as pd
import pytest

from hpa_embed.evaluate import (
    ImageTruth,
    TruthDirectory,
    average_precision,
    cell_level_ap,
    classification_table,
    competition_map,
    evaluate_cells,
    evaluate_submission,
)
from hpa_embed.labels import HPA2021
from hpa_embed.rle import encode_binary_mask
from hpa_embed.submission import Submission, build_submission, predictions_from_cells

# --------------------------------------------------------------------------- competition metric


def brute_force_voc_ap(is_tp, n_true):
    """VOC 2010 AP from its definition: for each recall level reached, the best precision at that
    recall or above, times the recall step."""
    found, ap, previous_recall = 0, 0.0, 0.0
    precisions, recalls = [], []
    for rank, tp in enumerate(is_tp, 1):
        found += tp
        precisions.append(found / rank)
        recalls.append(found / n_true)
    for recall in sorted(set(recalls)):
        if recall == previous_recall:
            continue
        ap += (recall - previous_recall) * max(p for p, r in zip(precisions, recalls) if r >= recall)
        previous_recall = recall
    return ap


def test_average_precision_hand_computed_and_brute_force():
    assert average_precision([True, False, True], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([False, True], 1) == pytest.approx(0.5)
    assert average_precision([True, True], 4) == pytest.approx(0.5)  # half the cells never found
    assert average_precision([], 3) == 0.0
    assert np.isnan(average_precision([False], 0))
    rng = np.random.default_rng(0)
    for _ in range(50):
        is_tp = rng.random(rng.integers(1, 30)) < 0.4
        n_true = int(is_tp.sum()) + int(rng.integers(0, 3))
        if n_true:
            assert average_precision(is_tp, n_true) == pytest.approx(brute_force_voc_ap(is_tp, n_true))


def stripes(height, widths):
    """Label mask of vertical stripes with ids 1, 2, ... of the given widths."""
    return np.repeat(np.arange(1, len(widths) + 1), widths)[None, :].repeat(height, 0).astype(np.int32)


def submission_of(images, rows):
    """images: {id: (height, width)}; rows: (image_id, bool mask, label, confidence)."""
    frame_images = pd.DataFrame({"image_id": list(images), "width": [w for _, w in images.values()],
                                 "height": [h for h, _ in images.values()]})
    predictions = pd.DataFrame({
        "image_id": [r[0] for r in rows], "cell": np.arange(len(rows)) + 1,
        "label": [r[2] for r in rows], "confidence": [float(r[3]) for r in rows],
        "rle": [encode_binary_mask(r[1]) for r in rows],
    })
    return Submission(frame_images.astype({"width": np.int64, "height": np.int64}),
                      predictions.astype({"label": np.int64}))


def test_competition_map_hand_computed():
    mask_a = stripes(10, [10, 10, 10])  # cells 1, 2, 3
    mask_b = np.ones((10, 10), np.int32)
    truth = {"a": ImageTruth(mask_a, {1: [0], 2: [0, 1], 3: [1]}), "b": ImageTruth(mask_b, {1: [2]})}
    cell = {i: mask_a == i for i in (1, 2, 3)}
    rows = [
        ("a", cell[1], 0, 0.9),   # TP
        ("a", cell[3], 0, 0.8),   # FP: cell 3 is not class 0
        ("a", cell[2], 0, 0.7),   # TP (cell 2 has two labels: two predictions, same mask)
        ("a", cell[2], 1, 0.6),   # TP
        ("a", cell[2], 1, 0.5),   # FP: the same cell again
        ("a", cell[3], 1, 0.4),   # TP
        ("a", cell[1], 2, 0.95),  # FP: no class-2 cell in image a
        ("b", mask_b == 1, 2, 0.5),  # TP
        ("a", cell[1], 5, 0.3),   # class 5 has no true cell anywhere
    ]
    result = competition_map(submission_of({"a": (10, 30), "b": (10, 10)}, rows), truth, progress=False)
    expected = np.full(19, np.nan)
    expected[[0, 1]] = 0.5 * 1 + 0.5 * 2 / 3
    expected[2] = 0.5  # FP then TP: precision 1/2 at recall 1
    np.testing.assert_allclose(result.per_class_ap, expected)
    assert result.map == pytest.approx((2 * (0.5 + 1 / 3) + 0.5) / 3)
    assert result.n_gt[:3].tolist() == [2, 2, 1] and result.n_gt[3:].sum() == 0
    assert result.n_pred[[0, 1, 2, 5]].tolist() == [3, 3, 2, 1]
    assert result.n_tp[[0, 1, 2, 5]].tolist() == [2, 2, 1, 0]
    frame = result.to_frame()
    assert frame.loc[2, "name"] == HPA2021.names[2] and frame.loc[2, "ap"] == pytest.approx(0.5)


def test_confidence_ties_keep_row_order():
    mask = stripes(4, [5, 5])
    truth = {"a": ImageTruth(mask, {1: [0]})}
    fp, tp = ("a", mask == 2, 0, 0.5), ("a", mask == 1, 0, 0.5)
    first_fp = competition_map(submission_of({"a": (4, 10)}, [fp, tp]), truth, progress=False)
    first_tp = competition_map(submission_of({"a": (4, 10)}, [tp, fp]), truth, progress=False)
    assert first_fp.per_class_ap[0] == pytest.approx(0.5)
    assert first_tp.per_class_ap[0] == pytest.approx(1.0)


def test_iou_exactly_at_threshold():
    mask = np.zeros((10, 10), np.int32)
    mask[:, :] = 1
    truth = {"a": ImageTruth(mask, {1: [3]})}
    sixty, fifty_nine = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    sixty[:, :6] = True  # IoU 60/100
    fifty_nine.ravel()[:59] = True
    def score(pred, threshold):
        submission = submission_of({"a": (10, 10)}, [("a", pred, 3, 0.9)])
        return competition_map(submission, truth, threshold, progress=False).per_class_ap[3]
    assert score(sixty, 0.6) == 1.0
    assert score(sixty, 0.61) == 0.0
    assert score(fifty_nine, 0.6) == 0.0


def test_match_goes_to_best_unmatched_true_cell():
    """At a low threshold a prediction whose best true cell is taken matches the next best."""
    mask = stripes(1, [10, 10, 20])  # A = cols 0-9, B = cols 10-19
    truth = {"a": ImageTruth(mask, {1: [0], 2: [0]})}
    overlapping = np.zeros((1, 40), bool)
    overlapping[0, 2:14] = True  # IoU 8/14 with A, 4/18 = 0.222 with B
    rows = [("a", mask == 1, 0, 0.9), ("a", overlapping, 0, 0.8)]
    submission = submission_of({"a": (1, 40)}, rows)
    assert competition_map(submission, truth, 0.2, progress=False).per_class_ap[0] == pytest.approx(1.0)
    assert competition_map(submission, truth, 0.25, progress=False).per_class_ap[0] == pytest.approx(0.5)


def test_empty_predictions_and_unpredicted_images():
    mask = stripes(4, [3, 3])
    truth = {"a": ImageTruth(mask, {1: [0], 2: [4]}), "b": ImageTruth(mask, {1: [4]})}
    nothing = Submission.concat([predictions_from_cells("a", mask, np.zeros((0, 19)), cell_ids=[])])
    for submission in (nothing, Submission.concat([])):
        result = competition_map(submission, truth, progress=False)
        assert result.map == 0.0 and result.n_gt[[0, 4]].tolist() == [1, 2]
        assert np.isnan(result.per_class_ap[1]) and result.n_pred.sum() == 0
    only_b = submission_of({"b": (4, 6)}, [("b", mask == 1, 4, 0.7)])
    assert competition_map(only_b, truth, progress=False).per_class_ap[4] == pytest.approx(0.5)


def test_competition_map_rejects_mismatches():
    mask = stripes(4, [3, 3])
    truth = {"a": ImageTruth(mask, {1: [0]})}
    with pytest.raises(ValueError, match="no truth"):
        competition_map(submission_of({"z": (4, 6)}, []), truth, progress=False)
    with pytest.raises(ValueError, match="differs"):
        competition_map(submission_of({"a": (6, 4)}, []), truth, progress=False)
    with pytest.raises(ValueError, match="not in its cell mask"):
        competition_map(Submission.concat([]), {"a": ImageTruth(mask, {7: [0]})}, progress=False)


def random_partition(rng, shape, n_cells):
    """A label mask: background plus cells as nearest-seed regions (disjoint, like a segmentation)."""
    seeds = rng.uniform(0, shape, size=(n_cells, 2))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    distance = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    mask = distance.argmin(axis=-1).astype(np.int32) + 1
    mask[rng.random(shape) < 0.1] = 0
    return mask


@pytest.mark.parametrize("seed", range(3))
def test_identical_masks_reduce_to_cell_level_ap(seed):
    rng = np.random.default_rng(seed)
    parts, truth, all_probabilities, all_labels = [], {}, [], []
    for index in range(4):
        mask = random_partition(rng, (30, 40), int(rng.integers(3, 8)))
        ids = np.unique(mask[mask > 0])
        Y = rng.random((len(ids), 19)) < 0.25
        probabilities = np.round(rng.random((len(ids), 19)), 1)  # coarse: plenty of ties
        image_id = f"img{index}"
        truth[image_id] = ImageTruth(mask, {int(i): np.flatnonzero(y).tolist() for i, y in zip(ids, Y)})
        parts.append(predictions_from_cells(image_id, mask, probabilities, cell_ids=ids))
        all_probabilities.append(probabilities)
        all_labels.append(Y)
    full = competition_map(Submission.concat(parts), truth, progress=False)
    cells = cell_level_ap(np.concatenate(all_probabilities), np.concatenate(all_labels))
    np.testing.assert_allclose(full.per_class_ap, cells.per_class_ap)
    np.testing.assert_array_equal(full.n_gt, cells.n_gt)
    np.testing.assert_array_equal(full.n_pred, cells.n_pred)
    assert full.map == pytest.approx(cells.map)


def test_cell_level_ap_per_class_brute_force():
    rng = np.random.default_rng(4)
    probabilities, Y = rng.random((40, 19)), rng.random((40, 19)) < 0.3
    Y[:, 7] = False
    result = cell_level_ap(probabilities, Y)
    for c in range(19):
        if c == 7:
            assert np.isnan(result.per_class_ap[c])
            continue
        ranked = Y[np.argsort(-probabilities[:, c]), c]
        assert result.per_class_ap[c] == pytest.approx(brute_force_voc_ap(ranked, Y[:, c].sum()))
    assert result.map == pytest.approx(np.nanmean(result.per_class_ap))


def test_evaluate_synthetic_truth_end_to_end(tiny_dataset, tmp_path):
    """Perfect probabilities on the true masks score 1; every class present gets AP 1."""
    from hpa_embed.synthetic import read_truth

    truth = TruthDirectory(tiny_dataset)
    assert len(truth) == 24
    cells = read_truth(tiny_dataset).rename(columns={"cell_id": "mask_id"})
    Y = HPA2021.to_multi_hot(cells["labels"].tolist())
    submission = build_submission(cells, Y.astype(float), tiny_dataset / "truth", progress=False)
    result = evaluate_submission(submission, tiny_dataset, out_dir=tmp_path, progress=False)
    present = Y.any(axis=0)
    np.testing.assert_allclose(result.per_class_ap[present], 1.0)
    assert np.isnan(result.per_class_ap[~present]).all() and result.map == 1.0
    written = pd.read_csv(tmp_path / "competition_ap.csv")
    assert written["n_gt"].tolist() == Y.sum(axis=0).tolist()


# --------------------------------------------------------------------------- per-class tables


def test_classification_table_hand_computed():
    Y_true = np.zeros((5, 19), bool)
    Y_true[[0, 1, 2], 0] = True
    probabilities = np.zeros((5, 19))
    probabilities[[0, 1, 3], 0] = [0.9, 0.4, 0.7]  # at 0.5: tp cell 0, fn cells 1, 2, fp cell 3, tn cell 4
    table = classification_table(Y_true, probabilities, threshold=0.5)
    row = table.loc[0]
    assert (row.tp, row.fp, row.fn, row.tn, row.support) == (1, 1, 2, 1, 3)
    assert row.precision == pytest.approx(0.5) and row.recall == pytest.approx(1 / 3)
    assert row.f1 == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    # a class never predicted and never true: every ratio undefined
    assert np.isnan(table.loc[5, ["precision", "recall", "f1"]].astype(float)).all()
    assert table.loc[5, "tn"] == 5
    # bool predictions are taken as they are
    lower = classification_table(Y_true, probabilities >= 0.3)
    assert lower.loc[0, "tp"] == 2


def test_evaluate_cells_writes_its_tables(tmp_path):
    rng = np.random.default_rng(1)
    Y = rng.random((200, 19)) < 0.2
    probabilities = np.clip(Y * 0.6 + rng.random((200, 19)) * 0.5, 0, 1)
    result = evaluate_cells(Y, probabilities, tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"cell_ap.csv", "per_class.csv"}
    with pytest.raises(ValueError, match="must both be"):
        classification_table(Y, probabilities[:, :5])
    assert result.map == pytest.approx(cell_level_ap(probabilities, Y).map)
    assert pd.read_csv(tmp_path / "report" / "per_class.csv")["support"].tolist() == Y.sum(0).tolist()
