"""``merge-reports``: the shard reports and run records of one sharded batch joined into one result.

Shards (``segment --num-shards N --shard-id K``) share an output folder but each writes its own
``report.shardKofN.csv``/``.json`` and ``run.shardKofN.json``, so that they never clash. Once every shard has
finished, this writes ``report.csv``, ``report.json`` (every case once, its shard in the ``shard`` column, in the
order a single run would list them) and ``run.json`` (every shard's runs, each with its ``shard``), atomically.

It refuses, and writes nothing, when a shard still runs (its lock is held), when a case is missing (a shard never
ran, was cancelled or stopped: its cases are listed), when two shards report different results for one case
(both named), or when ``report.csv``/``run.json`` belong to an unsharded run of the folder. Merging again gives the
same files (idempotent), so a dependent merge job may be rerun after a failed shard is resubmitted.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from monaiunetseg import TOOL_NAME
from monaiunetseg.batch.lock import GRACE_S, FolderBusyError, OutputLock
from monaiunetseg.batch.outdir import OutputFolderError, folder_error
from monaiunetseg.batch.record import RECORD_NAME, SCHEMA_VERSION, is_our_record, record_path
from monaiunetseg.batch.records import STATE_DIR
from monaiunetseg.batch.report import (
    FAILED,
    PENDING,
    REPORT_NAME,
    foreign_reports,
    json_path,
    read_csv_rows,
    report_path,
    shard_label,
    write_report,
)
from monaiunetseg.files import printable, stale_parts, write_text_atomic

SHARD_REPORT = re.compile(r"^report\.shard(\d+)of(\d+)\.csv$")
# Two rows of one case agree when these agree (seconds, notes and the like differ between identical runs).
SAME_RESULT = ("output", "status", "volume_ml", "model", "error")
LISTED = 10  # missing cases named in the message; the rest counted


class ShardConflictError(RuntimeError):
    """Two shards report different results for one case (exit code 2)."""


class IncompleteShardsError(RuntimeError):
    """Cases of the batch have no result yet: a shard never ran, was cancelled or stopped (exit code 3)."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass
class ShardReport:
    """One shard's report: which shard, its CSV path and its rows (raw values)."""

    shard_id: int
    num_shards: int
    path: Path
    rows: list[dict] = field(default_factory=list)

    @property
    def label(self) -> str:
        return shard_label(self.num_shards, self.shard_id)


@dataclass
class MergeResult:
    rows: list[dict]
    report: Path
    record: Path | None
    num_shards: int

    def count(self, status: str) -> int:
        return sum(r.get("status") == str(status) for r in self.rows)

    @property
    def exit_code(self) -> int:
        return 1 if self.count(FAILED) else 0

    def summary(self) -> str:
        counts = ", ".join(f"{self.count(s)} {s}" for s in ("ok", "failed", "skipped"))
        return printable(f"merge-reports: {len(self.rows)} case(s) from {self.num_shards} shard(s): {counts}; "
                         f"report: {self.report}")


def find_shards(out_dir: Path) -> list[ShardReport]:
    """The shard reports in ``out_dir`` (all of one shard count, else an error naming the mixed files)."""
    found = []
    for path in sorted(out_dir.iterdir()):
        match = SHARD_REPORT.match(path.name)
        if match:
            found.append(ShardReport(int(match.group(1)), int(match.group(2)), path))
    if not found:
        raise FileNotFoundError(f"{out_dir}: no shard reports (report.shardKofN.csv) to merge; run segment with "
                                "--num-shards N --shard-id K into this folder first")
    counts = sorted({s.num_shards for s in found})
    if len(counts) > 1:
        names = ", ".join(s.path.name for s in found)
        raise ShardConflictError(f"{out_dir} holds shard reports of different shard counts {counts} ({names}): one "
                                 "sharded batch per output folder; move the other batch's reports away")
    return sorted(found, key=lambda s: s.shard_id)


