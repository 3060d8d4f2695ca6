"""Check HPACellSegmenter against the real HPA-Cell-Segmentation source, with random weights.

Run, in an environment where the package's old pins hold (numpy<1.24, scikit-image<0.20,
opencv-python; torch), with checkouts of the package and of its models' code:

    python benchmarks/check_hpacellseg.py PATH/TO/HPA-Cell-Segmentation \
        [--pytorch-zoo PATH/TO/pytorch_zoo] [--field DIR/ID] [--device cpu] [--no-dpn] \
        [--nuclei-model dpn_unet_nuclei_v1.pth --cell-model dpn_unet_cell_3ch_v1.pth]

The checkouts go first on ``sys.path``; nothing is installed or downloaded. The models'
architecture (``pytorch_zoo.unet.DPNUnet``, DPN-92 encoder) comes from
https://github.com/haoxusci/pytorch_zoo, which the package's ``setup.py`` installs with it.

What it checks, printing one line per check (``ok`` or ``FAIL``; exit status 1 on a failure):

1. The package's constants and defaults the adapter relies on (``NORMALIZE``,
   ``scale_factor=0.25``, the ``label_cell`` signature).
2. The adapter end to end on the real field (default ``57_F11_1``, 1728x1728) with the real
   architecture, randomly initialised (ImageNet weights are not fetched), pickled whole to
   temporary files as the package's model files are, and loaded by the adapter: what the
   networks receive (float32 ``[1, 3, h, w]``, sides multiples of 32, [0, 1] values normalised
   by ``NORMALIZE``, channels microtubules, ER, nuclei), what ``pred_nuclei``/``pred_cells``
   return (uint8 ``[n, n, 3]``, channel 0 zero), what ``label_cell`` returns (uint16, nucleus
   ids the cells' ids) and the adapter's masks (int32, the field's shape, the convention).
   Random weights give meaningless masks, usually none.
3. The same with hand-set stand-in models (one smoothing convolution per class, thresholds
   from the field; pickled whole too) so that ``label_cell`` finds cells: the full field with
   the 3- and the 2-channel cell model, a non-square crop, and the field at a quarter of its
   size (the 2018 set's scale).
4. With ``--nuclei-model``/``--cell-model``: the real weights on the field. They are pickles,
   loaded with ``torch.load(weights_only=False)``: name only files you obtained from the HPA.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import inspect
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIELD = ROOT.parent / "shared" / "data" / "hpa-real" / "fov" / "57_F11_1"

FAILED: list[str] = []


def report(ok: bool, what: str, detail: str = "") -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILED.append(what)
    return ok


def git_commit(path: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# --------------------------------------------------------------------------- models


def random_dpn_unet(seed: int):
    """``pytorch_zoo.unet.DPNUnet(3, 3)``, the package's architecture, randomly initialised."""
    import pytorch_zoo.abstract_model as abstract_model
    import torch
    from pytorch_zoo.dpn import dpn92
    from pytorch_zoo.unet import DPNUnet

    # the constructor would fetch ImageNet weights for the encoder: keep it random
    params = abstract_model.encoder_params["dpn92"]
    abstract_model.encoder_params["dpn92"] = {
        **params, "init_op": functools.partial(dpn92, pretrained=None), "url": None}
    try:
        torch.manual_seed(seed)
        return DPNUnet(3, 3).eval()
    finally:
        abstract_model.encoder_params["dpn92"] = params


