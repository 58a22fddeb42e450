"""Output names of a batch: safe file-name stems, unique per batch, stable across reruns."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: naming stays importable without the batch's readers
    from monaiunetseg.batch.cases import Case

LABELMAP_SUFFIX, SEG_SUFFIX, OVERLAY_SUFFIX = "_seg.nii.gz", "_seg.dcm", "_overlay.png"
PROBABILITY_TAG = "_prob"  # --save-probabilities: <name>_prob<labelmap extension>
OUTPUT_FORMATS = ("same", "nifti", "nrrd", "mha")  # --output-format; "same": the input's format family
# Labelmap suffix per output format, and the format "same" gives each input kind (DICOM and other ITK formats: NIfTI).
# A 2D picture's mask is a PNG of its size ("same" only: --output-format nifti/nrrd/mha give a 1-slice volume).
FORMAT_SUFFIX = {"nifti": LABELMAP_SUFFIX, "nrrd": "_seg.nrrd", "mha": "_seg.mha", "png": "_seg.png"}
SAME_FORMAT = {"nifti": "nifti", "nrrd": "nrrd", "metaimage": "mha", "itk": "nifti", "dicom": "nifti", "picture": "png"}
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


@dataclass
class OutputPaths:
    labelmap: Path
    dicom_seg: Path
    overlay: Path
    probabilities: Path


def safe_name(text: str, fallback: str = "case") -> str:
    """A file-name stem: letters, digits, ``._-`` only, no ``..``, no leading dot, not a Windows device name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text or "")
    stem = re.sub(r"\.{2,}", ".", stem)
    stem = re.sub(r"_{2,}", "_", stem).strip("._-")[:96].strip("._-")
    if stem.split(".")[0].upper() in _WINDOWS_RESERVED:
        stem = f"_{stem}"
    return stem or fallback


def base_name(case: Case) -> str:
    from monaiunetseg.io.itk_reader import itk_stem
    from monaiunetseg.io.nifti import nifti_stem

    if case.kind == "nifti":
        return safe_name(nifti_stem(case.source))
    if case.kind == "itk":
        return safe_name(itk_stem(case.source))
    if case.is_file:
        return safe_name(case.source.stem)
    f = case.series.first  # type: ignore[union-attr]
    parts = [f.patient_id, f.study_date, f"S{f.series_number}" if f.series_number else "", case.series_description]
    text = "_".join(p for p in parts if p)
    return safe_name(text) if text else safe_name(case.series_uid, "series")


def assign_names(cases: list[Case]) -> None:
    """Unique output stems: a clash (case-insensitively, for case-insensitive file systems) gets a short hash
    of the source path / series UID, which stays the same when the batch is rerun."""
    runnable = [c for c in cases if c.is_file or c.kind == "dicom"]
    counts: dict[str, int] = {}
    for c in runnable:
        c.name = base_name(c)
        counts[c.name.lower()] = counts.get(c.name.lower(), 0) + 1
    for c in runnable:
        if counts[c.name.lower()] > 1:
            digest = hashlib.sha1("\0".join(c.key).encode("utf-8", "surrogateescape")).hexdigest()[:8]
            c.name = f"{c.name}_{digest}"


def labelmap_suffix(case: Case, output_format: str = "same") -> str:
    """``_seg.nii.gz``, ``_seg.nrrd`` or ``_seg.mha``: ``output_format``, or with ``same`` the input's family."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {output_format!r} (choose from {', '.join(OUTPUT_FORMATS)})")
    return FORMAT_SUFFIX[SAME_FORMAT.get(case.kind, "nifti") if output_format == "same" else output_format]


def output_paths(out_dir: Path, case: Case, output_format: str = "same") -> OutputPaths:
    suffix = labelmap_suffix(case, output_format)
    extension = suffix[len("_seg"):]
    if extension == ".png":  # probabilities are float32: a 1-slice NIfTI beside the PNG mask
        extension = LABELMAP_SUFFIX[len("_seg"):]
    return OutputPaths(out_dir / f"{case.name}{suffix}", out_dir / f"{case.name}{SEG_SUFFIX}",
                       out_dir / f"{case.name}{OVERLAY_SUFFIX}", out_dir / f"{case.name}{PROBABILITY_TAG}{extension}")
