"""Readers of every format, canonical orientation, and clear errors for bad files."""

from __future__ import annotations

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mammolabel.errors import InputError
from mammolabel.io import (
    boxes_from_canonical,
    canonicalise,
    from_canonical,
    points_from_canonical,
    read_label,
    read_mammogram,
    to_canonical,
    write_dicom_mg,
    write_labelmap,
)
from mammolabel.io.image import Mammogram


def ramp(rows: int = 40, cols: int = 30) -> np.ndarray:
    """An asymmetric test image: values grow along rows and columns, with a bright block top-left."""
    img = np.add.outer(np.arange(rows), np.arange(cols) * 2).astype(np.float32)
    img[2:8, 3:6] = img.max() * 1.5
    return img / img.max()


@pytest.mark.parametrize("bits, dtype", [(8, np.uint8), (12, np.uint16), (16, np.uint16)])
def test_png_bit_depths(tmp_path, bits, dtype):
    values = np.round(ramp() * ((1 << bits) - 1)).astype(dtype)
    path = tmp_path / "img.png"
    Image.fromarray(values).save(path)
    image = read_mammogram(path)
    assert image.shape == (40, 30)
    assert image.meta["format"] == "png" and image.meta["bits"] == bits
    np.testing.assert_allclose(image.pixels, values / values.max(), atol=1e-6)


def test_pgm_sample_matches_png(pgm_dir, mias_dir):
    pgm = read_mammogram(pgm_dir / "mdb001.pgm")
    png = read_mammogram(mias_dir / "mdb001.png")
    assert pgm.shape == (1024, 1024) and pgm.meta["format"] == "pgm"
    np.testing.assert_array_equal(pgm.pixels, png.pixels)


def test_written_pgm(tmp_path):
    values = np.round(ramp() * 255).astype(np.uint8)
    Image.fromarray(values).save(tmp_path / "a.pgm")
    np.testing.assert_allclose(read_mammogram(tmp_path / "a.pgm").pixels, values / 255.0, atol=1e-6)


def test_nifti_and_nrrd_are_transposed_to_rows_cols(tmp_path):
    img = ramp()
    nib.save(nib.Nifti1Image(img.T[..., None], np.diag([0.2, 0.3, 1, 1])), tmp_path / "a.nii.gz")
    nrrd.write(str(tmp_path / "a.nrrd"), img.T[..., None].copy(), {"space directions": np.diag([0.3, 0.2, 1.0]),
                                                                    "space": "left-posterior-superior"})
    for name, spacing in (("a.nii.gz", (0.3, 0.2)), ("a.nrrd", (0.2, 0.3))):
        image = read_mammogram(tmp_path / name)
        np.testing.assert_allclose(image.pixels, img, atol=1e-6)
        assert image.meta["spacing"] == pytest.approx(spacing)


def _dicom(tmp_path, **kwargs) -> pydicom.Dataset:
    path = write_dicom_mg(tmp_path / "a.dcm", ramp(), patient_id="X", study_uid="1.2.3", laterality="L", **kwargs)
    return pydicom.dcmread(path)


def test_dicom_monochrome1_is_inverted_to_bright_dense(tmp_path):
    mono2 = read_mammogram(write_dicom_mg(tmp_path / "m2.dcm", ramp(), patient_id="X", study_uid="1.2.3",
                                          laterality="L"))
    mono1 = read_mammogram(write_dicom_mg(tmp_path / "m1.dcm", ramp(), patient_id="X", study_uid="1.2.3",
                                          laterality="R", monochrome1=True))
    assert mono1.meta["photometric"] == "MONOCHROME1"
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-3)
    np.testing.assert_allclose(mono2.pixels, ramp(), atol=1e-3)
    assert mono1.meta["laterality"] == "R" and mono2.meta["view"] == "MLO"
    assert mono2.meta["spacing"] == pytest.approx((0.1, 0.1))


def test_dicom_modality_lut_then_window(tmp_path):
    ds = _dicom(tmp_path)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    # A narrow window over the upper half of the rescaled range saturates the lower half.
    top = 2 * 4095 - 100
    ds.WindowCenter, ds.WindowWidth = top * 0.75, top * 0.5
    ds.save_as(tmp_path / "w.dcm")
    pixels = read_mammogram(tmp_path / "w.dcm").pixels
    raw = ds.pixel_array.astype(float) * 2 - 100
    assert pixels[raw < top * 0.5].max() == pytest.approx(0.0, abs=1e-3)
    assert pixels[raw > top * 0.99].min() > 0.97


def test_dicom_voi_lut_sequence_is_applied(tmp_path):
    ds = _dicom(tmp_path)
    del ds.WindowCenter, ds.WindowWidth
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [int(v) for v in (65535 - np.arange(4096) * 16)])  # LUTData: an inverting LUT
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "lut.dcm")
    np.testing.assert_allclose(read_mammogram(tmp_path / "lut.dcm").pixels, 1 - ramp(), atol=2e-3)


def test_dicom_folder_with_one_instance(tmp_path):
    folder = tmp_path / "study"
    write_dicom_mg(folder / "x" / "1.dcm", ramp(), patient_id="X", study_uid="1.2.3", laterality="L")
    assert read_mammogram(folder).shape == (40, 30)
    write_dicom_mg(folder / "x" / "2.dcm", ramp(), patient_id="X", study_uid="1.2.3", laterality="L")
    with pytest.raises(InputError, match="exactly one instance"):
        read_mammogram(folder)


