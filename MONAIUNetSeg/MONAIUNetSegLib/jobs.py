"""Background segmentation jobs, for a GUI that must never freeze: one queue, one process at a time.

Slicer-free and Qt-free (standard library only). A :class:`JobQueue` (owned by the module's Logic) keeps the
volumes waiting; each job runs the core's ``segment-case`` command on one already-written input in its own
process, whose output is drained by a reader thread (``processes.ProcessMonitor``). The GUI calls
:meth:`JobQueue.poll` from a ``qt.QTimer``; :meth:`JobQueue.cancel` ends the whole process tree
(``PythonSlicer`` is a launcher whose child is the real interpreter). The outcome of a job is the command's
JSON result file (:func:`read_result`), not its console output.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from MONAIUNetSegLib.processes import ProcessMonitor, start_process

CLI_MODULE = "monaiunetseg.cli"
RESULT_NAME = "result.json"
OK_STATUS = "ok"  # monaiunetseg.batch.report.Status.OK, spelt out: this module imports nothing of the core
LIB_PARENT = str(Path(__file__).resolve().parents[1])  # the module folder: holds the core package monaiunetseg


class BackgroundError(RuntimeError):
    """The background segmentation failed; the message says why (and, where known, the log says more)."""


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` when running inside Slicer (on its PATH), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def segment_case_command(inputPath: str | os.PathLike, outDir: str | os.PathLike, resultPath: str | os.PathLike,
                         device: str = "auto", python: str | None = None, model: str = "default",
                         bundle: str | os.PathLike | None = None) -> list[str]:
    """``python -m monaiunetseg.cli segment-case INPUT -o OUTDIR --result-json PATH --device D --model SET
    [--bundle DIR]``: the same model as an in-process run (no ``--bundle``: the child finds the shipped one)."""
    command = [python or python_executable(), "-m", CLI_MODULE, "segment-case", str(inputPath), "-o", str(outDir),
               "--result-json", str(resultPath), "--device", device, "--model", model]
    return command + (["--bundle", str(bundle)] if bundle else [])


def child_environment(base: dict | None = None, libParent: str = LIB_PARENT) -> dict:
    """Environment for the child: ``base`` (default: this process's) with the core importable and unbuffered
    output (live log lines)."""
    env = dict(os.environ if base is None else base)
    paths = [libParent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != libParent]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class SegmentCaseResult:
    """The fields of ``segment-case``'s JSON result that a job needs."""

    status: str
    input: str
    output: str
    volume_ml: float | None
    seconds: float | None
    error: str
    confidence: float | None = None  # the core's verdict (trust.assessment), as segment-case wrote it
    review: str = ""
    review_reasons: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK_STATUS


def _number(data: dict, key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_result(path: str | os.PathLike) -> SegmentCaseResult:
    """The ``segment-case`` result file; raises :class:`BackgroundError` when it is missing or is no result."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackgroundError(f"no result was written to {path}") from None
    except (OSError, ValueError) as error:
        raise BackgroundError(f"the segmentation result {path} is unreadable ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        raise BackgroundError(f"{path} is not a segment-case result (no status)")
    return SegmentCaseResult(status=data["status"], input=str(data.get("input") or ""),
                             output=str(data.get("output") or ""), volume_ml=_number(data, "volume_ml"),
                             seconds=_number(data, "seconds"), error=str(data.get("error") or ""),
                             confidence=_number(data, "confidence"), review=str(data.get("review") or ""),
                             review_reasons=str(data.get("review_reasons") or ""))


@dataclass
class JobRequest:
    """One volume to segment in the background. Node IDs, not nodes: a node may leave the scene meanwhile."""

    volumeNodeID: str
    name: str  # the volume's name when it was enqueued, for messages
    device: str = "auto"
    segmentationNodeID: str | None = None
    createLabelmap: bool = False
    model: str = "default"  # the bundle's model set
    bundle: str | None = None  # a model folder / bundle; None: the shipped one


@dataclass
class Job:
    """The running ``segment-case`` process of one request and the temporary folder it works in."""

    request: JobRequest
    workDir: Path
    inputPath: Path
    resultPath: Path
    monitor: ProcessMonitor
    started: float = field(default_factory=time.perf_counter)

    def failure(self, returncode: int | None, cause: Exception | str | None = None) -> BackgroundError:
        """The error of a process that left no usable result: the cause, its exit code and its last output."""
        if self.monitor.cancelled:
            return BackgroundError("cancelled")
        message = f"{cause} " if cause else ""
        message += f"(the segmentation process exited with code {returncode})"
        detail = self.monitor.tail()  # a missing import of the core's command is named there (cli.py)
        return BackgroundError(message + (f"; its last output:\n{detail}" if detail else ""))

    def result(self, returncode: int | None) -> SegmentCaseResult:
        """The finished process's result, when its case is ok; else raises :class:`BackgroundError` saying why
        (cancelled; the case failed, with the core's error; or no result, with the exit code and last output)."""
        if self.monitor.cancelled:
            raise BackgroundError("cancelled")
        try:
            result = read_result(self.resultPath)
        except BackgroundError as error:
            raise self.failure(returncode, error) from None
        if not result.ok:
            raise BackgroundError(f"segmentation of '{self.request.name}' failed: {result.error or 'no error message'}")
        if not result.output or not Path(result.output).is_file():
            raise self.failure(returncode, f"the reported output {result.output!r} does not exist")
        return result

    def cleanup(self) -> None:
        shutil.rmtree(self.workDir, ignore_errors=True)


def start_job(request: JobRequest, inputPath: str | os.PathLike, workDir: str | os.PathLike,
              env: dict | None = None) -> Job:
    """Start ``segment-case`` on one already-written input: labelmap into ``<workDir>/output``, result JSON
    ``<workDir>/result.json``."""
    workDir = Path(workDir)
    outDir, resultPath = workDir / "output", workDir / RESULT_NAME
    outDir.mkdir(parents=True, exist_ok=True)
    command = segment_case_command(inputPath, outDir, resultPath, request.device, model=request.model,
                                   bundle=request.bundle)
    process = start_process(command, env=env, cwd=str(workDir))
    return Job(request, workDir, Path(inputPath), resultPath, ProcessMonitor(process))


# ---------------------------------------------------------------------------------------------------------
# The queue: one job at a time, in order
# ---------------------------------------------------------------------------------------------------------

@dataclass
class JobOutcome:
    """A request that is done: the ``finish`` callable's result, or the error that stopped it."""

    request: JobRequest
    result: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class QueueUpdate:
    """What one :meth:`JobQueue.poll` did, in the order it happened (output lines of the running process, jobs
    finished or failed to start, jobs started), and where the batch stands after it."""

    lines: list[str] = field(default_factory=list)
    finished: list[JobOutcome] = field(default_factory=list)
    started: list[JobRequest] = field(default_factory=list)
    done: int = 0
    total: int = 0
    failures: list[JobOutcome] = field(default_factory=list)  # of the whole batch so far
    ended: bool = False  # the batch's last job finished in this poll: the queue is idle


class JobQueue:
    """Requests run one at a time in the order enqueued; one that fails never stops the next.

    ``start(request) -> Job`` writes the input and starts the process; ``finish(job, returncode)`` turns a
    finished job into the caller's result, raising when it failed. A batch is what is enqueued between two
    idle moments: ``total``, ``outcomes`` and ``failures`` count it.
    """

    def __init__(self, start: Callable[[JobRequest], Job], finish: Callable[[Job, int], Any]) -> None:
        self._start = start
        self._finish = finish
        self.pending: deque[JobRequest] = deque()
        self.job: Job | None = None
        self.total = 0
        self.outcomes: list[JobOutcome] = []

    @property
    def busy(self) -> bool:
        return self.job is not None or bool(self.pending)

    @property
    def failures(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if not o.ok]

    def enqueue(self, requests: Iterable[JobRequest]) -> int:
        """Queue ``requests`` behind the waiting ones and return how many; they start from :meth:`poll`."""
        requests = list(requests)
        if not self.busy:  # a new batch
            self.total, self.outcomes = 0, []
        self.pending.extend(requests)
        self.total += len(requests)
        return len(requests)

    def poll(self) -> QueueUpdate:
        """Collect the running process's output; finish it once it has ended; start the next request when none
        runs (a request that cannot start fails and the one after it is tried)."""
        update = QueueUpdate()
        wasBusy = self.busy
        if self.job is not None:
            update.lines, returncode = self.job.monitor.poll()
            if returncode is not None:
                update.finished.append(self._complete(returncode))
        while self.job is None and self.pending:
            request = self.pending.popleft()
            try:
                self.job = self._start(request)
            except Exception as error:  # e.g. the volume left the scene: this request fails, the next one runs
                update.finished.append(self._record(JobOutcome(request, error=error)))
            else:
                update.started.append(request)
        update.done, update.total, update.failures = len(self.outcomes), self.total, self.failures
        update.ended = wasBusy and not self.busy
        return update

    def _complete(self, returncode: int) -> JobOutcome:
        job, self.job = self.job, None
        assert job is not None
        try:
            outcome = JobOutcome(job.request, result=self._finish(job, returncode))
        except Exception as error:  # the job's own failure: reported, the queue goes on
            outcome = JobOutcome(job.request, error=error)
        finally:
            job.cleanup()
        return self._record(outcome)

    def _record(self, outcome: JobOutcome) -> JobOutcome:
        self.outcomes.append(outcome)
        return outcome

    def cancel(self) -> bool:
        """End the running job's whole process tree and drop the waiting requests; neither reaches ``finish``.
        Returns True when a process was ended."""
        self.pending.clear()
        job, self.job = self.job, None
        if job is None:
            return False
        job.monitor.cancel()
        job.cleanup()
        return True

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> list[JobOutcome]:
        """Poll until the queue is idle (scripts, tests, the module's self-test) and return the outcomes of that
        time; after ``timeout`` seconds everything is cancelled and ``TimeoutError`` raised."""
        deadline = None if timeout is None else time.monotonic() + timeout
        finished: list[JobOutcome] = []
        while True:
            finished.extend(self.poll().finished)
            if not self.busy:
                return finished
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the background segmentation did not finish in {timeout:.0f} s")
            time.sleep(interval)
