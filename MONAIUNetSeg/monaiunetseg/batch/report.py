"""The batch report: one schema (statuses, columns, values) and the one writer of ``report.csv`` and
``report.json``.

Both files are written from the same rows. ``report.json`` keeps every value as it is (numbers as numbers);
``report.csv`` is for spreadsheets, which run a cell beginning with ``=``, ``+``, ``-`` or ``@`` as a formula:
DICOM text (a SeriesDescription of ``=HYPERLINK(...)``) would run there. So its text cells lose control
characters and get a leading ``'`` when they begin like a formula (OWASP's CSV-injection advice); numeric
columns are written as plain numbers.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from monaiunetseg import TOOL_NAME, __version__
from monaiunetseg.files import csv_text, printable, write_text_atomic

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
# The finding's measurements (``segment --measure``; defined in ``measure.shape``, whose columns they are but for
# ``lesion`` and ``volume_ml``); empty without the flag.
MEASURE_COLUMNS = ["components", "max_diameter_mm", "axial_longest_mm", "axial_perpendicular_mm", "bidimensional_mm2",
                   "axial_slice", "sum_products_mm2", "mean_tumour_diameter_mm", "centroid_r", "centroid_a",
                   "centroid_s", "side", "midline_r", "axial_axis", "axial_tilt_deg"]
REPORT_COLUMNS = ["input", "output", "status", "error", "volume_ml", "confidence", "review", "review_reasons", "seconds",
                  "series_uid", "series_description", "dicom_seg", "overlay", "probabilities", "note", "model",
                  *MEASURE_COLUMNS, "shard"]
INTEGER_COLUMNS = ("components", "axial_slice", "axial_axis")
NUMERIC_COLUMNS = ("volume_ml", "confidence", "seconds", *(c for c in MEASURE_COLUMNS if c != "side"))


@dataclass
class CaseResult:
    """One report row, plus stage timings for benchmarks (not written to the report)."""

    input: str
    output: str = ""
    status: str = OK
    error: str = ""
    volume_ml: float | None = None
    confidence: float | None = None  # 0-1, the Dice the result is expected to have (trust.assessment)
    review: str = ""  # yes / no: whether the result needs a second look
    review_reasons: str = ""  # why, "; "-separated
    seconds: float | None = None
    series_uid: str = ""
    series_description: str = ""
    dicom_seg: str = ""
    overlay: str = ""
    probabilities: str = ""
    note: str = ""
    model: str = ""  # the model that made the labelmap: set name and key (``batch.model_key.describe``)
    components: int | None = None
    max_diameter_mm: float | None = None
    axial_longest_mm: float | None = None
    axial_perpendicular_mm: float | None = None
    bidimensional_mm2: float | None = None
    axial_slice: int | None = None
    sum_products_mm2: float | None = None
    mean_tumour_diameter_mm: float | None = None
    centroid_r: float | None = None
    centroid_a: float | None = None
    centroid_s: float | None = None
    side: str = ""
    midline_r: float | None = None
    axial_axis: int | None = None
    axial_tilt_deg: float | None = None
    shard: str = ""  # "KofN": the shard that ran the case (segment --num-shards N --shard-id K); empty unsharded
    timings: dict[str, float] = field(default_factory=dict)

    def line(self, name: str = "") -> str:
        """One console line for the case: status, what it is, and the result or the reason (file-name bytes that
        are no UTF-8 escaped, so that the line can be printed)."""
        if self.status == OK:
            done = "existing output kept" if self.seconds is None else f"{self.seconds:.1f} s"
            volume = "" if self.volume_ml is None else f"{self.volume_ml:.2f} mL, "
            flag = f" [REVIEW: {self.review_reasons}]" if self.review == "yes" else ""
            return printable(f"{'ok':8s}{name or self.input}: {volume}{done} -> {self.output}{flag}")
        status = str(self.status).upper() if self.status == FAILED else str(self.status)
        return printable(f"{status:8s}{self.error or self.input}")

    def add_measurements(self, measured: dict) -> None:
        """Fill the measurement columns from a ``measure.shape.measure_labelmap`` row."""
        for c in MEASURE_COLUMNS:
            setattr(self, c, measured.get(c))
        self.side = measured.get("side") or ""

    def data(self) -> dict:
        """The row's raw values (what ``report.json`` holds): text as it is (but file-name bytes that are no UTF-8
        as backslash escapes: one odd name must not stop the report), numbers or None."""
        values = {c: printable(v) if isinstance(v, str) else v for c in REPORT_COLUMNS for v in [getattr(self, c)]}
        values["status"] = str(self.status)
        return values

    def set_verdict(self, verdict) -> None:
        """Take the ``trust.assessment.Assessment`` of the case (None: the bundle has no confidence model)."""
        if verdict is not None:
            self.confidence, self.review, self.review_reasons = round(verdict.confidence, 4), verdict.review_text, verdict.reasons_text

    def verdict_record(self) -> dict[str, str]:
        """The verdict as text, for the labelmap's source record (so a resumed row keeps it)."""
        return {} if self.confidence is None else {"confidence": f"{self.confidence:.4f}", "review": self.review,
                                                   "review_reasons": self.review_reasons}

    @classmethod
    def from_data(cls, data: dict) -> CaseResult:
        """The inverse of :meth:`data`; unknown keys are ignored, numbers may be given as text (from a CSV)."""
        values: dict = {"input": ""}
        for c in REPORT_COLUMNS:
            value = data.get(c)
            if value is None or value == "":
                continue
            if c in NUMERIC_COLUMNS:
                try:
                    value = int(float(value)) if c in INTEGER_COLUMNS else float(value)
                except (TypeError, ValueError):
                    continue
            elif c == "status":
                value = Status(value) if value in Status._value2member_map_ else str(value)
            else:
                value = str(value)
            values[c] = value
        return cls(**values)

    def row(self) -> dict[str, str]:
        """The row as ``report.csv`` writes it."""
        return csv_row(self.data())


