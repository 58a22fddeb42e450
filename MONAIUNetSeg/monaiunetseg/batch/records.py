"""Per-case records: the store ``report.csv`` / ``report.json`` are rebuilt from.

Each case's latest row is one small JSON file in ``OUTDIR/.monaiunetseg/records/<report name>/``, written
atomically when the case's status changes. A report is never edited in place: it is rebuilt from all records
of that report, so rows of earlier runs (other inputs) are kept and no interleaving of writers can lose one.

Row order: by run (start time), then by position in that run. A row whose output file a later row names as
its own (``--overwrite`` handed the file to another input) is removed, and so is every earlier row of an input
that lies within this run's inputs (this run discovers those again and records what they are now).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Iterable

from monaiunetseg.batch.outdir import refuse_symlink
from monaiunetseg.batch.report import CaseResult, read_csv_rows
from monaiunetseg.files import printable, write_text_atomic

STATE_DIR = ".monaiunetseg"


def _within(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


class CaseRecords:
    """The records of one report (``report_name``) in ``out_dir``, written by a run that started at ``run``.

    Read from disk once (:meth:`start`, with the output folder held: no one else writes them meanwhile), then
    kept in step with every write.
    """

    def __init__(self, out_dir: Path, report_name: str, run: int | None = None) -> None:
        self.folder = out_dir / STATE_DIR / "records" / report_name
        self.run = time.time_ns() if run is None else run
        self._records: dict[Path, dict] = {}

    def check_folders(self) -> None:
        """Refuse a link anywhere on the way to the records: records would be written, and files removed,
        wherever it points (outside the output folder)."""
        for folder in (self.folder.parent.parent, self.folder.parent, self.folder):
            refuse_symlink(folder, "the record folder")

    def _file(self, data: dict) -> Path:
        key = "\0".join([str(data.get("input") or ""), str(data.get("series_uid") or "")])
        return self.folder / f"{hashlib.sha1(key.encode('utf-8')).hexdigest()[:24]}.json"

    def _load(self) -> dict[Path, dict]:
        if not self.folder.is_dir():
            return {}
        out = {}
        for entry in sorted(os.scandir(self.folder), key=lambda e: e.name):
            if not entry.name.endswith(".json"):
                continue
            try:
                record = json.loads(Path(entry.path).read_text(encoding="utf-8"))
            except (OSError, ValueError):  # half-written files cannot exist (atomic); anything else: not ours
                continue
            if isinstance(record, dict) and isinstance(record.get("row"), dict):
                out[Path(entry.path)] = record
        return out

    def start(self, inputs: Iterable[str | os.PathLike], legacy_report: Path | None = None) -> None:
        """Begin a run over ``inputs``: forget rows of inputs within them (they are about to be recorded anew).

        ``legacy_report``: a report written before records existed; its rows become records (once), so an
        upgrade loses no row.
        """
        self.check_folders()
        if not self.folder.exists() and legacy_report is not None and legacy_report.is_file():
            for order, data in enumerate(read_csv_rows(legacy_report)):
                self._write(data, run=0, order=order)
        self._records = self._load()
        roots = [printable(os.path.abspath(p)) for p in inputs]  # as rows hold them
        for path, record in list(self._records.items()):
            if _within(str(record["row"].get("input") or ""), roots):
                self._remove(path)

    def _remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self._records.pop(path, None)

    def _write(self, data: dict, run: int, order: int) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"run": run, "order": order, "row": data}
        path = self._file(data)
        write_text_atomic(path, json.dumps(record) + "\n", durable=False)  # only a power cut, not a kill, could lose it
        self._records[path] = record

    def put(self, result: CaseResult, order: int) -> None:
        """Record ``result`` as its case's row, position ``order`` of this run; a row of another input that
        names the same output file is removed (the file is this one's now)."""
        data = result.data()
        mine = self._file(data)
        if data.get("output"):
            for path, record in list(self._records.items()):
                if path != mine and record["row"].get("output") == data["output"]:
                    self._remove(path)
        self._write(data, self.run, order)

    def rows(self) -> list[dict]:
        """All rows of this report, oldest run first."""
        records = sorted(self._records.values(), key=lambda r: (r.get("run", 0), r.get("order", 0)))
        return [r["row"] for r in records]
