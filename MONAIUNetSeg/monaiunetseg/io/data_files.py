"""Which files ITK reads for an NRRD/MetaImage header, resolved as ITK's readers resolve them.

Resume hashes, and the guards check, every file a reader will open. A header naming its data file in a way
we did not follow (a space in the name, a ``LIST`` of files, a ``%d`` pattern, or the field after 64 KiB of
comments) was hashed alone: new data kept an old result, and a FIFO behind it hung the reader. So the rules
here mirror teem/NrrdIO (``data file:``) and MetaIO (``ElementDataFile =``):

* a single name is the rest of the line, spaces included; a relative name is relative to the header's folder;
* ``LIST [dim]``: the following non-empty lines each name one file (NRRD: up to a blank line);
* a name holding ``%d`` (NRRD: ``fmt min max step [dim]``; MetaImage: ``fmt [min [max [step]]]`` with the
  defaults from the last ``DimSize``) names one file per index;
* ``LOCAL`` (MetaImage) or no field: the data is in the header file itself.

A header whose data field is not found within :data:`HEADER_SCAN_LIMIT` bytes is refused rather than
guessed at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from monaiunetseg.io.guard import not_regular

HEADER_SCAN_LIMIT = 4 * 2**20  # real headers are a few KiB; comments beyond this are refused, not skipped
MAX_DATA_FILES = 100_000  # a pattern naming more files than any scan has slices is refused
OUTSIDE_DATA_ENV = "MONAIUNETSEG_ALLOW_OUTSIDE_DATA"  # set by --allow-outside-data
NRRD_FIELDS = ("data file", "datafile")
META_FIELD = "elementdatafile"
_PERCENT_D = re.compile(r"%[-+ #0]*\d*d")


class DataFileError(ValueError):
    """A header whose data files cannot (or may not) be read; the message names the header and the problem."""


def _lines(path: Path) -> list[str]:
    """The header's lines up to the end of its header part, read within :data:`HEADER_SCAN_LIMIT`.

    Reading stops at the first blank line of an NRRD (attached data follows) or after a MetaImage's
    ``ElementDataFile`` line unless it starts a LIST; both formats' attached data may be binary."""
    nrrd = path.name.lower().endswith((".nrrd", ".nhdr"))
    lines: list[str] = []
    buffer, total, listing = b"", 0, False
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(65536)
            total += len(chunk)
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            if not chunk and buffer:
                complete, buffer = complete + [buffer], b""
            for raw in complete:
                line = raw.decode("latin-1").rstrip("\r")
                if listing:
                    if not line.strip() and nrrd:
                        return lines
                    lines.append(line)
                    continue
                if nrrd and not line.strip():
                    return lines
                lines.append(line)
                key, value = _field(line, nrrd)
                if key in (NRRD_FIELDS if nrrd else (META_FIELD,)):
                    if not value.upper().startswith("LIST"):
                        return lines
                    listing = True
            if not chunk:
                return lines
            if total > HEADER_SCAN_LIMIT:
                raise DataFileError(f"{path}: header larger than {HEADER_SCAN_LIMIT // 2**20} MiB without its data "
                                    "file field (or a LIST that long); not read")


def _field(line: str, nrrd: bool) -> tuple[str, str]:
    """(lower-case key, value) of a header field; ("", "") for other lines (NRRD ``key:=value`` pairs included)."""
    if nrrd:
        key, sep, value = line.partition(":")
        if not sep or value.startswith("=") or line.startswith("#"):
            return "", ""
    else:
        key, sep, value = line.partition("=")
        if not sep:
            return "", ""
    return key.strip().lower(), value.strip()


def _pattern(fmt: str, start: int, stop: int, step: int, header: Path) -> list[str]:
    if step == 0 or (stop - start) / step + 1 > MAX_DATA_FILES:
        raise DataFileError(f"{header}: data file pattern '{fmt}' {start} {stop} {step} names no or too many files")
    names, i = [], start
    while (i <= stop) if step > 0 else (i >= stop):
        try:
            names.append(fmt % i)
        except (TypeError, ValueError) as exc:
            raise DataFileError(f"{header}: data file pattern '{fmt}' cannot be expanded ({exc})") from exc
        i += step
    return names


def _ints(words: list[str], header: Path) -> list[int]:
    try:
        return [int(w) for w in words]
    except ValueError:
        raise DataFileError(f"{header}: data file pattern with non-integer numbers {words}") from None


def _names(lines: list[str], header: Path) -> list[str]:
    nrrd = header.name.lower().endswith((".nrrd", ".nhdr"))
    last_size = 1
    for n, line in enumerate(lines):
        key, value = _field(line, nrrd)
        if key == "dimsize":
            words = value.split()
            last_size = int(words[-1]) if words and words[-1].isdigit() else 1
        if key not in (NRRD_FIELDS if nrrd else (META_FIELD,)):
            continue
        if not nrrd and value.upper() == "LOCAL":
            return []
        if value.upper().startswith("LIST"):
            return [name.strip() for name in lines[n + 1:] if name.strip()]
        if _PERCENT_D.search(value):
            words = value.split()
            if nrrd:
                if len(words) < 4:
                    raise DataFileError(f"{header}: data file pattern '{value}' needs <format> <min> <max> <step>")
                start, stop, step = _ints(words[1:4], header)
            else:
                numbers = _ints(words[1:4], header)
                start = numbers[0] if numbers else 1
                stop = numbers[1] if len(numbers) > 1 else start + last_size - 1
                step = numbers[2] if len(numbers) > 2 else 1  # every index in range: a superset of MetaIO's files
            return _pattern(words[0], start, stop, step, header)
        return [value] if value else []
    return []


def outside_data_allowed() -> bool:
    """Whether data files outside a header's folder tree may be read (``--allow-outside-data``)."""
    return os.environ.get(OUTSIDE_DATA_ENV, "").strip() not in ("", "0")


def data_files(header: str | os.PathLike, confine: bool = True) -> list[Path]:
    """The data files an NRRD/MetaImage header names (not the header itself), resolved against its folder;
    [] when the data is in the header. :class:`DataFileError` for a header that cannot be scanned, a data file
    outside the header's folder tree (unless allowed or not ``confine``: a header must not pull ``/etc/shadow``
    into an overlay)."""
    header = Path(header)
    names = _names(_lines(header), header)
    files = [header.parent / name for name in names]  # an absolute name stays absolute, as in ITK
    if confine and not outside_data_allowed():
        root = os.path.realpath(header.parent)
        for f in files:
            real = os.path.realpath(f)
            if os.path.commonpath([root, real]) != root:
                raise DataFileError(f"{header}: data file {f} lies outside the header's folder ({root}); not read "
                                    "(pass --allow-outside-data to read it)")
    return files


def checked_input_files(header: str | os.PathLike) -> list[Path]:
    """The header and its existing data files, each a regular file (never opens a FIFO or device)."""
    header = Path(header)
    kind = not_regular(header)
    if kind:
        raise DataFileError(f"{header}: {kind}, not a regular file: not read")
    files = [header] + [f for f in data_files(header) if os.path.lexists(f)]
    for f in files[1:]:
        kind = not_regular(f)
        if kind:
            raise DataFileError(f"{f}: {kind}, not a regular file: not read")
    return files
