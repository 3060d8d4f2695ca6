"""Pictures of fields, cells, embeddings and results: channel views, label statistics, training
and evaluation plots (:mod:`.plots`), galleries (:mod:`.galleries`), mask overlays
(:mod:`.overlays`), the UMAP projection (:mod:`.projection`), static maps (:mod:`.maps`), the
interactive cell map (:mod:`.interactive`) and all maps of a run at once (:mod:`.cellmaps`).

Plotting draws what it is handed: the stages compute, these functions only draw.
"""

from .cellmaps import draw_cell_maps, read_cell_maps
from .galleries import crop_images, describe_cells, plot_cell_gallery, plot_neighbours, plot_top_cells
from .interactive import cell_map_from_store, write_cell_map
from .maps import class_panels_figure, map_figure, plot_class_panels, plot_map
from .overlays import mask_outlines, overlay_masks
from .plots import (
    CHANNEL_COLOURS,
    colourise_channel,
    composite_rgb,
    plot_class_ap,
    plot_confusion_matrices,
    plot_evaluation,
    plot_label_statistics,
    plot_lr_find,
    plot_training_curves,
    save_channel_views,
    save_figure,
    scale_for_display,
)
from .projection import UMAPProjector

__all__ = [
    "CHANNEL_COLOURS",
    "scale_for_display",
    "composite_rgb",
    "colourise_channel",
    "save_figure",
    "save_channel_views",
    "plot_label_statistics",
    "plot_confusion_matrices",
    "plot_lr_find",
    "plot_evaluation",
    "plot_training_curves",
    "plot_class_ap",
    "crop_images",
    "describe_cells",
    "plot_cell_gallery",
    "plot_top_cells",
    "plot_neighbours",
    "mask_outlines",
    "overlay_masks",
    "write_cell_map",
    "cell_map_from_store",
    "UMAPProjector",
    "plot_map",
    "plot_class_panels",
    "map_figure",
    "class_panels_figure",
    "draw_cell_maps",
    "read_cell_maps",
]
