"""Mask encoding and the competition metric on synthetic fields, with RLE round-trip checks.

Generates ``--images`` synthetic ``standard`` fields (1024², about 20 cells each), makes a
"segmentation" of each by shifting the true mask a few pixels (IoU about 0.9 with the truth, some
cells below the 0.6 threshold) and noisy per-cell probabilities, then times:

- encoding every cell mask (``encode_label_mask``, one pass per field), against pycocotools'
  per-cell ``mask.encode`` + zlib + base64 (the Kaggle sample code) when it is installed, with
  a byte-for-byte comparison;
- decoding every mask back and comparing with the field's mask (round trip);
- writing and reading the submission CSV;
- the competition metric (``competition_map``) over all fields;
- one 2048² mask with 30 cells (target: well under 1 s) and the real HPA reference mask.

    .venv/bin/python benchmarks/bench_metric.py [--images 100] [--workers 2] [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import base64
import tempfile
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import Row, machine, parse_args, write_rows

from hpa_embed.evaluate import ImageTruth, competition_map
from hpa_embed.io import read_mask
from hpa_embed.rle import decode_binary_mask, encode_label_mask
from hpa_embed.submission import Submission, predictions_from_cells, read_submission, write_submission
from hpa_embed.synthetic import field_seed, generate_field, get_preset

REFERENCE_MASK = (Path(__file__).resolve().parents[2] / "shared" / "data" / "hpa-real"
                  / "reference-masks" / "1000_A12_2_cellmask.png")
LARGE_MASK_TARGET_S = 1.0
QUICK = {"images": 20}


def make_field(index: int) -> tuple[str, np.ndarray, list[list[int]]]:
    field = generate_field(get_preset("standard"), field_seed(0, index), f"syn_{index:06d}")
    return field.image_id, field.cell_mask, field.cell_labels


def kaggle_encode(coco_mask, mask: np.ndarray) -> str:
    """The competition's sample code (pycocotools)."""
    mask = np.asfortranarray(mask.reshape(*mask.shape, 1).astype(np.uint8))
    counts = coco_mask.encode(mask)[0]["counts"]
    return base64.b64encode(zlib.compress(counts, zlib.Z_BEST_COMPRESSION)).decode()


