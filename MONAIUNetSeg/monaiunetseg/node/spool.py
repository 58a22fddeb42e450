"""The node's spool: every received instance and every result on disk, so that a killed node loses nothing.

Layout (all names are digests or fixed words, never text from DICOM tags, so a PatientID of ``../../x`` or a NUL
byte cannot steer a path)::

    SPOOL/studies/study-<sha1 of StudyInstanceUID>/
        state.json                       what was received, segmented, sent (rewritten atomically)
        dicom/series-<sha1>/<sha1>.dcm   the received instances, each written atomically
        out/                             the batch's output folder (labelmap, SEG, report.csv, run.json)
        send/                            the objects to send (SEG, SR, secondary capture)

The received instances of a study are removed once its results reached every destination (the archive holds
them); ``out/`` stays, which is how a series sent again is recognised and not segmented twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from monaiunetseg.files import atomic_path, stale_parts, write_text_atomic

STATE_NAME = "state.json"
RECEIVING, SEGMENTING, SENDING, DONE = "receiving", "segmenting", "sending", "done"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def digest(text: str, n: int = 16) -> str:
    """A file-name-safe stand-in for a DICOM value (a UID): hex only, stable, no collisions in practice."""
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:n]


def escape_controls(text: str) -> str:
    """``text`` with control characters as ``\\xNN``: a SeriesDescription holding a newline cannot forge a log line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def clean_text(value: object, limit: int = 64) -> str:
    """DICOM text for logs and the status (never for paths): control characters and NUL bytes removed."""
    return _CONTROL.sub("", str(value or ""))[:limit]


@dataclass
class SeriesResult:
    """One segmented series: what ``segment`` reported and which objects go to which destination."""

    series_uid: str
    name: str = ""
    status: str = ""  # ok / failed / skipped, as in report.csv
    error: str = ""
    volume_ml: float | None = None
    review: str = ""
    review_reasons: str = ""
    seg_uid: str = ""  # SOPInstanceUID of the SEG: the same result kept by a resume keeps it
    files: list[str] = field(default_factory=list)  # under send/, in sending order
    sent_to: list[str] = field(default_factory=list)  # destinations that stored every file


@dataclass
class StudyState:
    """What the node knows of one study; saved as ``state.json`` at every change of phase."""

    study_uid: str
    patient: str = ""  # cleaned PatientID, for the status only
    phase: str = RECEIVING
    received: int = 0  # instances received over all associations (a series sent twice counts twice)
    first_received: float = 0.0
    last_received: float = 0.0
    segmentations: int = 0  # series the model actually ran on (a resumed or duplicate series adds nothing)
    results: list[SeriesResult] = field(default_factory=list)
    destinations: list[str] = field(default_factory=list)  # where the results go (as --send-to gave them)
    attempts: dict[str, int] = field(default_factory=dict)  # destination -> failed sends in a row
    next_try: dict[str, float] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)
    error: str = ""  # why the study could not be processed at all
    released: bool = False  # the association that brought the last instance was released (--complete-on-release)

    @classmethod
    def from_json(cls, text: str) -> StudyState:
        data = json.loads(text)
        data["results"] = [SeriesResult(**r) for r in data.get("results", [])]
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"


class SpoolFullError(OSError):
    """The spool holds ``--spool-limit`` bytes: instances are refused until results are sent and removed."""


