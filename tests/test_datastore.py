"""The weak-label datastore: validated atomic saves, label reader, counts, splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from helpers import tree_digest

from mammolabel.data.datastore import MammoDatastore, collect_labels
from mammolabel.data.labels import boxes_from_mask
from mammolabel.data.split import split_by_patient
from mammolabel.errors import InputError, NotFoundError
from mammolabel.io import read_label, write_labelmap


def test_phantom_datastore_has_every_kind_of_label(phantom_dir):
    inventory = collect_labels(MammoDatastore(phantom_dir))
    truth = json.loads((phantom_dir / "phantoms.json").read_text())["images"]
    assert len(inventory.images) == 12
    assert inventory.counts["finding"] == 12
    lesions = [k for k, v in truth.items() if v["finding"] != "normal"]
    assert inventory.counts["mask"] == len(lesions)
    for rec in inventory.images:
        assert rec.finding == truth[rec.image_id]["finding"]
        assert rec.boxes == truth[rec.image_id]["boxes"]
        assert rec.patient_id == truth[rec.image_id]["patient_id"]
    used, report = inventory.select("mask")
    assert report["used"] == len(lesions) and report["skipped"] == 12 - len(lesions)
    assert {r.image_id for r in used} == set(lesions)


def test_box_label_from_a_rough_paint_stroke(phantom_copy, tmp_path):
    store = MammoDatastore(phantom_copy)
    shape = store.image_shape("phantom_001")
    stroke = np.zeros(shape, np.uint8)
    stroke[100:130, 50:52] = 1  # a rough vertical stroke...
    stroke[128:131, 50:90] = 1  # ...joined to a horizontal one: one component
    stroke[300:305, 200:210] = 1  # and a second blob
    store.save_label("phantom_001", str(write_labelmap(tmp_path / "s.nrrd", stroke)), "box", {})
    rec = next(r for r in collect_labels(MammoDatastore(phantom_copy)).images if r.image_id == "phantom_001")
    assert rec.boxes == [[50, 100, 89, 130], [200, 300, 209, 304]]
    assert "box" in rec.kinds and rec.points[0] == [69.5, 115.0]
    np.testing.assert_array_equal(read_label(rec.box_path, shape), stroke)


def test_finding_from_params_or_json_file(phantom_copy, tmp_path):
    store = MammoDatastore(phantom_copy)
    store.save_label("phantom_001", "", "finding", {"finding": "Malignant", "lesion_types": ["mass"]})
    doc = tmp_path / "f.json"
    doc.write_text(json.dumps({"finding": "benign", "points": [[10, 20]]}))
    store.save_label("phantom_004", str(doc), "finding", {})
    recs = {r.image_id: r for r in collect_labels(MammoDatastore(phantom_copy)).images}
    assert recs["phantom_001"].finding == "malignant" and recs["phantom_001"].lesion_types == ["mass"]
    assert recs["phantom_004"].finding == "benign" and recs["phantom_004"].points == [[10.0, 20.0]]


@pytest.mark.parametrize(
    "image, tag, content, info, error",
    [
        ("phantom_001", "finding", None, {"finding": "suspicious"}, InputError),
        ("phantom_001", "finding", b"{not json", {}, InputError),
        ("phantom_001", "final", b"", {}, InputError),
        ("phantom_001", "final", b"garbage", {}, InputError),
        ("phantom_001", "box", "empty-mask", {}, InputError),
        ("phantom_001", "final", "wrong-size", {}, InputError),
        ("nosuch", "final", "good", {}, NotFoundError),
        ("../phantom_001", "final", "good", {}, InputError),
        ("phantom_001", "../../etc", "good", {}, InputError),
    ],
)
def test_bad_labels_are_refused_and_change_nothing(phantom_copy, tmp_path, image, tag, content, info, error):
    store = MammoDatastore(phantom_copy)
    shape = store.image_shape("phantom_001")
    path = tmp_path / ("label.json" if tag == "finding" else "label.nrrd")
    if content == "empty-mask":
        write_labelmap(path, np.zeros(shape, np.uint8))
    elif content == "wrong-size":
        write_labelmap(path, np.ones((shape[0] + 1, shape[1]), np.uint8))
    elif content == "good":
        write_labelmap(path, np.ones(shape, np.uint8))
    elif content is not None:
        path.write_bytes(content)
    before = tree_digest(phantom_copy)
    with pytest.raises(error):
        store.save_label(image, str(path) if content is not None else "", tag, info)
    assert tree_digest(phantom_copy) == before


def test_bad_image_upload_is_refused(phantom_copy, tmp_path):
    store = MammoDatastore(phantom_copy)
    (tmp_path / "x.png").write_bytes(b"")
    before = tree_digest(phantom_copy)
    with pytest.raises(InputError):
        store.add_image("x", str(tmp_path / "x.png"), {})
    with pytest.raises(InputError):
        store.add_image("../x", str(phantom_copy / "phantom_000.png"), {})
    assert tree_digest(phantom_copy) == before


def test_replacing_a_label_with_another_format_leaves_one_file(phantom_copy, tmp_path):
    from PIL import Image

    store = MammoDatastore(phantom_copy)
    shape = store.image_shape("phantom_000")
    mask = np.zeros(shape, np.uint8)
    mask[10:20, 10:20] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    store.save_label("phantom_000", str(tmp_path / "m.png"), "final", {})
    files = sorted(p.name for p in (phantom_copy / "labels" / "final").glob("phantom_000.*"))
    assert files == ["phantom_000.png"]
    assert boxes_from_mask(read_label(phantom_copy / "labels/final/phantom_000.png")) == [[10, 10, 19, 19]]


def test_opening_removes_only_the_temporary_files_of_interrupted_writes(phantom_copy):
    stale = [phantom_copy / "labels" / "box" / ".phantom_001.nrrd.ab_9xy2z.tmp.nrrd",
             phantom_copy / ".datastore_v2.json.q1w2e3r4.tmp.json"]
    kept = [phantom_copy / "labels" / "final" / ".notes.tmp", phantom_copy / "labels" / "final" / "phantom_001.tmp.png",
            phantom_copy / "truth" / ".phantom_001.nrrd.ab_9xy2z.tmp.nrrd",  # another writer's folder
            phantom_copy / ".notes.v2_final.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    MammoDatastore(phantom_copy, read_only=True)
    assert all(p.exists() for p in stale)  # a read-only open changes nothing
    store = MammoDatastore(phantom_copy)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    assert "phantom_001" in store.list_images()


def test_split_is_patient_wise_stratified_and_deterministic(mias_datastore):
    records = collect_labels(MammoDatastore(mias_datastore)).images
    train, val = split_by_patient(records, 0.25, seed=3)
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    assert len(train) + len(val) == len(records)
    for finding in ("normal", "benign", "malignant"):
        assert any(r.finding == finding for r in val) and any(r.finding == finding for r in train)
    again = split_by_patient(records, 0.25, seed=3)[1]
    assert [r.image_id for r in again] == [r.image_id for r in val]
    assert 0.15 < len(val) / len(records) < 0.35


def test_split_of_a_few_patients_still_validates(phantom_dir):
    records = collect_labels(MammoDatastore(phantom_dir, read_only=True)).images[:8]
    for rec, finding in zip(records, ["malignant"] * 2 + ["benign"] * 2 + ["normal"] * 4):
        rec.finding = finding
    by_patient = {r.patient_id for r in records}
    assert len(by_patient) == 4  # each finding group alone rounds to no validation patient at 20 %
    train, val = split_by_patient(records, 0.2, seed=0)
    assert len({r.patient_id for r in val}) == 1 and {r.finding for r in val} == {"normal"}
    assert {r.finding for r in train} == {"malignant", "benign", "normal"}
    assert split_by_patient(records, 0.1, seed=0)[1] == []  # 0.4 patient rounds to none


def test_an_image_with_a_bad_finding_in_its_info_is_skipped_and_counted(phantom_copy):
    store = MammoDatastore(phantom_copy)
    store.remove_label("phantom_003", "finding")
    with pytest.raises(InputError, match="field 'finding'"):
        store.update_image_info("phantom_003", {"finding": "suspicious"})
    index = phantom_copy / "datastore_v2.json"  # a value edited into the index by hand is read, skipped, counted
    doc = json.loads(index.read_text())
    doc["objects"]["phantom_003"]["image"]["info"]["finding"] = "suspicious"
    index.write_text(json.dumps(doc))
    inventory = collect_labels(MammoDatastore(phantom_copy))
    assert inventory.counts["invalid_finding"] == 1 and len(inventory.images) == 11
    assert "phantom_003" not in {r.image_id for r in inventory.images}  # not trained as "no finding"
