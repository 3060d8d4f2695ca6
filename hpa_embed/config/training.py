"""Config sections of training: model, loss, data (batches) and the optimisation."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..labels import CHANNELS, RGB_CHANNELS, get_scheme
from .base import ConfigError, ConfigSection, check_choice

__all__ = [
    "ARCHITECTURES", "ModelConfig", "LossConfig", "DataConfig", "TrainConfig", "check_training_configs",
]

#: Backbones :func:`hpa_embed.models.backbone.create_backbone` builds, with their feature width.
ARCHITECTURES: dict[str, int] = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "resnext50_32x4d": 2048,
    "wide_resnet50_2": 2048,
}

# ImageNet statistics for (red, green, blue); yellow gets the mean of red and green, matching
# how the 4-channel first convolution derives its yellow filter (see docs/model.md).
_DEFAULT_MEAN = {"red": 0.485, "green": 0.456, "blue": 0.406, "yellow": 0.4705}
_DEFAULT_STD = {"red": 0.229, "green": 0.224, "blue": 0.225, "yellow": 0.2265}
_DEFAULT_CHANNELS = {1: ("green",), 3: RGB_CHANNELS, 4: CHANNELS}


@dataclass(frozen=True)
class ModelConfig(ConfigSection):
    """Everything needed to build a :class:`~hpa_embed.models.CellEmbeddingModel` and to
    preprocess its input.

    Attributes
    ----------
    arch : str
        Backbone, a key of :data:`ARCHITECTURES` (default ``"resnet50"``).
    in_chans : int
        Input channels: 3 = (red, green, blue), 4 = (red, green, blue, yellow); 1 is accepted
        for a single channel.
    embedding_dim : int
        Width D of the L2-normalised embedding.
    dropout : float
        Dropout probability in the embedding head, in [0, 1).
    num_classes : int
        Classifier outputs K; must match ``class_scheme``.
    class_scheme : str
        ``"hpa2021"`` (19 classes) or ``"hpa2018"`` (28).
    pretrained : str or None
        None (random initialisation), ``"torchvision"`` (torchvision's default weights for
        ``arch``; downloads when not cached, so only when asked and a network exists) or the
        path of a local torchvision state dict (``.pth``/``.pt``/``.safetensors``) or of a
        hpa_embed checkpoint directory (its backbone is used).
    crop_size : int
        Side S of the square cell crops the model is trained on.
    channels : tuple of str
        Channel names in input order; defaults to the first ``in_chans`` of
        (red, green, blue, yellow). For 3 and 4 channels that order is required, since the
        first-convolution adaptation relies on it.
    mean, std : tuple of float
        Per-channel normalisation applied by :func:`~hpa_embed.models.preprocess` to inputs
        in [0, 1]; default ImageNet statistics (yellow: mean of red and green). Replace them with
        the training set's statistics when training from scratch.
    """

    arch: str = "resnet50"
    in_chans: int = 4
    embedding_dim: int = 128
    dropout: float = 0.2
    num_classes: int = 19
    class_scheme: str = "hpa2021"
    pretrained: str | None = None
    crop_size: int = 128
    channels: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        check_choice("arch", self.arch, tuple(ARCHITECTURES))
        if not isinstance(self.in_chans, int) or self.in_chans not in _DEFAULT_CHANNELS:
            raise ConfigError(f"in_chans={self.in_chans!r}: expected 1, 3 or 4")
        channels = tuple(self.channels) if self.channels is not None else _DEFAULT_CHANNELS[self.in_chans]
        if len(channels) != self.in_chans:
            raise ConfigError(f"channels {channels} do not match in_chans={self.in_chans}")
        if self.in_chans > 1 and channels != CHANNELS[: self.in_chans]:
            raise ConfigError(
                f"channels {channels}: a {self.in_chans}-channel model takes {CHANNELS[: self.in_chans]} "
                "in that order"
            )
        if any(name not in CHANNELS for name in channels):
            raise ConfigError(f"channels {channels}: names must be among {CHANNELS}")
        mean = tuple(float(v) for v in self.mean) if self.mean is not None else tuple(
            _DEFAULT_MEAN[name] for name in channels
        )
        std = tuple(float(v) for v in self.std) if self.std is not None else tuple(
            _DEFAULT_STD[name] for name in channels
        )
        if len(mean) != self.in_chans or len(std) != self.in_chans:
            raise ConfigError(f"mean {mean} and std {std} need one value per channel ({self.in_chans})")
        if not all(math.isfinite(s) and s > 0 for s in std) or not all(math.isfinite(m) for m in mean):
            raise ConfigError(f"mean {mean} must be finite and std {std} finite and positive")
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        for name in ("embedding_dim", "num_classes", "crop_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout={self.dropout!r} must lie in [0, 1)")
        scheme = get_scheme(self.class_scheme)
        if scheme.num_classes != self.num_classes:
            raise ConfigError(
                f"num_classes={self.num_classes} but scheme {scheme.name} has {scheme.num_classes} classes"
            )
        object.__setattr__(self, "class_scheme", scheme.name)


@dataclass(frozen=True)
class LossConfig(ConfigSection):
    """The training loss: ``w_cls * classification + w_metric * metric + mil_weight * mil``.

    Attributes
    ----------
    classification : {"ce", "bce", "focal"} or None
        ``"ce"``: softmax cross-entropy on int labels ``y``, or on the label distribution
        ``Y / |Y|`` of multi-hot ``Y``; ``"bce"``: sigmoid binary cross-entropy on multi-hot
        ``Y``; ``"focal"``: sigmoid focal loss on ``Y`` (softmax focal loss on ``y``).
    w_cls, w_metric : float
        Weights of the two terms (non-negative).
    metric : {"triplet"} or None
        Triplet margin loss (pytorch-metric-learning ``TripletMarginLoss``) on mined triplets.
    margin : float
        Triplet margin, shared by the loss and the miner, in the distance's units (for
        ``"cosine"`` a difference of cosine similarities).
    distance : {"cosine", "euclidean", "lp"}
        ``CosineSimilarity``, ``LpDistance(p=2)`` or ``LpDistance(p=p)``.
    p : float
        Norm of the ``"lp"`` distance.
    miner : {"semihard", "hard", "all", "multi_similarity"} or None
        Which triplets the loss sees. None = every valid triplet (the loss then averages over
        those that violate the margin). ``"multi_similarity"`` needs int labels.
    epsilon : float
        ``MultiSimilarityMiner`` epsilon.
    multilabel_mining : bool
        With multi-hot targets: True mines on label overlap (:class:`MultiLabelTripletMiner`:
        a positive shares a label, a negative shares none); False mines on each cell's primary
        label (its rarest label, :func:`primary_labels`) with the single-label miners.
    max_triplets : int
        Cap on the triplets the multi-label miner returns (a uniform random subset beyond it).
    gamma : float
        Focal-loss focusing parameter; 0 gives (weighted) cross-entropy / BCE.
    class_weights : {"none", "inverse_frequency", "effective_number"}
        Per-class weights from label counts (:func:`class_weights_from_counts`).
    beta : float
        The effective-number parameter (Cui et al. 2019), in [0, 1).
    mil_weight : float
        Weight of the multiple-instance (MIL) term, 0 = off: the cells of one image in a batch
        form a bag, their logits are pooled per class (``mil_pooling``) and compared by BCE with
        the bag's label (the union of its cells' labels: in ``label_mode = "image_labels"`` the
        image's labels). Needs multi-hot targets; ``[data] sampler = "images"`` or
        ``"balanced_images"`` keeps bags whole.
    mil_pooling : {"lse", "max", "mean"}
        How a bag's cell logits become its logit, per class: ``"lse"`` log-sum-exp
        ``1/r log(mean(exp(r x)))`` (between the mean, r -> 0, and the max, r -> inf),
        ``"max"`` or ``"mean"``.
    lse_r : float
        The sharpness r of ``"lse"`` pooling (positive).
    """

    classification: str | None = "bce"
    w_cls: float = 1.0
    metric: str | None = "triplet"
    w_metric: float = 1.0
    margin: float = 0.1
    distance: str = "cosine"
    p: float = 2.0
    miner: str | None = "semihard"
    epsilon: float = 0.1
    multilabel_mining: bool = True
    max_triplets: int = 20000
    gamma: float = 2.0
    class_weights: str = "none"
    beta: float = 0.999
    mil_weight: float = 0.0
    mil_pooling: str = "lse"
    lse_r: float = 5.0

    def __post_init__(self):
        check_choice("classification", self.classification, ("ce", "bce", "focal", None))
        check_choice("metric", self.metric, ("triplet", None))
        check_choice("distance", self.distance, ("cosine", "euclidean", "lp"))
        check_choice("miner", self.miner, ("semihard", "hard", "all", "multi_similarity", None))
        check_choice("class_weights", self.class_weights, ("none", "inverse_frequency", "effective_number"))
        check_choice("mil_pooling", self.mil_pooling, ("lse", "max", "mean"))
        for name in ("w_cls", "w_metric", "margin", "epsilon", "gamma", "mil_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}={value!r} must be a finite non-negative number")
        if self.classification is None and self.metric is None and not self.mil_weight:
            raise ConfigError("classification and metric are both None and mil_weight is 0: the loss "
                              "would be empty")
        if not self.p > 0:
            raise ConfigError(f"p={self.p!r} must be positive")
        if not (isinstance(self.lse_r, (int, float)) and math.isfinite(self.lse_r) and self.lse_r > 0):
            raise ConfigError(f"lse_r={self.lse_r!r} must be a finite positive number")
        if not 0 <= self.beta < 1:
            raise ConfigError(f"beta={self.beta!r} must lie in [0, 1)")
        if not isinstance(self.max_triplets, int) or self.max_triplets < 1:
            raise ConfigError(f"max_triplets={self.max_triplets!r} must be a positive integer")
        if not isinstance(self.multilabel_mining, bool):
            raise ConfigError(f"multilabel_mining={self.multilabel_mining!r} must be true or false")


@dataclass(frozen=True)
class DataConfig(ConfigSection):
    """Which cells a model trains on and how batches are drawn.

    Attributes
    ----------
    label_mode : {"single_label", "image_labels", "true_labels", "pseudo_labels"}
        ``"single_label"``: cells of single-label images with their image's label (int ``y``);
        ``"image_labels"``: every cell with its image's labels (multi-hot ``Y``, weak);
        ``"true_labels"``: synthetic truth per cell (the oracle); ``"pseudo_labels"``: labels a
        previous round gave the cells (set by ``[train] pseudo_rounds``, not by hand). See
        :func:`hpa_embed.data.cell_targets`.
    batch_size : int
        Global batch size (split across processes under DDP).
    sampler : {"balanced", "shuffle", "images", "balanced_images"}
        ``"balanced"``: ``m_per_class`` cells of each of ``batch_size / m_per_class`` classes per
        batch (pytorch-metric-learning's ``MPerClassSampler``; multi-hot cells by their rarest
        label); ``"shuffle"``: every cell once per epoch in random order; ``"images"``: whole
        images (every cell of an image in one batch, the bags of ``[loss] mil_weight``), packed
        into batches of at most ``batch_size`` cells, each image once per epoch; an image with
        more cells than a batch (per process under DDP) gives a random batch of them;
        ``"balanced_images"``: whole images drawn class-balanced (a class at random, a cell of
        it, its image), ``batch_size`` cells a batch, the last image cut to fit.
    m_per_class : int
        Cells per class in a balanced batch; divides ``batch_size``.
    batches_per_epoch : int or None
        Balanced and images sampling; default: training cells // batch size (balanced,
        balanced_images), one pass over the images (images).
    augment : bool
        Random flips, 90-degree rotations and brightness jitter (:func:`hpa_embed.data.augment_batch`).
    intensity_jitter : float
        Brightness factors are drawn from ``[1 - j, 1 + j]``.
    num_workers : int
        DataLoader worker processes (0: read batches in the training process).
    eval_batch_size : int
        Batch size per process for validation.
    """

    label_mode: str = "single_label"
    batch_size: int = 64
    sampler: str = "balanced"
    m_per_class: int = 4
    batches_per_epoch: int | None = None
    augment: bool = True
    intensity_jitter: float = 0.1
    num_workers: int = 0
    eval_batch_size: int = 128

    def __post_init__(self):
        check_choice("label_mode", self.label_mode, ("single_label", "image_labels", "true_labels",
                                                     "pseudo_labels"))
        check_choice("sampler", self.sampler, ("balanced", "shuffle", "images", "balanced_images"))
        for name in ("batch_size", "m_per_class", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.sampler == "balanced" and self.batch_size % self.m_per_class:
            raise ConfigError(
                f"batch_size={self.batch_size} must be a multiple of m_per_class={self.m_per_class}"
            )
        if self.batches_per_epoch is not None and (not isinstance(self.batches_per_epoch, int)
                                                   or self.batches_per_epoch < 1):
            raise ConfigError(f"batches_per_epoch={self.batches_per_epoch!r} must be a positive integer")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError(f"num_workers={self.num_workers!r} must be a non-negative integer")
        if not 0 <= self.intensity_jitter < 1:
            raise ConfigError(f"intensity_jitter={self.intensity_jitter!r} must lie in [0, 1)")


@dataclass(frozen=True)
class TrainConfig(ConfigSection):
    """How :func:`hpa_embed.train.fit` optimises.

    Attributes
    ----------
    epochs : int
    optimizer : {"adamw", "sgd"}
        SGD uses Nesterov momentum ``momentum``.
    lr, weight_decay, momentum : float
        Weight decay applies to weights, not to biases and normalisation parameters.
    schedule : {"cosine", "onecycle", "constant"}
        Stepped per batch; ``"onecycle"`` warms up to ``lr`` and anneals.
    freeze_backbone_epochs : int
        Train only the heads for this many first epochs.
    precision : {"auto", "fp32", "fp16", "bf16"}
        Mixed precision by autocast; ``"auto"``: fp16 (with loss scaling) on CUDA, fp32 on CPU.
    channels_last : bool
        NHWC memory format (faster convolutions on most CPUs and GPUs).
    grad_clip : float or None
        Clip the gradient norm to this value.
    early_stopping_patience : int or None
        Stop after this many epochs without a lower validation loss.
    batchnorm : {"train", "frozen"}
        ``"train"``: batch statistics (synchronised across GPUs under DDP); ``"frozen"``: every
        BatchNorm layer uses its running statistics, which makes a DDP run on the CPU (where
        PyTorch cannot synchronise BatchNorm) compute exactly what one process would.
    pseudo_rounds : int
        Rounds trained on cell pseudo-labels after the first (:mod:`hpa_embed.recipes`): a cell
        keeps an image label where the previous round's model supports it, and becomes Negative
        where it supports none.
    pseudo_support : float
        A label is supported in a cell whose probability of it reaches this fraction of the
        highest probability of the class among its image's cells, in (0, 1].
    dim_negative : float
        In [0, 1): when above 0, the first round trains the cells of a labelled image whose
        green signal is below this share of the brightest cell's of the image as Negative
        (:func:`hpa_embed.recipes.dim_negative_labels`), with ``label_mode = "image_labels"``.
    classifier_bias : {"prior", "zero"}
        The classifier's initial bias: ``"prior"`` starts each class at its frequency among the
        training cells (``log(p / (1 - p))`` for sigmoid losses, ``log p`` for softmax), so the
        first steps do not go into pushing 19 sigmoid outputs down from 0.5 (on `standard`, an
        oracle trained with BCE reached cell mAP 0.449 with it against 0.300 from zero, see
        docs/recipes.md); ``"zero"``: PyTorch's initialisation.
    seed : int
    device : {"auto", "cpu", "cuda"}
    """

    epochs: int = 10
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"
    freeze_backbone_epochs: int = 0
    precision: str = "auto"
    channels_last: bool = True
    grad_clip: float | None = 5.0
    early_stopping_patience: int | None = None
    batchnorm: str = "train"
    pseudo_rounds: int = 0
    pseudo_support: float = 0.5
    dim_negative: float = 0.0
    classifier_bias: str = "prior"
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        check_choice("optimizer", self.optimizer, ("adamw", "sgd"))
        check_choice("schedule", self.schedule, ("cosine", "onecycle", "constant"))
        check_choice("precision", self.precision, ("auto", "fp32", "fp16", "bf16"))
        check_choice("batchnorm", self.batchnorm, ("train", "frozen"))
        check_choice("classifier_bias", self.classifier_bias, ("zero", "prior"))
        if not isinstance(self.pseudo_rounds, int) or self.pseudo_rounds < 0:
            raise ConfigError(f"pseudo_rounds={self.pseudo_rounds!r} must be a non-negative integer")
        if not 0 < self.pseudo_support <= 1:
            raise ConfigError(f"pseudo_support={self.pseudo_support!r} must lie in (0, 1]")
        if not 0 <= self.dim_negative < 1:
            raise ConfigError(f"dim_negative={self.dim_negative!r} must lie in [0, 1)")
        check_choice("device", self.device, ("auto", "cpu", "cuda"))
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs!r} must be a positive integer")
        if not isinstance(self.freeze_backbone_epochs, int) or self.freeze_backbone_epochs < 0:
            raise ConfigError(f"freeze_backbone_epochs={self.freeze_backbone_epochs!r} must be >= 0")
        for name in ("lr", "weight_decay", "momentum"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name}={value!r} must be a finite non-negative number")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip={self.grad_clip!r} must be positive or none")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 1:
            raise ConfigError(f"early_stopping_patience={self.early_stopping_patience!r} must be >= 1")


def check_training_configs(model: ModelConfig, loss: LossConfig, data: DataConfig) -> None:
    """Refuse model, loss and data settings that cannot train together, with the fix."""
    if loss.mil_weight > 0 and data.label_mode == "single_label":
        raise ConfigError("[loss] mil_weight > 0 needs multi-hot targets but [data] label_mode = "
                          "'single_label' gives int labels: use label_mode = 'image_labels' (or set "
                          "mil_weight = 0)")
    if data.sampler == "balanced" and data.batch_size // data.m_per_class > model.num_classes:
        raise ConfigError(f"[data] a balanced batch of {data.batch_size} with m_per_class = "
                          f"{data.m_per_class} needs {data.batch_size // data.m_per_class} classes, the "
                          f"scheme has {model.num_classes}: raise m_per_class or lower batch_size")
