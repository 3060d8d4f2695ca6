"""Map your cells: a UMAP of a run's cell embeddings as PNG maps and an interactive cell map.

`draw_cell_maps` takes the run's embeddings, its CellStore (for the thumbnails) and its FAISS
index, whose kNN graph UMAP uses instead of computing its own (`UMAPProjector`), and writes:
`map_class.png` (cells by their labels), `map_image.png`, `map_cell_line.png`, with a
predictions folder `map_prediction.png` and `map_correct.png`, `class_panels.png`,
`coordinates.npy` + `cells.parquet` (row i of one is row i of the other), the fitted
`projector/` (`UMAPProjector.load(...).transform(X_new)` places new cells on the same map) and
`interactive/index.html`: open it in a browser from disk, hover or click a cell to see its crop
and its nearest neighbours. Then `cells.h5ad` (`export_anndata`: X = embeddings, obs = the cell
table, plus obsm["X_umap"] = this map) for scanpy, cellxgene and friends.

Without `--run` a tiny run is made first (12 `tiny` fields, 32 px crops, ResNet-18, one epoch,
with `run_pipeline` up to its classify stage): well under a minute on two CPU cores.

    python examples/map_your_cells.py                              # tiny run -> runs/examples/maps
    python examples/map_your_cells.py --run runs/cpu-small --out runs/cpu-small-maps --umap-neighbors 30
"""

import argparse
from pathlib import Path

import numpy as np

from hpa_embed.embed import read_embeddings
from hpa_embed.exchange import export_anndata
from hpa_embed.pipeline import load_named_config, run_pipeline
from hpa_embed.visualise import UMAPProjector, draw_cell_maps


def tiny_run(out: Path) -> Path:
    """The shipped toy config (12 `tiny` fields, 32 px crops, one epoch), run up to
    its predictions."""
    run_pipeline(load_named_config("tiny"), out, until_stage="classify", workers=1, progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path,
                        help="a run folder with embeddings/, store/, index/ (default: make a tiny one)")
    parser.add_argument("--method", default="head",
                        help="colour by the predictions of this method (predictions/<method>/), if there")
    parser.add_argument("--umap-neighbors", type=int, default=15, help="UMAP n_neighbors")
    parser.add_argument("--min-dist", type=float, default=0.1, help="UMAP min_dist")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/maps"),
                        help="the map folder (and the tiny run, in <out>/run, without --run)")
    args = parser.parse_args()
    run = args.run or tiny_run(args.out / "run")

    predictions = run / "predictions" / args.method
    projector = UMAPProjector(n_neighbors=args.umap_neighbors, min_dist=args.min_dist, random_state=0)
    written = draw_cell_maps(run / "embeddings", run / "store", args.out, index=run / "index",
                             predictions=predictions if predictions.is_dir() else None,
                             projector=projector, progress=False)
    for name, path in written.items():
        print(f"{name:>14}: {path}")

    # the same cells for scanpy: X = embeddings, obs = the cell table, obsm["X_umap"] = this map
    adata = export_anndata(read_embeddings(run / "embeddings"))
    adata.obsm["X_umap"] = np.load(written["coordinates"])  # rows of the embeddings, like obs
    adata.write_h5ad(args.out / "cells.h5ad")
    print(f"{'h5ad':>14}: {args.out / 'cells.h5ad'} (scanpy: sc.read_h5ad(...); sc.pl.umap(adata, ...))")
    page = written["interactive"]
    print(f"the interactive cell map: {page.resolve().as_uri()} (opens from disk)")


if __name__ == "__main__":
    main()
