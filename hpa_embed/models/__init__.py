"""The cell embedding model: a ResNet backbone, an embedding head and a linear classifier.

``create_model(ModelConfig(...))`` builds it; :func:`preprocess` turns crops into its input;
:mod:`hpa_embed.models.checkpoint` saves and loads it with its config.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from .backbone import adapt_first_conv, create_backbone
from .checkpoint import (
    describe_checkpoint,
    load_checkpoint,
    load_state,
    read_checkpoint_config,
    save_checkpoint,
    save_state,
)
from .heads import ClassifierHead, EmbeddingHead

__all__ = [
    "ModelOutput",
    "CellEmbeddingModel",
    "create_model",
    "preprocess",
    "create_backbone",
    "adapt_first_conv",
    "EmbeddingHead",
    "ClassifierHead",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_config",
    "describe_checkpoint",
    "save_state",
    "load_state",
]

log = logging.getLogger(__name__)


class ModelOutput(NamedTuple):
    """What :class:`CellEmbeddingModel` returns (a NamedTuple, so DDP and ``torch.jit`` see a
    plain tuple).

    Attributes
    ----------
    embedding : torch.Tensor
        float32 ``[N, D]``, unit L2 norm per row.
    logits : torch.Tensor
        float32 ``[N, K]`` classifier logits computed from ``embedding``.
    """

    embedding: torch.Tensor
    logits: torch.Tensor


class CellEmbeddingModel(nn.Module):
    """Backbone -> :class:`EmbeddingHead` -> :class:`ClassifierHead`.

    Parameters
    ----------
    config : ModelConfig
        Kept as ``self.config``; it is what a checkpoint records to rebuild the model.
    backbone : torch.nn.Module
        Maps ``[N, C, S, S]`` to ``[N, F]``.
    num_features : int
        F.

    Use :func:`create_model` rather than calling this directly.
    """

    def __init__(self, config: ModelConfig, backbone: nn.Module, num_features: int):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.head = EmbeddingHead(num_features, config.embedding_dim, config.dropout)
        self.classifier = ClassifierHead(config.embedding_dim, config.num_classes)
        self._backbone_frozen = False

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """float32 ``[N, C, S, S]`` (preprocessed) -> :class:`ModelOutput`."""
        embedding = self.head(self.backbone(x))
        return ModelOutput(embedding=embedding, logits=self.classifier(embedding))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Only the embedding, float32 ``[N, D]``; skips the classifier.

        Mode and gradients are the caller's: call ``model.eval()`` and wrap in
        ``torch.inference_mode()`` for inference.
        """
        return self.head(self.backbone(x))

    def preprocess(self, crops) -> torch.Tensor:
        """:func:`preprocess` with this model's config."""
        return preprocess(crops, self.config)

    @property
    def backbone_frozen(self) -> bool:
        return self._backbone_frozen

    def freeze_backbone(self, frozen: bool = True) -> CellEmbeddingModel:
        """Freeze (or unfreeze) the backbone, e.g. for the first epochs of fine-tuning.

        A frozen backbone has ``requires_grad=False`` on every parameter and its BatchNorm
        layers stay in eval mode (running statistics fixed) even after ``model.train()``.
        Under DistributedDataParallel, wrap the model again after changing this: DDP only
        synchronises the parameters that required gradients when it was built.
        Returns self.
        """
        self._backbone_frozen = bool(frozen)
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(not frozen)
        self.train(self.training)  # re-applies the BatchNorm mode
        return self

    def train(self, mode: bool = True) -> CellEmbeddingModel:
        super().train(mode)
        if self._backbone_frozen:
            # BatchNorm in train mode would keep updating running statistics of a frozen net
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self


def create_model(config: ModelConfig) -> CellEmbeddingModel:
    """Build the model a config describes, loading ``config.pretrained`` into the backbone.

    The heads are randomly initialised. Raises :class:`~hpa_embed.io.DataError` for a bad
    weights file (see :func:`~hpa_embed.models.backbone.create_backbone`).
    """
    backbone, num_features = create_backbone(config.arch, config.in_chans, weights=config.pretrained)
    return CellEmbeddingModel(config, backbone, num_features)


def preprocess(crops, config: ModelConfig) -> torch.Tensor:
    """Crops -> the model's float32 input, normalised per channel with the config's mean/std.

    Parameters
    ----------
    crops : numpy.ndarray or torch.Tensor
        ``[N, C, S, S]`` (or one crop ``[C, S, S]``); uint8 (0..255), uint16 (0..65535) or
        float in [0, 1]. C must equal ``config.in_chans``.
    config : ModelConfig

    Returns
    -------
    torch.Tensor
        float32 ``[N, C, S, S]`` ``(x - mean[c]) / std[c]``, on the input tensor's device
        (CPU for numpy input).
    """
    x = torch.from_numpy(np.ascontiguousarray(crops)) if isinstance(crops, np.ndarray) else crops
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"crops must be a numpy array or a torch tensor, got {type(crops).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != config.in_chans:
        raise ValueError(
            f"crops of shape {tuple(x.shape)}: expected [N, {config.in_chans}, S, S] "
            f"(channels {config.channels})"
        )
    if x.dtype == torch.uint8:
        x = x.float() / 255
    elif x.dtype == torch.uint16:
        x = x.float() / 65535
    elif x.is_floating_point():
        x = x.float()
    else:
        raise TypeError(f"crops of dtype {x.dtype}: expected uint8, uint16 or float in [0, 1]")
    mean = torch.tensor(config.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std
