"""``prepare-pairs``: your own image/label pairs -> the layout ``prepare-lgg`` writes (images/, labels/,
datalist.json with patient-level folds, dataset_summary.csv), so the bundle's trainer reads them unchanged.

Why a separate job: the LGG preparation knows the Kaggle folder layout; here any 3D scan ``segment`` reads
(NIfTI, NRRD, MetaImage) or 2D picture (PNG, TIFF, JPEG: a 1-slice volume) is paired with its mask by name.
Folds are drawn over patients (a pair is a patient unless ``group_regex`` says which part of the name is), so
no patient is in both the training and the validation fold.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monaiunetseg import TOOL_NAME
from monaiunetseg.files import write_csv_atomic, write_error, write_text_atomic
from monaiunetseg.training.pairs_output import DESCRIPTION, check_out_dir
from monaiunetseg.geometry import voxel_volume_ml
from monaiunetseg.io.image2d import is_image2d_path, read_image2d, unit_affine
from monaiunetseg.io import nifti, nrrd_mha
from monaiunetseg.io.nifti import is_nifti_path, nifti_stem, read_nifti_volume
from monaiunetseg.io.nrrd_mha import image_format, read_image_volume
from monaiunetseg.training.prepare import DATALIST_NAME, SUMMARY_CSV, _save_nifti

LABEL_SUFFIXES = ("_label", "_mask", "_seg")
PAIR_COLUMNS = ["case", "patient", "fold", "kind", "shape", "n_slices", "foreground_slices", "foreground_voxels",
                "foreground_ml", "image_source", "label_source"]
AFFINE_TOLERANCE = 1e-3  # mm: header round-off, not a different grid
MAX_DEFAULT_FOLDS = 5  # without --folds: 5 folds, or one per patient when there are fewer (a few corrected cases)


class PairError(ValueError):
    """Pairs that cannot be prepared; the message names the files."""


@dataclass
class Pair:
    case: str
    image: Path
    label: Path


def stem(path: Path) -> str:
    """The name without its image suffix (``a.nii.gz`` -> ``a``, ``b.png`` -> ``b``)."""
    return nifti_stem(path) if is_nifti_path(path) else path.stem


def is_input(path: Path) -> bool:
    """An image file we can read (a detached ``.raw`` of an ``.mhd``/``.nhdr`` is not one)."""
    return path.is_file() and (is_nifti_path(path) or image_format(path) is not None or is_image2d_path(path))


def label_case(name: str) -> str | None:
    """``x_label`` / ``x_mask`` / ``x_seg`` -> ``x`` (case-insensitive suffix), else None."""
    for suffix in LABEL_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _by_case(files: list[Path], what: str, strip_suffix: bool) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in files:
        name = stem(f)
        case = (label_case(name) or name) if strip_suffix else name
        if case in found:
            raise PairError(f"{found[case]} and {f}: two {what} files for case {case!r}")
        found[case] = f
    return found


def find_pairs(images: str | os.PathLike, labels: str | os.PathLike | None = None) -> list[Pair]:
    """Pairs by name: ``images/x.*`` with ``labels/x.*`` (or ``labels/x_label.*`` / ``_mask`` / ``_seg``); with
    one folder, ``x.*`` with its ``x_label.*`` / ``x_mask.*`` / ``x_seg.*`` partner. An unmatched file is an
    error naming it (a silently dropped case changes the folds)."""
    images = Path(images)
    files = sorted(p for p in images.iterdir() if is_input(p)) if images.is_dir() else []
    if not files:
        raise PairError(f"{images}: no image files (NIfTI, NRRD, MetaImage, PNG, TIFF, JPEG)")
    if labels is None:
        label_files = [f for f in files if label_case(stem(f))]
        image_files = [f for f in files if not label_case(stem(f))]
    else:
        labels = Path(labels)
        label_files = sorted(p for p in labels.iterdir() if is_input(p)) if labels.is_dir() else []
        image_files = files
        if not label_files:
            raise PairError(f"{labels}: no label files")
    by_image, by_label = _by_case(image_files, "image", False), _by_case(label_files, "label", True)
    lonely = sorted(set(by_image) ^ set(by_label))
    if lonely:
        named = [str(by_image.get(c) or by_label.get(c)) for c in lonely[:5]]
        raise PairError(f"{len(lonely)} file(s) without a partner (labels are named like the image, or with "
                        f"{'/'.join(LABEL_SUFFIXES)}): {', '.join(named)}")
    return [Pair(c, by_image[c], by_label[c]) for c in sorted(by_image)]


def read_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(image float32, label uint8 0/1, RAS affine, ``"2d"``/``"3d"``); a pair on different grids is refused
    naming both files."""
    two_d = [is_image2d_path(pair.image), is_image2d_path(pair.label)]
    if any(two_d) and not all(two_d):
        raise PairError(f"{pair.image} and {pair.label}: a 2D picture paired with a 3D volume")
    if all(two_d):
        image, label, affine, kind = read_image2d(pair.image), read_image2d(pair.label, as_mask=True), unit_affine(), "2d"
        if image.shape != label.shape:
            raise PairError(f"{pair.image} and {pair.label}: different sizes ({image.shape[0]} x {image.shape[1]} "
                            f"vs {label.shape[0]} x {label.shape[1]} pixels)")
        return image, label, affine, kind
    img, lab = _read_volume(pair.image), _read_volume(pair.label)
    _same_grid(pair, (img.array.shape, img.affine), (lab.array.shape, lab.affine))
    return img.array.astype(np.float32), (lab.array > 0).astype(np.uint8), img.affine, "3d"


