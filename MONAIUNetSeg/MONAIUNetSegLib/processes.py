"""Child processes for background jobs: started in their own process group, their output drained by a reader
thread, and ended with everything they started (``PythonSlicer`` is a launcher whose child is the real
interpreter). Standard library only (``psutil`` used when present); no Qt, no Slicer.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading

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


# ---------------------------------------------------------------------------------------------------------
# One job: the segment-case process of one volume and its JSON result
# ---------------------------------------------------------------------------------------------------------
