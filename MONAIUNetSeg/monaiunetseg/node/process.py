"""The node's worker: a complete study goes through ``segment`` (the batch), its results are built and sent.

One study at a time, in one thread, with the model loaded once: bounded memory. The batch does the selection
(each study's FLAIR series; the others skipped with the reason), segmentation, verdict and measurements, writes
the labelmap and SEG atomically and resumes: a study processed again (after a kill, or a series sent twice) keeps
every finished result, so nothing is segmented twice and a kept result that was already sent is not sent again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom

from monaiunetseg.batch.naming import LABELMAP_SUFFIX, SEG_SUFFIX
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.report import FAILED, OK, CaseResult
from monaiunetseg.batch.run import run_batch
from monaiunetseg.node import sr
from monaiunetseg.node.sender import Destination, SendError, retry_delay, send_files
from monaiunetseg.node.spool import DONE, RECEIVING, SEGMENTING, SENDING, SeriesResult, Spool, StudyState

log = logging.getLogger("monaiunetseg.node")
POLL_S = 0.2


@dataclass
class NodeOptions:
    """What to do with a complete study (the ``listen`` flags beyond the network ones)."""

    destinations: list[Destination] = field(default_factory=list)
    ae_title: str = "MONAIUNETSEG"  # the calling AE title when sending
    series_timeout: float = 30.0
    complete_on_release: bool = False
    retry_max: float = 600.0
    send_overlay: bool = False
    batch: BatchOptions = field(default_factory=BatchOptions)


class Worker:
    """Processes complete studies and sends their results until :meth:`stop`."""

    def __init__(self, spool: Spool, options: NodeOptions, segmenter=None) -> None:
        self.spool, self.options, self.segmenter = spool, options, segmenter
        self.wake = threading.Event()
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()

    def run(self) -> None:
        """The loop: flush counts, segment the studies that are complete, send what is due."""
        while not self._stop.is_set():
            self.spool.flush()
            key = self._due_study()
            if key is not None:
                self.process(key)
                continue
            self._send_due()
            self.wake.wait(POLL_S)
            self.wake.clear()

    def _due_study(self) -> str | None:
        now = time.time()
        with self.spool.lock:
            due = [(s.last_received, k) for k, s in self.spool.states.items() if s.phase == RECEIVING and
                   (now - s.last_received >= self.options.series_timeout or
                    (self.options.complete_on_release and s.released))]
        return min(due)[1] if due else None

    def process(self, key: str) -> None:
        """Segment one complete study and prepare its results (never raises: a failure is the study's state)."""
        spool, state = self.spool, self.spool.states[key]
        with spool.lock:
            started_at = state.last_received
            state.phase = SEGMENTING
            state.destinations = [str(d) for d in self.options.destinations]
            spool.save(key)
        log.info("study %s (patient %s): %d instance(s) received; segmenting", state.study_uid, state.patient,
                 state.received)
        try:
            batch = run_batch([spool.dicom_dir(key)], spool.out_dir(key), self.options.batch, self.segmenter)
            for result in batch.results:
                self._take(key, state, result)
            state.error = ""
        except Exception as exc:  # noqa: BLE001  a broken study must not stop the node
            state.error = f"{spool.study_dir(key)}: {type(exc).__name__}: {exc}"
            log.error("FAILED study %s: %s", state.study_uid, state.error)
        with spool.lock:
            if state.last_received != started_at:  # more came meanwhile: process again after the timeout
                state.phase = RECEIVING
            else:
                state.phase = SENDING if self._unsent(state) else DONE
                state.next_try = {}
                if state.phase == DONE:
                    self._finish(key, state)
            spool.save(key)

    def _take(self, key: str, state: StudyState, result: CaseResult) -> None:
        """Record one row of the batch, and build the objects to send for a new segmentation."""
        if not result.series_uid:  # not a series (a folder of other files): nothing to send
            if result.status == FAILED:
                log.error("FAILED %s", result.error)
            return
        earlier = next((r for r in state.results if r.series_uid == result.series_uid), None)
        entry = SeriesResult(series_uid=result.series_uid, name=Path(result.output).name.removesuffix(LABELMAP_SUFFIX),
                             status=str(result.status), error=result.error, volume_ml=result.volume_ml,
                             review=result.review, review_reasons=result.review_reasons)
        if result.status == OK and result.seconds is not None:
            state.segmentations += 1
        if result.status != OK:
            level = logging.ERROR if result.status == FAILED else logging.INFO
            log.log(level, "%s %s", "FAILED" if result.status == FAILED else "skipped", result.error)
        elif not result.dicom_seg:
            entry.status, entry.error = FAILED, f"{result.output}: no DICOM SEG ({result.note})"
            log.error("FAILED %s", entry.error)
        else:
            entry.seg_uid = str(pydicom.dcmread(result.dicom_seg, stop_before_pixels=True).SOPInstanceUID)
            if earlier is not None and earlier.seg_uid == entry.seg_uid and self._files_exist(key, earlier):
                entry.files, entry.sent_to = earlier.files, earlier.sent_to  # the same result: kept as it was
            else:
                try:
                    entry.files = self._build(key, result)
                except Exception as exc:  # noqa: BLE001  nothing of this result is sent, the others go on
                    entry.status = FAILED
                    entry.error = (f"{result.dicom_seg}: the SR or SEG to send could not be made "
                                   f"({type(exc).__name__}: {exc})")
            if entry.status == FAILED:
                log.error("FAILED %s", entry.error)
            else:
                flag = f" REVIEW: {result.review_reasons}" if result.review == "yes" else ""
                log.info("ok %s: %.2f mL%s%s", entry.name, result.volume_ml or 0.0,
                         "" if result.seconds is not None else " (earlier result kept)", flag)
        state.results = [r for r in state.results if r.series_uid != result.series_uid] + [entry]

    def _files_exist(self, key: str, entry: SeriesResult) -> bool:
        return bool(entry.files) and all((self.spool.send_dir(key) / f).is_file() for f in entry.files)

    def _build(self, key: str, result: CaseResult) -> list[str]:
        """SEG (REVIEW-marked when flagged), SR and optional secondary capture of one result, under send/."""
        send = self.spool.send_dir(key)
        send.mkdir(parents=True, exist_ok=True)
        name = Path(result.dicom_seg).name.removesuffix(SEG_SUFFIX)
        sources = [pydicom.dcmread(p, stop_before_pixels=True)
                   for p in sorted(Path(result.input).glob("*.dcm"))]
        files: list[Path] = []
        try:
            files.append(sr.mark_review(result.dicom_seg, send / f"{name}_seg.dcm", result))
            files.append(sr.write_report_sr(result.dicom_seg, sources, result, send / f"{name}_sr.dcm"))
            if self.options.send_overlay and result.overlay:
                files.append(sr.write_overlay_sc(result.overlay, sources[0], result, send / f"{name}_overlay.dcm"))
        except Exception:
            for f in files:  # a SEG without its report is never sent
                f.unlink(missing_ok=True)
            raise
        self.spool.add_bytes(sum(f.stat().st_size for f in files))
        return [f.name for f in files]

    def _unsent(self, state: StudyState) -> bool:
        return any(self._pending(state, d) for d in self.options.destinations)

    def _pending(self, state: StudyState, destination: Destination) -> list[SeriesResult]:
        return [r for r in state.results if r.files and str(destination) not in r.sent_to]

    def _send_due(self) -> None:
        now = time.time()
        with self.spool.lock:
            sending = [k for k, s in self.spool.states.items() if s.phase == SENDING]
        for key in sending:
            state = self.spool.states[key]
            for dest in self.options.destinations:
                pending = self._pending(state, dest)
                if not pending or state.next_try.get(str(dest), 0.0) > now:
                    continue
                self._send(key, state, dest, pending)
            with self.spool.lock:
                if state.phase == SENDING and not self._unsent(state):
                    state.phase = DONE
                    self._finish(key, state)  # before the state says done: a reader then finds it all tidied
                    self.spool.save(key)

    def _send(self, key: str, state: StudyState, dest: Destination, pending: list[SeriesResult]) -> None:
        files = [self.spool.send_dir(key) / f for r in pending for f in r.files]
        try:
            send_files(files, dest, self.options.ae_title)
        except (SendError, OSError, ValueError, RuntimeError) as exc:
            n = state.attempts.get(str(dest), 0) + 1
            delay = retry_delay(n, self.options.retry_max)
            state.attempts[str(dest)], state.next_try[str(dest)] = n, time.time() + delay
            state.last_error[str(dest)] = str(exc)
            log.warning("send of study %s to %s failed (try %d): %s; next try in %.0f s", state.study_uid, dest, n,
                        exc, delay)
        else:
            for r in pending:
                r.sent_to.append(str(dest))
            state.attempts.pop(str(dest), None)
            state.last_error.pop(str(dest), None)
            log.info("sent %d object(s) of study %s to %s", len(files), state.study_uid, dest)
        with self.spool.lock:
            self.spool.save(key)

    def _finish(self, key: str, state: StudyState) -> None:
        """Everything sent: the received instances go (the archive holds them); results stay for duplicates."""
        if state.error or any(r.status == FAILED for r in state.results):
            return  # kept for a look (and completed by a resend): the log and out/report.csv say why
        if self.spool.remove_instances(key):
            log.info("study %s done: %d result(s) sent; received instances removed from the spool",
                     state.study_uid, sum(1 for r in state.results if r.files))