class Spool:
    """The spool folder, shared by the receiving threads and the worker; one lock guards the study table."""

    def __init__(self, root: str | os.PathLike, limit_bytes: int | None = None) -> None:
        self.root = Path(root).absolute()
        self.studies_dir = self.root / "studies"
        self.studies_dir.mkdir(parents=True, exist_ok=True)
        self.limit_bytes = limit_bytes
        self.lock = threading.RLock()
        self.states: dict[str, StudyState] = {}
        self.size = 0
        self.dirty: set[str] = set()  # studies whose counts changed since their state.json was written
        self._recover()

    def _recover(self) -> None:
        """Load every study's state, drop temporary files of writers that were killed, and count the bytes."""
        for folder in sorted(self.studies_dir.glob("study-*")):
            for sub in [folder, folder / "send", *sorted((folder / "dicom").glob("series-*"))]:
                for part in stale_parts(sub, lambda name: name.endswith((".dcm", ".json"))):
                    part.unlink()
            try:
                state = StudyState.from_json((folder / STATE_NAME).read_text(encoding="utf-8"))
            except (OSError, ValueError, TypeError) as exc:
                if not (folder / "dicom").is_dir():
                    continue
                state = StudyState(study_uid="", error=f"{folder / STATE_NAME}: unreadable ({exc}); re-read")
            if state.phase == SEGMENTING:  # killed while segmenting: do it again (resume keeps finished cases)
                state.phase = RECEIVING
            state.received = max(state.received, self.count_instances(folder.name))
            if state.phase == RECEIVING:
                state.last_received = time.time()  # the sender may still be retrying: give it one more timeout
            self.states[folder.name] = state
        self.size = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file() and not f.is_symlink())

    # paths
    def study_dir(self, key: str) -> Path:
        return self.studies_dir / key

    @staticmethod
    def study_key(study_uid: str) -> str:
        return f"study-{digest(study_uid)}"

    def dicom_dir(self, key: str) -> Path:
        return self.study_dir(key) / "dicom"

    def out_dir(self, key: str) -> Path:
        return self.study_dir(key) / "out"

    def send_dir(self, key: str) -> Path:
        return self.study_dir(key) / "send"

    def count_instances(self, key: str) -> int:
        return sum(1 for _ in self.dicom_dir(key).glob("series-*/*.dcm"))

    # receiving
    def store(self, study_uid: str, series_uid: str, sop_uid: str, encoded: bytes, patient: str) -> Path:
        """Write one received instance (the bytes of a DICOM file) atomically; raises :class:`SpoolFullError`."""
        if self.limit_bytes is not None and self.size + len(encoded) > self.limit_bytes:
            raise SpoolFullError(f"{self.root}: spool limit of {self.limit_bytes / 1e9:.1f} GB reached")
        key = self.study_key(study_uid)
        target = self.dicom_dir(key) / f"series-{digest(series_uid)}" / f"{digest(sop_uid, 40)}.dcm"
        with self.lock:
            state = self.states.get(key)
            if state is None or state.phase != RECEIVING:
                now = time.time()
                if state is None:
                    state = self.states[key] = StudyState(study_uid=study_uid, first_received=now)
                state.phase, state.error, state.released = RECEIVING, "", False
                self.study_dir(key).mkdir(parents=True, exist_ok=True)
                self.save(key)
            old = target.stat().st_size if target.exists() else 0
            with atomic_path(target) as tmp:  # durable: a success status means the instance is on disk
                tmp.write_bytes(encoded)
            self.size += len(encoded) - old
            state.patient = clean_text(patient)
            state.received += 1
            state.last_received = time.time()
            state.released = False
            self.dirty.add(key)
        return target

    def released(self, keys: set[str]) -> None:
        """The association that brought these studies ended normally."""
        with self.lock:
            for key in keys:
                if key in self.states:
                    self.states[key].released = True

    # state
    def save(self, key: str) -> None:
        with self.lock:
            write_text_atomic(self.study_dir(key) / STATE_NAME, self.states[key].to_json(), durable=False)
            self.dirty.discard(key)

    def flush(self) -> None:
        """Write the states whose counts changed (the status another process reads)."""
        with self.lock:
            for key in list(self.dirty):
                self.save(key)

    def remove_instances(self, key: str) -> bool:
        """Remove a study's received instances once its results are sent, unless new ones came meanwhile."""
        with self.lock:
            folder = self.dicom_dir(key)
            if self.states[key].phase == RECEIVING or not folder.exists():
                return False
            freed = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            shutil.rmtree(folder)
            self.size -= freed
            return True

    def add_bytes(self, n: int) -> None:
        with self.lock:
            self.size += n


def load_states(root: str | os.PathLike) -> dict[str, StudyState]:
    """Every study's saved state, read-only (``listen --status`` from another process)."""
    found = {}
    for path in sorted((Path(root) / "studies").glob(f"study-*/{STATE_NAME}")):
        with contextlib.suppress(OSError, ValueError, TypeError):
            found[path.parent.name] = StudyState.from_json(path.read_text(encoding="utf-8"))
    return found
