"""Make the figures of docs/synthetic.md (re-runnable; deterministic).

    python docs/make_synthetic_figures.py [--real-dir ../shared/data/hpa-real/fov] [--out docs/img]

- ``synthetic_vs_real.png``: RGBY composite of a synthetic ``standard`` field beside the real HPA
  field 57_F11_1 (skipped, with a warning, when the real field is not found).
- ``synthetic_gallery.png``: one synthetic cell per class, the green channel bright and the
  reference channels dim.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hpa_embed.io import DataError, atomic_path, read_field  # noqa: E402
from hpa_embed.labels import HPA2021  # noqa: E402
from hpa_embed.synthetic import generate_field, get_preset  # noqa: E402

log = logging.getLogger("make_synthetic_figures")

REAL_ID = "57_F11_1"
CREDIT = ("Real image: Human Protein Atlas (www.proteinatlas.org); Thul PJ et al., A subcellular map "
          "of the human proteome, Science 356:eaal3321 (2017)")
DEFAULT_REAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "hpa-real" / "fov"


def composite(image: np.ndarray, weights=(1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """RGBY ``[4, H, W]`` -> RGB float ``[H, W, 3]``: red->R, green->G, blue->B, yellow->R+G/2."""
    red, green, blue, yellow = (w * c for w, c in zip(weights, image))
    return np.clip(np.stack([red + 0.5 * yellow, green + 0.5 * yellow, blue], axis=-1), 0, 1)


def synthetic_vs_real(real_dir: Path, out: Path) -> Path | None:
    # Same cell line and labels as the real field, for a like-for-like look.
    config = dataclasses.replace(get_preset("standard"), cell_lines=("A-431",))
    field = generate_field(config, seed=11, image_id="syn_standard_11", image_labels=[13, 16])
    try:
        real = read_field(real_dir, REAL_ID)
    except DataError as error:
        log.warning("skipping synthetic_vs_real.png: %s", error)
        return None
    figure, axes = plt.subplots(1, 2, figsize=(10, 5.4), dpi=100)
    axes[0].imshow(composite(field.image), interpolation="antialiased")
    axes[0].set_title(f"synthetic 'standard' (1024², {field.cell_line}; labels "
                      f"{'|'.join(map(str, field.image_labels))})", fontsize=9)
    axes[1].imshow(composite(real), interpolation="antialiased")
    axes[1].set_title(f"real HPA {REAL_ID} (1728², A-431; labels 13|16)", fontsize=9)
    for axis in axes:
        axis.set_axis_off()
    figure.text(0.5, 0.02, CREDIT, ha="center", fontsize=6.5)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    path = out / "synthetic_vs_real.png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


def _cell_panel(field, cell_id: int, side: int = 200) -> np.ndarray:
    """The cell's box (square, padded), green bright and references dim, masked to the cell."""
    rows, cols = np.nonzero(field.cell_mask == cell_id)
    centre = ((rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2)
    half = max(rows.max() - rows.min(), cols.max() - cols.min()) // 2 + 6
    height, width = field.cell_mask.shape
    y0, x0 = (max(c - half, 0) for c in centre)
    y1, x1 = min(centre[0] + half, height), min(centre[1] + half, width)
    crop = field.image[:, y0:y1, x0:x1] * (0.25 + 0.75 * (field.cell_mask[y0:y1, x0:x1] == cell_id))
    rgb = composite(crop, weights=(0.25, 1.3, 0.3, 0.2))
    from PIL import Image

    return np.asarray(Image.fromarray((rgb * 255).astype(np.uint8)).resize((side, side), Image.LANCZOS))


def gallery(out: Path) -> Path:
    config = dataclasses.replace(
        get_preset("small"), unlabelled_cell_fraction=0.0, label_show_probability=1.0,
        faint_fraction=0.0, cell_intensity_sd=0.1, image_intensity_sd=0.1, difficulty=0.3,
    )
    figure, axes = plt.subplots(4, 5, figsize=(10, 8.6), dpi=100)
    for class_id, axis in zip(range(HPA2021.num_classes), axes.ravel()):
        field = generate_field(config, seed=100 + class_id, image_labels=[class_id])
        # The largest cell away from the border that shows the class.
        mask = field.cell_mask
        border = np.unique(np.concatenate([mask[[0, -1]].ravel(), mask[:, [0, -1]].ravel()]))
        areas = np.bincount(field.cell_mask.ravel(), minlength=field.n_cells + 1)
        candidates = [i + 1 for i, labels in enumerate(field.cell_labels)
                      if class_id in labels and i + 1 not in border] or [
                     i + 1 for i, labels in enumerate(field.cell_labels) if class_id in labels]
        # Prefer a large, well-stained cell: the figure shows the pattern, not the nuisance.
        green = field.image[1]
        best = max(candidates, key=lambda cell_id: areas[cell_id] ** 0.5
                   * np.percentile(green[field.cell_mask == cell_id], 99.5))
        axis.imshow(_cell_panel(field, best))
        axis.set_title(f"{class_id} {HPA2021.names[class_id]}", fontsize=8)
    for axis in axes.ravel():
        axis.set_axis_off()
    figure.tight_layout()
    path = out / "synthetic_gallery.png"
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real-dir", type=Path, default=DEFAULT_REAL_DIR,
                        help="directory with 57_F11_1_{red,green,blue,yellow}.png")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "img")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in (synthetic_vs_real(args.real_dir, args.out), gallery(args.out)):
        if path is not None:
            log.info("wrote %s (%.0f kB)", path, path.stat().st_size / 1024)


if __name__ == "__main__":
    main()