def read_rows(csv_path: Path) -> list[dict]:
    """A shard report's rows: from its JSON twin (values exact), else from the CSV; a file another program
    wrote under the name is an error."""
    foreign = foreign_reports(csv_path)
    if foreign:
        raise OutputFolderError(f"{foreign[0]} was not written by MONAIUNetSeg (not a report); move it away")
    try:
        document = json.loads(json_path(csv_path).read_text(encoding="utf-8"))
        if document.get("tool") == TOOL_NAME and isinstance(document.get("rows"), list):
            return [dict(r) for r in document["rows"] if isinstance(r, dict)]
    except (OSError, ValueError, AttributeError):
        pass
    return read_csv_rows(csv_path)


def _key(row: dict) -> tuple[str, str]:
    return (str(row.get("input") or ""), str(row.get("series_uid") or ""))


def merge_rows(shards: list[ShardReport]) -> list[dict]:
    """Every case once, with its shard, in a single run's order (shard K holds cases K, K+N, ...: taking the
    shards' rows in turn restores it); identical duplicates are kept once, different ones refused."""
    merged: dict[tuple[str, str], tuple[dict, ShardReport]] = {}
    longest = max(len(s.rows) for s in shards)
    for i in range(longest):
        for shard in shards:
            if i >= len(shard.rows):
                continue
            row = dict(shard.rows[i], shard=shard.label)
            key = _key(row)
            if key in merged:
                first, other = merged[key]
                if any(first.get(c) != row.get(c) for c in SAME_RESULT):
                    raise ShardConflictError(printable(
                        f"{key[0]}{' series ' + key[1] if key[1] else ''}: {other.path.name} says "
                        f"{_what(first)} but {shard.path.name} says {_what(row)}; remove the wrong shard's report "
                        "and rerun that shard, or rerun the batch into a new -o"))
                continue
            merged[key] = (row, shard)
    return [row for row, _ in merged.values()]


def _what(row: dict) -> str:
    return f"{row.get('status')}" + (f" -> {row['output']}" if row.get("output") else "") + (
        f" ({row['error']})" if row.get("error") else "")


def _discovered_cases(out_dir: Path, shards: list[ShardReport], shard_id: int) -> list[str] | None:
    """The cases of a shard that left no report, found again from the inputs another shard's run record names
    (None when no record says them or they cannot be read)."""
    from monaiunetseg.batch.discover import discover_cases, shard

    num_shards = shards[0].num_shards
    for other in shards:
        try:
            runs = json.loads(record_path(out_dir, num_shards, other.shard_id).read_text(encoding="utf-8"))["runs"]
            run = runs[-1]
            inputs = [os.path.join(run["cwd"], p) for p in run["inputs"]]  # as that run saw them
            cases = discover_cases(inputs, all_series=bool(run["options"].get("all_series")),
                                   include_labelmaps=bool(run["options"].get("include_labelmaps")))
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue
        return [printable(str(c.source)) for c in shard(cases, num_shards, shard_id)]
    return None


def check_complete(out_dir: Path, shards: list[ShardReport], list_missing: bool = True) -> None:
    """Raise :class:`IncompleteShardsError` listing what is missing: shards without a report, pending cases."""
    num_shards = shards[0].num_shards
    present = {s.shard_id for s in shards}
    missing: list[str] = []
    parts: list[str] = []
    for k in range(num_shards):
        label = shard_label(num_shards, k)
        if k not in present:
            cases = _discovered_cases(out_dir, shards, k) if list_missing else None
            missing += cases or [f"(the cases of shard {label})"]
            parts.append(f"shard {label} wrote no report" + (f" ({len(cases)} case(s))" if cases else ""))
            continue
        pending = [str(r.get("input")) for s in shards if s.shard_id == k for r in s.rows
                   if r.get("status") == str(PENDING)]
        if pending:
            missing += pending
            parts.append(f"shard {label} stopped with {len(pending)} case(s) not done")
    if missing:
        names = ", ".join(missing[:LISTED]) + (f" and {len(missing) - LISTED} more" if len(missing) > LISTED else "")
        rerun = [p.split()[1] for p in parts]  # "shard 1of3 ...": in shard order
        raise IncompleteShardsError(printable(
            f"{out_dir}: not every shard has finished: {'; '.join(parts)}; missing: {names}. Rerun shard(s) "
            f"{', '.join(rerun)} (segment ... --num-shards {num_shards} --shard-id K resumes), then merge again"),
            missing)


