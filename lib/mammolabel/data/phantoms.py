"""Deterministic synthetic mammograms with exact lesion masks, for demos and tests.

Each phantom has a breast outline with a skin line, a pectoral muscle (MLO view), textured
fibroglandular tissue, and, depending on its finding, a round or spiculated mass or a
calcification cluster with its exact mask. Pairs of phantoms (right, left) share a patient.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image, disk

from mammolabel.data.labels import Box, boxes_from_mask

DEFAULT_SHAPE = (512, 416)


@dataclass
class Lesion:
    kind: str  # "mass" or "calcification"
    shape: str  # "round", "spiculated", "cluster"
    severity: str  # "benign" or "malignant"
    centre: tuple[float, float]  # (x, y) in stored pixel coordinates
    radius: float


@dataclass
class Phantom:
    """One synthetic film as stored: pixels in [0, 1], and its exact truth."""

    image_id: str
    patient_id: str
    laterality: str  # "R" (chest wall on the right of the stored image) or "L"
    density: str  # "F", "G" or "D" as in MIAS
    finding: str
    pixels: np.ndarray
    mask: np.ndarray  # uint8, 1 inside every lesion
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def boxes(self) -> list[Box]:
        return boxes_from_mask(self.mask)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return n / (n.std() + 1e-8)


def _breast_geometry(rng: np.random.Generator, shape: tuple[int, int]):
    """Canonical (chest wall left) breast mask, distance-to-skin map and pectoral mask."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy = rows * rng.uniform(0.45, 0.55)
    ry = rows * rng.uniform(0.42, 0.5)
    rx = cols * rng.uniform(0.6, 0.78)
    wobble = 1 + 0.04 * np.sin(yy / rows * np.pi * rng.uniform(2, 4) + rng.uniform(0, 6))
    r = np.sqrt((xx / (rx * wobble)) ** 2 + ((yy - cy) / ry) ** 2)
    breast = r < 1.0
    skin_dist = ndimage.distance_transform_edt(breast)
    pec_h = rows * rng.uniform(0.3, 0.5)
    pec_w = cols * rng.uniform(0.15, 0.28)
    pectoral = breast & (xx / pec_w + yy / pec_h < 1.0)
    return breast, skin_dist, pectoral, (yy, xx)


def _mass(rng, grid, centre, radius, spiculated: bool) -> np.ndarray:
    yy, xx = grid
    dy, dx = yy - centre[1], xx - centre[0]
    dist = np.sqrt(dx**2 + dy**2)
    if not spiculated:
        return (dist <= radius).astype(np.float32)
    angle = np.arctan2(dy, dx)
    edge = radius * (1 + sum(rng.uniform(0.05, 0.15) * np.sin(k * angle + rng.uniform(0, 6)) for k in (3, 5, 7)))
    body = dist <= edge
    spicules = np.zeros_like(body)
    for a in rng.uniform(-np.pi, np.pi, size=int(rng.integers(6, 11))):
        length = radius * rng.uniform(1.5, 2.3)
        along = dx * np.cos(a) + dy * np.sin(a)
        across = np.abs(-dx * np.sin(a) + dy * np.cos(a))
        spicules |= (along > 0) & (along < length) & (across < 1.2 * (1 - along / length) + 0.4)
    return (body | spicules).astype(np.float32)


def _calcifications(rng, shape, centre, radius, malignant: bool) -> tuple[np.ndarray, np.ndarray]:
    """Tiny bright specks (intensity map) and the cluster region mask (hull of the specks)."""
    specks = np.zeros(shape, np.float32)
    n = int(rng.integers(12, 25) if malignant else rng.integers(5, 10))
    for _ in range(n):
        x = int(round(centre[0] + rng.normal(0, radius / 2)))
        y = int(round(centre[1] + rng.normal(0, radius / 2)))
        size = int(rng.integers(1, 3)) if malignant else 2
        y0, x0 = max(0, y - size), max(0, x - size)
        fp = disk(size)[: shape[0] - y0, : shape[1] - x0]
        specks[y0 : y0 + fp.shape[0], x0 : x0 + fp.shape[1]] = np.maximum(
            specks[y0 : y0 + fp.shape[0], x0 : x0 + fp.shape[1]], fp * rng.uniform(0.7, 1.0)
        )
    region = ndimage.binary_dilation(convex_hull_image(specks > 0), iterations=2)
    return specks, region


