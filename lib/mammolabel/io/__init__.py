"""Image input/output: readers, canonical orientation, labelmap and DICOM writers."""

from mammolabel.io.atomic import atomic_path, remove_stale_temps, write_bytes_atomic
from mammolabel.io.dicom import read_dicom, write_dicom_mg
from mammolabel.io.image import Mammogram, normalise
from mammolabel.io.orientation import (
    boxes_from_canonical,
    canonicalise,
    chest_wall_side,
    from_canonical,
    points_from_canonical,
    to_canonical,
)
from mammolabel.io.readers import IMAGE_SUFFIXES, file_format, read_label, read_mammogram
from mammolabel.io.writers import write_grey_png, write_labelmap, write_png

__all__ = [
    "IMAGE_SUFFIXES",
    "Mammogram",
    "atomic_path",
    "boxes_from_canonical",
    "canonicalise",
    "chest_wall_side",
    "file_format",
    "from_canonical",
    "normalise",
    "points_from_canonical",
    "read_dicom",
    "read_label",
    "read_mammogram",
    "remove_stale_temps",
    "to_canonical",
    "write_bytes_atomic",
    "write_dicom_mg",
    "write_grey_png",
    "write_labelmap",
    "write_png",
]