def check_grids(pair: Pair) -> None:
    """Refuse a pair on different grids before anything is written: a 3D pair from the headers alone, a 2D one
    (small) by reading it."""
    if is_image2d_path(pair.image) or is_image2d_path(pair.label):
        read_pair(pair)
    else:
        _same_grid(pair, _grid(pair.image), _grid(pair.label))


def _grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    return nifti.grid_of(path) if is_nifti_path(path) else nrrd_mha.grid_of(path)


def _same_grid(pair: Pair, a: tuple, b: tuple) -> None:
    if tuple(a[0]) != tuple(b[0]):
        raise PairError(f"{pair.image} and {pair.label}: different grids (shape {tuple(a[0])} vs {tuple(b[0])})")
    if not np.allclose(a[1], b[1], atol=AFFINE_TOLERANCE):
        raise PairError(f"{pair.image} and {pair.label}: different grids (same shape, but the voxel-to-world "
                        "geometry differs: resample the label onto the image first)")


def _read_volume(path: Path):
    return read_nifti_volume(path) if is_nifti_path(path) else read_image_volume(path)


def patient_of(case: str, group_regex: str | None) -> str:
    """The patient a case belongs to: the first group of ``group_regex`` (else its whole match) searched in the
    case name; no match is an error (a guessed patient could leak between folds)."""
    if not group_regex:
        return case
    match = re.search(group_regex, case)
    if not match:
        raise PairError(f"case {case!r}: --group-regex {group_regex!r} does not match its name")
    return match.group(1) if match.groups() else match.group(0)


def default_folds(n_patients: int) -> int:
    """Folds when none are asked for: ``MAX_DEFAULT_FOLDS``, or one per patient for 2-4 patients (one validates,
    the rest train: the few-cases fine-tuning a site starts with); a single patient cannot be split."""
    if n_patients < 2:
        raise PairError(f"{n_patients} patient(s): training needs at least 2 (one to train on, one to validate); "
                        "add another image/label pair")
    return min(MAX_DEFAULT_FOLDS, n_patients)


