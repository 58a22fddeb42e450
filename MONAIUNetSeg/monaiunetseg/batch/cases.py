"""A case of a batch: one unit of work found by ``discover``, named by ``naming``, run by ``case``.

Its own module so that the steps depend on it one way: ``naming`` names cases without importing ``discover``,
which finds cases and then names them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monaiunetseg.batch.report import Status
from monaiunetseg.io.dicom_series import DicomSeries

FILE_KINDS = ("nifti", "nrrd", "metaimage", "itk", "picture")  # one file, one case (the rest: "dicom", "problem")


@dataclass
class Case:
    """One unit of work: a NIfTI file or a DICOM series; or a problem found while looking for them."""

    kind: str  # one of FILE_KINDS, "dicom" or "problem"
    source: Path  # image file, DICOM series folder, or the offending file/folder
    series: DicomSeries | None = None
    status: Status | None = None  # preset (failed/skipped) when discovery already decided
    problem: str = ""
    name: str = ""  # output stem, unique in the batch

    @property
    def key(self) -> tuple[str, str]:
        """Sort/shard key: stable for the same inputs, whatever order the file system lists them in."""
        return (str(self.source), self.series.uid if self.series else "")

    @property
    def is_file(self) -> bool:
        """One image file (NIfTI, NRRD, ...), as opposed to a DICOM series or a problem."""
        return self.kind in FILE_KINDS

    @property
    def series_uid(self) -> str:
        return self.series.uid if self.series else ""

    @property
    def series_description(self) -> str:
        return self.series.description if self.series else ""
