"""Running the core's ``segment`` command in a background process, for a GUI that must never freeze.

Slicer-free (standard library only): the Slicer module builds the command here, starts it, polls it from a
``qt.QTimer`` with :meth:`ProcessMonitor.poll`, cancels it with :meth:`ProcessMonitor.cancel` (the whole process
tree: ``PythonSlicer`` is a launcher whose child is the real interpreter) and reads the result row from the
command's ``report.csv`` with :func:`read_report`.
"""

from __future__ import annotations

import csv
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLI_MODULE = "monaiunetseg.cli"
REPORT_NAME = "report.csv"
OK_STATUSES = ("ok", "success", "succeeded", "done")
LIB_PARENT = str(Path(__file__).resolve().parents[1])  # the module folder: holds the core package monaiunetseg


class BackgroundError(RuntimeError):
    """The background segmentation failed; the message says why (and, where known, the log says more)."""


def python_executable() -> str:
    """Slicer's ``PythonSlicer`` when running inside Slicer (on its PATH), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def segment_command(inputPath: str | os.PathLike, outDir: str | os.PathLike, device: str = "auto",
                    python: str | None = None) -> list[str]:
    """``python -m monaiunetseg.cli segment INPUT -o OUTDIR --device D``."""
    return [python or python_executable(), "-m", CLI_MODULE, "segment", str(inputPath), "-o", str(outDir), "--device", device]


def child_environment(base: dict | None = None, libParent: str = LIB_PARENT) -> dict:
    """Environment for the child: ``base`` (default: this process's) with the core importable and unbuffered
    output (live log lines)."""
    env = dict(os.environ if base is None else base)
    paths = [libParent] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != libParent]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_process(command: list[str], env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
    """Start ``command`` with stdout+stderr merged into one text pipe, in its own process group (so that the
    whole tree can be ended) and, on Windows, without a console window."""
    kwargs: dict = {}
    if os.name == "nt":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs)


def _descendants_posix(pid: int) -> list[int]:
    """Child processes of ``pid``, recursively, from ``ps`` (Linux and macOS)."""
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.append(child)
                todo.append(child)
    return found


def kill_process_tree(pid: int, timeout: float = 5.0) -> None:
    """End ``pid`` and every process below it."""
    try:
        import psutil  # not shipped with Slicer; used when present
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            parent = psutil.Process(pid)
            procs = parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            return
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=timeout)
        return
    if os.name == "nt":
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, timeout=timeout + 10)
        return
    victims = _descendants_posix(pid) + [pid]
    try:  # the group started by start_process (the launcher and its interpreter)
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError, OSError):
        pass
    for victim in victims:  # anything that left the group
        try:
            os.kill(victim, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


class ProcessMonitor:
    """Non-blocking view of a running process: a reader thread drains its output into a queue."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: list[str] = []
        self.cancelled = False
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="MONAIUNetSeg-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.process.stdout
        if stream is None:
            return
        try:
            for line in iter(stream.readline, ""):
                self._queue.put(line.rstrip("\r\n"))
        except (OSError, ValueError):  # pipe closed under us (cancel)
            pass

    def _drain(self) -> list[str]:
        new = []
        while True:
            try:
                new.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self.lines.extend(new)
        return new

    def poll(self) -> tuple[list[str], int | None]:
        """New output lines since the last call, and the exit code once the process has ended (else None)."""
        returncode = self.process.poll()
        if returncode is not None:
            self._reader.join(timeout=2.0)
        return self._drain(), returncode

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> int:
        """Block until the process ends (synchronous use); raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            _, returncode = self.poll()
            if returncode is not None:
                return returncode
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                raise TimeoutError(f"the segmentation process did not finish in {timeout:.0f} s")
            time.sleep(interval)

    def cancel(self) -> None:
        """End the whole process tree (idempotent)."""
        self.cancelled = True
        if self.process.poll() is None:
            kill_process_tree(self.process.pid)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=2.0)
        self._drain()

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.lines[-n:])


@dataclass
class Job:
    """One background segmentation of one volume: what the GUI keeps between timer ticks."""

    volumeNodeID: str
    workDir: Path
    inputPath: Path
    outDir: Path
    monitor: ProcessMonitor
    segmentationNodeID: str | None = None
    createLabelmap: bool = False
    started: float = field(default_factory=time.perf_counter)

    def failure(self, returncode: int | None, cause: Exception | str | None = None) -> BackgroundError:
        """The error to show for a failed run: the cause, the exit code and the end of the process's output."""
        if self.monitor.cancelled:
            return BackgroundError("cancelled")
        message = f"{cause} " if cause else ""
        message += f"(the segmentation process exited with code {returncode})"
        detail = self.monitor.tail()  # a missing import of the core's 'segment' command is named there (cli.py)
        return BackgroundError(message + (f"; its last output:\n{detail}" if detail else ""))

    def cleanup(self) -> None:
        shutil.rmtree(self.workDir, ignore_errors=True)


def start_job(volumeNodeID: str, inputPath: str | os.PathLike, workDir: str | os.PathLike, device: str = "auto",
              env: dict | None = None, segmentationNodeID: str | None = None, createLabelmap: bool = False) -> Job:
    """Start ``segment`` on one already-written input; results go to ``<workDir>/output``."""
    workDir = Path(workDir)
    outDir = workDir / "output"
    outDir.mkdir(parents=True, exist_ok=True)
    process = start_process(segment_command(inputPath, outDir, device), env=env, cwd=str(workDir))
    return Job(volumeNodeID, workDir, Path(inputPath), outDir, ProcessMonitor(process), segmentationNodeID, createLabelmap)


@dataclass
class ReportRow:
    input: str
    output: str
    status: str
    error: str
    volume_ml: float | None
    seconds: float | None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _same_path(a: str, b: str) -> bool:
    try:
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
    except OSError:
        return a == b


def read_report(outDir: str | os.PathLike, inputPath: str | os.PathLike) -> ReportRow:
    """The ``report.csv`` row (columns input, output, status, error, volume_ml, seconds) of ``inputPath``;
    raises :class:`BackgroundError` with the command's own error when the case failed or produced nothing."""
    outDir = Path(outDir)
    report = outDir / REPORT_NAME
    if not report.is_file():
        raise BackgroundError(f"the segmentation process wrote no {REPORT_NAME} in {outDir}")
    with open(report, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    matching = [r for r in rows if _same_path(r.get("input", ""), str(inputPath))]
    if not matching and len(rows) == 1:
        matching = rows
    if not matching:
        raise BackgroundError(f"{report} has no row for {inputPath}")
    r = matching[-1]
    row = ReportRow(input=r.get("input", ""), output=r.get("output", "") or "", status=(r.get("status") or "").strip(),
                    error=(r.get("error") or "").strip(), volume_ml=_float(r.get("volume_ml")), seconds=_float(r.get("seconds")))
    if row.status.lower() not in OK_STATUSES or row.error:
        raise BackgroundError(f"segmentation of {Path(row.input).name} failed ({row.status or 'no status'}): "
                              f"{row.error or 'no error message'}")
    output = Path(row.output)
    if not output.is_absolute():  # relative to the output folder or to the process's folder (its parent)
        output = next((c for c in (outDir / output, outDir.parent / output) if c.is_file()), outDir / output)
    if not row.output or not output.is_file():
        raise BackgroundError(f"the reported output {output} does not exist")
    row.output = str(output)
    return row
