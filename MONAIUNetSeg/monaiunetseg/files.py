"""Atomic file writes: a killed process never leaves a half-written output behind.

Every output is first written to a hidden temporary file beside its target (``.<name>.<random>.part<suffix>``)
and renamed onto it only when complete. A process killed meanwhile leaves that temporary file; a later run
that holds the output folder removes such files (:func:`stale_parts`), and only those: a name counts as ours only
when its random part is mkstemp's, its suffix is the one given to its target, and the caller says the target is one
of its outputs, so a user's ``.notes.20251231.part`` or ``.thesis.docx.backup01.part.docx`` is never touched.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

# mkstemp names: prefix ".<target name>.", 8 random characters (tempfile's alphabet), suffix ".part<target suffix>"
_PART = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.part(?P<suffix>(\.[A-Za-z0-9]+)*)$")


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that are no UTF-8 (kept by Python as lone surrogates, which no
    UTF-8 writer accepts) as backslash escapes: ``a\\xff.nii.gz``. For reports, records and console lines; the
    path itself is kept as it is wherever a file is opened."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that came from no file-name byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


# A spreadsheet runs a cell beginning like this as a formula (OWASP's CSV-injection advice).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def csv_text(value: str) -> str:
    """A text cell made safe for spreadsheets: control characters removed, a formula-like start quoted, file-name
    bytes that are no UTF-8 escaped (:func:`printable`)."""
    text = _CONTROL.sub("", printable(str(value)))
    return "'" + text if text.startswith(FORMULA_START) else text


def check_output_file(target: str | os.PathLike, inputs: Iterable[str | os.PathLike], is_ours: Callable[[Path], bool],
                      what: str, kind: str) -> None:
    """Refuse (``ValueError``, before any work) an output file that would replace something: an input, a file
    inside an input folder, a link, something that is not a plain file, or an existing file that ``is_ours`` does
    not recognise as an earlier output of this kind. ``what`` names the option (``--csv``) in the message,
    ``kind`` the output (``measure CSV``): one rule for every command that writes a file the user names."""
    path = Path(os.path.abspath(target))
    bad = f"{what} {printable(str(path))}"
    if os.path.islink(path):
        raise ValueError(f"{bad} is a symbolic link (to {os.readlink(path)}); give the path of a plain file")
    real = Path(os.path.realpath(path))
    for raw in inputs:
        source = Path(os.path.realpath(raw))
        if real == source:
            raise ValueError(f"{bad} is the input {printable(str(raw))}: it would be replaced; give another path")
        if source.is_dir() and source in real.parents:
            raise ValueError(f"{bad} is inside the input folder {printable(str(raw))}; give a path outside the inputs")
    if os.path.lexists(path) and (not path.is_file() or not is_ours(path)):
        raise ValueError(f"{bad} exists and is not a {kind}; it is left as it is: give another path")


def write_error(exc: OSError, target: str | os.PathLike) -> RuntimeError:
    """An OSError while writing ``target`` (disk full, no such folder, read-only...) as a one-line command error."""
    return RuntimeError(f"cannot write {printable(str(target))} ({exc.strerror or exc})")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's content, read 1 MiB at a time: what resume and caches key results on."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _suffix_of(name: str) -> str:
    """The suffix a temporary file of target ``name`` keeps (``.nii.gz`` as one)."""
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def _temp_beside(target: Path, suffix: str | None = None) -> Path:
    """A new empty temporary file next to ``target`` (same folder, so the final rename is atomic).

    It keeps the target's suffix (``.nii.gz`` included) so that writers which pick the format from the file
    name still work.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = _suffix_of(target.name)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".part{suffix}", dir=target.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the permissions of a normal write
    return Path(tmp_name)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only if the block succeeds.

    ``durable``: flush the data to disk before the rename (outputs); off for small state that can be rebuilt.
    """
    target = Path(target)
    tmp = _temp_beside(target, suffix)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(target: str | os.PathLike, text: str, durable: bool = True) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8); ``durable`` as for :func:`atomic_path`."""
    with atomic_path(target, durable=durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv_atomic(target: str | os.PathLike, rows: Iterable[dict], columns: list[str], safe_text: bool = False) -> None:
    """Write ``rows`` (dicts; keys beyond ``columns`` ignored, floats with 4 decimals) as CSV, atomically;
    ``safe_text``: text cells through :func:`csv_text` (files users open in a spreadsheet)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else csv_text(v) if safe_text and isinstance(v, str)
                             else v) for k, v in r.items()})
    write_text_atomic(target, buf.getvalue())


class StagedFiles:
    """Several outputs that appear together or not at all.

    :meth:`path` gives a temporary path per target; :meth:`commit` renames them all onto their targets in the
    order they were staged (stage the file whose presence means "done" last); leaving the ``with`` block by an
    exception removes every temporary file, so nothing of a failed attempt is left.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def path(self, target: str | os.PathLike) -> Path:
        tmp = _temp_beside(Path(target))
        self._staged.append((tmp, Path(target)))
        return tmp

    def drop(self, tmp: Path) -> None:
        """Take back one staged file (an optional output that failed): it is removed, the others stay staged."""
        self._staged = [(t, target) for t, target in self._staged if t != tmp]
        with contextlib.suppress(OSError):
            tmp.unlink()

    def commit(self) -> None:
        for tmp, _ in self._staged:
            _fsync(tmp)
        done: list[Path] = []
        try:
            for tmp, target in self._staged:
                os.replace(tmp, target)
                done.append(target)
        except OSError:
            for target in done:  # a half-committed case would look finished to a resume: take it back
                with contextlib.suppress(OSError):
                    target.unlink()
            raise
        finally:
            self.discard()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self._staged = []

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc) -> None:
        self.discard()


def part_target(name: str) -> str | None:
    """The target file name of a temporary file name written by this module (with its default suffix), else
    None."""
    match = _PART.match(name)
    if not match or match.group("suffix") != _suffix_of(match.group("target")):
        return None
    return match.group("target")


def stale_parts(folder: str | os.PathLike, targets: Iterable[str] | Callable[[str], bool]) -> list[Path]:
    """Temporary files left in ``folder`` by killed writers of the given target names (or of the names
    ``targets`` accepts): never a file of a name this tool does not write, even if it looks like one.

    Only call this while holding the folder (see ``batch.lock``): a running writer's files look the same.
    """
    wanted = targets if callable(targets) else set(targets).__contains__
    found = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        target = part_target(entry.name)
        if target is not None and wanted(target) and entry.is_file(follow_symlinks=False):
            found.append(Path(entry.path))
    return sorted(found)
