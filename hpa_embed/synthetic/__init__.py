"""The synthetic HPA generator: fields of view in the Kaggle layout, plus the truth real data lacks.

Each field has irregular cells of one cell line (a warped weighted-Voronoi partition around the
nuclei with meandering borders between touching cells; density varies from sparse to confluent
between fields), reference channels that look like HPA's (textured nuclei with nucleoli,
microtubules radiating from the centrosome, perinuclear reticular ER), and a green protein
channel drawn per cell from its true classes, one renderer per class. Labels are weak as in real
data: the image label is the union of what its cells show. ``difficulty`` makes the classes that
biologists confuse look alike. See ``docs/synthetic.md``.

Public API: :class:`SyntheticConfig`, :data:`PRESETS`, :func:`get_preset`,
:class:`SyntheticField`, :func:`generate_field`, :func:`generate_dataset`, :func:`read_truth`,
:func:`truth_labels_by_image`, :func:`field_seed`, :func:`touching_fraction`, :data:`CELL_LINES`.
"""

from .config import CELL_LINES, KAGGLE2021_FREQUENCIES, PRESETS, CellLine, SyntheticConfig, get_preset
from .dataset import GENERATOR_VERSION, field_seed, generate_dataset, read_truth, truth_labels_by_image
from .field import SyntheticField, generate_field
from .geometry import touching_fraction

__all__ = [
    "SyntheticConfig",
    "CellLine",
    "CELL_LINES",
    "KAGGLE2021_FREQUENCIES",
    "PRESETS",
    "get_preset",
    "SyntheticField",
    "generate_field",
    "generate_dataset",
    "read_truth",
    "truth_labels_by_image",
    "field_seed",
    "GENERATOR_VERSION",
    "touching_fraction",
]