def _bad_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "notes.txt").write_text("hello")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(good)
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[:40])
    Image.fromarray(np.dstack([np.zeros((20, 20)), np.ones((20, 20)), np.zeros((20, 20))]).astype(np.uint8) * 200).save(
        tmp_path / "colour.png")
    nib.save(nib.Nifti1Image(np.full((20, 20, 1), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii")
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 3), np.float32), np.eye(4)), tmp_path / "volume.nii")
    Image.fromarray(np.zeros((20, 3), np.uint8)).save(tmp_path / "sliver.png")
    ds = _dicom(tmp_path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    ds = _dicom(tmp_path)
    ds.NumberOfFrames = 3
    ds.save_as(tmp_path / "multiframe.dcm")
    ds = _dicom(tmp_path)
    ds.Rows = ds.Columns = 40000
    ds.save_as(tmp_path / "huge.dcm")
    return {
        "empty.png": "empty", "text.png": "cannot read", "notes.txt": "unsupported", "truncated.png": "cannot read",
        "colour.png": "colour", "nan.nii": "NaN", "volume.nii": "2D", "nopixels.dcm": "no pixel data",
        "multiframe.dcm": "multi-frame", "huge.dcm": "outside the supported range", "missing.png": "not found",
        "sliver.png": "outside the supported range",
    }


def test_bad_files_raise_one_clear_error_naming_the_file(tmp_path):
    for name, message in _bad_files(tmp_path).items():
        with pytest.raises(InputError, match=message) as info:
            read_mammogram(tmp_path / name)
        assert name in str(info.value)


def test_huge_png_header_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (9000, 9000)).save(path)
    with pytest.raises(InputError):
        read_mammogram(path)


def test_canonical_round_trip_is_pixel_exact(tmp_path):
    img = ramp(60, 50)
    img[:, 25:] *= 0.05  # breast on the left half...
    right = Mammogram(img[:, ::-1].copy(), {})  # ...mirrored: chest wall on the right
    for image, flipped in ((Mammogram(img, {}), False), (right, True)):
        canon = canonicalise(image)
        assert canon.meta["flipped"] is flipped
        np.testing.assert_array_equal(canon.pixels, img)
        mask = (np.random.default_rng(0).random(image.shape) > 0.7).astype(np.uint8)
        np.testing.assert_array_equal(from_canonical(to_canonical(mask, flipped), flipped), mask)
        path = write_labelmap(tmp_path / "m.nrrd", from_canonical(to_canonical(mask, flipped), flipped))
        np.testing.assert_array_equal(read_label(path, image.shape), mask)


def test_point_and_box_mapping_follows_the_flip():
    width = 100
    assert points_from_canonical([[10, 7]], True, width) == [[89, 7]]
    assert points_from_canonical([[10, 7]], False, width) == [[10, 7]]
    assert boxes_from_canonical([[10, 5, 20, 9]], True, width) == [[79, 5, 89, 9]]


def test_labelmap_file_is_w_by_h_by_1_uint8(tmp_path):
    lab = np.zeros((40, 30), np.uint8)
    lab[5:10, 20:25] = 2
    write_labelmap(tmp_path / "l.nrrd", lab)
    data, header = nrrd.read(str(tmp_path / "l.nrrd"))
    assert data.shape == (30, 40, 1) and data.dtype == np.uint8
    assert data[22, 7, 0] == 2 and header["space"] == "left-posterior-superior"


def test_label_of_wrong_size_is_refused(tmp_path):
    write_labelmap(tmp_path / "l.nrrd", np.zeros((30, 40), np.uint8))
    with pytest.raises(InputError, match="W x H"):
        read_label(tmp_path / "l.nrrd", (40, 30))


def test_dicom_with_only_imager_pixel_spacing(tmp_path):
    ds = _dicom(tmp_path)
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.07, 0.065]
    ds.save_as(tmp_path / "ips.dcm")
    assert read_mammogram(tmp_path / "ips.dcm").meta["spacing"] == pytest.approx((0.07, 0.065))


def test_load_mammogramd_mirrors_the_image_and_its_mask_together(tmp_path):
    from mammolabel.transforms import LoadMammogramd

    img = ramp(60, 50)
    img[:, 25:] *= 0.05
    mirrored = img[:, ::-1].copy()  # chest wall on the right
    Image.fromarray(np.round(mirrored * 255).astype(np.uint8)).save(tmp_path / "r.png")
    mask = np.zeros(mirrored.shape, np.uint8)
    mask[5:9, 40:44] = 1  # near the right edge of the stored image
    label = write_labelmap(tmp_path / "m.nrrd", mask)
    d = LoadMammogramd(keys="image", label_keys="label")({"image": str(tmp_path / "r.png"), "label": str(label)})
    image = d["image"]
    assert tuple(image.shape) == (1, 60, 50) and image.meta["flipped"] is True
    np.testing.assert_allclose(image[0].numpy(), img, atol=1 / 255)
    assert tuple(d["label"].shape) == (1, 60, 50)
    rows, cols = np.nonzero(d["label"][0].numpy())
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 8, 50 - 44, 50 - 41)
