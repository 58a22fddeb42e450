"""``prepare-lgg``: Kaggle LGG slice folders -> per-patient NIfTI volumes and a k-fold datalist."""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from monaiunetseg.files import atomic_path, write_csv_atomic, write_text_atomic
from monaiunetseg.geometry import KAGGLE_SPACING, kaggle_affine, voxel_volume_ml
from monaiunetseg.training.lgg import LGGPatientError, institution, list_patients, patient_id, read_clinical, read_patient

DATALIST_NAME = "datalist.json"
SUMMARY_CSV, SUMMARY_PNG = "dataset_summary.csv", "dataset_summary.png"
SUMMARY_COLUMNS = ["patient", "institution", "fold", "n_slices", "tumour_slices", "tumour_slice_fraction", "lesion_ml",
                   "grade", "histological_type"]
CLINICAL_FIELDS = {
    "histological_type": "histological_type",
    "neoplasm_histologic_grade": "grade",
    "gender": "gender",
    "age_at_initial_pathologic": "age",
}


@dataclass
class PatientResult:
    folder: str
    n_slices: int = 0
    skipped: bool = False  # already prepared by an earlier run
    error: str | None = None
    tumour_slices: int = 0  # slices with any labelled voxel
    lesion_voxels: int = 0


def output_paths(out_dir: Path, folder: str) -> dict[str, Path]:
    return {
        "image": out_dir / "images" / f"{folder}_flair.nii.gz",
        "image_3ch": out_dir / "images" / f"{folder}_3ch.nii.gz",
        "label": out_dir / "labels" / f"{folder}_label.nii.gz",
    }


def _save_nifti(array: np.ndarray, affine: np.ndarray, target: Path) -> None:
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    with atomic_path(target) as tmp:
        nib.save(img, tmp)


def prepare_patient(folder: str | Path, out_dir: str | Path) -> PatientResult:
    """Write one patient's FLAIR, 3-channel and label volumes; never raises for a broken patient."""
    folder, out_dir = Path(folder), Path(out_dir)
    paths = output_paths(out_dir, folder.name)
    if all(p.is_file() for p in paths.values()):
        label = np.asanyarray(nib.load(paths["label"]).dataobj)
        return PatientResult(folder.name, label.shape[2], skipped=True, **_label_stats(label))
    try:
        vol = read_patient(folder)
    except LGGPatientError as exc:
        return PatientResult(folder.name, error=str(exc))
    affine = kaggle_affine(vol.label.shape)
    _save_nifti(np.ascontiguousarray(vol.flair), affine, paths["image"])
    _save_nifti(vol.image, affine, paths["image_3ch"])
    _save_nifti(vol.label, affine, paths["label"])
    return PatientResult(folder.name, vol.label.shape[2], **_label_stats(vol.label))


def _label_stats(label: np.ndarray) -> dict[str, int]:
    """What the data-set summary counts of a label volume (column, row, slice)."""
    mask = label > 0
    return {"tumour_slices": int(mask.any(axis=(0, 1)).sum()), "lesion_voxels": int(mask.sum())}


