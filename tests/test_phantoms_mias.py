"""Synthetic phantoms and the MIAS importer."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest

from mammolabel.cli import main
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.mias import import_mias, parse_info
from mammolabel.data.phantoms import make_phantom, write_phantom_study
from mammolabel.errors import InputError
from mammolabel.io import read_label, read_mammogram


def test_phantoms_are_deterministic_and_varied():
    a, b = make_phantom(5, seed=2), make_phantom(5, seed=2)
    np.testing.assert_array_equal(a.pixels, b.pixels)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert not np.array_equal(a.pixels, make_phantom(5, seed=3).pixels)
    findings = {make_phantom(i).finding for i in range(14)}
    assert findings == {"normal", "benign", "malignant"}
    kinds = {(les.kind, les.shape) for i in range(30) for les in make_phantom(i).lesions}
    assert {("mass", "round"), ("mass", "spiculated"), ("calcification", "cluster")} <= kinds


def test_phantom_lesion_masks_are_exact_and_brighter():
    for i in range(20):
        p = make_phantom(i)
        assert p.pixels.dtype == np.float32 and 0 <= p.pixels.min() and p.pixels.max() <= 1
        if p.finding == "normal":
            assert p.mask.sum() == 0 and not p.lesions
            continue
        assert p.mask.sum() > 0 and len(p.boxes) >= 1
        ring = np.zeros_like(p.mask, bool)
        x0, y0, x1, y1 = p.boxes[0]
        ring[max(0, y0 - 15) : y1 + 16, max(0, x0 - 15) : x1 + 16] = True
        ring &= p.mask == 0
        if p.lesions[0].kind == "mass":
            assert p.pixels[p.mask > 0].mean() > p.pixels[ring].mean()
        else:  # calcification specks are the brightest spots around
            assert p.pixels[p.mask > 0].max() > np.percentile(p.pixels[ring], 99.5)
        cx, cy = p.lesions[0].centre
        assert x0 - 2 <= cx <= x1 + 2 and y0 - 2 <= cy <= y1 + 2


def test_phantom_study_png_dicom_and_truth(tmp_path):
    truth = write_phantom_study(tmp_path / "s", n=6, seed=4, mask_fraction=0.5)
    again = write_phantom_study(tmp_path / "t", n=6, seed=4, mask_fraction=0.5)
    assert truth == again
    store = MammoDatastore(tmp_path / "s")
    inventory = collect_labels(store)
    lesion_ids = [k for k, v in truth["images"].items() if v["finding"] != "normal"]
    masked = [k for k in lesion_ids if truth["images"][k]["masked"]]
    assert inventory.counts["mask"] == len(masked) == round(0.5 * len(lesion_ids))
    assert inventory.counts["box"] == len(lesion_ids) - len(masked)
    for image_id, info in truth["images"].items():
        png = read_mammogram(tmp_path / "s" / f"{image_id}.png")
        ds = pydicom.dcmread(tmp_path / "s" / "dicom" / f"{image_id}.dcm")
        assert ds.Modality == "MG" and ds.ImageLaterality == info["laterality"] and ds.BitsStored == 12
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2" and ds.file_meta.TransferSyntaxUID.is_little_endian
        dcm = read_mammogram(tmp_path / "s" / "dicom" / f"{image_id}.dcm")
        np.testing.assert_allclose(dcm.pixels, png.pixels, atol=1e-3)
        if info["finding"] != "normal":
            truth_mask = read_label(tmp_path / "s" / "truth" / f"{image_id}.nrrd", png.shape)
            x0, y0, x1, y1 = info["boxes"][0]
            assert truth_mask[y0 : y1 + 1, x0 : x1 + 1].any() and truth_mask.sum() > 0


def test_info_txt_rows_parse_and_a_malformed_row_is_refused_with_its_line_number(tmp_path):
    good = ("header line\n"
            "mdb001 G CIRC B 535 425 197\n"
            "mdb001 G CALC M 100 200 30\n"
            "mdb002 G NORM\n"
            "mdb006 G CALC B\n")
    (tmp_path / "Info.txt").write_text(good)
    films = parse_info(tmp_path / "Info.txt")
    assert sorted(films) == ["mdb001", "mdb002", "mdb006"]
    assert films["mdb001"].finding == "malignant" and len(films["mdb001"].lesions) == 2
    assert films["mdb002"].finding == "normal" and films["mdb006"].lesions[0].centre is None
    for bad in ("mdb003 X CIRC B 1 2 3", "mdb004 G CIRC B 12 x 3", "mdb005 G NORM B"):
        (tmp_path / "Info.txt").write_text(good + bad + "\n")
        with pytest.raises(InputError, match=r"Info.txt:6: malformed row"):
            parse_info(tmp_path / "Info.txt")


def test_import_mias_refuses_a_malformed_row_and_leaves_the_datastore_as_it_was(tmp_path, pgm_dir, capsys):
    src = tmp_path / "mias"
    src.mkdir()
    shutil.copy(pgm_dir / "mdb001.pgm", src / "mdb001.pgm")
    (src / "Info.txt").write_text("mdb001 G NORM\n")
    assert main(["import-mias", str(src), str(tmp_path / "ds")]) == 0
    before = {p.relative_to(tmp_path / "ds"): p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    (src / "Info.txt").write_text("mdb001 G CIRC B 5 5\n")
    capsys.readouterr()
    assert main(["import-mias", str(src), str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Info.txt:1: malformed row" in err
    after = {p.relative_to(tmp_path / "ds"): p.read_bytes() for p in (tmp_path / "ds").rglob("*") if p.is_file()}
    assert after == before


def test_import_mias_from_pgm_and_png(tmp_path, pgm_dir, mias_dir):
    src = tmp_path / "mias"
    src.mkdir()
    lines = [line for line in (mias_dir / "Info.txt").read_text().splitlines()
             if line.startswith(("mdb001 ", "mdb002 ", "mdb028 "))]
    (src / "Info.txt").write_text("\n".join(lines + ["mdb777 G NORM"]) + "\n")
    for ref in ("mdb001", "mdb028"):
        (src / f"{ref}.pgm").write_bytes((pgm_dir / f"{ref}.pgm").read_bytes())
    (src / "mdb002.png").write_bytes((mias_dir / "mdb002.png").read_bytes())
    summary = import_mias(src, tmp_path / "ds")
    assert summary["films"] == 3 and summary["missing"] == 1 and len(summary["problems"]) == 1
    recs = {r.image_id: r for r in collect_labels(MammoDatastore(tmp_path / "ds")).images}
    assert set(recs) == {"mdb001", "mdb002", "mdb028"}
    assert recs["mdb001"].finding == "benign" and recs["mdb001"].patient_id == recs["mdb002"].patient_id
    # Info.txt: mdb001 CIRC at x=535, y=425 (origin bottom-left), radius 197 -> row 1023 - 425.
    assert recs["mdb001"].points == [[535.0, 598.0]]
    mask = read_label(recs["mdb001"].mask_path, (1024, 1024))
    assert mask[598, 535] == 1 and mask[598, 535 + 196] == 1 and mask[598, 535 + 199] == 0
    assert recs["mdb001"].boxes == [[338, 401, 732, 795]]
    np.testing.assert_array_equal(read_mammogram(recs["mdb001"].image_path).pixels,
                                  read_mammogram(mias_dir / "mdb001.png").pixels)
    # Importing again gives the same datastore (up to time stamps).
    before = json.loads((tmp_path / "ds" / "datastore_v2.json").read_text())
    import_mias(src, tmp_path / "ds")
    after = json.loads((tmp_path / "ds" / "datastore_v2.json").read_text())

    def without_ts(store: dict) -> dict:
        return {k: {t: dict(v["info"], ts=0) for t, v in obj["labels"].items()} | {"image": dict(obj["image"]["info"], ts=0)}
                for k, obj in store["objects"].items()}

    assert without_ts(after) == without_ts(before)


@pytest.mark.mias
def test_mias_development_import_counts(mias_datastore):
    inventory = collect_labels(MammoDatastore(mias_datastore))
    assert len(inventory.images) == 216
    findings = [r.finding for r in inventory.images]
    assert findings.count("normal") == 138  # SOURCE.md: 138 normal films
    assert sum(len(r.points) for r in inventory.images) == 82  # 47 benign + 35 malignant located lesions
    assert inventory.counts["mask"] == inventory.counts["box"] == sum(1 for r in inventory.images if r.points)