def make_phantom(index: int, seed: int = 0, shape: tuple[int, int] = DEFAULT_SHAPE) -> Phantom:
    """Build phantom number ``index`` of the set with ``seed``; the same arguments give the same film."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    patient = index // 2
    laterality = "R" if index % 2 == 0 else "L"
    finding = ("normal", "normal", "benign", "malignant", "normal", "malignant", "benign")[
        int(np.random.default_rng([seed, index, 1]).integers(0, 7))
    ]
    density = "FGD"[int(rng.integers(0, 3))]
    breast, skin_dist, pectoral, grid = _breast_geometry(rng, shape)

    # Tissue: fat, fibroglandular texture concentrated behind the nipple, thinning towards the skin.
    thickness = np.clip(skin_dist / (0.12 * shape[1]), 0, 1) ** 0.5
    gland_amount = {"F": 0.25, "G": 0.45, "D": 0.65}[density]
    texture = 0.6 * _smooth_noise(rng, shape, 6) + 0.4 * _smooth_noise(rng, shape, 2)
    glands = np.clip(texture + (gland_amount - 0.5) * 3, 0, None) * 0.09
    img = breast * thickness * (0.32 + glands)
    img = np.where(pectoral, 0.72 + 0.04 * _smooth_noise(rng, shape, 3), img)

    mask = np.zeros(shape, np.uint8)
    lesions: list[Lesion] = []
    if finding != "normal":
        malignant = finding == "malignant"
        kind = "calcification" if rng.uniform() < 0.35 else "mass"
        inner = breast & ~ndimage.binary_dilation(pectoral, iterations=25) & (skin_dist > 0.1 * shape[1])
        ys, xs = np.nonzero(inner)
        pick = int(rng.integers(0, len(ys)))
        centre = (float(xs[pick]), float(ys[pick]))
        radius = float(rng.uniform(0.03, 0.07) * shape[1])
        if kind == "mass":
            region = _mass(rng, grid, centre, radius, spiculated=malignant) > 0
            soft = ndimage.gaussian_filter(region.astype(np.float32), 1.2)
            img = img + soft * (0.2 if malignant else 0.16)
            lesion_shape = "spiculated" if malignant else "round"
        else:
            specks, region = _calcifications(rng, shape, centre, radius * 0.8, malignant)
            img = np.maximum(img, specks * 0.95)
            lesion_shape = "cluster"
        region &= breast
        mask[region] = 1
        lesions.append(Lesion(kind, lesion_shape, finding, centre, radius))

    img = ndimage.gaussian_filter(img, 0.8) + breast * 0.012 * rng.standard_normal(shape)
    img = np.clip(img + 0.02, 0, 1).astype(np.float32)

    if laterality == "R":  # stored with the chest wall on the right, as viewers hang right breasts
        img, mask = img[:, ::-1].copy(), mask[:, ::-1].copy()
        for lesion in lesions:
            lesion.centre = (shape[1] - 1 - lesion.centre[0], lesion.centre[1])
    return Phantom(f"phantom_{index:03d}", f"P{patient:03d}", laterality, density, finding, img, mask, lesions)


def write_phantom_study(
    out_dir: str | os.PathLike,
    n: int = 12,
    seed: int = 0,
    shape: tuple[int, int] = DEFAULT_SHAPE,
    mask_fraction: float = 1.0,
    dicom: bool = True,
) -> dict:
    """Write ``n`` phantoms as a MONAI Label datastore in ``out_dir`` and return the truth.

    Every image gets a ``finding`` label; a lesion image gets its exact mask (``final``) when it is
    among the first ``mask_fraction`` of lesion images (in a seeded order), and a ``box`` label
    otherwise. With ``dicom`` each film is also written as DICOM MG under ``out_dir/dicom``. The full
    truth (findings, boxes, lesion types, masks under ``truth/``) is written to ``phantoms.json``.
    Running it again with the same arguments gives the same files.
    """
    from mammolabel.data.datastore import MammoDatastore
    from mammolabel.data.labels import TAG_BOX, TAG_FINDING, TAG_MASK, box_centres, box_mask
    from mammolabel.io import write_dicom_mg, write_grey_png, write_labelmap

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = MammoDatastore(out)
    phantoms = [make_phantom(i, seed, shape) for i in range(n)]
    lesion_ids = [p.image_id for p in phantoms if p.finding != "normal"]
    order = np.random.default_rng([seed, 99]).permutation(len(lesion_ids))
    masked = {lesion_ids[i] for i in order[: int(round(mask_fraction * len(lesion_ids)))]}
    truth = {"seed": seed, "shape": list(shape), "spacing_mm": 0.1, "images": {}}
    staging = out / ".staging"
    staging.mkdir(exist_ok=True)
    for p in phantoms:
        png = write_grey_png(staging / f"{p.image_id}.png", p.pixels, bits=12)
        info = {"patient_id": p.patient_id, "laterality": p.laterality, "view": "MLO", "spacing_mm": 0.1}
        store.add_image(p.image_id, str(png), info)
        boxes = p.boxes
        finding = {"finding": p.finding, "lesion_types": [x.kind for x in p.lesions], "points": box_centres(boxes)}
        store.save_label(p.image_id, "", TAG_FINDING, finding)
        if p.finding != "normal":
            write_labelmap(out / "truth" / f"{p.image_id}.nrrd", p.mask)
            label = staging / f"{p.image_id}.nrrd"
            if p.image_id in masked:
                store.save_label(p.image_id, str(write_labelmap(label, p.mask)), TAG_MASK, {})
            else:
                store.save_label(p.image_id, str(write_labelmap(label, box_mask(boxes, p.mask.shape))), TAG_BOX, {})
        if dicom:
            study_uid = f"1.2.826.0.1.3680043.8.498.{seed + 1}.{int(p.patient_id[1:]) + 1}"
            write_dicom_mg(out / "dicom" / f"{p.image_id}.dcm", p.pixels, patient_id=p.patient_id,
                           study_uid=study_uid, laterality=p.laterality, monochrome1=bool(hash_bit(p.image_id)))
        truth["images"][p.image_id] = {
            "patient_id": p.patient_id, "laterality": p.laterality, "density": p.density, "finding": p.finding,
            "boxes": boxes, "lesions": [vars(x) for x in p.lesions], "masked": p.image_id in masked,
        }
    shutil.rmtree(staging)
    (out / "phantoms.json").write_text(json.dumps(truth, indent=1))
    return truth


def hash_bit(text: str) -> int:
    """A stable 0/1 from a name (Python's own hash is salted per process)."""
    return sum(text.encode()) % 2
