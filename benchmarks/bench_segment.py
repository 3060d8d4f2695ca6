"""Segmentation benchmark: quality on synthetic fields, speed at 2048², the real HPA field.

Run:  .venv/bin/python benchmarks/bench_segment.py [--fields 20] [--overlay docs/img/real_field_masks.png]

Prints each measured figure beside its target:
- object F1 at IoU >= 0.6 for nuclei and cells, and the mean IoU of matched cells, over
  synthetic ``standard`` fields (seeds 1000+, not the seeds the defaults were tuned on);
- seconds per 2048x2048 field (synthetic ``standard`` generated at 2048 px);
- the cell count on the real field 57_F11_1, and an overlay picture of its masks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from hpa_embed.io import read_field
from hpa_embed.segment import ClassicalSegmenter, check_masks, object_f1
from hpa_embed.synthetic import generate_field, get_preset, touching_fraction

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "hpa-real" / "fov"


def quality(segmenter, n_fields: int) -> dict[str, float]:
    counts = {"cells": np.zeros(3), "nuclei": np.zeros(3)}
    cell_ious, touching = [], []
    for seed in range(1000, 1000 + n_fields):
        field = generate_field(get_preset("standard"), seed=seed)
        touching.append(touching_fraction(field.cell_mask) * field.n_cells)
        cell_mask, nucleus_mask = segmenter.segment(field.image)
        check_masks(cell_mask, nucleus_mask)
        for name, truth, pred in (("cells", field.cell_mask, cell_mask),
                                  ("nuclei", field.nucleus_mask, nucleus_mask)):
            scores = object_f1(truth, pred, 0.6)
            counts[name] += (scores.n_true, scores.n_pred, scores.n_matched)
            if name == "cells" and scores.n_matched:
                cell_ious.append(scores.mean_iou * scores.n_matched)
    f1 = {name: 2 * c[2] / (c[0] + c[1]) for name, c in counts.items()}
    return {"nuclei_f1": f1["nuclei"], "cells_f1": f1["cells"],
            "cells_mean_iou": sum(cell_ious) / counts["cells"][2],
            "n_cells": int(counts["cells"][0]), "touching": sum(touching) / counts["cells"][0]}


def speed(segmenter, repeats: int = 5) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of one 2048² field (CPU time is what other processes
    on a busy machine cannot inflate)."""
    config = dataclasses.replace(get_preset("standard"), size=2048)
    image = generate_field(config, seed=7).image
    segmenter.segment(image)  # warm-up (imports, caches)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        segmenter.segment(image)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall)), float(np.median(cpu))


def overlay(image: np.ndarray, cell_mask: np.ndarray, nucleus_mask: np.ndarray, path: Path,
            side: int = 864) -> None:
    """RGB composite with cell outlines (white) and nucleus outlines (cyan), ``side`` px wide."""
    from PIL import Image
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    from hpa_embed.io import atomic_path
    from hpa_embed.visualise import composite_rgb

    rows = np.linspace(0, image.shape[1] - 1, side).round().astype(int)
    cols = np.linspace(0, image.shape[2] - 1, side).round().astype(int)
    composite = Image.fromarray(composite_rgb(image)).resize((side, side), Image.LANCZOS)
    rgb = np.array(composite)
    for mask, colour in ((cell_mask, (255, 255, 255)), (nucleus_mask, (0, 255, 255))):
        outline = find_boundaries(mask[rows][:, cols], mode="inner")
        rgb[ndi.binary_dilation(outline)] = colour
    picture = Image.fromarray(rgb)
    # a 256-colour palette keeps the picture well under 1 MB
    with atomic_path(path) as tmp:
        picture.quantize(256).save(tmp, format="PNG", optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=20, help="synthetic fields to score")
    parser.add_argument("--overlay", type=Path, default=ROOT / "docs" / "img" / "real_field_masks.png")
    args = parser.parse_args()
    segmenter = ClassicalSegmenter()

    scores = quality(segmenter, args.fields)
    seconds, cpu_seconds = speed(segmenter)
    print(f"ClassicalSegmenter defaults, synthetic 'standard' preset, {args.fields} fields "
          f"({scores['n_cells']} true cells, {scores['touching']:.0%} of them touching another), "
          "IoU >= 0.6")
    print(f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'metric':<34}{'measured':>10}{'target':>10}")
    rows = [
        ("nuclei object F1", scores["nuclei_f1"], ">= 0.95", scores["nuclei_f1"] >= 0.95),
        ("cells object F1", scores["cells_f1"], ">= 0.90", scores["cells_f1"] >= 0.90),
        ("cells mean IoU of matches", scores["cells_mean_iou"], "-", True),
        ("seconds per 2048x2048 field (wall)", seconds, "<= 1.0", seconds <= 1.0),
        ("  (CPU seconds, one process)", cpu_seconds, "<= 1.0", cpu_seconds <= 1.0),
    ]
    for name, value, target, ok in rows:
        print(f"{name:<34}{value:>10.3f}{target:>10}  {'ok' if ok else 'MISSED'}")

    if (REAL / "57_F11_1_blue.png").is_file():
        image = read_field(REAL, "57_F11_1")
        cell_mask, nucleus_mask = segmenter.segment(image)
        n_cells = check_masks(cell_mask, nucleus_mask)
        print(f"{'real field 57_F11_1 cells':<34}{n_cells:>10d}{'9-12':>10}  "
              f"{'ok' if 9 <= n_cells <= 13 else 'CHECK'}")
        overlay(image, cell_mask, nucleus_mask, args.overlay)
        size = args.overlay.stat().st_size / 1e6
        print(f"overlay written to {args.overlay} ({size:.2f} MB)")
    else:
        print(f"real field not found under {REAL}; skipped")


if __name__ == "__main__":
    main()
