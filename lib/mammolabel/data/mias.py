"""Import the MIAS (mini) database into a MONAI Label datastore with its weak and strong labels.

``Info.txt`` rows read ``ref tissue class [severity [x y radius]]`` with the origin of x, y at the
bottom-left corner (row = height - 1 - y). A film gets a ``finding`` (its most severe row), and
each located lesion a box (``box``) and a circle mask (``final``); diffuse calcifications without
a centre (no coordinates, or a ``*NOTE 3*`` in their place) are a finding only. A malformed row
stops the import before anything is written, with its line number. Importing again refreshes the
import's own labels and keeps those annotators saved (:mod:`mammolabel.data.reimport`).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mammolabel.data.labels import TAG_BOX, TAG_FINDING, TAG_MASK, box_mask
from mammolabel.data.reimport import store_image, store_label
from mammolabel.errors import InputError
from mammolabel.io import read_mammogram, write_labelmap

logger = logging.getLogger("mammolabel")

CLASSES = {
    "CALC": "calcification",
    "CIRC": "mass",
    "SPIC": "mass",
    "MISC": "mass",
    "ARCH": "distortion",
    "ASYM": "asymmetry",
    "NORM": None,
}
#: A row's coordinates may be replaced by a note (``*NOTE 3*``: widely distributed calcifications).
_ROW = re.compile(r"^(mdb\d{3})\s+([FGD])\s+([A-Z]{4})"
                  r"(?:\s+([BM])(?:\s+(\d+)\s+(\d+)\s+(\d+)|(?:\s+\d+)*\s+\*NOTE\s*\d+\*)?)?\s*$")


@dataclass
class MiasLesion:
    kind: str
    abnormality: str
    severity: str
    centre: tuple[int, int] | None  # (x, y) with the bottom-left origin of Info.txt
    radius: int | None


@dataclass
class MiasFilm:
    ref: str
    tissue: str
    lesions: list[MiasLesion] = field(default_factory=list)

    @property
    def finding(self) -> str:
        sev = {les.severity for les in self.lesions}
        return "malignant" if "M" in sev else ("benign" if "B" in sev else "normal")

    @property
    def laterality(self) -> str:
        """Odd film numbers are right breasts, even numbers left ones."""
        return "R" if int(self.ref[3:]) % 2 else "L"

    @property
    def patient_id(self) -> str:
        """Films come in pairs per patient: odd (right) and the following even (left) number."""
        return f"mias{(int(self.ref[3:]) + 1) // 2:03d}"


def parse_info(path: str | os.PathLike) -> dict[str, MiasFilm]:
    """Parse ``Info.txt`` into films by reference; a malformed row is refused with its line number."""
    films: dict[str, MiasFilm] = {}
    for number, line in enumerate(Path(path).read_text(errors="replace").splitlines(), start=1):
        if not line.startswith("mdb"):
            continue
        m = _ROW.match(line)
        if not m or (m.group(3) not in CLASSES) or (m.group(3) == "NORM") != (m.group(4) is None):
            raise InputError(f"{path}:{number}: malformed row {line.strip()!r} (expected: ref tissue class "
                             "[severity [x y radius]]); nothing was imported")
        ref, tissue, cls, sev, x, y, r = m.groups()
        film = films.setdefault(ref, MiasFilm(ref, tissue))
        if cls != "NORM":
            centre = (int(x), int(y)) if x is not None else None
            film.lesions.append(MiasLesion(CLASSES[cls], cls, sev, centre, int(r) if r is not None else None))
    return films


def import_mias(mias_dir: str | os.PathLike, datastore_dir: str | os.PathLike) -> dict:
    """Import every film of ``mias_dir`` listed in its ``Info.txt``; return a summary with the problems.

    PGM films are stored as PNG (same pixels). Running the import again gives the same datastore.
    """
    from mammolabel.data.datastore import MammoDatastore

    mias_dir = Path(mias_dir)
    info = mias_dir / "Info.txt"
    if not info.is_file():
        raise InputError(f"{mias_dir}: no Info.txt (is this a MIAS folder?)")
    films, problems = parse_info(info), []
    store = MammoDatastore(datastore_dir)
    counts = {"films": 0, "finding": 0, "box": 0, "mask": 0, "lesions": 0, "diffuse": 0, "missing": 0,
              "kept_films": 0, "kept_labels": 0}
    origin = "MIAS Info.txt"
    with tempfile.TemporaryDirectory() as tmp:
        for ref, film in tqdm(sorted(films.items()), desc="import-mias", unit="film"):
            source = next((mias_dir / f"{ref}{ext}" for ext in (".png", ".pgm") if (mias_dir / f"{ref}{ext}").exists()), None)
            if source is None:
                problems.append(f"{info}: film {ref} is listed but neither {ref}.png nor {ref}.pgm exists; skipped")
                counts["missing"] += 1
                continue
            rows, cols = read_mammogram(source).shape  # validates the film
            png = source
            if source.suffix == ".pgm":  # same stored values, as PNG
                png = Path(tmp) / f"{ref}.png"
                with Image.open(source) as im:
                    im.save(png, format="PNG")
            info = {"patient_id": film.patient_id, "laterality": film.laterality, "tissue": film.tissue,
                    "spacing_mm": 0.2, "view": "MLO", "source": "MIAS"}
            if store_image(store, ref, png, info) == "kept":
                problems.append(f"{origin}: film {ref} changed but has annotators' labels; kept as it was")
                counts["kept_films"] += 1
                continue
            located = [les for les in film.lesions if les.centre is not None]
            points = [[float(x), float(rows - 1 - y)] for x, y in (les.centre for les in located)]
            radii = [float(les.radius) for les in located]
            finding = {"finding": film.finding, "lesion_types": sorted({les.kind for les in film.lesions}),
                       "abnormalities": [les.abnormality for les in film.lesions], "points": points, "radii": radii,
                       "tissue": film.tissue}
            counts["films"] += 1
            counts["finding" if store_label(store, ref, "", TAG_FINDING, finding, origin) else "kept_labels"] += 1
            counts["lesions"] += len(located)
            counts["diffuse"] += len(film.lesions) - len(located)
            if located:
                yy, xx = np.mgrid[0:rows, 0:cols]
                circles = np.zeros((rows, cols), np.uint8)
                boxes = []
                for (x, y), r in zip(points, radii):
                    circles[(xx - x) ** 2 + (yy - y) ** 2 <= r**2] = 1
                    boxes.append([int(max(0, x - r)), int(max(0, y - r)), int(min(cols - 1, x + r)), int(min(rows - 1, y + r))])
                mask_file = write_labelmap(Path(tmp) / f"{ref}_final.nrrd", circles)
                box_file = write_labelmap(Path(tmp) / f"{ref}_box.nrrd", box_mask(boxes, (rows, cols)))
                for tag, path, extra, key in ((TAG_MASK, mask_file, {"points": points, "radii": radii}, "mask"),
                                              (TAG_BOX, box_file, {"points": points}, "box")):
                    counts[key if store_label(store, ref, path, tag, extra, origin) else "kept_labels"] += 1
    for message in problems:
        logger.warning(message)
    return {**counts, "problems": problems, "datastore": str(datastore_dir)}