def voronoi_mask(size: int, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Cells as nearest-seed regions, background beyond 200 px from every seed."""
    from scipy.spatial import cKDTree

    seeds = rng.uniform(0, size, (n_cells, 2))
    grid = np.stack(np.mgrid[:size, :size], axis=-1).reshape(-1, 2)
    distance, nearest = cKDTree(seeds).query(grid)
    return np.where(distance < 200, nearest + 1, 0).reshape(size, size).astype(np.int32)


def fake_segmentation(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dy, dx = rng.integers(-12, 13, 2)
    return np.roll(mask, (int(dy), int(dx)), axis=(0, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2, help="processes generating the fields")
    args = parse_args(parser, QUICK, argv)
    try:
        from pycocotools import _mask as coco_mask
    except ImportError:
        coco_mask = None

    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        fields = list(pool.map(make_field, range(args.images)))
    n_cells = sum(len(labels) for _, _, labels in fields)
    size = f"{len(fields)} fields of 1024²"
    print(f"generated {len(fields)} fields of 1024² ({n_cells} cells, "
          f"{n_cells / len(fields):.1f}/field) in {time.perf_counter() - start:.1f} s")

    rng = np.random.default_rng(0)
    truth, predicted = {}, []
    for image_id, mask, labels in fields:
        truth[image_id] = ImageTruth.from_list(mask, labels)
        Y = np.zeros((len(labels), 19), bool)
        for row, cell in enumerate(labels):
            Y[row, cell] = True
        probabilities = np.clip(0.45 * Y + 0.6 * rng.random(Y.shape), 0, 1)
        predicted.append((image_id, fake_segmentation(mask, rng), probabilities))

    # encoding
    start = time.perf_counter()
    encoded = [encode_label_mask(mask) for _, mask, _ in predicted]
    encode_s = time.perf_counter() - start
    n_masks = sum(len(e) for e in encoded)
    line = f"encode {n_masks} cell masks: {encode_s:.2f} s ({1e3 * encode_s / len(predicted):.1f} ms/field)"
    encode_name = f"RLE encoding of every cell mask ({size}, {n_masks} masks)"
    if coco_mask is not None:
        start = time.perf_counter()
        reference = [{i: kaggle_encode(coco_mask, mask == i) for i in e} for e, (_, mask, _) in
                     zip(encoded, predicted)]
        coco_s = time.perf_counter() - start
        same = sum(rle == e[i] for e, r in zip(encoded, reference) for i, rle in r.items())
        line += f"   | pycocotools per cell: {coco_s:.2f} s; byte-identical {same}/{n_masks}"
        figures = [Row(encode_name, encode_s, "s", coco_s, "pycocotools per cell", "lower"),
                   Row(f"RLE byte-identical to pycocotools ({size})", same / n_masks, "", 1.0, "pycocotools",
                       "higher", "identical", same == n_masks)]
    else:
        line += "   | pycocotools not installed: no baseline"
        figures = [Row(encode_name, encode_s, "s", better="lower"),
                   Row("RLE byte-identical to pycocotools", None, target="identical",
                       note="pycocotools not installed")]
    print(line)

    # round trip
    start = time.perf_counter()
    exact = 0
    for e, (_, mask, _) in zip(encoded, predicted):
        rebuilt = np.zeros_like(mask)
        for cell_id, rle in e.items():
            rebuilt[decode_binary_mask(rle, *mask.shape)] = cell_id
        exact += np.array_equal(rebuilt, mask)
    print(f"decode and compare: {time.perf_counter() - start:.2f} s; fields rebuilt exactly "
          f"{exact}/{len(predicted)}")
    figures.append(Row(f"RLE round trip, fields rebuilt exactly ({size})", exact / len(predicted), "", 1.0,
                       "target", "higher", "all", exact == len(predicted)))

    # submission file and metric
    start = time.perf_counter()
    submission = Submission.concat(
        predictions_from_cells(image_id, mask, probabilities) for image_id, mask, probabilities in predicted)
    build_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = write_submission(Path(tmp) / "submission.csv", submission)
        write_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        start = time.perf_counter()
        back = read_submission(path)
        read_s = time.perf_counter() - start
    columns = ["image_id", "label", "confidence", "rle"]
    identical = back.predictions[columns].equals(submission.predictions[columns])
    print(f"submission: {len(submission.predictions)} predictions, build {build_s:.2f} s, "
          f"write {write_s:.2f} s ({size_mb:.1f} MB), read+check {read_s:.2f} s, "
          f"identical after reading: {identical}")
    start = time.perf_counter()
    result = competition_map(back, truth, progress=False)
    metric_s = time.perf_counter() - start
    print(f"competition_map over {len(truth)} fields: {metric_s:.2f} s "
          f"({1e3 * metric_s / len(truth):.0f} ms/field); {result}; "
          f"true positives {int(result.n_tp.sum())}/{int(result.n_gt.sum())} true (cell, class)")
    figures += [
        Row(f"submission CSV identical after writing and reading ({size})", identical, "yes/no",
            target="identical", met=identical),
        Row(f"competition metric, per field ({size})", metric_s / len(truth), "s", better="lower"),
    ]

    # one large mask, and the real reference
    large = voronoi_mask(2048, 30, rng)
    large_ids = np.unique(large[large > 0])
    start = time.perf_counter()
    encode_label_mask(large)
    large_s = time.perf_counter() - start
    print(f"2048² mask with {len(large_ids)} cells: {large_s:.3f} s   | target < {LARGE_MASK_TARGET_S:.1f} s")
    figures.append(Row(f"RLE of a 2048² mask with {len(large_ids)} cells", large_s, "s", LARGE_MASK_TARGET_S,
                       "target", "lower", f"< {LARGE_MASK_TARGET_S:g} s", large_s < LARGE_MASK_TARGET_S))
    if REFERENCE_MASK.is_file():
        reference_mask = read_mask(REFERENCE_MASK)
        start = time.perf_counter()
        reference_rles = encode_label_mask(reference_mask)
        reference_s = time.perf_counter() - start
        rebuilt = np.zeros_like(reference_mask)
        for cell_id, rle in reference_rles.items():
            rebuilt[decode_binary_mask(rle, *reference_mask.shape)] = cell_id
        round_trip = np.array_equal(rebuilt, reference_mask)
        print(f"HPA reference mask 2048², {len(reference_rles)} cells: {reference_s:.3f} s   | target < "
              f"{LARGE_MASK_TARGET_S:.1f} s; round trip exact: {round_trip}")
        figures += [
            Row(f"RLE of the HPA reference mask, 2048², {len(reference_rles)} cells", reference_s, "s",
                LARGE_MASK_TARGET_S, "target", "lower", f"< {LARGE_MASK_TARGET_S:g} s",
                reference_s < LARGE_MASK_TARGET_S),
            Row("RLE round trip of the HPA reference mask exact", round_trip, "yes/no", target="exact",
                met=round_trip),
        ]
    print(machine())
    write_rows(args.json, figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