def _number(column: str, value) -> str:
    return str(int(value)) if column in INTEGER_COLUMNS else f"{float(value):.3f}"


def csv_row(data: dict) -> dict[str, str]:
    """Raw row values (see :meth:`CaseResult.data`) as CSV cells: numbers with 3 decimals, text made safe."""
    row = {}
    for c in REPORT_COLUMNS:
        value = data.get(c)
        if c in NUMERIC_COLUMNS:
            row[c] = "" if value is None or value == "" else _number(c, value)
        else:
            row[c] = csv_text("" if value is None else value)
    return row


def json_path(csv_path: Path) -> Path:
    """``report.json`` beside ``report.csv`` (``report.shardKofN.json`` beside a shard's CSV)."""
    return csv_path.with_suffix(".json")


def write_report(rows: list[dict], path: Path) -> Path:
    """Write ``rows`` (raw values) as ``path`` (CSV) and its JSON twin, each atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for data in rows:
        writer.writerow(csv_row(data))
    document = {"tool": TOOL_NAME, "version": __version__, "columns": REPORT_COLUMNS,
                "rows": [{c: data.get(c) for c in REPORT_COLUMNS} for data in rows]}
    write_text_atomic(json_path(path), json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    write_text_atomic(path, buf.getvalue())
    return path


def read_csv_rows(path: Path) -> list[dict]:
    """The rows of a ``report.csv`` this tool wrote, as raw values (numbers parsed); [] when unreadable."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [CaseResult.from_data(r).data() for r in rows]


# The columns of the first report.csv: every version's report has them (columns are added, never renamed).
FIRST_COLUMNS = ("input", "output", "status", "error", "volume_ml", "seconds", "series_uid", "series_description",
                 "dicom_seg", "overlay", "probabilities", "note")


def is_report_header(header: list[str] | None) -> bool:
    """A ``report.csv`` header of this tool, this version's or an earlier one's: it starts with
    ``input,output,status``, has the first version's columns and names only report columns."""
    return (bool(header) and header[:3] == REPORT_COLUMNS[:3]  # type: ignore[index]
            and set(FIRST_COLUMNS) <= set(header) <= set(REPORT_COLUMNS))  # type: ignore[arg-type]


def foreign_reports(path: Path) -> list[Path]:
    """The report files at ``path`` (CSV) and its JSON twin that exist but were not written by this tool: a CSV
    whose header is not the report's (nor an earlier version's: its first columns), a JSON that is not a report of
    ``TOOL_NAME``."""
    found = []
    if path.exists():
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), None)
        except (OSError, UnicodeDecodeError, csv.Error):
            header = None
        if not is_report_header(header):
            found.append(path)
    twin = json_path(path)
    if twin.exists() and not _is_our_json(twin):
        found.append(twin)
    return found


def _is_our_json(path: Path) -> bool:
    """A ``report.json`` of this tool, whole or cut short (a disk that filled, a copy interrupted): it is rebuilt
    from the records on every write, so a truncated one is ours to replace, not a reason to stop."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    try:
        document = json.loads(text)
    except ValueError:  # truncated: recognised by how write_report begins it
        return text.startswith('{\n "tool": ' + json.dumps(TOOL_NAME) + ",")
    return isinstance(document, dict) and document.get("tool") == TOOL_NAME


def shard_label(num_shards: int, shard_id: int) -> str:
    """``KofN``, as shard files are named (``report.shard1of3.csv``) and the ``shard`` column says; "" unsharded."""
    return "" if num_shards == 1 else f"{shard_id}of{num_shards}"


def report_path(out_dir: Path, num_shards: int = 1, shard_id: int = 0) -> Path:
    """``report.csv``; one file per shard when sharded, so that shards sharing ``out_dir`` never clash."""
    return out_dir / (REPORT_NAME if num_shards == 1 else f"report.shard{shard_label(num_shards, shard_id)}.csv")
