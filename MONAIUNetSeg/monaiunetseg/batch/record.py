"""The run record: ``run.json`` in a ``segment`` output folder says what produced its results.

``report.csv`` is the table people open; ``run.json`` is what a script or an audit reads: the tool's version and
git commit, Python/PyTorch/MONAI (and ONNX Runtime) versions, the device, the SHA-256 of every weights file used,
the options, start and end times, and per case its input, outputs, status, seconds and a content hash of the
input. A rerun into the same folder appends its run to the list (earlier runs are never erased); shards sharing a
folder write one file each (``run.shardKofN.json``), as they do reports. A run is recorded when it starts
(``status`` ``started``) and again when it ends (``finished``), so a killed batch leaves a trace. The format is
``run_record.schema.json`` beside this file (shipped with the package).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterable

import monaiunetseg
from monaiunetseg.batch.cases import Case
from monaiunetseg.batch.report import OK, CaseResult, shard_label
from monaiunetseg.batch.resume import content_digest, file_sha256
from monaiunetseg.files import write_text_atomic

RECORD_NAME = "run.json"
SCHEMA_PATH = Path(__file__).with_name("run_record.schema.json")
SCHEMA_VERSION = 1
VERSIONED = ("torch", "monai", "numpy", "nibabel", "pydicom", "highdicom", "onnxruntime", "onnxruntime-gpu")


def record_path(out_dir: Path, num_shards: int = 1, shard_id: int = 0) -> Path:
    """``run.json``; one file per shard when sharded (like the report), so that shards never clash."""
    return out_dir / (RECORD_NAME if num_shards == 1 else f"run.shard{shard_label(num_shards, shard_id)}.json")


def input_sha256(case: Case) -> str | None:
    """Content hash of a case's input, as its labelmap's source record holds it (``resume.content_digest``: the
    file's SHA-256; for a DICOM series the SHA-256 of its files' sorted SHA-256 digests, independent of file names
    and order). None when there is nothing to hash."""
    if not (case.is_file or (case.kind == "dicom" and case.series is not None)):
        return None
    try:
        return content_digest(case)
    except (OSError, ValueError):  # unreadable, or a data file that is no regular file
        return None


def is_our_record(path: Path) -> bool:
    """Whether ``path`` is a run record (or a file that is no JSON at all: an unreadable record is moved aside
    by :class:`RunRecord`, never overwritten); False for another program's JSON under the name."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return isinstance(document, dict) and "schema_version" in document and isinstance(document.get("runs"), list)


def versions() -> dict[str, str | None]:
    """Python and the installed versions of what inference runs on (None: not installed)."""
    out: dict[str, str | None] = {"monaiunetseg": monaiunetseg.__version__, "python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state() -> dict[str, object] | None:
    """Commit (and whether tracked files differ from it) of the checkout this code runs from; None when it does
    not run from a git checkout (an installed wheel, or git missing)."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        git("ls-files", "--error-unmatch", Path(__file__).name)  # this very file tracked: not a venv in a repo
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def device_of(segmenter) -> dict[str, str | None]:
    """The device the model ran on (None: no model was needed, every case was done or skipped)."""
    device = getattr(segmenter, "device_name", None)  # a string: reading it never imports torch
    if device is None:
        return {"type": None, "name": None}
    if str(device).startswith("cuda"):
        import torch

        return {"type": str(device), "name": torch.cuda.get_device_name(device)}
    return {"type": str(device), "name": cpu_name()}


def cpu_name() -> str:
    """The processor's model name where the system says it (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def weights_of(segmenter) -> list[dict[str, object]]:
    """Path, size and SHA-256 of every weights file the model was loaded from."""
    files = [Path(w) for w in getattr(segmenter, "weights", None) or []]
    return [{"path": str(w.resolve()), "bytes": w.stat().st_size, "sha256": file_sha256(w)} for w in files]


def case_entry(case: Case, result: CaseResult) -> dict[str, object]:
    outputs = {k: getattr(result, k) for k in ("output", "dicom_seg", "overlay", "probabilities") if getattr(result, k)}
    return {"input": result.input, "kind": case.kind, "series_uid": case.series_uid or None, "outputs": outputs,
            "status": str(result.status), "error": result.error or None, "seconds": result.seconds,
            "reused": result.status == OK and result.seconds is None, "volume_ml": result.volume_ml,
            "confidence": result.confidence, "review": result.review or None, "review_reasons": result.review_reasons or None,
            "input_sha256": input_sha256(case)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunRecord:
    """This run's entry in ``run.json``; earlier runs of the file are kept as they were."""

    def __init__(self, path: Path, entry: dict, earlier: list) -> None:
        self.path, self.entry, self.earlier = path, entry, earlier

    @classmethod
    def start(cls, out_dir: Path, options, inputs: Iterable[str | os.PathLike], started: float,
              command: str = "segment") -> RunRecord:
        """Record the run as started; ``started`` is the run's ``time.perf_counter()`` at its beginning;
        ``command``: ``segment`` or ``segment-case``."""
        path = record_path(Path(out_dir), options.num_shards, options.shard_id)
        began = datetime.now(timezone.utc) - timedelta(seconds=time.perf_counter() - started)
        entry = {"status": "started", "started": began.isoformat(timespec="milliseconds"), "finished": None,
                 "tool": {"name": "monaiunetseg", "version": monaiunetseg.__version__, "git": git_state()},
                 "versions": versions(), "platform": platform.platform(), "cwd": os.getcwd(),
                 "command": command, "inputs": [str(p) for p in inputs], "options": dataclasses.asdict(options),
                 "device": {"type": None, "name": None}, "weights": [], "counts": {}, "cases": []}
        record = cls(path, entry, cls._earlier_runs(path))
        record._write()
        return record

    def finish(self, cases: list[Case], results: list[CaseResult], segmenter=None) -> None:
        """Record the end: device, weights, and every case (``cases[i]`` gave ``results[i]``)."""
        self.entry.update(status="finished", finished=_now(), device=device_of(segmenter),
                          weights=weights_of(segmenter), cases=[case_entry(c, r) for c, r in zip(cases, results)])
        statuses = [str(r.status) for r in results]
        self.entry["counts"] = {s: statuses.count(s) for s in sorted(set(statuses))}
        self._write()

    @staticmethod
    def _earlier_runs(path: Path) -> list:
        """Runs already in ``path``; an unreadable file is moved aside (never overwritten) and a new list begun."""
        if not path.exists():
            return []
        try:
            runs = json.loads(path.read_text())["runs"]
            if isinstance(runs, list):
                return runs
        except (OSError, ValueError, KeyError, TypeError):
            pass
        os.replace(path, path.with_name(f"{path.name}.unreadable-{datetime.now().strftime('%Y%m%dT%H%M%S%f')}"))
        return []

    def _write(self) -> None:
        record = {"schema_version": SCHEMA_VERSION, "runs": [*self.earlier, self.entry]}
        write_text_atomic(self.path, json.dumps(record, indent=1) + "\n")