def _check_not_unsharded(out_dir: Path) -> None:
    """Refuse to replace ``report.csv``/``run.json`` that an unsharded run of this folder wrote (its rows would be
    lost) or that another program wrote; a previous merge's files are replaced."""
    report = report_path(out_dir)
    records = out_dir / STATE_DIR / "records" / REPORT_NAME
    if records.is_dir() and any(records.iterdir()):
        raise OutputFolderError(f"{report} holds the rows of an unsharded segment run in this folder; merging would "
                                "replace them: run sharded batches into an output folder of their own")
    foreign = foreign_reports(report)
    if foreign:
        raise OutputFolderError(f"{foreign[0]} was not written by MONAIUNetSeg; merging would replace it: move it away")
    run = out_dir / RECORD_NAME
    if run.exists():
        try:
            merged = "merged_from" in json.loads(run.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            merged = False
        if not merged:
            what = "an unsharded segment run's record" if is_our_record(run) else "not a MONAIUNetSeg run record"
            raise OutputFolderError(f"{run} is {what}; merging would replace it: run sharded batches into an "
                                    "output folder of their own")


def merged_record(out_dir: Path, shards: list[ShardReport]) -> dict | None:
    """``run.json`` of the merge: every run of every shard (oldest first within a shard), each with ``shard``."""
    runs, sources = [], []
    for s in shards:
        path = record_path(out_dir, s.num_shards, s.shard_id)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and isinstance(document.get("runs"), list):
            runs += [dict(run, shard=s.label) for run in document["runs"] if isinstance(run, dict)]
            sources.append(path.name)
    if not runs:
        return None
    return {"schema_version": SCHEMA_VERSION, "runs": runs, "merged_from": sources}


def merge_reports(out_dir: str | Path, wait: bool = False, list_missing: bool = True,
                  on_wait: Callable[[str], None] | None = None, grace_s: float = GRACE_S) -> MergeResult:
    """Merge the shard reports and run records of ``out_dir`` (see the module docstring); prints nothing.

    ``wait``: wait for running shards instead of refusing; ``list_missing``: find the cases of a shard that left no
    report by discovering the inputs again; both off, with ``grace_s`` 0, for ``segment --merge-when-done``: a
    shard that finds another still running leaves the merge to it at once.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir}: no such output folder")
    lock = OutputLock(out_dir, wait=wait, on_wait=on_wait, grace_s=grace_s)  # exclusive: not while a shard holds it
    try:
        lock.acquire()
    except FolderBusyError as exc:
        raise FolderBusyError(f"{out_dir} is not merged: a shard still runs ({exc.holder}); merge when it has "
                              "finished (or with --wait)", exc.holder) from None
    except OSError as exc:  # a read-only or full folder
        raise folder_error(exc, f"the lock file in {out_dir}") from exc
    try:
        shards = find_shards(out_dir)
        for s in shards:
            s.rows = read_rows(s.path)
        check_complete(out_dir, shards, list_missing)
        rows = merge_rows(shards)
        _check_not_unsharded(out_dir)
        report, run = report_path(out_dir), out_dir / RECORD_NAME
        for part in stale_parts(out_dir, {report.name, json_path(report).name, run.name}):
            part.unlink()
        record = merged_record(out_dir, shards)
        try:
            if record is not None:
                write_text_atomic(run, json.dumps(record, indent=1) + "\n")
            write_report(rows, report)
        except OSError as exc:
            raise folder_error(exc, f"the merged report in {out_dir}") from exc
    finally:
        lock.release()
    return MergeResult(rows, report, run if record is not None else None, shards[0].num_shards)
