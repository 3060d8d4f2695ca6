"""Quickstart: the whole API one step at a time, from synthetic fields to held-out scores.

Each step is one public call, the one the matching stage of `hpa_embed.run_pipeline` makes, and
writes into the folder that stage uses, so `similarity_search.py`, `map_your_cells.py` and
`kaggle_submission.py` (and `hpa-embed search/map/submit`) read the result like a pipeline run:

    data/ (generate)  masks/ (segment)  store/ (crop)  train/ (fit)  embeddings/ (embed)
    index/ (FAISS)  predictions/{head,knn}/ (classify)  evaluation/{head,knn}/ (evaluate)

The defaults (12 `tiny` fields of 256 px, 32 px crops, a ResNet-18 for one epoch) run in well
under a minute on two CPU cores; the scores of so short a training are low. Run it again into
the same folder and the finished steps are skipped (training resumes and finds itself done).

    python examples/quickstart.py                                   # -> runs/examples/quickstart
    python examples/quickstart.py --out runs/qs --images 60 --preset small --crop-size 64 --epochs 6
"""

import argparse
from pathlib import Path

from hpa_embed.classify import predict_cells, write_predictions
from hpa_embed.config import CropConfig, DataConfig, IndexConfig, LossConfig, ModelConfig, TrainConfig
from hpa_embed.crops import build_store
from hpa_embed.embed import Embeddings, embed_store
from hpa_embed.evaluate import evaluate_predictions
from hpa_embed.index import index_embeddings
from hpa_embed.segment import ClassicalSegmenter, segment_directory
from hpa_embed.store import CellStore
from hpa_embed.synthetic import generate_dataset
from hpa_embed.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples/quickstart"))
    parser.add_argument("--images", type=int, default=12, help="synthetic fields to generate")
    parser.add_argument("--preset", default="tiny", help="synthetic preset: tiny | small | standard")
    parser.add_argument("--crop-size", type=int, default=32, help="crop side in pixels")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, default=1, help="processes for the per-field steps")
    args = parser.parse_args()
    out, workers = args.out, args.workers

    # 1. fields in the Kaggle layout (data/train/<ID>_{red,green,blue,yellow}.png, data/train.csv)
    #    plus the truth real data lacks (data/truth/: true masks, every cell's labels)
    data = generate_dataset(out / "data", args.images, args.preset, seed=0, workers=workers, progress=False)

    # 2. cell and nucleus masks (masks/<ID>_cellmask.png, <ID>_nucleimask.png)
    report = segment_directory(data / "train", out / "masks", ClassicalSegmenter(), workers=workers,
                               progress=False)
    print(f"segment: {report}")

    # 3. every cell cut out into a CellStore, the images split into train / val / test
    build_store(data / "train", out / "masks", out / "store", labels=data / "train.csv", truth=data,
                config=CropConfig(crop_size=args.crop_size), workers=workers, fractions=(0.5, 0.2, 0.3))
    store = CellStore.open(out / "store")
    print(f"crop: {len(store)} cells of {args.crop_size} px; per split "
          f"{store.cells.groupby('split').size().to_dict()}")

    # 4. a ResNet-18 with an embedding head, trained on the images' (weak) labels
    model = ModelConfig(arch="resnet18", in_chans=4, crop_size=args.crop_size, embedding_dim=32)
    loss = LossConfig(classification="bce", metric="triplet", miner="semihard")
    batches = DataConfig(label_mode="image_labels", batch_size=16, m_per_class=2)
    training = TrainConfig(epochs=args.epochs, lr=1e-3, device=args.device)
    result = fit(store, out / "train", model, loss, batches, training, resume=True, progress=False)
    print(f"train: {len(result.history)} epoch(s), checkpoint {result.checkpoint}")

    # 5. an L2-normalised embedding per cell (embeddings/embeddings.npy + cells.parquet)
    embedded = embed_store(result.checkpoint, store, out=out / "embeddings", device=args.device,
                           progress=False)
    # 6. a FAISS index over them, searched by cell id (see similarity_search.py)
    index = index_embeddings(out / "embeddings", out / "index", IndexConfig(), progress=False)
    print(f"embed + index: {len(embedded)} cells, dimension {embedded.X.shape[1]}, {index!r}")

    # 7. class probabilities per cell: the trained linear head, and a kNN vote of the training cells
    is_train = (embedded.cells["split"] == "train").to_numpy()
    reference = Embeddings(embedded.X[is_train], embedded.cells[is_train].reset_index(drop=True),
                           embedded.meta)
    print("evaluate: held-out test images (cell mAP against the synthetic truth, image mAP against the "
          "image labels, the Kaggle metric of the masks + labels)")
    for method in ("head", "knn"):
        probabilities = predict_cells(embedded, method, checkpoint=result.checkpoint, reference=reference,
                                      n_neighbors=5)
        write_predictions(out / "predictions" / method, embedded, probabilities, method)
        # 8. scores of the cells of the test images only
        summary = evaluate_predictions(out / "predictions" / method, out / "evaluation" / method,
                                       splits=("test",), truth=data, masks=out / "masks", progress=False)
        scores = ", ".join(f"{name} {value:.3f}" for name, value in summary["scores"].items())
        print(f"  {method}: {summary['cells']} cells of {summary['images']} images: {scores}")
    print(f"results in {out}/")


if __name__ == "__main__":
    main()
