"""Training losses: classification (CE / BCE / focal), a triplet loss on mined triplets, and a
multiple-instance (MIL) term on bags of cells.

The metric-learning parts are pytorch-metric-learning components wired together the way the
library intends: one distance object shared by :class:`TripletMarginLoss` and its miner
(``TripletMarginMiner`` or ``MultiSimilarityMiner`` for int labels). What it lacks, a miner
for multi-hot labels, is :class:`MultiLabelTripletMiner`: a positive shares at least one label
with the anchor, a negative shares none.

Targets are either int labels ``y`` int64 ``[N]`` (single-label) or multi-hot ``Y`` bool or
float ``[N, K]`` (multi-label); :class:`CombinedLoss` tells them apart by their shape.

Labels come per image but predictions are wanted per cell: the MIL term treats the cells of one
image as a bag labelled with the image's labels, pools their logits per class
(:func:`pool_bags`: log-sum-exp, max or mean) and scores the pooled logits by BCE
(:func:`mil_bce_loss`), so a bag is right when *some* of its cells show a class, not all.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from pytorch_metric_learning.miners import BaseMiner
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from .config import LossConfig

__all__ = [
    "class_weights_from_counts",
    "primary_labels",
    "cross_entropy_loss",
    "binary_cross_entropy_loss",
    "sigmoid_focal_loss",
    "softmax_focal_loss",
    "pool_bags",
    "mil_bce_loss",
    "create_distance",
    "create_miner",
    "MultiLabelTripletMiner",
    "CombinedLoss",
]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- class weights


def class_weights_from_counts(counts, method: str = "inverse_frequency", beta: float = 0.999) -> np.ndarray:
    """Per-class loss weights from label counts.

    Parameters
    ----------
    counts : array-like
        Number of examples carrying each class, ``[K]``, non-negative.
    method : {"none", "inverse_frequency", "effective_number"}
        ``"none"``: all ones. ``"inverse_frequency"``: ``w_k ∝ 1 / n_k``.
        ``"effective_number"`` (Cui et al., CVPR 2019): ``w_k ∝ (1 - beta) / (1 - beta ** n_k)``,
        which goes from uniform (beta = 0) towards inverse frequency (beta -> 1).
    beta : float
        In [0, 1), for ``"effective_number"``.

    Returns
    -------
    numpy.ndarray
        float32 ``[K]``, normalised to sum to K (mean weight 1, so the loss keeps its scale).
        A class with count 0 is weighted as if it had count 1, so no weight is infinite.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"counts must be a non-empty 1-D array, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"counts must be finite and non-negative, got {counts}")
    n = np.maximum(counts, 1)
    if method == "none":
        weights = np.ones_like(n)
    elif method == "inverse_frequency":
        weights = 1 / n
    elif method == "effective_number":
        if not 0 <= beta < 1:
            raise ValueError(f"beta={beta} must lie in [0, 1)")
        weights = (1 - beta) / (1 - np.power(beta, n))
    else:
        raise ValueError(
            f"unknown class-weight method {method!r}; use none, inverse_frequency or effective_number"
        )
    return (weights * (len(weights) / weights.sum())).astype(np.float32)


def primary_labels(Y, counts=None):
    """One label per cell from multi-hot labels: its rarest label.

    Parameters
    ----------
    Y : numpy.ndarray or torch.Tensor
        Multi-hot bool (or 0/1) ``[N, K]``; every row needs at least one label.
    counts : array-like, optional
        Class frequencies ``[K]`` that define "rarest"; default the column sums of ``Y``.
        Ties go to the lower class id.

    Returns
    -------
    numpy.ndarray or torch.Tensor
        int64 ``[N]``, the same kind (and device) as ``Y``.
    """
    is_numpy = not isinstance(Y, torch.Tensor)
    Yt = torch.as_tensor(np.asarray(Y)) if is_numpy else Y
    if Yt.ndim != 2:
        raise ValueError(f"Y must be multi-hot [N, K], got shape {tuple(Yt.shape)}")
    Yt = Yt > 0.5 if Yt.is_floating_point() else Yt.bool()
    if not bool(Yt.any(dim=1).all()):
        empty = torch.nonzero(~Yt.any(dim=1)).flatten()[:5].tolist()
        raise ValueError(f"rows {empty} of Y have no label, so no primary label")
    freq = Yt.sum(dim=0) if counts is None else torch.as_tensor(counts, device=Yt.device)
    if freq.shape != (Yt.shape[1],):
        raise ValueError(f"counts has shape {tuple(freq.shape)}, expected ({Yt.shape[1]},)")
    # classes a cell does not carry get +inf so argmin picks among its own labels
    masked = torch.where(Yt, freq.float().unsqueeze(0), torch.tensor(float("inf"), device=Yt.device))
    labels = masked.argmin(dim=1)
    return labels.cpu().numpy() if is_numpy else labels