def assign_patient_folds(patients: list[str], n_folds: int | None, seed: int = 0) -> dict[str, int]:
    """Shuffle the distinct patients (seeded) and deal them round-robin into ``n_folds`` folds (None:
    :func:`default_folds`)."""
    distinct = sorted(set(patients))
    if n_folds is None:
        n_folds = default_folds(len(distinct))
    if n_folds < 2:
        raise PairError(f"--folds must be >= 2, got {n_folds}")
    if len(distinct) < n_folds:
        raise PairError(f"{len(distinct)} patient(s) cannot fill {n_folds} folds (each needs one): use fewer "
                        "--folds or more data")
    random.Random(seed).shuffle(distinct)
    return {p: i % n_folds for i, p in enumerate(distinct)}


def prepare_pairs(images: str | os.PathLike, out_dir: str | os.PathLike, labels: str | os.PathLike | None = None,
                  n_folds: int | None = None, seed: int = 0, group_regex: str | None = None) -> tuple[list[dict], Path]:
    """Write every pair as ``images/<case>_image.nii.gz`` + ``labels/<case>_label.nii.gz`` (foreground = label > 0),
    ``datalist.json`` and ``dataset_summary.csv``; returns the summary rows and the datalist path. All pairs are
    checked before anything is written. ``n_folds`` None: :func:`default_folds`."""
    out_dir = Path(out_dir)
    pairs = find_pairs(images, labels)
    check_out_dir(out_dir, [Path(images), *([Path(labels)] if labels else [])], [p.case for p in pairs])
    for p in pairs:  # every pair's grids checked first: no half-written data set for a bad pair
        check_grids(p)
    patients = {p.case: patient_of(p.case, group_regex) for p in pairs}
    folds = assign_patient_folds(list(patients.values()), n_folds, seed)
    n_folds = max(folds.values()) + 1 if n_folds is None else n_folds
    entries, rows = [], []
    for pair in pairs:
        image, label, affine, kind = read_pair(pair)
        rel_image, rel_label = Path("images") / f"{pair.case}_image.nii.gz", Path("labels") / f"{pair.case}_label.nii.gz"
        for rel, values in ((rel_image, image), (rel_label, label)):
            _writing(out_dir / rel, lambda: _save(out_dir / rel, values, affine))
        patient, fold = patients[pair.case], folds[patients[pair.case]]
        entries.append({"image": rel_image.as_posix(), "label": rel_label.as_posix(), "patient": patient,
                        "folder": pair.case, "fold": fold, "n_slices": int(label.shape[2]), "kind": kind})
        fg = label > 0
        rows.append({"case": pair.case, "patient": patient, "fold": fold, "kind": kind,
                     "shape": "x".join(map(str, image.shape)), "n_slices": int(label.shape[2]),
                     "foreground_slices": int(fg.any(axis=(0, 1)).sum()), "foreground_voxels": int(fg.sum()),
                     "foreground_ml": round(float(fg.sum()) * voxel_volume_ml(affine), 4),
                     "image_source": str(pair.image), "label_source": str(pair.label)})
    datalist = {"tool": TOOL_NAME, "description": f"{DESCRIPTION} from {images}"
                               + (f" and {labels}" if labels else ""),
                "n_folds": n_folds, "seed": seed, "group_regex": group_regex, "training": entries}
    datalist_path = out_dir / DATALIST_NAME
    _writing(datalist_path, lambda: write_text_atomic(datalist_path, json.dumps(datalist, indent=1)))
    _writing(out_dir / SUMMARY_CSV, lambda: write_csv_atomic(out_dir / SUMMARY_CSV, rows, PAIR_COLUMNS))
    return rows, datalist_path


def _save(target: Path, values: np.ndarray, affine: np.ndarray) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    _save_nifti(np.ascontiguousarray(values), affine, target)


def _writing(target: Path, write) -> None:
    """A write whose OSError (disk full, read-only) is a one-line error naming the file (exit 2)."""
    try:
        write()
    except OSError as exc:
        raise write_error(exc, target) from exc
