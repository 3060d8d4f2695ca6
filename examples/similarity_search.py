"""Similar cells: the k nearest neighbours of a cell in a run's FAISS index, with a montage.

A run folder (from `hpa-embed run`, `run_pipeline` or `quickstart.py`) holds `index/` (the
`CellIndex` over every cell's embedding) and `store/` (the crops and the cell table). The
query is a cell of the index, by id (default: the first cell of a held-out test image);
`CellIndex.search_cell` searches with its stored vector and leaves the cell itself out. The
neighbours are printed with their image and labels (true labels where the store has them, else
their image's), written to `neighbours.csv`, and drawn beside the query in `neighbours.png`,
as `hpa-embed search INDEX --cell ID --store STORE --montage PNG` does.

Without `--run` a tiny run is made first (12 `tiny` fields, 32 px crops, ResNet-18, one epoch,
with `run_pipeline` up to its index stage): well under a minute on two CPU cores.

    python examples/similarity_search.py                      # tiny run -> runs/examples/similarity
    python examples/similarity_search.py --run runs/cpu-small --cell syn_000003_2 -k 8 --out runs/sim
"""

import argparse
from pathlib import Path

from hpa_embed.index import CellIndex, neighbours_table
from hpa_embed.pipeline import load_named_config, run_pipeline
from hpa_embed.store import CellStore
from hpa_embed.visualise import describe_cells, plot_neighbours


def tiny_run(out: Path) -> Path:
    """The shipped toy config (12 `tiny` fields, 32 px crops, one epoch), run up to
    its index."""
    run_pipeline(load_named_config("tiny"), out, until_stage="index", workers=1, progress=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path,
                        help="a run folder with index/ and store/ (default: make a tiny one)")
    parser.add_argument("--cell", help="the query cell's id (default: the first cell of a test image)")
    parser.add_argument("-k", type=int, default=6, help="neighbours to find")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/similarity"),
                        help="where neighbours.csv and neighbours.png go (and the tiny run, without --run)")
    args = parser.parse_args()
    run = args.run or tiny_run(args.out / "run")

    index = CellIndex.load(run / "index")
    store = CellStore.open(run / "store")
    cells = store.cells
    test_cells = cells.loc[cells["split"] == "test", "cell_id"]
    query = args.cell or str((test_cells if len(test_cells) else cells["cell_id"]).iloc[0])

    # scores: cosine similarities (or squared L2 distances for an "l2" index), best first;
    # cell_ids: None where fewer than k cells were found
    scores, neighbour_ids = index.search_cell(query, args.k)

    table = neighbours_table([query], scores, neighbour_ids)  # query, rank, cell_id, score
    described = describe_cells(cells, table["cell_id"].tolist(), store.scheme)
    table["image_id"], table["labels"] = described["image_id"].to_numpy(), described["labels"].to_numpy()
    (own,) = describe_cells(cells, [query], store.scheme).itertuples(index=False)
    print(f"query {own.cell_id}: image {own.image_id}, labels {own.labels}")
    print(f"its {len(table)} nearest cells in {index!r}:")
    print(table.drop(columns="query").to_string(index=False, float_format=lambda v: f"{v:.3f}"))

    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "neighbours.csv", index=False)
    score_name = "cosine" if index.metric == "cosine" else "sq. L2"
    montage = plot_neighbours(store, query, neighbour_ids, scores, args.out / "neighbours.png",
                              score_name=score_name)
    print(f"wrote {args.out / 'neighbours.csv'} and the montage {montage}")


if __name__ == "__main__":
    main()