def assign_folds(folders: list[str], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Patient-level folds stratified by institution: shuffle within institution, then deal round-robin.

    Deterministic for a given set of folders, ``n_folds`` and ``seed``.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    rng = random.Random(seed)
    by_inst: dict[str, list[str]] = {}
    for f in sorted(folders):
        by_inst.setdefault(institution(f), []).append(f)
    order: list[str] = []
    for inst in sorted(by_inst):
        group = by_inst[inst]
        rng.shuffle(group)
        order.extend(group)
    return {f: i % n_folds for i, f in enumerate(order)}


def subset_folders(folders: list[Path], subset: int, n_folds: int = 5, seed: int = 0,
                   val_fold: int | None = None) -> tuple[list[Path], dict[str, int]]:
    """The first ``subset`` patients (by folder name) of every fold, or with ``val_fold`` the first ``subset`` of
    that fold and of the others together (a training run's validation and training patients); and the folds,
    assigned over all ``folders`` as for the full set. The bundle's ``--subset N`` only ever uses these patients,
    so a smoke run prepares a few of them instead of all."""
    if subset < 1:
        raise ValueError(f"subset must be >= 1, got {subset}")
    folds = assign_folds([f.name for f in folders], n_folds, seed)
    taken: dict[object, int] = {}
    chosen = []
    for folder in sorted(folders, key=lambda f: f.name):
        group = folds[folder.name] if val_fold is None else folds[folder.name] == val_fold
        if taken.get(group, 0) < subset:
            taken[group] = taken.get(group, 0) + 1
            chosen.append(folder)
    return chosen, folds


def build_datalist(results: list[PatientResult], out_dir: Path, clinical: dict, n_folds: int, seed: int,
                   folds: dict[str, int] | None = None) -> dict:
    """The datalist of the prepared patients; ``folds`` (a subset's, assigned over the full set) or assigned here."""
    ok = [r for r in results if r.error is None]
    folds = folds if folds is not None else assign_folds([r.folder for r in ok], n_folds, seed)
    entries = []
    for r in sorted(ok, key=lambda r: r.folder):
        paths = output_paths(out_dir, r.folder)
        entry = {k: str(p.relative_to(out_dir)) for k, p in paths.items()}
        pid = patient_id(r.folder)
        entry.update(patient=pid, folder=r.folder, institution=institution(r.folder), fold=folds[r.folder], n_slices=r.n_slices)
        row = clinical.get(pid, {})
        for src, dst in CLINICAL_FIELDS.items():
            if row.get(src, "") != "":
                entry[dst] = row[src]
        entries.append(entry)
    return {
        "description": "LGG FLAIR abnormality volumes stacked from Kaggle kaggle_3m (TCIA TCGA-LGG, CC BY-NC-SA 4.0)",
        "convention": f"LPS voxel axes (column->L, row->P, slice->S), nominal spacing {list(KAGGLE_SPACING)} mm",
        "n_folds": n_folds,
        "seed": seed,
        "training": entries,
    }


def prepare_lgg(kaggle_dir: str | Path, out_dir: str | Path, n_folds: int = 5, seed: int = 0,
                workers: int | None = None, progress: bool = True, summary: bool = True,
                subset: int | None = None, val_fold: int | None = None) -> tuple[list[PatientResult], Path]:
    """Prepare every patient folder under ``kaggle_dir`` (with ``subset``: only the first N of each fold, or of
    ``val_fold`` and the rest, see :func:`subset_folders`); returns per-patient results and the datalist path.

    ``summary``: also write the data-set summary (:func:`write_dataset_summary`)."""
    kaggle_dir, out_dir = Path(kaggle_dir), Path(out_dir)
    if kaggle_dir.resolve() == out_dir.resolve():
        raise ValueError(f"{out_dir}: output directory must differ from the input directory")
    folders = list_patients(kaggle_dir)
    if not folders:
        raise FileNotFoundError(f"{kaggle_dir}: no TCGA_<inst>_<id>_<date> patient folders found")
    folds = None
    if subset:
        folders, folds = subset_folders(folders, subset, n_folds, seed, val_fold)
    workers = workers or min(2, os.cpu_count() or 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[PatientResult] = []
    # on a terminal only (disable=None): a log file gets the per-patient lines, not carriage-return redraws
    bar = tqdm(total=len(folders), desc="prepare-lgg", unit="patient", disable=True if not progress else None)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for res in pool.map(prepare_patient, folders, [out_dir] * len(folders)):
            results.append(res)
            bar.update()
    bar.close()
    datalist = build_datalist(results, out_dir, read_clinical(kaggle_dir / "data.csv"), n_folds, seed, folds)
    if subset:
        datalist["subset"] = {"n": subset, "val_fold": val_fold}  # which patients were left out
    datalist_path = out_dir / DATALIST_NAME
    write_text_atomic(datalist_path, json.dumps(datalist, indent=1))
    if summary and datalist["training"]:
        write_dataset_summary(out_dir, results, datalist)
    return results, datalist_path


def write_dataset_summary(out_dir: Path, results: list[PatientResult], datalist: dict) -> tuple[Path, Path]:
    """``dataset_summary.csv`` (a row per patient: institution, fold, slices, tumour slices, lesion mL, grade,
    histology) and ``dataset_summary.png`` (:mod:`monaiunetseg.visual.dataset`) in ``out_dir``: what a model
    trained on these volumes has seen."""
    from monaiunetseg.visual.dataset import write_dataset_figure

    by_folder = {r.folder: r for r in results}
    vox_ml = voxel_volume_ml(kaggle_affine((1, 1, 1)))
    rows = []
    for e in datalist["training"]:
        r = by_folder[e["folder"]]
        rows.append({"patient": e["patient"], "institution": e["institution"], "fold": e["fold"],
                     "n_slices": r.n_slices, "tumour_slices": r.tumour_slices,
                     "tumour_slice_fraction": r.tumour_slices / r.n_slices, "lesion_ml": r.lesion_voxels * vox_ml,
                     "grade": e.get("grade", ""), "histological_type": e.get("histological_type", "")})
    csv_path = out_dir / SUMMARY_CSV
    write_csv_atomic(csv_path, rows, SUMMARY_COLUMNS)
    return csv_path, write_dataset_figure(rows, out_dir / SUMMARY_PNG)
