"""Guards for reading untrusted input files: only regular files are opened, header reads stop at a bound,
and no image is allocated beyond a voxel budget.

An input tree can hold a named pipe (opening it blocks forever), a link to ``/dev/zero`` (reading it never
ends), or a few hundred bytes whose header claims gigabytes of voxels. Each such file must cost its own case
a fast, clear failure, never hang or exhaust the machine that runs the rest of the batch.
"""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO

# Bytes a header scan may read from one file (values skipped by seeking do not count): real DICOM headers are
# kilobytes; a file of zeros read as DICOM would otherwise be parsed 8 bytes at a time for minutes.
HEADER_READ_LIMIT = 4 * 2**20
MAX_VOXELS_ENV = "MONAIUNETSEG_MAX_VOXELS"
# 2**27 voxels (512 x 512 x 512): its float32 copy is 512 MiB, so a case stays within 1 GiB; 512 x 512 x 1024
# (1 GiB as float32 alone) is refused up front. Raise it with $MONAIUNETSEG_MAX_VOXELS.
DEFAULT_MAX_VOXELS = 2**27

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


class ReadLimitExceeded(OSError):
    """A header read went past :data:`HEADER_READ_LIMIT`."""


def not_regular(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it is not a regular file (links followed), e.g. "a named pipe (FIFO)"; None for a
    regular file. Only ``stat``: never opens the file, which for a FIFO would block."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"not readable ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return None
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


class BoundedReader(io.RawIOBase):
    """A binary file that raises :class:`ReadLimitExceeded` once more than ``limit`` bytes were read from it."""

    def __init__(self, fh: BinaryIO, limit: int, name: str) -> None:
        super().__init__()
        self._fh, self._left, self.name = fh, int(limit), name
        self._limit = int(limit)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._fh.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise ReadLimitExceeded(f"{self.name}: header larger than {self._limit // 2**20} MiB; not read further")
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def close(self) -> None:
        self._fh.close()
        super().close()


def open_header(path: str | os.PathLike, limit: int = HEADER_READ_LIMIT) -> BoundedReader:
    """``path`` opened for a header scan that reads at most ``limit`` bytes (caller closes it)."""
    return BoundedReader(open(path, "rb"), limit, str(path))


def max_voxels() -> int:
    """The voxel budget of one image: ``$MONAIUNETSEG_MAX_VOXELS`` when set to a positive integer, else the default."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    try:
        value = int(raw)
    except ValueError:
        return DEFAULT_MAX_VOXELS
    return value if value > 0 else DEFAULT_MAX_VOXELS


def voxel_budget_problem(shape: tuple[int, ...]) -> str | None:
    """Why an image of ``shape`` is not allocated (more voxels than :func:`max_voxels`), or None."""
    n = 1
    for d in shape:
        n *= int(d)
    limit = max_voxels()
    if n <= limit:
        return None
    dims = " x ".join(str(int(d)) for d in shape)
    return (f"the header describes {dims} = {n:.3g} voxels, more than the limit of {limit} "
            f"(about {n * 4 / 2**30:.1f} GiB as float32); raise ${MAX_VOXELS_ENV} if this image is real")