# --------------------------------------------------------------------------- classification


def _weight_tensor(class_weights, like: torch.Tensor) -> torch.Tensor | None:
    if class_weights is None:
        return None
    return torch.as_tensor(class_weights, dtype=like.dtype, device=like.device)


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor, class_weights=None) -> torch.Tensor:
    """Softmax cross-entropy, ``logits`` float ``[N, K]``, ``y`` int64 ``[N]`` or multi-hot ``[N, K]``.

    Multi-hot targets become the label distribution ``Y / |Y|`` (each of a cell's labels an
    equal share; a row without labels counts nothing). With ``class_weights`` ``[K]`` and int
    ``y``: the weighted mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` (torch's convention); with
    multi-hot targets each class's term is scaled by its weight.
    """
    weight = _weight_tensor(class_weights, logits)
    if y.ndim == 1:
        return F.cross_entropy(logits, y, weight=weight)
    Y = y.to(logits.dtype)
    share = Y / Y.sum(dim=1, keepdim=True).clamp(min=1)
    return F.cross_entropy(logits, share, weight=weight)


def binary_cross_entropy_loss(logits: torch.Tensor, Y: torch.Tensor, class_weights=None) -> torch.Tensor:
    """Sigmoid BCE, ``logits`` and multi-hot ``Y`` ``[N, K]``, mean over all N*K terms.

    ``class_weights`` ``[K]`` scale each class's column (positives and negatives alike).
    """
    weight = _weight_tensor(class_weights, logits)
    return F.binary_cross_entropy_with_logits(
        logits, Y.to(logits.dtype), weight=None if weight is None else weight.unsqueeze(0)
    )


def sigmoid_focal_loss(
    logits: torch.Tensor, Y: torch.Tensor, gamma: float = 2.0, class_weights=None
) -> torch.Tensor:
    """Multi-label focal loss (Lin et al. 2017), mean over all N*K terms.

    ``-w_k (1 - p_t)^gamma log p_t`` with ``p_t = sigmoid(logit)`` for a positive and
    ``1 - sigmoid(logit)`` for a negative; gamma = 0 and unit weights give
    :func:`binary_cross_entropy_loss`. Built on ``torchvision.ops.sigmoid_focal_loss`` (its
    scalar alpha disabled: the per-class weights take that role).
    """
    from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

    terms = tv_sigmoid_focal_loss(logits, Y.to(logits.dtype), alpha=-1, gamma=gamma, reduction="none")
    weight = _weight_tensor(class_weights, logits)
    if weight is not None:
        terms = terms * weight.unsqueeze(0)
    return terms.mean()


def softmax_focal_loss(
    logits: torch.Tensor, y: torch.Tensor, gamma: float = 2.0, class_weights=None
) -> torch.Tensor:
    """Single-label focal loss ``-w_y (1 - p_y)^gamma log p_y`` with ``p = softmax(logits)``.

    Averaged like :func:`cross_entropy_loss` (weighted by ``w_y``), so gamma = 0 gives it exactly.
    """
    log_p = F.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    terms = -((1 - log_p.exp()) ** gamma) * log_p
    weight = _weight_tensor(class_weights, logits)
    if weight is None:
        return terms.mean()
    w = weight[y]
    return (terms * w).sum() / w.sum()


# --------------------------------------------------------------------------- multiple instances


