"""Config sections after training: the FAISS index, classification and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from .base import ConfigError, ConfigSection, check_choice, check_positive_int, check_unit_interval

__all__ = ["IndexConfig", "ClassifyConfig", "EvaluateConfig", "EVALUATION_SPLITS", "MapConfig"]


@dataclass(frozen=True)
class IndexConfig(ConfigSection):
    """How :class:`~hpa_embed.index.CellIndex` indexes embeddings.

    Attributes
    ----------
    kind : {"auto", "flat", "ivf", "ivfpq"}
        ``"flat"``: exact search; ``"ivf"``: inverted file (IVFFlat), approximate, far faster on
        large sets; ``"ivfpq"``: IVF with product-quantised vectors (much less memory, coarser
        scores); ``"auto"``: flat below ``flat_threshold`` vectors, IVF from there on.
    flat_threshold : int
        Vector count from which ``"auto"`` picks IVF.
    nlist : int or None
        IVF cells; None picks about 4 sqrt(N), at most one per 39 training vectors.
    nprobe : int
        IVF cells visited per query (clamped to ``nlist``): the speed / recall trade-off.
    pq_m : int
        PQ sub-quantisers (bytes per vector with 8-bit codes); must divide the dimension.
    pq_nbits : int
        Bits per PQ sub-quantiser code.
    train_sample : int
        At most this many vectors (a random sample) train the IVF quantiser and PQ codebooks.
    metric : {"cosine", "l2"}
        ``"cosine"``: rows are L2-normalised and scored by inner product (cosine similarity,
        higher is closer); ``"l2"``: squared Euclidean distance (lower is closer).
    seed : int
        Seed of the training sample and of k-means.
    """

    kind: str = "auto"
    flat_threshold: int = 50_000
    nlist: int | None = None
    nprobe: int = 32
    pq_m: int = 16
    pq_nbits: int = 8
    train_sample: int = 100_000
    metric: str = "cosine"
    seed: int = 0

    def __post_init__(self):
        check_choice("kind", self.kind, ("auto", "flat", "ivf", "ivfpq"))
        check_choice("metric", self.metric, ("cosine", "l2"))
        for name in ("nprobe", "pq_m", "train_sample"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if not isinstance(self.flat_threshold, int) or self.flat_threshold < 0:
            raise ConfigError(f"flat_threshold={self.flat_threshold!r} must be a non-negative integer")
        if self.nlist is not None and (not isinstance(self.nlist, int) or self.nlist < 1):
            raise ConfigError(f"nlist={self.nlist!r} must be a positive integer or none")
        if not isinstance(self.pq_nbits, int) or not 1 <= self.pq_nbits <= 16:
            raise ConfigError(f"pq_nbits={self.pq_nbits!r} must be an integer in [1, 16]")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed={self.seed!r} must be an integer")



@dataclass(frozen=True)
class ClassifyConfig(ConfigSection):
    """How cells are classified from their embeddings.

    Attributes
    ----------
    methods : list of str
        Among ``"head"`` (the model's linear classifier) and ``"knn"`` (a vote of the nearest
        training cells in the embedding space).
    n_neighbors : int
        kNN: neighbours that vote.
    knn_labels : {"image_labels", "training_targets", "true_labels"}
        kNN: the labels the training cells vote with: their images' labels, the targets the
        model trained on (which differ where a recipe derives cell labels: ``dim-negative``,
        ``pseudo``), or "true_labels" (synthetic truth: an oracle, not a weakly supervised
        result).
    negative : {"complement", "model"}
        How a cell's Negative score is made: the larger of the model's Negative output and one
        minus its highest other class (a cell that shows nothing is Negative), or the model's
        output alone.
    fusion_weight : float
        Blend each cell's scores with its image's (the maximum over the image's cells), in
        [0, 1]; 0 scores every cell on its own.
    """

    methods: tuple[str, ...] = ("head", "knn")
    n_neighbors: int = 10
    knn_labels: str = "image_labels"
    negative: str = "complement"
    fusion_weight: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "methods", tuple(self.methods))
        if not self.methods:
            raise ConfigError("methods is empty: name 'head', 'knn' or both")
        for method in self.methods:
            check_choice("methods", method, ("head", "knn"))
        check_positive_int(self, "n_neighbors")
        check_choice("knn_labels", self.knn_labels, ("image_labels", "training_targets", "true_labels"))
        check_choice("negative", self.negative, ("complement", "model"))
        check_unit_interval(self, "fusion_weight")


#: Splits scored by each choice of :attr:`EvaluateConfig.split`.
EVALUATION_SPLITS: dict[str, tuple[str, ...]] = {
    "test": ("test",),
    "val": ("val",),
    "heldout": ("val", "test"),
    "train": ("train",),
    "all": ("train", "val", "test"),
}


@dataclass(frozen=True)
class EvaluateConfig(ConfigSection):
    """What the evaluation scores.

    Attributes
    ----------
    split : {"test", "heldout", "val", "train", "all"}
        The cells scored: held-out test images by default ("heldout" adds the validation
        images, which chose the best checkpoint); "train" and "all" score cells the model
        trained on, which the results then say.
    iou_threshold : float
        Mask IoU a predicted cell needs with a true cell to match it (competition metric).
    threshold : float
        Probability from which a class counts as predicted (precision, recall, confusion).
    submission : bool
        Write a Kaggle submission of the scored images and score it against the true masks.
    """

    split: str = "test"
    iou_threshold: float = 0.6
    threshold: float = 0.5
    submission: bool = True

    def __post_init__(self):
        check_choice("split", self.split, tuple(EVALUATION_SPLITS))
        check_unit_interval(self, "iou_threshold", "threshold")

    @property
    def splits(self) -> tuple[str, ...]:
        """The split names scored."""
        return EVALUATION_SPLITS[self.split]

    @property
    def scores_training_cells(self) -> bool:
        return "train" in self.splits


@dataclass(frozen=True)
class MapConfig(ConfigSection):
    """The maps of a run's cells (:func:`hpa_embed.visualise.draw_cell_maps`).

    Attributes
    ----------
    enabled : bool
        Draw the maps (UMAP of every cell, PNG maps, the interactive cell map).
    n_neighbors : int
        UMAP's neighbourhood size (its kNN graph comes from the FAISS index).
    min_dist : float
        UMAP's minimum distance between mapped points.
    neighbours : int
        Nearest cells listed for a cell clicked in the interactive map.
    interactive : bool
        Write the interactive map (thumbnails of every cell; about 1 kB per cell).
    method : str or None
        The classification method whose predictions colour the maps, one of [classify] methods;
        None takes the first of them.
    sample_size : int or None
        UMAP is fitted on a random sample of this many cells, and every other cell is placed from
        its neighbours among them, block by block (``UMAPProjector(sample_size=...)``); None fits
        on all cells.
    """

    enabled: bool = True
    n_neighbors: int = 15
    min_dist: float = 0.1
    neighbours: int = 10
    interactive: bool = True
    method: str | None = None
    sample_size: int | None = 100_000

    def __post_init__(self):
        check_positive_int(self, "n_neighbors", "neighbours")
        if self.sample_size is not None and (not isinstance(self.sample_size, int)
                                             or self.sample_size <= self.n_neighbors):
            raise ConfigError(f"sample_size={self.sample_size!r} must be none or an integer > n_neighbors")
        if not 0 <= self.min_dist <= 1:
            raise ConfigError(f"min_dist={self.min_dist!r} must lie in [0, 1]")
        check_choice("method", self.method, ("head", "knn", None))

