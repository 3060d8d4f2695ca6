"""Checkpoints (safetensors weights + JSON config) and tensor/JSON state files.

A checkpoint is a directory::

    <checkpoint>/model.safetensors   the model's state dict
    <checkpoint>/config.json         {"format", "version", "library_version", "files" (the header
                                      of hpa_embed.io.write_header, with the SHA-256 of the other
                                      files), "model": ModelConfig.to_dict(), "class_scheme": {...},
                                      "extra": {...}}

It is written whole into a temporary directory and renamed into place, so a crash never leaves
a half checkpoint and an existing one is replaced only once the new one is complete. Loading
reads no pickle: safetensors for tensors, JSON for everything else; a weights or state file that
differs from the checksum in ``config.json`` is refused.

A state file (:func:`save_state` / :func:`load_state`) stores any nest of dicts, lists,
tuples, plain scalars and tensors (an optimizer or scheduler state dict, RNG states, a
training history) as one ``.safetensors`` file: the tensors as entries, and under the metadata
key ``"header"`` a JSON header (:func:`hpa_embed.io.make_header`) whose ``"skeleton"`` is the
structure with each tensor replaced by a reference to its entry.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..io import DataError, atomic_path, make_header, parse_header, read_header, write_header
from ..labels import get_scheme

__all__ = [
    "find_checkpoint",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_config",
    "describe_checkpoint",
    "save_state",
    "load_state",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hpa_embed.checkpoint"
CHECKPOINT_VERSION = 1
STATE_FORMAT = "hpa_embed.state"
STATE_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: The resume state a trainer keeps inside its checkpoint directory (see ``save_checkpoint(state=)``).
STATE_FILE = "trainer_state.safetensors"
# The key of a state file's safetensors metadata that holds its header.
_STATE_HEADER_KEY = "header"


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _tensors_for_saving(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors wants contiguous CPU tensors that share no storage; clone guarantees both
    return {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state.items()}


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be JSON-serialisable ({error})") from error


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    config: ModelConfig,
    extra: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
) -> Path:
    """Save a model and its config as a checkpoint directory, atomically.

    Parameters
    ----------
    directory : path
        The checkpoint directory; an existing one is replaced once the new one is complete.
    model : torch.nn.Module
        A :class:`~hpa_embed.models.CellEmbeddingModel`, possibly wrapped in
        DistributedDataParallel or ``torch.compile`` (the wrapper is removed).
    config : ModelConfig
        The config the model was built from.
    extra : dict, optional
        JSON-serialisable information to keep beside it (epoch, metrics, the loss config, ...).
    state : dict, optional
        Resume state (optimizer, scheduler, RNG states, ...) written with :func:`save_state` as
        ``STATE_FILE`` inside the same directory, so weights and state are replaced together.

    Under DistributedDataParallel call it on one rank only.

    Returns
    -------
    pathlib.Path
        ``directory``.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    model = _unwrap(model)
    if isinstance(getattr(model, "config", None), ModelConfig) and model.config != config:
        raise ValueError(f"config {config} differs from the model's own {model.config}")
    extra = dict(extra or {})
    _check_json(extra, "extra")
    scheme = get_scheme(config.class_scheme)
    body = {
        "model": config.to_dict(),
        "class_scheme": {"name": scheme.name, "names": list(scheme.names)},
        "extra": extra,
    }
    tensors = _tensors_for_saving(model.state_dict())

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
        if state is not None:
            save_state(tmp / STATE_FILE, state)
        # the header, last, holds the files' SHA-256: loading reads them whole anyway
        files = [WEIGHTS_FILE] + ([STATE_FILE] if state is not None else [])
        write_header(tmp / CONFIG_FILE, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, body, files=files)

    with atomic_path(directory) as tmp:  # weights, config and state are replaced together
        tmp.mkdir()
        write(tmp)
    log.info("saved checkpoint %s (%d tensors)", directory, len(tensors))
    return directory


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory ``path`` names: itself, or the best (else last) checkpoint of the
    training run ``path`` (``<run>/checkpoints/best``), so a run folder can be given where a
    checkpoint is expected."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    for name in ("best", "last"):
        if (path / "checkpoints" / name / CONFIG_FILE).is_file():
            return path / "checkpoints" / name
    return path  # read_header then says what is missing