def threshold_model(channels, threshold: float, kernel: int = 5, gain: float = 30.0):
    """A stand-in network: class 2 where the mean of ``channels`` over a ``kernel`` window is
    above ``threshold`` (values in [0, 1]), class 1 (borders) nowhere, class 0 elsewhere.

    It undoes the package's ``NORMALIZE`` itself, so it sees what the real networks see.
    """
    import torch
    from hpacellseg.cellsegmentator import NORMALIZE

    # replicate, not zeros: a zero of the normalised input is mid-grey, a bright frame
    conv = torch.nn.Conv2d(3, 3, kernel, padding=kernel // 2, padding_mode="replicate")
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.bias[1] = -20.0
        share = 1.0 / len(channels)
        for channel in channels:
            std, mean = NORMALIZE["std"][channel], NORMALIZE["mean"][channel]
            conv.weight[2, channel] = gain * share * std / kernel**2
            conv.bias[2] += gain * share * mean
        conv.bias[2] -= gain * threshold
    return torch.nn.Sequential(conv).eval()


# --------------------------------------------------------------------------- recording


class Recorder:
    """Wraps the adapter's built CellSegmentator and the package to record what passes."""

    def __init__(self, segmenter, package):
        self.calls: dict[str, list] = {}
        segmentator = segmenter._build()
        for name in ("nuclei_model", "cell_model"):
            getattr(segmentator, name).register_forward_hook(functools.partial(self._network, name))
        for name in ("pred_nuclei", "pred_cells"):
            setattr(segmentator, name, self._wrap(name, getattr(segmentator, name)))
        proxy = types.ModuleType(package.__name__)
        proxy.cellsegmentator = package.cellsegmentator
        proxy.utils = types.SimpleNamespace(label_cell=self._wrap("label_cell", package.utils.label_cell))
        segmenter.package = proxy

    def _network(self, name, module, inputs, output):
        self.calls.setdefault(name, []).append((inputs[0].detach().cpu(), output.detach().cpu()))

    def _wrap(self, name, function):
        def wrapped(*args):
            result = function(*args)
            self.calls.setdefault(name, []).append((args, result))
            return result
        return wrapped


def check_network_inputs(calls: dict, planes: dict[str, np.ndarray]) -> None:
    """What the networks got: dtype, shape, scaling, channel order."""
    from hpacellseg.cellsegmentator import NORMALIZE
    from skimage.transform import resize

    mean = np.asarray(NORMALIZE["mean"], np.float32)[:, None, None]
    std = np.asarray(NORMALIZE["std"], np.float32)[:, None, None]
    for name, names in (("nuclei_model", ("nuclei",) * 3), ("cell_model", ("microtubules", "er", "nuclei"))):
        x, y = calls[name][-1]
        shape_ok = (x.dtype == y.dtype and str(x.dtype) == "torch.float32" and x.shape[:2] == (1, 3)
                    and x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0 and tuple(y.shape) == tuple(x.shape))
        report(shape_ok, f"{name} input float32 [1, 3, h, w], sides multiples of 32, output same shape",
               f"{x.dtype} {list(x.shape)} -> {list(y.shape)}")
        values = x[0].numpy() * std + mean
        report(-0.01 <= values.min() and values.max() <= 1.01 and values.max() > 0.2,
               f"{name} input: [0, 1] images normalised by NORMALIZE",
               f"un-normalised range {values.min():.3f}..{values.max():.3f}")
        # the package pads by 32 px on top and left; compare each channel with each plane
        interior = values[:, 32:, 32:]
        ours = {}
        for plane in set(names):
            image = planes[plane]
            if image is None:
                continue
            side = max(image.shape)
            square = np.pad(image, ((0, side - image.shape[0]), (0, side - image.shape[1])))
            scaled = int(round(side * 0.25))
            ours[plane] = resize(square.astype(np.float32) / 255, (scaled, scaled), anti_aliasing=True)
        best = []
        for channel in range(3):
            got = interior[channel][:scaled, :scaled].ravel()
            if not np.std(got) > 0:
                best.append("zeros")
                continue
            scores = {plane: np.corrcoef(got, ours[plane].ravel())[0, 1] for plane in ours}
            best.append(max(scores, key=scores.get))
        expected = [n if planes.get(n) is not None else "zeros" for n in names]
        report(best == expected, f"{name} input channels are ({', '.join(expected)})",
               f"best matching planes {best}")


def check_predictions(calls: dict, side: int) -> None:
    for name in ("pred_nuclei", "pred_cells"):
        _, result = calls[name][-1]
        prediction = result[0]
        report(isinstance(result, list) and prediction.dtype == np.uint8
               and prediction.shape == (side, side, 3) and not prediction[..., 0].any(),
               f"{name} returns [uint8 [n, n, 3]] with channel 0 zero (1 borders, 2 objects)",
               f"{prediction.dtype} {list(prediction.shape)}, channel maxima "
               f"{[int(prediction[..., c].max()) for c in range(3)]}")
    (_, (nuclei_label, cell_label)), = calls["label_cell"][-1:]
    nucleus_ids = np.unique(nuclei_label[nuclei_label > 0])
    inside = nuclei_label > 0
    report(nuclei_label.dtype == cell_label.dtype == np.uint16 and nuclei_label.shape == (side, side)
           and (cell_label[inside] == nuclei_label[inside]).all()
           and np.array_equal(np.unique(cell_label[cell_label > 0]), np.arange(1, cell_label.max() + 1)),
           "label_cell returns uint16 (nuclei, cells) [n, n], cells 1..n, "
           "nucleus pixels carry their cell's id",
           f"{nuclei_label.dtype}/{cell_label.dtype}, {int(cell_label.max())} cells, "
           f"{nucleus_ids.size} with a nucleus")


def check_masks_out(cell_mask, nucleus_mask, shape) -> int:
    from hpa_embed.segment import check_masks

    try:
        n_cells = check_masks(cell_mask, nucleus_mask)
        problem = ""
    except ValueError as error:
        n_cells, problem = -1, str(error)
    ids = np.unique(cell_mask[cell_mask > 0])
    report(cell_mask.dtype == nucleus_mask.dtype == np.int32 and cell_mask.shape == tuple(shape)
           and n_cells >= 0 and np.array_equal(ids, np.arange(1, ids.size + 1)),
           "masks int32 of the field's shape, ids 1..n, nucleus id == cell id, one nucleus per cell",
           problem or f"{cell_mask.dtype} {list(cell_mask.shape)}, {n_cells} cells")
    return n_cells


# --------------------------------------------------------------------------- checks


def check_package(package) -> None:
    from hpacellseg.cellsegmentator import NORMALIZE, CellSegmentator

    expected = {"mean": [124 / 255, 117 / 255, 104 / 255], "std": [1 / (0.0167 * 255)] * 3}
    report(NORMALIZE == expected, "NORMALIZE: DPN ImageNet mean/std on [0, 1] images", str(NORMALIZE))
    defaults = {name: p.default for name, p in inspect.signature(CellSegmentator).parameters.items()}
    report(defaults.get("scale_factor") == 0.25, "CellSegmentator default scale_factor 0.25 (the adapter's)",
           f"{defaults}")
    report(list(inspect.signature(package.utils.label_cell).parameters) == ["nuclei_pred", "cell_pred"],
           "label_cell(nuclei_pred, cell_pred) -> (nuclei_label, cell_label)")


def run_adapter(title, image, nuclei_path, cell_path, package, device, **kwargs):
    from hpa_embed.segment import HPACellSegmenter
    from hpa_embed.segment.hpacellseg import hpacellseg_inputs

    print(f"\n== {title}: field {list(image.shape)}", flush=True)
    segmenter = HPACellSegmenter(nuclei_path, cell_path, device=device, package=package, **kwargs)
    shape = segmenter.package_shape(image)
    side = max(shape)
    print(f"   scale_factor {segmenter.resolve_scale_factor(image):.3f}: field resized to "
          f"{list(shape)} (0.08 um/px), padded to {side}x{side}, models at "
          f"{int(round(side * 0.25))} px before the package's padding")
    recorder = Recorder(segmenter, package)
    for name in ("nuclei_model", "cell_model"):
        model = getattr(segmenter._segmentator, name)
        print(f"   {name}: {type(model).__module__}.{type(model).__name__}, "
              f"{'training' if model.training else 'eval'} mode")
    start = time.perf_counter()
    cell_mask, nucleus_mask = segmenter.segment(image)
    print(f"   segment(): {time.perf_counter() - start:.1f} s", flush=True)
    multi = kwargs.get("multi_channel_model", True)
    microtubules, er, nuclei = hpacellseg_inputs(image, multi, shape=shape)
    check_network_inputs(recorder.calls, {"microtubules": microtubules, "er": er, "nuclei": nuclei})
    check_predictions(recorder.calls, side)
    return check_masks_out(cell_mask, nucleus_mask, image.shape[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a checkout of HPA-Cell-Segmentation")
    parser.add_argument("--pytorch-zoo", type=Path, help="a checkout of haoxusci/pytorch_zoo "
                        "(if it is not installed)")
    parser.add_argument("--field", type=Path, default=FIELD, help="DIR/ID of a 4-channel field")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-dpn", action="store_true", help="skip the random DPN-UNets (slow on a CPU)")
    parser.add_argument("--nuclei-model", type=Path, help="the real nucleus model file (a pickle)")
    parser.add_argument("--cell-model", type=Path, help="the real 3-channel cell model file (a pickle)")
    args = parser.parse_args(argv)

    for path in (args.pytorch_zoo, args.checkout):
        if path is not None:
            sys.path.insert(0, str(path.resolve()))
    import cv2
    import skimage
    import torch

    package = importlib.import_module("hpacellseg")
    for module in ("cellsegmentator", "utils"):
        importlib.import_module(f"hpacellseg.{module}")
    from skimage.filters import threshold_otsu

    from hpa_embed.io import read_field

    print(f"hpacellseg {package.__version__} from {Path(package.__file__).parent}, "
          f"commit {git_commit(args.checkout)}")
    print(f"numpy {np.__version__}, scikit-image {skimage.__version__}, opencv {cv2.__version__}, "
          f"torch {torch.__version__}, device {args.device}\n")
    check_package(package)

    image = read_field(args.field.parent, args.field.name)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if not args.no_dpn:
            for role, seed in (("nuclei", 0), ("cell", 1)):
                torch.save(random_dpn_unet(seed), tmp / f"dpn_unet_{role}.pth")  # whole module
            run_adapter("random DPN-UNets (pytorch_zoo.unet.DPNUnet)", image,
                        tmp / "dpn_unet_nuclei.pth", tmp / "dpn_unet_cell.pth", package, args.device)

        # stand-ins that find the field's objects, so label_cell has cells to label
        blue = image[2]
        cytoplasm = image[[0, 2, 3]].mean(axis=0)
        torch.save(threshold_model([2], 0.5 * threshold_otsu(blue)), tmp / "nuclei.pth")
        torch.save(threshold_model([0, 1, 2], 0.5 * threshold_otsu(cytoplasm)), tmp / "cell.pth")
        torch.save(threshold_model([0, 2], 0.5 * threshold_otsu(image[[0, 2]].mean(axis=0))),
                   tmp / "cell_2ch.pth")
        stand_ins = (tmp / "nuclei.pth", tmp / "cell.pth")
        full = run_adapter("threshold stand-ins, 3-channel cell model", image, *stand_ins, package,
                           args.device)
        report(full > 0, "stand-ins: cells found on the field", f"{full}")
        two = run_adapter("threshold stand-ins, 2-channel cell model (no ER)", image, stand_ins[0],
                          tmp / "cell_2ch.pth", package, args.device, multi_channel_model=False)
        report(two > 0, "stand-ins, 2-channel: cells found", f"{two}")
        crop = run_adapter("threshold stand-ins, non-square crop", image[:, :, : image.shape[2] * 2 // 3],
                           *stand_ins, package, args.device)
        report(crop > 0, "stand-ins: cells found on a non-square field", f"{crop}")
        from hpa_embed.segment import estimate_pixel_size

        pixel_size = estimate_pixel_size(image)
        channels, height, width = image.shape
        small = image.reshape(channels, height // 4, 4, width // 4, 4).mean(axis=(2, 4))
        quarter = run_adapter("threshold stand-ins, field at 1/4 size", small, *stand_ins, package,
                              args.device, pixel_size=4 * pixel_size)
        report(abs(quarter - full) <= max(2, full // 4),
               "stand-ins: about the same cells at 1/4 size (label_cell's size filters hold)",
               f"{quarter} vs {full}")

    if args.nuclei_model or args.cell_model:
        if not (args.nuclei_model and args.cell_model):
            parser.error("--nuclei-model and --cell-model go together")
        n_cells = run_adapter("real weights", image, args.nuclei_model, args.cell_model, package, args.device)
        report(n_cells > 0, "real weights: cells found", f"{n_cells}")

    print(f"\n{len(FAILED)} check(s) failed" + (f": {FAILED}" if FAILED else ""))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
