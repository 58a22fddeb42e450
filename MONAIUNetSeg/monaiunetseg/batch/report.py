"""The batch report: one schema (statuses, columns, row formatting) and the one writer of ``report.csv``."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Iterable

from monaiunetseg.files import write_text_atomic

REPORT_NAME = "report.csv"


class Status(str, Enum):
    """A case's outcome; a ``str`` so that rows, comparisons and JSON keep the plain words."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"
    PENDING = "pending"  # not reached (yet)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


OK, FAILED, SKIPPED, PENDING = Status.OK, Status.FAILED, Status.SKIPPED, Status.PENDING
REPORT_COLUMNS = ["input", "output", "status", "error", "volume_ml", "seconds", "series_uid", "series_description",
                  "dicom_seg", "overlay", "note"]


@dataclass
class CaseResult:
    """One report row, plus stage timings for benchmarks (not written to the report)."""

    input: str
    output: str = ""
    status: str = OK
    error: str = ""
    volume_ml: float | None = None
    seconds: float | None = None
    series_uid: str = ""
    series_description: str = ""
    dicom_seg: str = ""
    overlay: str = ""
    note: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def line(self, name: str = "") -> str:
        """One console line for the case: status, what it is, and the result or the reason."""
        if self.status == OK:
            done = "existing output kept" if self.seconds is None else f"{self.seconds:.1f} s"
            volume = "" if self.volume_ml is None else f"{self.volume_ml:.2f} mL, "
            return f"{'ok':8s}{name or self.input}: {volume}{done} -> {self.output}"
        return f"{str(self.status).upper() if self.status == FAILED else str(self.status):8s}{self.error or self.input}"

    def row(self) -> dict[str, str]:
        values = {c: getattr(self, c) for c in REPORT_COLUMNS}
        values["volume_ml"] = "" if self.volume_ml is None else f"{self.volume_ml:.3f}"
        values["seconds"] = "" if self.seconds is None else f"{self.seconds:.3f}"
        return {k: str(v) for k, v in values.items()}


def earlier_rows(path: Path, inputs: set[str]) -> list[dict[str, str]]:
    """Rows of an existing report whose ``input`` is not one of ``inputs`` (this batch's): the results of
    earlier runs on other inputs; none when there is no readable report."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [r for r in rows if r.get("input") not in inputs]


def write_report(results: list[CaseResult], path: Path, earlier: Iterable[dict[str, str]] = ()) -> Path:
    """``earlier`` rows (see :func:`earlier_rows`) first, then this batch's; an earlier row naming an output
    that this batch reports as its own is left out (``--overwrite`` gave that file to another input)."""
    outputs = {r.output for r in results if r.output}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, lineterminator="\n", restval="", extrasaction="ignore")
    writer.writeheader()
    for row in earlier:
        if row.get("output") not in outputs:
            writer.writerow(row)
    for r in results:
        writer.writerow(r.row())
    write_text_atomic(path, buf.getvalue())
    return path


def report_path(out_dir: Path, num_shards: int = 1, shard_id: int = 0) -> Path:
    """``report.csv``; one file per shard when sharded, so that shards sharing ``out_dir`` never clash."""
    return out_dir / (REPORT_NAME if num_shards == 1 else f"report.shard{shard_id}of{num_shards}.csv")