def pool_bags(
    logits: torch.Tensor, groups: torch.Tensor, pooling: str = "lse", r: float = 5.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the logits of each bag's cells, per class.

    Parameters
    ----------
    logits : float tensor ``[N, K]``
    groups : int tensor ``[N]``
        Each cell's bag (any integer codes; the cells sharing a code form a bag).
    pooling : {"lse", "max", "mean"}
        ``"lse"``: log-sum-exp ``1/r log(1/n sum_i exp(r x_i))``, which goes from the mean
        (r -> 0) to the max (r -> inf) of the bag's n logits; ``"max"``; ``"mean"``.
    r : float
        Sharpness of ``"lse"``, positive.

    Returns
    -------
    pooled : float tensor ``[G, K]``
        One row per bag, bags in increasing order of their code.
    bag : int64 tensor ``[N]``
        Each cell's row of ``pooled``.
    """
    if groups.shape != logits.shape[:1]:
        raise ValueError(f"groups of shape {tuple(groups.shape)} for logits of shape {tuple(logits.shape)}")
    codes, bag = torch.unique(groups.to(logits.device), return_inverse=True)
    index = bag.unsqueeze(1).expand_as(logits)
    empty = logits.new_zeros(len(codes), logits.shape[1])
    if pooling == "mean":
        return empty.scatter_reduce(0, index, logits, "mean", include_self=False), bag
    peak = empty.scatter_reduce(0, index, logits, "amax", include_self=False)
    if pooling == "max":
        return peak, bag
    if pooling != "lse":
        raise ValueError(f"pooling={pooling!r}: use lse, max or mean")
    if not r > 0:
        raise ValueError(f"r={r} must be positive")
    # peak + 1/r log(1 + mean(expm1(r (x - peak)))): no overflow at large r, no rounding to 0 at small r
    peak = peak.detach()
    spread = empty.scatter_reduce(0, index, torch.expm1(r * (logits - peak[bag])), "mean", include_self=False)
    return peak + torch.log1p(spread) / r, bag


def mil_bce_loss(
    logits: torch.Tensor, Y: torch.Tensor, groups: torch.Tensor, pooling: str = "lse", r: float = 5.0,
    class_weights=None,
) -> torch.Tensor:
    """Multiple-instance BCE: each bag's pooled logits against the bag's label.

    Parameters
    ----------
    logits : float tensor ``[N, K]``
    Y : multi-hot tensor ``[N, K]``
        The cells' labels; a bag's label is their union (for cells labelled with their image's
        labels, the image's labels).
    groups : int tensor ``[N]``
        Each cell's bag (its image).
    pooling, r
        As for :func:`pool_bags`.
    class_weights : array-like ``[K]``, optional
        As for :func:`binary_cross_entropy_loss`.

    Returns
    -------
    torch.Tensor
        Scalar: :func:`binary_cross_entropy_loss` of the ``[G, K]`` pooled logits and bag
        labels, a mean over bags and classes.
    """
    pooled, bag = pool_bags(logits, groups, pooling, r)
    bag_Y = torch.zeros_like(pooled).index_add_(0, bag, Y.to(pooled)) > 0
    return binary_cross_entropy_loss(pooled, bag_Y, class_weights)


# --------------------------------------------------------------------------- metric learning


def create_distance(config: LossConfig) -> distances.BaseDistance:
    """The pytorch-metric-learning distance a :class:`LossConfig` names."""
    if config.distance == "cosine":
        return distances.CosineSimilarity()
    if config.distance == "euclidean":
        return distances.LpDistance(p=2)
    return distances.LpDistance(p=config.p)


def create_miner(config: LossConfig, distance: distances.BaseDistance) -> BaseMiner | None:
    """The single-label (int ``y``) miner a :class:`LossConfig` names, sharing ``distance``;
    None when ``config.miner`` is None (every valid triplet)."""
    if config.miner is None:
        return None
    if config.miner == "multi_similarity":
        return miners.MultiSimilarityMiner(epsilon=config.epsilon, distance=distance)
    return miners.TripletMarginMiner(margin=config.margin, type_of_triplets=config.miner, distance=distance)


class MultiLabelTripletMiner(BaseMiner):
    """Triplet miner for multi-hot labels, with ``TripletMarginMiner``'s selection rules.

    A triplet (a, p, n) is valid when p != a shares at least one label with a and n shares
    none. Of the valid triplets, with ``m = d(a, n) - d(a, p)`` for a distance (``s(a, p) -
    s(a, n)`` for a similarity):

    - ``"all"``: ``m <= margin`` (every triplet the margin loss is non-zero on),
    - ``"hard"``: ``m <= 0`` (the negative is at least as close as the positive),
    - ``"semihard"``: ``0 < m <= margin``.

    For a fixed (anchor, positive) these negatives form one interval of the anchor's negatives
    sorted by distance, so the miner sorts each anchor's negatives once, finds every interval
    with ``searchsorted`` on the ``[N, M]`` matrices and expands only the triplets it returns:
    O(N M log M + output) time and memory instead of an ``[N, M, M]`` cube. At most
    ``max_triplets`` triplets come back, a uniform random subset when more qualify.

    Parameters
    ----------
    margin : float
        The loss's margin.
    type_of_triplets : {"all", "hard", "semihard"}
    max_triplets : int
        Cap on the returned triplets.
    generator : torch.Generator, optional
        For the subsampling, on the embeddings' device.
    distance : pytorch_metric_learning.distances.BaseDistance
        Share the loss's (default ``LpDistance(p=2)``, as for every pytorch-metric-learning miner).

    Call
    ----
    ``miner(embeddings [N, D], Y [N, K], ref_emb [M, D] = None, ref_labels [M, K] = None)``
    -> ``(anchor, positive, negative)`` int64 index tensors of equal length, for a
    pytorch-metric-learning loss's ``indices_tuple``. Without ``ref_emb`` the batch is its own
    reference and an anchor is never its own positive. The margin test is done as
    ``s(a, n) >= s(a, p) - margin``, which can differ from ``m <= margin`` by one rounding
    step at the boundary.
    """

    def __init__(
        self,
        margin: float = 0.2,
        type_of_triplets: str = "all",
        max_triplets: int = 20000,
        generator: torch.Generator | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if type_of_triplets not in ("all", "hard", "semihard"):
            raise ValueError(f"type_of_triplets={type_of_triplets!r}: use all, hard or semihard")
        if max_triplets < 1:
            raise ValueError(f"max_triplets={max_triplets} must be positive")
        self.margin = margin
        self.type_of_triplets = type_of_triplets
        self.max_triplets = int(max_triplets)
        self.generator = generator
        self.add_to_recordable_attributes(list_of_names=["margin"], is_stat=False)

    @staticmethod
    def _as_multi_hot(labels: torch.Tensor, embeddings: torch.Tensor, what: str) -> torch.Tensor:
        if labels.ndim != 2 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"{what} must be multi-hot [{embeddings.shape[0]}, K], got shape {tuple(labels.shape)}"
            )
        labels = labels.to(embeddings.device)
        return labels > 0.5 if labels.is_floating_point() else labels.bool()

    def forward(self, embeddings, labels, ref_emb=None, ref_labels=None):
        # BaseMiner.forward insists on 1-D labels; this is the same flow for [N, K] labels
        self.reset_stats()
        with torch.no_grad():
            Y = self._as_multi_hot(labels, embeddings, "labels")
            if ref_emb is None:
                ref_emb, ref_Y = embeddings, Y
            else:
                if ref_labels is None:
                    raise ValueError("ref_labels are required with ref_emb")
                ref_Y = self._as_multi_hot(ref_labels, ref_emb, "ref_labels")
                if ref_Y.shape[1] != Y.shape[1]:
                    raise ValueError(f"labels have {Y.shape[1]} classes but ref_labels {ref_Y.shape[1]}")
            mining_output = self.mine(embeddings, Y, ref_emb, ref_Y)
        self.output_assertion(mining_output)
        return mining_output

    def _sample(self, total: int, device: torch.device) -> torch.Tensor:
        """Sorted uniform random subset of ``range(total)`` of size ``max_triplets``."""
        cap = self.max_triplets
        if total <= 4 * cap:
            return torch.randperm(total, device=device, generator=self.generator)[:cap].sort().values
        # total >> cap: draw with replacement and top up; keeping the distinct draws of a
        # uniform stream is still a uniform subset, without an O(total) permutation
        chosen = torch.empty(0, dtype=torch.long, device=device)
        while len(chosen) < cap:
            draws = torch.randint(total, (cap,), device=device, generator=self.generator)
            chosen = torch.cat([chosen, draws]).unique()
        keep = torch.randperm(len(chosen), device=device, generator=self.generator)[:cap]
        return chosen[keep].sort().values

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        device = embeddings.device
        mat = self.distance(embeddings, ref_emb).float()  # [N, M]; float32 also under autocast
        # a similarity-like score for both kinds of distance: m = score(a, p) - score(a, n)
        score = mat if self.distance.is_inverted else -mat
        shares = (labels.float() @ ref_labels.float().T) > 0
        positive = shares.clone()
        if ref_emb is embeddings:
            positive.fill_diagonal_(False)
        # each anchor's negatives in increasing score; non-negatives sort first as -inf
        negative_score = score.masked_fill(shares, float("-inf"))
        sorted_score, sorted_column = negative_score.sort(dim=1)
        ap = score.contiguous()
        M = sorted_score.shape[1]
        if self.type_of_triplets == "hard":  # score(a, n) >= score(a, p)
            lo = torch.searchsorted(sorted_score, ap, side="left")
            hi = torch.full_like(lo, M)
        else:  # score(a, n) >= score(a, p) - margin, and < score(a, p) for semihard
            lo = torch.searchsorted(sorted_score, ap - self.margin, side="left")
            hi = (
                torch.searchsorted(sorted_score, ap, side="left")
                if self.type_of_triplets == "semihard"
                else torch.full_like(lo, M)
            )
        counts = torch.where(positive, (hi - lo).clamp(min=0), 0)
        pair_anchor, pair_positive = torch.nonzero(counts, as_tuple=True)
        pair_counts = counts[pair_anchor, pair_positive]
        ends = pair_counts.cumsum(0)
        total = int(ends[-1]) if len(ends) else 0
        if total == 0:
            empty = torch.empty(0, dtype=torch.long, device=device)
            return empty, empty.clone(), empty.clone()
        # triplet t belongs to the pair whose cumulative range holds it
        t = self._sample(total, device) if total > self.max_triplets else torch.arange(total, device=device)
        pair = torch.searchsorted(ends, t, side="right")
        offset = t - (ends[pair] - pair_counts[pair])
        a, p = pair_anchor[pair], pair_positive[pair]
        n = sorted_column[a, lo[a, p] + offset]
        return a, p, n


class CombinedLoss(nn.Module):
    """``w_cls * classification + w_metric * triplet + mil_weight * MIL`` as a :class:`LossConfig`
    describes.

    Parameters
    ----------
    config : LossConfig
    num_classes : int
        K, the classifier width.
    class_counts : array-like, optional
        Training-set examples per class ``[K]``. Needed for ``class_weights`` other than
        ``"none"`` and for primary-label mining (``multilabel_mining=False`` with multi-hot
        targets).

    Call
    ----
    ``loss(output, target, groups=None) -> (total, parts)`` where ``output`` is a
    :class:`~hpa_embed.models.ModelOutput` (``embedding`` ``[N, D]``, ``logits`` ``[N, K]``),
    ``target`` is int ``y`` ``[N]`` or multi-hot ``Y`` ``[N, K]`` and ``groups`` int ``[N]``
    gives each cell's image (needed when ``mil_weight > 0``: the bags of the MIL term,
    :func:`mil_bce_loss`, which needs multi-hot ``Y``). ``total`` is the scalar to
    backpropagate; ``parts`` holds detached scalar tensors ``"cls"``, ``"metric"``, ``"mil"``,
    ``"total"`` (no device sync, log them when you like) and the int ``"triplets"`` handed to
    the triplet loss. A batch without a valid triplet has metric loss 0; without MIL, ``"mil"``
    is 0.

    With int ``y`` the labels go to pytorch-metric-learning directly (``TripletMarginMiner`` /
    ``MultiSimilarityMiner``; with ``miner=None`` every valid triplet). With multi-hot ``Y``,
    :class:`MultiLabelTripletMiner` (``miner=None`` then means ``"all"``, which gives the same
    loss as every valid triplet, since the loss averages over its non-zero terms), or with
    ``multilabel_mining=False`` the int miners on :func:`primary_labels`.
    """

    def __init__(self, config: LossConfig, num_classes: int, class_counts=None):
        super().__init__()
        self.config = config
        self.num_classes = int(num_classes)
        counts = None
        if class_counts is not None:
            counts = np.asarray(class_counts, dtype=np.float64)
            if counts.shape != (self.num_classes,):
                raise ValueError(f"class_counts has shape {counts.shape}, expected ({self.num_classes},)")
        if config.class_weights != "none" and counts is None:
            raise ValueError(f"class_weights={config.class_weights!r} needs class_counts")
        weights = (
            class_weights_from_counts(counts, config.class_weights, config.beta)
            if config.class_weights != "none"
            else None
        )
        self.register_buffer("class_weights", None if weights is None else torch.from_numpy(weights))
        self.register_buffer("class_counts", None if counts is None else torch.from_numpy(counts).float())
        self.distance = create_distance(config)
        self.metric_loss = None
        self.miner = None
        self.multilabel_miner = None
        if config.metric == "triplet":
            self.metric_loss = losses.TripletMarginLoss(margin=config.margin, distance=self.distance)
            self.miner = create_miner(config, self.distance)
            if config.miner != "multi_similarity":
                self.multilabel_miner = MultiLabelTripletMiner(
                    margin=config.margin,
                    type_of_triplets=config.miner or "all",
                    max_triplets=config.max_triplets,
                    distance=self.distance,
                )

    def _check_target(self, target: torch.Tensor, n: int) -> bool:
        """True for multi-hot ``[N, K]``, False for int ``[N]``; raises otherwise."""
        if target.ndim == 2 and target.shape == (n, self.num_classes):
            return True
        is_int = not target.is_floating_point() and target.dtype != torch.bool
        if target.ndim == 1 and target.shape[0] == n and is_int:
            return False
        raise ValueError(
            f"target of shape {tuple(target.shape)} and dtype {target.dtype}: expected int labels [{n}] "
            f"or multi-hot labels [{n}, {self.num_classes}]"
        )

    def classification_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The classification term alone, a mean over the cells of ``logits`` ``[N, K]`` (0 without
        one): validation scores a whole split with it from the gathered logits."""
        if not self.config.classification:
            return logits.new_zeros(())
        target = target.to(logits.device)
        return self._classification(logits, target, self._check_target(target, logits.shape[0]))

    def mil_loss(
        self, logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor | None
    ) -> torch.Tensor:
        """The MIL term alone over the bags ``groups`` ``[N]`` of ``logits`` ``[N, K]`` (0 when
        ``mil_weight`` is 0): validation scores whole images with it from the gathered logits."""
        config = self.config
        if not config.mil_weight:
            return logits.new_zeros(())
        target = target.to(logits.device)
        if not self._check_target(target, logits.shape[0]):
            raise ValueError("mil_weight > 0 needs multi-hot targets Y [N, K] (label_mode 'image_labels'), "
                             "not int labels")
        if groups is None:
            raise ValueError("mil_weight > 0 needs groups [N], each cell's image (CellDataset.groups)")
        return mil_bce_loss(logits, target, groups, config.mil_pooling, config.lse_r, self.class_weights)

    def _classification(self, logits: torch.Tensor, target: torch.Tensor, multi_hot: bool) -> torch.Tensor:
        kind, weights = self.config.classification, self.class_weights
        if kind == "ce":
            return cross_entropy_loss(logits, target, weights)
        if kind == "focal" and not multi_hot:
            return softmax_focal_loss(logits, target, self.config.gamma, weights)
        Y = target if multi_hot else F.one_hot(target, self.num_classes)
        if kind == "focal":
            return sigmoid_focal_loss(logits, Y, self.config.gamma, weights)
        return binary_cross_entropy_loss(logits, Y, weights)

    def _triplets(self, embedding: torch.Tensor, target: torch.Tensor, multi_hot: bool):
        if multi_hot and self.config.multilabel_mining:
            if self.multilabel_miner is None:
                raise ValueError(
                    "miner='multi_similarity' needs int labels; with multi-hot targets use semihard, hard, "
                    "all or None, or multilabel_mining=False"
                )
            return self.multilabel_miner(embedding, target)
        if multi_hot:
            if self.class_counts is None:
                raise ValueError("multilabel_mining=False with multi-hot targets needs class_counts")
            target = primary_labels(target, self.class_counts)
        if self.miner is None:
            return lmu.get_all_triplets_indices(target)
        # MultiSimilarityMiner returns pairs; turn them into the triplets the loss would form
        return lmu.convert_to_triplets(self.miner(embedding, target), target)

    def forward(
        self, output, target: torch.Tensor, groups: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        embedding, logits = output[0], output[1]
        target = target.to(logits.device)
        multi_hot = self._check_target(target, embedding.shape[0])
        zero = embedding.new_zeros(())
        cls = self._classification(logits, target, multi_hot) if self.config.classification else zero
        metric, n_triplets = zero, 0
        if self.metric_loss is not None:
            triplets = self._triplets(embedding, target, multi_hot)
            n_triplets = len(triplets[0])
            # with indices_tuple given, the loss reads no labels
            metric = self.metric_loss(embedding, indices_tuple=triplets)
        mil = self.mil_loss(logits, target, groups)
        total = self.config.w_cls * cls + self.config.w_metric * metric + self.config.mil_weight * mil
        parts = {"cls": cls.detach(), "metric": metric.detach(), "mil": mil.detach(), "total": total.detach()}
        return total, {**parts, "triplets": n_triplets}
