"""prepare-lgg on real shared LGG patients: slice order, labels, alignment, folds, broken patients."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile

from monaiunetseg.cli import main as cli_main
from monaiunetseg.geometry import kaggle_affine
from monaiunetseg.training.lgg import LGGPatientError, list_patients, read_patient, slice_files
from monaiunetseg.training.prepare import assign_folds, prepare_lgg

from conftest import SMALL_PATIENTS


def test_slice_order_is_numeric(kaggle_dir: Path):
    folder = kaggle_dir / SMALL_PATIENTS[1]
    numbers = [n for n, _, _ in slice_files(folder)]
    assert numbers == sorted(numbers) == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 10  # so that text order (1, 10, 11, 2) would differ
    text_order = sorted(numbers, key=str)
    assert text_order != numbers


def test_volume_slices_match_tiff_files(kaggle_dir: Path, prepared_small: Path):
    name = SMALL_PATIENTS[1]
    flair = np.asarray(nib.load(prepared_small / "images" / f"{name}_flair.nii.gz").dataobj)
    three = np.asarray(nib.load(prepared_small / "images" / f"{name}_3ch.nii.gz").dataobj)
    label = np.asarray(nib.load(prepared_small / "labels" / f"{name}_label.nii.gz").dataobj)
    n = flair.shape[2]
    for k in (0, 1, 9, n - 1):  # slice k of the volume is file number k + 1
        tif = tifffile.imread(kaggle_dir / name / f"{name}_{k + 1}.tif")
        mask = tifffile.imread(kaggle_dir / name / f"{name}_{k + 1}_mask.tif")
        np.testing.assert_array_equal(flair[:, :, k], tif[:, :, 1].T)  # (col, row) = TIFF (row, col) transposed
        np.testing.assert_array_equal(three[:, :, k, :], tif.transpose(1, 0, 2))
        np.testing.assert_array_equal(label[:, :, k], (mask.T > 0).astype(np.uint8))


def test_labels_are_binary_and_geometry_is_the_convention(prepared_small: Path):
    for name in SMALL_PATIENTS:
        img = nib.load(prepared_small / "labels" / f"{name}_label.nii.gz")
        data = np.asarray(img.dataobj)
        assert set(np.unique(data).tolist()) <= {0, 1}
        assert data.dtype == np.uint8
        assert data.any(), f"{name} should have tumour voxels"
        np.testing.assert_allclose(img.affine, kaggle_affine(data.shape))
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 3.0))


def test_image_label_alignment_on_tumour_slice(prepared_small: Path):
    """On the slice with most tumour, FLAIR is brighter inside the mask than in the rest of the brain."""
    name = SMALL_PATIENTS[0]
    flair = np.asarray(nib.load(prepared_small / "images" / f"{name}_flair.nii.gz").dataobj).astype(float)
    label = np.asarray(nib.load(prepared_small / "labels" / f"{name}_label.nii.gz").dataobj).astype(bool)
    k = int(label.sum(axis=(0, 1)).argmax())
    inside = flair[:, :, k][label[:, :, k]]
    brain = flair[:, :, k][(flair[:, :, k] > 20) & ~label[:, :, k]]
    assert inside.mean() > brain.mean() * 1.2
    shifted = np.roll(label[:, :, k], 40, axis=0)  # a misaligned mask would not show the contrast as well
    assert inside.mean() > flair[:, :, k][shifted].mean()


def test_datalist_folds_disjoint_and_complete(prepared_small: Path):
    datalist = json.loads((prepared_small / "datalist.json").read_text())
    entries = datalist["training"]
    assert sorted(e["folder"] for e in entries) == sorted(SMALL_PATIENTS)
    assert len({e["patient"] for e in entries}) == len(entries)
    assert sorted(e["fold"] for e in entries) == [0, 1, 2]
    for e in entries:
        assert (prepared_small / e["image"]).is_file() and (prepared_small / e["label"]).is_file()
        assert "grade" in e and "histological_type" in e  # carried from data.csv


def test_folds_on_all_patients_are_stratified_and_stable(kaggle_dir: Path):
    folders = sorted(p.name for p in kaggle_dir.iterdir() if re.match(r"TCGA_", p.name))
    folds = assign_folds(folders, 5, seed=0)
    assert folds == assign_folds(list(reversed(folders)), 5, seed=0)  # order of discovery does not matter
    assert set(folds) == set(folders)
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1
    for inst in {f.split("_")[1] for f in folders}:
        members = [folds[f] for f in folders if f.split("_")[1] == inst]
        counts = np.bincount(members, minlength=5)
        assert counts.max() - counts.min() <= 1, f"institution {inst} not spread over folds: {counts}"
    assert assign_folds(folders, 5, seed=1) != folds


def test_rerun_is_idempotent(small_kaggle_dir: Path, tmp_path: Path):
    results, _ = prepare_lgg(small_kaggle_dir, tmp_path, n_folds=3, progress=False)
    assert not any(r.skipped for r in results)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")}
    results2, _ = prepare_lgg(small_kaggle_dir, tmp_path, n_folds=3, progress=False)
    assert all(r.skipped for r in results2)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")} == mtimes
    assert not [p for p in tmp_path.rglob("*") if ".part" in p.name]


def _broken_copy(src: Path, dst_root: Path, breakage: str) -> Path:
    dst = dst_root / src.name
    shutil.copytree(src, dst)
    if breakage == "missing_mask":
        (dst / f"{src.name}_3_mask.tif").unlink()
    elif breakage == "extra_mask":
        shutil.copy(dst / f"{src.name}_3_mask.tif", dst / f"{src.name}_999_mask.tif")
    elif breakage == "unreadable":
        (dst / f"{src.name}_4.tif").write_bytes(b"this is not a tiff")
    elif breakage == "wrong_shape":
        tifffile.imwrite(dst / f"{src.name}_5.tif", np.zeros((128, 128, 3), np.uint8))
    elif breakage == "no_slices":
        for f in dst.iterdir():
            f.unlink()
    return dst


@pytest.mark.parametrize(
    "breakage,message",
    [
        ("missing_mask", r"slice\(s\) \[3\] have no _mask.tif"),
        ("extra_mask", r"mask\(s\) for slice\(s\) \[999\] have no image"),
        ("unreadable", r"_4.tif: unreadable TIFF"),
        ("wrong_shape", r"_5.tif: shape \(128, 128, 3\), expected \(256, 256, 3\)"),
        ("no_slices", r"no slices"),
    ],
)
def test_broken_patient_is_reported_and_skipped(kaggle_dir: Path, tmp_path: Path, capsys, breakage, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = SMALL_PATIENTS[2]
    shutil.copytree(kaggle_dir / good, raw / good)
    broken = _broken_copy(kaggle_dir / SMALL_PATIENTS[1], raw, breakage)
    with pytest.raises(LGGPatientError, match=message):
        read_patient(broken)
    code = cli_main(["prepare-lgg", str(raw), str(tmp_path / "out"), "--quiet", "--folds", "2"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(rf"FAILED  {broken.name}: .*{message}", out)
    assert f"ok      {good}:" in out
    assert "1 patients ready" in out and "1 failed" in out
    datalist = json.loads((tmp_path / "out" / "datalist.json").read_text())
    assert [e["folder"] for e in datalist["training"]] == [good]
    assert not (tmp_path / "out" / "labels" / f"{broken.name}_label.nii.gz").exists()


def test_output_dir_must_differ_from_input(small_kaggle_dir: Path):
    with pytest.raises(ValueError, match="must differ"):
        prepare_lgg(small_kaggle_dir, small_kaggle_dir, progress=False)


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path):
    from monaiunetseg.files import atomic_path

    target = tmp_path / "x.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_subset_prepares_only_the_first_patients_of_each_fold(small_kaggle_dir: Path, tmp_path: Path, capsys):
    """``prepare-lgg --subset 1`` with 2 folds over the 3 small patients: one patient per fold, in the folds the
    full preparation gives them, and nothing else read or written."""
    _, full_path = prepare_lgg(small_kaggle_dir, tmp_path / "full", n_folds=2, progress=False)
    full = {e["folder"]: e["fold"] for e in json.loads(full_path.read_text())["training"]}
    assert sorted(full.values()) == [0, 0, 1]
    out = tmp_path / "subset"
    assert cli_main(["prepare-lgg", str(small_kaggle_dir), str(out), "--folds", "2", "--subset", "1", "--quiet"]) == 0
    assert "2 patients ready" in capsys.readouterr().out
    datalist = json.loads((out / "datalist.json").read_text())
    entries = {e["folder"]: e["fold"] for e in datalist["training"]}
    expected = {min(f for f, k in full.items() if k == fold): fold for fold in (0, 1)}
    assert entries == expected and datalist["subset"] == {"n": 1, "val_fold": None}
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(f"{f}_label.nii.gz" for f in expected)


def test_bundle_subset_prepares_a_raw_folder_only_for_its_patients(small_kaggle_dir: Path, tmp_path: Path):
    """The bundle's ``--subset 1`` on a raw kaggle_3m folder (5 folds, 3 patients in folds 0-2): one validation
    and one training patient prepared, the third never read."""
    from monaiunetseg.training.datalist import load_split

    train, val = load_split(small_kaggle_dir, val_fold=1, cache_dir=tmp_path / "cache", subset=1)
    assert len(train) == len(val) == 1 and train[0]["fold"] != 1 and val[0]["fold"] == 1
    labels = sorted(p.name for p in (tmp_path / "cache" / "labels").iterdir())
    assert len(labels) == 2 and len(list_patients(small_kaggle_dir)) == 3  # the third patient was never prepared
    assert {Path(i["label"]).name for i in train + val} == set(labels)
