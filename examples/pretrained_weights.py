"""Pretrained weights from local files: an ImageNet ResNet-50 backbone and HPA Cell Segmentation.

Nothing is downloaded: every weight comes from a file you name.

- `--weights FILE`: a torchvision ResNet-50 state dict (`.pth`/`.pt`/`.safetensors`), e.g.
  torchvision's ImageNet file (`torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url`, fetched
  on a machine with a network). `ModelConfig(pretrained=FILE)` loads it into the backbone: its
  3-channel first convolution becomes a 4-channel one (red, green, blue kept, yellow = the mean
  of red and green, all scaled by 3/4), its `fc` classifier is dropped, and any other missing or
  mis-shaped key is an error.
- `--nuclei-model FILE --cell-model FILE`: segment with HPA Cell Segmentation (the `hpacellseg`
  package, installed from its repository, with its two weight files). When the package or a
  file is missing, this example says so and segments with the classical segmenter instead.

One training step follows, on the head only (the backbone frozen, as `[train]
freeze_backbone_epochs` does in the first epochs of a fine-tuning), and the checkpoint is
compared with the file: the backbone's weights are the file's (the first convolution adapted).
For a try without a weights file, `--make-demo-weights` first writes a randomly initialised
torchvision ResNet-50 state dict to `--weights`, so that the loading path runs for real.

    python examples/pretrained_weights.py --make-demo-weights            # -> runs/examples/pretrained
    python examples/pretrained_weights.py --weights resnet50-11ad3fa6.pth \
        --nuclei-model dpn_unet_nuclei_v1.pth --cell-model dpn_unet_cell_3ch_v1.pth --crop-size 128
"""

import argparse
import importlib.util
from pathlib import Path

import torch

from hpa_embed.config import CropConfig, DataConfig, LossConfig, ModelConfig, TrainConfig
from hpa_embed.crops import build_store
from hpa_embed.models import adapt_first_conv, describe_checkpoint, load_checkpoint
from hpa_embed.segment import ClassicalSegmenter, HPACellSegmenter, segment_directory
from hpa_embed.synthetic import generate_dataset
from hpa_embed.train import fit


def make_demo_weights(path: Path) -> None:
    """A randomly initialised torchvision ResNet-50, saved as a state dict like torchvision's files."""
    import torchvision

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    print(f"wrote random ResNet-50 weights to {path} (a stand-in for the ImageNet file)")


def choose_segmenter(nuclei_model: Path | None, cell_model: Path | None, device: str):
    """HPACellSegmenter when its package and both weight files are there, else the classical one."""
    missing = [] if importlib.util.find_spec("hpacellseg") else ["the hpacellseg package is not installed"]
    for flag, path in (("--nuclei-model", nuclei_model), ("--cell-model", cell_model)):
        if path is None or not path.is_file():
            missing.append(f"{flag} not given" if path is None else f"{flag} {path} not found")
    if missing:
        print(f"note: segmenting with the classical segmenter instead: {'; '.join(missing)}")
        return ClassicalSegmenter()
    print(f"segmenting with HPA Cell Segmentation ({nuclei_model.name}, {cell_model.name}) on {device}")
    return HPACellSegmenter(nuclei_model, cell_model, device=device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, help="torchvision ResNet-50 state dict (default with "
                        "--make-demo-weights: <out>/resnet50-random.pth)")
    parser.add_argument("--make-demo-weights", action="store_true",
                        help="first write random ResNet-50 weights to --weights")
    parser.add_argument("--nuclei-model", type=Path, help="HPA Cell Segmentation nucleus model file")
    parser.add_argument("--cell-model", type=Path, help="HPA Cell Segmentation cell model file")
    parser.add_argument("--images", type=int, default=8, help="synthetic fields to generate")
    parser.add_argument("--crop-size", type=int, default=32, help="crop side in pixels")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/examples/pretrained"))
    args = parser.parse_args()
    out = args.out
    weights = args.weights or (out / "resnet50-random.pth" if args.make_demo_weights else None)
    if weights is None:
        parser.error("name the weights with --weights FILE (or try --make-demo-weights)")
    if args.make_demo_weights:
        make_demo_weights(weights)

    data = generate_dataset(out / "data", args.images, "tiny", seed=0, workers=1, progress=False)
    segmenter = choose_segmenter(args.nuclei_model, args.cell_model, args.device)
    print(segment_directory(data / "train", out / "masks", segmenter, workers=1, progress=False))
    store = out / "store"
    build_store(data / "train", out / "masks", store, labels=data / "train.csv",
                config=CropConfig(crop_size=args.crop_size), workers=1)

    # the backbone from the file; the embedding head and classifier start random
    model = ModelConfig(arch="resnet50", in_chans=4, crop_size=args.crop_size, embedding_dim=64,
                        pretrained=str(weights))
    batches = DataConfig(label_mode="image_labels", batch_size=8, m_per_class=2, batches_per_epoch=1)
    one_step = TrainConfig(epochs=1, freeze_backbone_epochs=1, device=args.device)
    result = fit(store, out / "train", model, LossConfig(classification="bce"), batches, one_step,
                 resume=True, progress=False)
    print("\n".join(describe_checkpoint(result.checkpoint).splitlines()[:6]))  # the model, its source

    # the checkpoint's backbone is the file's: adapted first convolution, every other layer as is
    trained, _, _ = load_checkpoint(result.checkpoint)
    source = torch.load(weights, map_location="cpu", weights_only=True)
    backbone = trained.backbone.state_dict()
    assert torch.allclose(backbone["conv1.weight"], adapt_first_conv(source["conv1.weight"], 4))
    same = [name for name in backbone if name != "conv1.weight" and torch.equal(backbone[name], source[name])]
    print(f"backbone: conv1 {tuple(source['conv1.weight'].shape)} -> {tuple(backbone['conv1.weight'].shape)} "
          f"adapted from the file; {len(same)} of {len(backbone) - 1} other tensors equal to the file's")


if __name__ == "__main__":
    main()
