"""``prepare-pairs``: 3D pairs (NIfTI, NRRD, MetaImage) and 2D pictures (PNG, TIFF; grey or RGB; instance masks)
-> the layout the bundle's trainer reads; pairs on different grids refused naming both files; patient folds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from monaiunetseg.cli import main as cli_main
from monaiunetseg.training.datalist import load_split
from monaiunetseg.training.pairs import PairError, find_pairs, patient_of, prepare_pairs

from test_nrrd_mha import sitk_image

RNG = np.random.default_rng(0)


def volume(shape=(24, 20, 6)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A noisy scan, an instance label (two objects: 1 and 2) and a 1 x 1.5 x 3 mm affine."""
    image = RNG.normal(100, 10, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[4:10, 4:10, 1:4] = 1
    label[14:20, 10:16, 2:5] = 2
    image[label > 0] += 80
    return image, label, np.diag([1.0, 1.5, 3.0, 1.0])


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def test_3d_pairs_in_two_folders_nifti_nrrd_and_mha(tmp_path: Path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    expected = {}
    for i, fmt in enumerate(["nii.gz", "nrrd", "mha"]):
        image, label, affine = volume()
        expected[f"case{i}"] = (label > 0, affine)
        if fmt == "nii.gz":
            save_nifti(image, affine, images / f"case{i}.nii.gz")
            save_nifti(label, affine, labels / f"case{i}_seg.nii.gz")
        else:
            images.mkdir(exist_ok=True), labels.mkdir(exist_ok=True)
            sitk.WriteImage(sitk_image(image, affine), str(images / f"case{i}.{fmt}"))
            sitk.WriteImage(sitk_image(label, affine, np.uint8), str(labels / f"case{i}_label.{fmt}"))
    out = tmp_path / "prepared"
    assert cli_main(["prepare-pairs", str(images), str(labels), "-o", str(out), "--folds", "3"]) == 0

    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["n_folds"] == 3 and len(datalist["training"]) == 3
    assert sorted(e["fold"] for e in datalist["training"]) == [0, 1, 2]  # a pair = a patient
    for e in datalist["training"]:
        lab = nib.load(out / e["label"])
        mask, affine = expected[e["folder"]]
        np.testing.assert_allclose(lab.affine, affine, atol=1e-4)
        assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1}  # instances -> foreground 1
        np.testing.assert_array_equal(np.asarray(lab.dataobj) > 0, mask)
        assert nib.load(out / e["image"]).shape == mask.shape
    rows = list(csv.DictReader((out / "dataset_summary.csv").open()))
    assert [r["case"] for r in rows] == ["case0", "case1", "case2"]
    assert all(int(r["foreground_voxels"]) == 6 * 6 * 3 * 2 for r in rows)
    assert float(rows[0]["foreground_ml"]) == pytest.approx(216 * 4.5 / 1000)
    train, val = load_split(out, val_fold=1)  # what the bundle's trainer reads
    assert len(train) == 2 and len(val) == 1 and Path(val[0]["image"]).is_file()


def test_2d_png_tif_pairs_in_one_folder(tmp_path: Path):
    """Grey PNG with an instance-labelled TIF mask, RGB PNG with a binary PNG mask: 1-slice volumes, unit spacing."""
    src = tmp_path / "src"
    src.mkdir()
    grey = RNG.integers(0, 255, (30, 40), dtype=np.uint8)
    instances = np.zeros((30, 40), np.uint16)
    instances[2:8, 3:9], instances[20:25, 30:38] = 7, 300
    Image.fromarray(grey).save(src / "cell_a.png")
    tifffile.imwrite(src / "cell_a_mask.tif", instances)
    rgb = np.stack([grey, grey // 2, np.zeros_like(grey)], axis=-1)
    Image.fromarray(rgb).save(src / "cell_b.png")
    Image.fromarray(((instances > 0) * 255).astype(np.uint8)).save(src / "cell_b_label.png")
    out = tmp_path / "prepared"
    assert cli_main(["prepare-pairs", str(src), "-o", str(out), "--folds", "2"]) == 0

    entries = {e["folder"]: e for e in json.loads((out / "datalist.json").read_text())["training"]}
    assert set(entries) == {"cell_a", "cell_b"} and {e["kind"] for e in entries.values()} == {"2d"}
    a_img, a_lab = nib.load(out / entries["cell_a"]["image"]), nib.load(out / entries["cell_a"]["label"])
    assert a_img.shape == (30, 40, 1) and np.allclose(a_img.affine, np.eye(4))
    np.testing.assert_array_equal(np.asarray(a_img.dataobj)[:, :, 0], grey)  # rows x columns, as the picture
    np.testing.assert_array_equal(np.asarray(a_lab.dataobj)[:, :, 0], instances > 0)
    b_img = np.asarray(nib.load(out / entries["cell_b"]["image"]).dataobj)[:, :, 0]
    np.testing.assert_allclose(b_img, grey * 0.299 + (grey // 2) * 0.587, rtol=1e-5)  # RGB -> luma
    b_lab = np.asarray(nib.load(out / entries["cell_b"]["label"]).dataobj)[:, :, 0]
    np.testing.assert_array_equal(b_lab, instances > 0)


def test_pairs_on_different_grids_are_refused_naming_both_files(tmp_path: Path):
    image, label, affine = volume()
    img = save_nifti(image, affine, tmp_path / "a" / "x.nii.gz")
    lab = save_nifti(label[:, :, :5], affine, tmp_path / "b" / "x.nii.gz")
    with pytest.raises(PairError) as info:
        prepare_pairs(tmp_path / "a", tmp_path / "out", tmp_path / "b", n_folds=2)
    assert str(img) in str(info.value) and str(lab) in str(info.value) and "different grids" in str(info.value)

    save_nifti(label, affine @ np.diag([1.0, 1.0, 2.0, 1.0]), lab)  # same shape, other spacing
    with pytest.raises(PairError, match="geometry differs"):
        prepare_pairs(tmp_path / "a", tmp_path / "out", tmp_path / "b", n_folds=2)

    pics = tmp_path / "pics"
    pics.mkdir()
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(pics / "p.png")
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(pics / "p_mask.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(pics / "q.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(pics / "q_mask.png")
    err = tmp_path / "err.txt"
    import contextlib

    with err.open("w") as fh, contextlib.redirect_stderr(fh):
        assert cli_main(["prepare-pairs", str(pics), "-o", str(tmp_path / "out2"), "--folds", "2"]) == 2
    message = err.read_text()
    assert str(pics / "p.png") in message and str(pics / "p_mask.png") in message, message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2" / "datalist.json").exists()


def test_unmatched_files_and_patient_groups(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ["pt1_a", "pt1_b", "pt2_a", "pt3_a"]:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / f"{name}.png")
        Image.fromarray(np.ones((8, 8), np.uint8)).save(src / f"{name}_mask.png")
    rows, _ = prepare_pairs(src, tmp_path / "out", n_folds=2, group_regex=r"^(pt\d+)_")
    fold = {r["case"]: r["fold"] for r in rows}
    assert fold["pt1_a"] == fold["pt1_b"]  # one patient, one fold
    assert {r["patient"] for r in rows} == {"pt1", "pt2", "pt3"}
    with pytest.raises(PairError, match="does not match"):
        patient_of("other", r"^(pt\d+)_")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(src / "lonely.png")
    with pytest.raises(PairError, match="lonely.png"):
        find_pairs(src)


@pytest.mark.parametrize("kind", ["3d", "2d"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_few_pairs_get_one_fold_per_case_by_default(tmp_path: Path, kind: str, n: int):
    """Issue 29: a site with 2-4 labelled cases needs no --folds: one fold per case, so one validates and the
    others train, and the bundle's split reads it."""
    src = tmp_path / "src"
    for i in range(n):
        if kind == "3d":
            image, label, affine = volume()
            save_nifti(image, affine, src / f"case{i}.nii.gz")
            save_nifti(label, affine, src / f"case{i}_seg.nii.gz")
        else:
            src.mkdir(exist_ok=True)
            Image.fromarray(RNG.integers(0, 255, (16, 16), dtype=np.uint8)).save(src / f"pic{i}.png")
            Image.fromarray(np.eye(16, dtype=np.uint8) * 255).save(src / f"pic{i}_mask.png")
    out = tmp_path / "prepared"
    assert cli_main(["prepare-pairs", str(src), "-o", str(out)]) == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert datalist["n_folds"] == n
    assert sorted(e["fold"] for e in datalist["training"]) == list(range(n))
    assert {e["kind"] for e in datalist["training"]} == {kind}
    train, val = load_split(out, val_fold=0)
    assert len(val) == 1 and len(train) == n - 1


def test_a_single_pair_gets_a_one_line_message(tmp_path: Path, capsys):
    image, label, affine = volume()
    save_nifti(image, affine, tmp_path / "src" / "only.nii.gz")
    save_nifti(label, affine, tmp_path / "src" / "only_label.nii.gz")
    assert cli_main(["prepare-pairs", str(tmp_path / "src"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 patient(s): training needs at least 2" in err, err
    assert not (tmp_path / "out").exists()
    with pytest.raises(PairError, match="add another image/label pair"):
        prepare_pairs(tmp_path / "src", tmp_path / "out")
