"""Heads on top of the backbone features: the embedding head and the linear classifier.

The classifier reads the L2-normalised embedding, not a pre-normalisation feature, so the
embeddings stored for a CellStore are all the linear head needs: the kNN classifier, the index
and the head classifier then work from one array (see docs/model.md).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EmbeddingHead", "ClassifierHead"]


class EmbeddingHead(nn.Module):
    """Linear -> BatchNorm1d -> Dropout -> L2 normalisation.

    Parameters
    ----------
    in_features : int
        Backbone feature width F.
    embedding_dim : int
        Embedding width D.
    dropout : float
        Dropout probability, applied before the normalisation (active in train mode only).

    Shapes
    ------
    float32 ``[N, F]`` -> float32 ``[N, D]`` with unit L2 norm per row.
    """

    def __init__(self, in_features: int, embedding_dim: int, dropout: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(in_features, embedding_dim)
        self.norm = nn.BatchNorm1d(embedding_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.dropout(self.norm(self.linear(features)))
        # eps keeps an all-zero row (all units dropped) finite instead of NaN
        return F.normalize(z, p=2, dim=1, eps=1e-12)


class ClassifierHead(nn.Module):
    """A linear classifier on unit-norm embeddings: float32 ``[N, D]`` -> logits ``[N, K]``.

    ``logits = W (sqrt(D) e) + b``. A unit vector has coordinates of RMS ``1 / sqrt(D)``; the
    fixed factor ``sqrt(D)`` brings them to RMS 1, the scale the default ``nn.Linear``
    initialisation and usual learning rates assume. Without it the weights must grow about
    ``sqrt(D)``-fold before logits can become confident, and the classification loss barely
    moves in the first epochs.

    Logits, not probabilities: softmax (single-label) or sigmoid (multi-label) is the loss's
    and the caller's choice.
    """

    def __init__(self, embedding_dim: int, num_classes: int):
        super().__init__()
        self.scale = math.sqrt(embedding_dim)
        self.linear = nn.Linear(embedding_dim, num_classes)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear(embedding * self.scale)
