"""A Kaggle HPA 2021 submission from a folder of fields and a trained checkpoint.

The fields are in the competition's layout (`<ID>_{red,green,blue,yellow}.png`, no labels, as
Kaggle's `test/`). Each is segmented into cells, the cells are cut out into a CellStore with the
crop settings the model was trained on (`--train-store`: those of the run's store; else only
the checkpoint's crop size, the other settings at their defaults), embedded, scored by the
model's linear head, and written as `submission.csv`: one row per field (also a field without
cells), `ID,ImageWidth,ImageHeight,PredictionString`, each prediction a `class confidence mask`
triple with the cell's mask as COCO RLE + zlib + base64. The file is then read back (which
checks every mask) and its rows printed; `hpa-embed submit` writes the same file.

Without `--images` 4 `tiny` synthetic fields are generated (and the submission is scored
against their true masks and labels); without `--checkpoint` a tiny model is trained first
(12 `tiny` fields, 32 px crops, ResNet-18, one epoch). Well under a minute on two CPU cores.

    python examples/kaggle_submission.py                          # -> runs/examples/kaggle
    python examples/kaggle_submission.py --images kaggle/test --checkpoint runs/a/train/checkpoints/best \
        --train-store runs/a/store --out runs/kaggle --workers 8
"""

import argparse
from pathlib import Path

from hpa_embed.classify import predict_cells
from hpa_embed.config import CropConfig
from hpa_embed.crops import build_store
from hpa_embed.embed import embed_store
from hpa_embed.evaluate import evaluate_submission
from hpa_embed.io import list_field_ids
from hpa_embed.labels import HPA2021
from hpa_embed.models import read_checkpoint_config
from hpa_embed.pipeline import load_named_config, run_pipeline
from hpa_embed.rle import decode_binary_mask
from hpa_embed.segment import ClassicalSegmenter, segment_directory
from hpa_embed.store import CellStore
from hpa_embed.submission import build_submission, read_submission, write_submission
from hpa_embed.synthetic import generate_dataset


def tiny_model(out: Path) -> tuple[Path, Path]:
    """The shipped toy config (12 `tiny` fields, 32 px crops, one epoch), trained:
    its checkpoint and its CellStore."""
    result = run_pipeline(load_named_config("tiny"), out, until_stage="train", workers=1, progress=False)
    return result.paths.checkpoint, result.paths.store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, help="fields in the Kaggle layout (default: 4 generated)")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint (default: train a tiny one)")
    parser.add_argument("--train-store", type=Path, help="the CellStore the checkpoint was trained on "
                        "(its crop settings are reused)")
    parser.add_argument("--min-confidence", type=float, default=0.0,
                        help="drop (cell, class) pairs below this (smaller file, slightly lower score)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", type=int, default=1, help="processes for segmenting and cropping")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/kaggle"))
    args = parser.parse_args()
    out = args.out

    checkpoint, train_store = args.checkpoint, args.train_store
    if checkpoint is None:
        checkpoint, train_store = tiny_model(out / "model")
    truth = None
    if args.images is None:  # a stand-in for Kaggle's test/: fields without their labels
        truth = generate_dataset(out / "fields", 4, "tiny", seed=1, workers=args.workers, progress=False)
        args.images = truth / "train"
    image_ids = list_field_ids(args.images)

    # crops like those the model learnt from
    model_config, _ = read_checkpoint_config(checkpoint)
    if train_store is not None:
        crop = CropConfig.from_dict(CellStore.open(train_store).meta["attrs"]["crop"])
    else:
        crop = CropConfig(crop_size=model_config.crop_size)
        print(f"no --train-store: {crop.crop_size} px crops, the other crop settings at their defaults")

    report = segment_directory(args.images, out / "masks", ClassicalSegmenter(), workers=args.workers,
                               progress=False)
    print(f"segment {len(image_ids)} fields: {report}")
    build_store(args.images, out / "masks", out / "store", config=crop, workers=args.workers)
    embedded = embed_store(checkpoint, out / "store", device=args.device, progress=False)
    probabilities = predict_cells(embedded, "head", checkpoint=checkpoint)  # float32 [cells, 19]

    submission = build_submission(embedded.cells, probabilities, out / "masks", image_ids=image_ids,
                                  min_confidence=args.min_confidence, progress=False)
    path = write_submission(out / "submission.csv", submission)
    print(f"wrote {path}: {submission!r}")

    # read back: every mask decoded and checked; one row per field
    written = read_submission(path)
    for image in written.images.itertuples(index=False):
        rows = written.predictions[written.predictions["image_id"] == image.image_id]
        line = (f"  {image.image_id} {image.width}x{image.height}: {rows['cell'].nunique()} cells, "
                f"{len(rows)} triples")
        if len(rows):
            first = rows[rows["cell"] == rows["cell"].iloc[0]].nlargest(3, "confidence")
            pixels = decode_binary_mask(first["rle"].iloc[0], image.height, image.width).sum()
            line += f"; cell 1 ({pixels} px): " + ", ".join(
                f"{HPA2021.names[row.label]} {row.confidence:.2f}" for row in first.itertuples())
        print(line)
    if truth is not None:
        score = evaluate_submission(written, truth, progress=False)
        print(f"against the true masks and labels of the generated fields: {score} (a tiny model)")


if __name__ == "__main__":
    main()
