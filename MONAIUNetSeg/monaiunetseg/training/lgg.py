"""Reading the Kaggle LGG (``kaggle_3m``) slice folders into patient volumes.

One folder ``TCGA_<inst>_<id>_<date>/`` holds ``<folder>_<n>.tif`` (256x256x3: pre-contrast, FLAIR,
post-contrast) and ``<folder>_<n>_mask.tif`` (0/255). Slices are stacked in numeric order of ``n``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

SLICE_SHAPE = (256, 256)
FLAIR_CHANNEL = 1
_PATIENT_RE = re.compile(r"^TCGA_([A-Z0-9]{2})_([A-Z0-9]{4})_(\d{8})$")


class LGGPatientError(ValueError):
    """A patient folder that cannot be turned into a volume; the message names the file and problem."""


@dataclass
class PatientVolume:
    """One patient's stacked volume, arrays indexed (column, row, slice)."""

    folder: str
    image: np.ndarray  # (256, 256, n_slices, 3) uint8: pre-contrast, FLAIR, post-contrast
    label: np.ndarray  # (256, 256, n_slices) uint8 in {0, 1}
    slice_numbers: list[int] = field(default_factory=list)

    @property
    def flair(self) -> np.ndarray:
        return self.image[..., FLAIR_CHANNEL]


def is_patient_folder(path: Path) -> bool:
    return path.is_dir() and _PATIENT_RE.match(path.name) is not None


def patient_id(folder_name: str) -> str:
    """``TCGA_CS_4941_19960909`` -> ``TCGA_CS_4941`` (the key used in ``data.csv``)."""
    return "_".join(folder_name.split("_")[:3])


def institution(folder_name: str) -> str:
    return folder_name.split("_")[1]


def list_patients(kaggle_dir: str | Path) -> list[Path]:
    """Patient folders of a ``kaggle_3m`` directory, sorted by name."""
    kaggle_dir = Path(kaggle_dir)
    if not kaggle_dir.is_dir():
        raise FileNotFoundError(f"{kaggle_dir}: not a directory")
    return sorted(p for p in kaggle_dir.iterdir() if is_patient_folder(p))


def slice_files(folder: Path) -> list[tuple[int, Path, Path]]:
    """(slice number, image, mask) in numeric slice order; raises on missing/extra masks or no slices."""
    folder = Path(folder)
    pattern = re.compile(rf"^{re.escape(folder.name)}_(\d+)(_mask)?\.tif$")
    images: dict[int, Path] = {}
    masks: dict[int, Path] = {}
    for f in folder.iterdir():
        m = pattern.match(f.name)
        if not m:
            continue
        (masks if m.group(2) else images)[int(m.group(1))] = f
    if not images and not masks:
        raise LGGPatientError(f"{folder}: no slices ({folder.name}_<n>.tif) found")
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask:
        raise LGGPatientError(f"{folder}: slice(s) {no_mask} have no _mask.tif")
    if no_image:
        raise LGGPatientError(f"{folder}: mask(s) for slice(s) {no_image} have no image")
    return [(n, images[n], masks[n]) for n in sorted(images)]


def _read_tif(path: Path, expected_shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = tifffile.imread(path)
    except Exception as exc:  # tifffile raises several types for corrupt files
        raise LGGPatientError(f"{path}: unreadable TIFF ({exc.__class__.__name__}: {exc})") from exc
    if arr.shape != expected_shape:
        raise LGGPatientError(f"{path}: shape {arr.shape}, expected {expected_shape}")
    return arr


def read_patient(folder: str | Path) -> PatientVolume:
    """Stack one patient folder into a volume (see module docstring for the axis convention)."""
    folder = Path(folder)
    files = slice_files(folder)
    images = []
    labels = []
    for _, img_path, mask_path in files:
        images.append(_read_tif(img_path, SLICE_SHAPE + (3,)))
        mask = _read_tif(mask_path, SLICE_SHAPE)
        values = np.unique(mask)
        if not set(values.tolist()) <= {0, 255}:
            raise LGGPatientError(f"{mask_path}: mask values {values.tolist()[:5]}, expected 0/255")
        labels.append(mask)
    # TIFF arrays are (row, column[, channel]); the volume is (column, row, slice[, channel]).
    image = np.stack(images, axis=-1).transpose(1, 0, 3, 2)  # (col, row, slice, channel)
    label = (np.stack(labels, axis=-1).transpose(1, 0, 2) > 0).astype(np.uint8)
    return PatientVolume(folder.name, np.ascontiguousarray(image), np.ascontiguousarray(label), [n for n, _, _ in files])


def read_clinical(csv_path: str | Path) -> dict[str, dict[str, str]]:
    """``data.csv`` rows keyed by patient id (empty dict if the file is missing)."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return {}
    with open(csv_path, newline="") as fh:
        return {row["Patient"]: row for row in csv.DictReader(fh)}
