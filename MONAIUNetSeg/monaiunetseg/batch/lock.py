"""The output-folder lock: one run at a time writes into an output folder.

Two runs into one ``-o`` would each rewrite the report from their own view and hand the same output names to
different inputs. A run therefore holds an advisory lock (``flock``) on ``OUTDIR/.monaiunetseg.lock`` for its
whole duration; the holder's PID, host, start time and command are written into the file so that a second run
can say who holds it, and then waits (``--wait``) or stops with a clear error.

Shards of one batch (``--num-shards N --shard-id K``) are meant to share a folder: each holds the folder lock
shared plus ``.monaiunetseg.shardKofN.lock`` exclusively, so shards run side by side, a shard never runs twice,
and an unsharded run waits for (or refuses) all of them. The lock files are removed when released.

Windows has no ``flock``: there, ``msvcrt.locking`` locks the run's own lock file exclusively (a shard's or
the folder's), which still keeps two identical runs apart.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt  # type: ignore[import-not-found]

from monaiunetseg.batch.outdir import OutputFolderError, refuse_symlink

LOCK_NAME = ".monaiunetseg.lock"
WAIT_POLL_S = 0.5
# Even without --wait a busy lock is retried this long: a finishing shard holds the folder lock exclusively for
# a moment (to remove the file), which must not turn a shard starting at that instant away.
GRACE_S = 1.0
# Never follow a link at the lock's name: the holder info would be written into whatever file it points to.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class FolderBusyError(OutputFolderError):
    """Another run holds the output folder (exit code 2, as every output-folder problem); ``holder`` says who."""

    def __init__(self, message: str, holder: str = "") -> None:
        super().__init__(message)
        self.holder = holder


def shard_lock_name(num_shards: int, shard_id: int) -> str:
    return f".monaiunetseg.shard{shard_id}of{num_shards}.lock"


def _holder_info() -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]})


def describe_holder(path: Path) -> str:
    """"PID 123 on host, started ..., command ..." from a lock file, or a plain phrase when it says nothing."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"PID {info['pid']} on {info['host']}, started {info['started']} "
                f"(command: {info.get('command') or '?'})")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


class _FileLock:
    """One lock file: opened, locked (shared or exclusive), re-checked to be the file still at ``path``."""

    def __init__(self, path: Path, exclusive: bool) -> None:
        self.path, self.exclusive = path, exclusive
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        while True:
            refuse_symlink(self.path, "the lock file")
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o666)
            except OSError:
                refuse_symlink(self.path, "the lock file")  # made a link since the check: say so
                raise
            if os.fstat(fd).st_nlink > 1:  # a hard link: the same file elsewhere, which write_info would empty
                os.close(fd)
                raise OutputFolderError(f"the lock file {self.path} is a hard link to another file; MONAIUNetSeg "
                                        "does not write through links: remove it or choose another -o")
            if not _lock(fd, self.exclusive):
                os.close(fd)
                return False
            try:  # the releasing holder unlinks the file: a lock on an unlinked file is no lock, so retry
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return True
            os.close(fd)

    def write_info(self) -> None:
        assert self.fd is not None
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        os.write(self.fd, _holder_info().encode("utf-8"))

    def release(self) -> None:
        if self.fd is None:
            return
        # Unlink while still holding the lock exclusively, so no one can have locked this very file meanwhile; a
        # shared holder first tries to become the only one (it is not when other shards still run).
        if self.exclusive or _lock(self.fd, exclusive=True):
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)  # closing releases the lock
        self.fd = None


def _lock(fd: int, exclusive: bool) -> bool:
    if fcntl is not None:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


class OutputLock:
    """Hold ``out_dir`` for one run (see the module docstring); a context manager.

    ``wait``: wait for the holder to finish instead of raising :class:`OutputFolderError`; ``grace_s``: how long a
    busy lock is retried even so (0: at once, for a merge that another shard will make if this one cannot).
    """

    def __init__(self, out_dir: str | os.PathLike, num_shards: int = 1, shard_id: int = 0, wait: bool = False,
                 on_wait=None, grace_s: float = GRACE_S) -> None:
        self.out_dir = Path(out_dir)
        self.wait, self.on_wait, self.grace_s = wait, on_wait, grace_s
        sharded = num_shards > 1
        folder = _FileLock(self.out_dir / LOCK_NAME, exclusive=not sharded or fcntl is None)
        self._locks = [folder]
        if sharded:
            own = _FileLock(self.out_dir / shard_lock_name(num_shards, shard_id), exclusive=True)
            self._locks = [own] if fcntl is None else [folder, own]
        self.exclusive = not sharded  # whether the whole folder is this run's (e.g. all stale temp files)

    def _holder(self, lock: _FileLock) -> str:
        """Who holds what ``lock`` waits for: the folder's holder, or the shards holding it shared."""
        if lock.exclusive and lock.path.name == LOCK_NAME:
            holders = [describe_holder(p) for p in sorted(self.out_dir.glob(".monaiunetseg.shard*.lock"))]
            if holders:
                return "; ".join(holders)
        return describe_holder(lock.path)

    def acquire(self) -> OutputLock:
        for lock in self._locks:
            waited, grace_until = False, time.monotonic() + self.grace_s
            while not lock.try_acquire():
                if time.monotonic() < grace_until:
                    time.sleep(0.05)
                    continue
                holder = self._holder(lock)
                busy = f"output folder {self.out_dir} is in use by another monaiunetseg run ({holder})"
                if not self.wait:
                    self.release()
                    raise FolderBusyError(f"{busy}; wait for it to finish (or rerun with --wait), or choose "
                                          "another -o", holder)
                if not waited and self.on_wait:
                    self.on_wait(f"{busy}: waiting (--wait)")
                waited = True
                time.sleep(WAIT_POLL_S)
            if lock.exclusive:
                try:
                    lock.write_info()
                except OSError:  # e.g. a full disk: give the folder back before reporting it
                    self.release()
                    raise
        return self

    def release(self) -> None:
        for lock in reversed(self._locks):
            lock.release()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