def read_checkpoint_config(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """Read only ``config.json`` of a checkpoint (or of a run's best one, :func:`find_checkpoint`)
    -> ``(ModelConfig, extra)``; the files it lists are checked against their SHA-256, not loaded."""
    path = find_checkpoint(directory) / CONFIG_FILE
    meta = read_header(path, CHECKPOINT_FORMAT, range(1, CHECKPOINT_VERSION + 1), what="hpa_embed checkpoint")
    try:
        config = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(path, f"invalid model config ({type(error).__name__}: {error})") from error
    extra = meta.get("extra") or {}
    if not isinstance(extra, dict):
        raise DataError(path, "'extra' must be a JSON object")
    return config, extra


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the metadata of a safetensors file."""
    from safetensors import safe_open

    if not path.is_file():
        raise DataError(path, "not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as error:  # safetensors raises its own error types for a corrupt file
        problem = f"corrupt or truncated safetensors file ({type(error).__name__}: {error})"
        raise DataError(path, problem) from error
    return tensors, metadata


def load_checkpoint(
    directory: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig, dict[str, Any]]:
    """Rebuild a model from a checkpoint directory.

    Parameters
    ----------
    directory : path
        Written by :func:`save_checkpoint`.
    map_location : str or torch.device
        Device of the returned model.

    Returns
    -------
    model : CellEmbeddingModel
        In eval mode, on ``map_location``.
    config : ModelConfig
        As saved (``pretrained`` included, though the weights come from the checkpoint, not
        from that source).
    extra : dict
        The ``extra`` given to :func:`save_checkpoint`.

    Raises
    ------
    hpa_embed.io.DataError
        A missing file, a corrupt or truncated weights file (or one whose SHA-256 differs from the
        one in ``config.json``), a config that is not valid JSON, has a newer format version or is
        invalid, or weights that do not match the config (missing or unexpected keys, shape
        mismatches).
    """
    import dataclasses

    from . import create_model

    directory = find_checkpoint(directory)
    weights_path = directory / WEIGHTS_FILE
    # read before the checksums are checked, so that a cut or garbled file is reported as such
    state = _read_safetensors(weights_path)[0] if weights_path.is_file() else None
    config, extra = read_checkpoint_config(directory)
    if state is None:
        state, _ = _read_safetensors(weights_path)  # not found, and config.json does not list it
    # the weights come from the checkpoint: never re-read the original pretrained source
    model = create_model(dataclasses.replace(config, pretrained=None))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{name} {tuple(state[name].shape)} vs {tuple(expected[name].shape)}"
        for name in sorted(set(expected) & set(state))
        if state[name].shape != expected[name].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label} {items[:3]}{' ...' if len(items) > 3 else ''} ({len(items)})"
            for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", mismatched))
            if items
        ]
        raise DataError(
            weights_path, f"weights do not match the {config.arch} in {CONFIG_FILE}: " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    model.to(map_location).eval()
    log.info("loaded checkpoint %s (%s, %d channels)", directory, config.arch, config.in_chans)
    return model, config, extra


def describe_checkpoint(directory: str | os.PathLike) -> str:
    """A few lines about a checkpoint (config, tensors, parameters) without loading the weights."""
    from safetensors import safe_open

    directory = find_checkpoint(directory)
    config, extra = read_checkpoint_config(directory)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise DataError(weights_path, "not found")
    try:
        with safe_open(str(weights_path), framework="pt", device="cpu") as handle:
            shapes = [handle.get_slice(name).get_shape() for name in handle.keys()]
    except Exception as error:
        problem = f"corrupt safetensors header ({type(error).__name__}: {error})"
        raise DataError(weights_path, problem) from error
    n_values = sum(math.prod(shape) for shape in shapes)
    lines = [
        f"checkpoint {directory}",
        f"  model: {config.arch}, {config.in_chans} channels {config.channels}, "
        f"embedding {config.embedding_dim}, {config.num_classes} classes ({config.class_scheme}), "
        f"crops {config.crop_size} px",
        f"  preprocessing: mean {config.mean}, std {config.std}",
        f"  weights: {len(shapes)} tensors, {n_values:,} values, {weights_path.stat().st_size:,} bytes",
        f"  pretrained from: {config.pretrained}",
    ]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------- state files

_TENSOR, _ARRAY, _TUPLE, _DICT = "__tensor__", "__ndarray__", "__tuple__", "__dict__"
_TAGS = (_TENSOR, _ARRAY, _TUPLE, _DICT)


def _encode(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """JSON skeleton of ``value``; tensors move into ``tensors`` under generated names."""
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = value
        return {_TENSOR: name}
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors)}"
        try:
            tensors[name] = torch.from_numpy(np.ascontiguousarray(value))
        except TypeError as error:
            raise TypeError(f"state{where}: array of dtype {value.dtype} cannot be saved") from error
        return {_ARRAY: name}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value  # json writes and reads back NaN and Infinity too
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        plain = all(isinstance(k, str) and k not in _TAGS for k in value)
        if plain:
            return {k: _encode(v, tensors, f"{where}[{k!r}]") for k, v in value.items()}
        # non-string keys (optimizer state is keyed by int) keep their type as key/value pairs
        items = []
        for k, v in value.items():
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise TypeError(f"state{where}: key {k!r} of type {type(k).__name__} cannot be saved")
            items.append([k, _encode(v, tensors, f"{where}[{k!r}]")])
        return {_DICT: items}
    raise TypeError(f"state{where}: {type(value).__name__} cannot be saved (use tensors, arrays, "
                    "dicts, lists, tuples and plain scalars)")


def _decode(value: Any, tensors: dict[str, torch.Tensor], device: torch.device, path: Path) -> Any:
    """Inverse of :func:`_encode`: tensors go to ``device``, arrays stay numpy."""
    if isinstance(value, list):
        return [_decode(v, tensors, device, path) for v in value]
    if not isinstance(value, dict):
        return value
    if _TENSOR in value or _ARRAY in value:
        name = value.get(_TENSOR, value.get(_ARRAY))
        if name not in tensors:
            raise DataError(path, f"state refers to tensor {name!r}, which the file does not hold")
        return tensors[name].to(device) if _TENSOR in value else tensors[name].numpy()
    if _TUPLE in value:
        return tuple(_decode(v, tensors, device, path) for v in value[_TUPLE])
    if _DICT in value:
        return {k: _decode(v, tensors, device, path) for k, v in value[_DICT]}
    return {k: _decode(v, tensors, device, path) for k, v in value.items()}


def save_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Save a nest of dicts/lists/tuples/scalars/tensors/arrays as one safetensors file, atomically.

    Made for exact resume: an optimizer's ``state_dict()`` (int keys, tuples such as
    ``betas``, 0-d ``step`` tensors), a scheduler's, ``torch.get_rng_state()``,
    ``numpy.random.get_state()``, ``random.getstate()`` and a history of plain values all
    round-trip with their types through :func:`load_state`. Tensors are saved on the CPU.

    Raises ``TypeError`` naming the entry for a value of another type.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(dict(state), tensors, "")
    header = make_header(STATE_FORMAT, STATE_VERSION, {"skeleton": skeleton})
    metadata = {_STATE_HEADER_KEY: json.dumps(header)}
    with atomic_path(path) as tmp:
        save_file(_tensors_for_saving(tensors), str(tmp), metadata=metadata)
    return path


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_state`; tensors land on ``map_location``.

    Raises :class:`~hpa_embed.io.DataError` for a missing, corrupt or truncated file, a file of
    another format or of a newer format version.
    """
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    header = parse_header(path, metadata.get(_STATE_HEADER_KEY), STATE_FORMAT, range(1, STATE_VERSION + 1),
                          what="hpa_embed state file")
    if "skeleton" not in header:
        raise DataError(path, "the header holds no state structure ('skeleton')")
    return _decode(header["skeleton"], tensors, torch.device(map_location), path)
