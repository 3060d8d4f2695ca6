"""Backbones: torchvision ResNets with 1, 3 or 4 input channels and optional pretrained weights.

Weights come only from where the caller says: ``None`` (random initialisation), a local
torchvision state dict (``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or
``.safetensors``), or ``"torchvision"`` (the architecture's default weight enum, fetched by
torchvision into its cache when not there yet). A 3-channel first convolution in the weights
is adapted to the model's input channels by :func:`adapt_first_conv`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..config import ARCHITECTURES
from ..io import DataError

__all__ = ["create_backbone", "adapt_first_conv", "load_state_dict_file"]

log = logging.getLogger(__name__)

# keys of the source model's classifier: expected in a torchvision file, unused by the backbone
_CLASSIFIER_PREFIX = "fc."
_FIRST_CONV = "conv1.weight"


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt pretrained RGB filters of a first convolution to ``in_chans`` input channels.

    Follows timm's ``adapt_input_conv``: the input filters are rescaled so that the summed
    response to an image whose channels carry similar intensities stays what it was.

    - ``in_chans == 1``: the sum of the R, G and B filters.
    - ``in_chans == 3``: unchanged (a copy).
    - ``in_chans == 4`` (red, green, blue, yellow): R, G, B kept and a yellow filter derived as
      the mean of the R and G filters (yellow, the ER stain, is shown as red + green), all four
      scaled by 3/4. For an input whose red, green and blue planes are equal and whose yellow
      plane is their mean, a filter with equal R, G, B taps gives exactly its original response.
    - ``in_chans > 4``: timm's rule, the RGB filters repeated cyclically, scaled by 3/in_chans.

    Parameters
    ----------
    weight : torch.Tensor
        float ``[O, 3, k, k]`` (any floating dtype).
    in_chans : int
        Target input channels, >= 1.

    Returns
    -------
    torch.Tensor
        ``[O, in_chans, k, k]``, same dtype and device, a new tensor.
    """
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected first-conv weights [O, 3, k, k], got {tuple(weight.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans={in_chans} must be >= 1")
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if in_chans == 3:
        return weight.clone()
    if in_chans == 4:
        yellow = weight[:, :2].mean(dim=1, keepdim=True)
        return torch.cat([weight, yellow], dim=1) * (3 / 4)
    repeats = -(-in_chans // 3)  # ceil
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (3 / in_chans)


def _unwrap_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from a loaded file: unwraps ``{"state_dict": ...}`` /
    ``{"model": ...}`` and a DistributedDataParallel ``module.`` prefix."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise DataError(path, "does not hold a state dict (a mapping of parameter names to tensors)")
    bad = [name for name, value in obj.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise DataError(path, f"entries {bad[:5]} are not tensors; expected a plain state dict")
    if all(name.startswith("module.") for name in obj):
        obj = {name[len("module."):]: value for name, value in obj.items()}
    if any(name.startswith("backbone.") for name in obj):
        # a hpa_embed checkpoint: its backbone's weights, without the heads
        obj = {name[len("backbone."):]: value for name, value in obj.items() if name.startswith("backbone.")}
    return dict(obj)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or ``.pth``/``.pt``/``.bin``, onto the CPU.

    A hpa_embed checkpoint directory (or its ``model.safetensors``) gives its backbone's weights.

    ``.pth`` files are read with ``torch.load(weights_only=True)``, which refuses arbitrary
    pickled objects. Raises :class:`~hpa_embed.io.DataError` naming the file when it is
    missing, of an unknown type, unreadable or not a state dict.
    """
    path = Path(path)
    if path.is_dir() and (path / "model.safetensors").is_file():
        path = path / "model.safetensors"
    if not path.is_file():
        raise DataError(path, "weights file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(path, f"unknown weights file type {suffix!r}; expected .safetensors, .pth or .pt")
    except DataError:
        raise
    except Exception as error:  # safetensors/pickle raise many types for a broken file
        raise DataError(path, f"unreadable weights file ({type(error).__name__}: {error})") from error
    return _unwrap_state_dict(obj, path)


def _torchvision_state_dict(arch: str) -> dict[str, torch.Tensor]:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch).DEFAULT
    log.info("loading torchvision weights %s (downloaded into the torch hub cache if absent)", enum)
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as error:
        raise RuntimeError(
            f"could not fetch torchvision weights {enum} ({type(error).__name__}: {error}); without a "
            "network, download the file elsewhere and pass its path as the weights"
        ) from error


def _load_into(
    backbone: nn.Module, state: dict[str, torch.Tensor], arch: str, in_chans: int, source: str
) -> None:
    """Check ``state`` against ``backbone`` key by key, adapt the first conv, load strictly."""
    first = state.get(_FIRST_CONV)
    if first is not None and first.ndim == 4 and first.shape[1] == 3 and in_chans != 3:
        state = {**state, _FIRST_CONV: adapt_first_conv(first.float(), in_chans).to(first.dtype)}
        log.info("%s: adapted %s from 3 to %d input channels", source, _FIRST_CONV, in_chans)
    expected = backbone.state_dict()
    ignored = sorted(name for name in state if name.startswith(_CLASSIFIER_PREFIX))
    if ignored:
        log.info("%s: ignoring the source classifier %s", source, ignored)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - set(ignored))
    mismatched = [
        f"{name} {tuple(state[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(state))
        if state[name].shape != expected[name].shape
    ]
    if missing or unexpected or mismatched:
        if missing:
            log.warning("%s: missing keys %s", source, missing)
        if unexpected:
            log.warning("%s: unexpected keys %s", source, unexpected)
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatches (e.g. {mismatched[:3]})")
        raise DataError(
            source,
            f"does not match a {in_chans}-channel torchvision {arch}: " + "; ".join(problems)
            + " (is it a different architecture?)",
        )
    backbone.load_state_dict({name: state[name] for name in expected}, strict=True)


def _build_resnet(arch: str, in_chans: int) -> nn.Module:
    """A randomly initialised torchvision ResNet with ``in_chans`` inputs and no classifier.

    The module stays torchvision's own class, so its state dict keys (``conv1.weight``, ...)
    are torchvision's and weight files interchange.
    """
    import torchvision.models as tvm

    net = getattr(tvm, arch)(weights=None)
    if in_chans != 3:
        old = net.conv1
        net.conv1 = nn.Conv2d(
            in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
        )
        # the initialisation torchvision gives every conv of a fresh ResNet
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Identity()  # forward now returns the pooled features [N, F]
    return net


def create_backbone(
    arch: str, in_chans: int, weights: str | os.PathLike | None = None
) -> tuple[nn.Module, int]:
    """Build a ResNet feature extractor.

    Parameters
    ----------
    arch : str
        A key of :data:`hpa_embed.config.ARCHITECTURES` (``"resnet18"`` ... ``"resnet152"``,
        ``"resnext50_32x4d"``, ``"wide_resnet50_2"``).
    in_chans : int
        Input channels (1, 3 or 4; see :func:`adapt_first_conv`).
    weights : None, "torchvision" or path
        None: random initialisation, nothing read. ``"torchvision"``: torchvision's default
        weights for ``arch`` (a download when not cached). A path: a local torchvision state
        dict (``.pth``/``.pt``/``.safetensors``); its ``fc`` layer is ignored, any other
        missing, unexpected or mis-shaped key is an error.

    Returns
    -------
    backbone : torch.nn.Module
        Maps float32 ``[N, in_chans, H, W]`` to pooled features float32 ``[N, F]``.
    F : int
        Feature width (512 for resnet18/34, 2048 for the others).

    Raises
    ------
    hpa_embed.io.DataError
        A weights file that is missing, unreadable or of another architecture.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    backbone = _build_resnet(arch, in_chans)
    if weights is None:
        return backbone, ARCHITECTURES[arch]
    if isinstance(weights, str) and weights == "torchvision":
        state, source = _torchvision_state_dict(arch), f"torchvision:{arch}"
    else:
        state, source = load_state_dict_file(weights), str(weights)
    _load_into(backbone, state, arch, in_chans, source)
    log.info("loaded %s weights from %s", arch, source)
    return backbone, ARCHITECTURES[arch]
