"""A training loop of your own, from hpa_embed's public pieces.

`hpa_embed.train.fit` does all of this (and checkpoints, resumes, validates, runs under DDP);
write your own loop when you want to change one step of it. The pieces: the cells and their
targets (`cell_targets`), a batched dataset over the CellStore that knows each cell's image, the
same batch sampler `fit` uses, the model, its preprocessing, the loss, and a checkpoint that
`hpa-embed embed` reads. The recipe here is the multiple-instance one: batches of whole images,
and a loss that adds to the per-cell BCE an image-level BCE on each image's pooled cell logits.

    python examples/custom_training_loop.py --out runs/custom            # tiny generated data
    python examples/custom_training_loop.py --store my-store --out runs/custom --epochs 10
"""

import argparse
import tempfile
from pathlib import Path

import torch

from hpa_embed.config import CropConfig, DataConfig, LossConfig, ModelConfig
from hpa_embed.crops import build_store
from hpa_embed.data import CellDataset, augment_batch, cell_targets, make_batch_sampler, make_loader
from hpa_embed.losses import CombinedLoss, primary_labels
from hpa_embed.models import create_model, preprocess, save_checkpoint
from hpa_embed.store import CellStore
from hpa_embed.synthetic import generate_dataset


def tiny_store(directory: Path) -> Path:
    """12 generated fields, their true cells cut into 32 px crops."""
    data = generate_dataset(directory / "data", 12, "tiny", seed=0, workers=1, progress=False)
    build_store(data / "train", data / "truth", directory / "store", labels=data / "train.csv", truth=data,
                config=CropConfig(crop_size=32), workers=1)
    return directory / "store"


def train(store_path: Path, out: Path, epochs: int) -> None:
    store = CellStore.open(store_path)
    model_config = ModelConfig(arch="resnet18", in_chans=4, crop_size=store.crop_size, embedding_dim=32)
    loss_config = LossConfig(classification="bce", metric="triplet", miner="semihard", mil_weight=1.0)
    data_config = DataConfig(label_mode="image_labels", sampler="images", batch_size=16)

    # the training cells, their multi-hot image labels, and each cell's image (its bag)
    positions, Y = cell_targets(store.cells, data_config.label_mode, store.scheme, splits="train")
    rows, images = store.cells["row"].to_numpy()[positions], store.cells["image_id"].to_numpy()[positions]
    dataset = CellDataset(store, rows, Y, channels=model_config.channels, groups=images)
    # batches of whole images (the class per cell is for sampler="balanced")
    sampler = make_batch_sampler(data_config, primary_labels(Y, Y.sum(axis=0)), dataset.groups, seed=0)
    loader = make_loader(dataset, sampler)

    model = create_model(model_config)
    criterion = CombinedLoss(loss_config, model_config.num_classes, class_counts=Y.sum(axis=0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(0)

    for epoch in range(epochs):
        model.train()
        sampler.set_epoch(epoch)
        total = 0.0
        for crops, targets, groups in loader:
            x = augment_batch(preprocess(crops, model_config), generator)  # uint8 crops -> normalised float
            loss, parts = criterion(model(x), targets, groups)  # parts: cls, metric, mil, total, triplets
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(f"epoch {epoch + 1}: mean loss {total / len(loader):.4f} "
              f"(last batch: classification {parts['cls']:.4f}, triplet {parts['metric']:.4f}, "
              f"MIL {parts['mil']:.4f})")

    checkpoint = save_checkpoint(out / "checkpoint", model.eval(), model_config,
                                 extra={"loss": loss_config.to_dict(), "epoch": epochs})
    print(f"wrote {checkpoint} (hpa-embed embed CHECKPOINT --store STORE --out EMBEDDINGS reads it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, help="a CellStore (default: tiny generated data)")
    parser.add_argument("--out", type=Path, default=Path("runs/custom"))
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    if args.store is not None:
        train(args.store, args.out, args.epochs)
        return
    with tempfile.TemporaryDirectory() as tmp:
        train(tiny_store(Path(tmp)), args.out, args.epochs)


if __name__ == "__main__":
    main()
