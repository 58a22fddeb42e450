"""The output folder of a run: where it may be, whether it can be written, and which files in it are ours.

Rules: results are never written among the inputs; an output folder that cannot be created or written is a
clear command error (exit code 2), not a traceback; and a file the tool did not write is never replaced
(unless ``--overwrite``): a file under one of a run's output names is the tool's when its content says so
(labelmap: header description or field, in NIfTI, NRRD and MetaImage; DICOM SEG: Manufacturer; overlay PNG: its
Software text; report: the report schema; run.json: the run record's), anything else is the user's.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Iterable

from monaiunetseg import TOOL_NAME

CHOOSE_ANOTHER = "choose another -o"
# Every name a run writes at the top of the output folder: outputs (naming), reports and run records (per shard).
_SHARD = r"(\.shard\d+of\d+)?"
OUTPUT_NAME = re.compile(rf"^(report{_SHARD}\.(csv|json)|run{_SHARD}\.json|"
                         r".+_(seg\.(nii\.gz|nrrd|mha|dcm)|prob\.(nii\.gz|nrrd|mha)|overlay\.png))$")


class OutputFolderError(RuntimeError):
    """The output folder cannot be used (not a folder, not writable, busy, holds foreign files): exit code 2."""


def check_out_dir(inputs: Iterable[str | os.PathLike], out_dir: Path) -> None:
    """Refuse an output folder inside an input folder or equal to an input file's folder: results are never
    written among the inputs (and a later scan of the inputs would pick them up)."""
    out = Path(out_dir).resolve()
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            continue
        real = p.resolve()
        if real.is_dir() and (out == real or real in out.parents):
            raise ValueError(f"output folder {out_dir} is inside the input folder {p}; choose an output folder "
                             "outside the inputs")
        if real.is_file() and out == real.parent:
            raise ValueError(f"output folder {out_dir} is the folder of the input {p}; choose another output folder "
                             "so that results are not written next to the inputs")


def is_output_name(name: str) -> bool:
    """Whether a run may write a file of this name in the output folder (whose stale temporary files it may
    therefore remove)."""
    return OUTPUT_NAME.match(name) is not None


def refuse_symlink(path: Path, what: str) -> None:
    """Stop (exit code 2) when ``path`` is a symbolic link: writing through it would change a file outside the
    output folder (a lock, a record, a result), so such a link is never followed."""
    if os.path.islink(path):
        raise OutputFolderError(f"{what} {path} is a symbolic link (to {os.readlink(path)}); MONAIUNetSeg does not "
                                "write through links: remove the link or choose another -o")


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` if needed and check that it is a writable folder; :class:`OutputFolderError` if not."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputFolderError(f"output folder {out_dir} is an existing file, not a folder; {CHOOSE_ANOTHER}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFolderError(f"cannot create the output folder {out_dir} ({exc.strerror or exc}); "
                                f"{CHOOSE_ANOTHER}") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputFolderError(f"output folder {out_dir} is not writable (no write permission, or a read-only file "
                                f"system); {CHOOSE_ANOTHER}")


def folder_error(exc: OSError, what: str) -> OutputFolderError:
    """An OSError while writing ``what`` (disk full, read-only file system...) as an exit-2 error."""
    return OutputFolderError(f"cannot write {what} ({exc.strerror or exc}); the output folder must be writable "
                             "and have free space")


def _is_our_seg(path: Path) -> bool:
    import pydicom

    from monaiunetseg.io.guard import open_header

    try:
        with warnings.catch_warnings(), open_header(path) as fh:
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=["Manufacturer"])
            return str(ds.get("Manufacturer", "")) == TOOL_NAME
    except Exception:  # not DICOM at all: not ours
        return False


def _is_our_png(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as img:
            return str(getattr(img, "text", {}).get("Software", "")).startswith(TOOL_NAME)
    except Exception:  # not a PNG, or no PIL: not known to be ours
        return False


def is_ours(path: Path, kind: str) -> bool:
    """Whether the existing file ``path`` was written by this tool as output ``kind`` (labelmap in any output
    format, dicom_seg, overlay, run_record)."""
    if kind == "labelmap":
        from monaiunetseg.io.labelmap import is_our_labelmap

        return path.is_file() and is_our_labelmap(path)
    if kind == "dicom_seg":
        return path.is_file() and _is_our_seg(path)
    if kind == "overlay":
        return path.is_file() and _is_our_png(path)
    if kind == "run_record":
        from monaiunetseg.batch.record import is_our_record

        return path.is_file() and is_our_record(path)
    raise ValueError(f"unknown output kind {kind!r}")


def foreign_files(candidates: Iterable[tuple[Path, str]]) -> list[Path]:
    """The existing files among ``(path, kind)`` that this tool did not write."""
    return [p for p, kind in candidates if os.path.lexists(p) and not is_ours(p, kind)]


def refuse_foreign(found: list[Path]) -> None:
    """Stop the run (exit code 2) when ``found`` names files the tool did not write."""
    if not found:
        return
    names = ", ".join(str(p) for p in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    raise OutputFolderError(f"{len(found)} file(s) in the output folder were not written by MONAIUNetSeg but have "
                            f"the name of an output of this run: {names}; they are left as they are. Move them, "
                            "choose another -o, or use --overwrite to replace them")


# Labelmap output names (every format), whose earlier files may record an input that now has no result.
_LABELMAP_ENDINGS = ("_seg.nii.gz", "_seg.nrrd", "_seg.mha", "_seg.png")


def remove_stale_outputs(out_dir: Path, inputs: set[str]) -> dict[str, list[Path]]:
    """Remove the earlier outputs (labelmap, SEG, overlay, probability map; only files this tool wrote) that
    record one of ``inputs`` (resolved paths) as their source: called for inputs whose row now says skipped or
    failed, so a script globbing ``*_seg.nii.gz`` never takes the result of a scan that is no longer there.
    Returns the removed files per input."""
    from monaiunetseg.io.labelmap import is_our_labelmap, read_source_record

    removed: dict[str, list[Path]] = {}
    if not inputs:
        return removed
    try:
        entries = sorted(Path(e.path) for e in os.scandir(out_dir) if e.name.endswith(_LABELMAP_ENDINGS))
    except OSError:
        return removed
    for labelmap in entries:
        if not labelmap.is_file() or os.path.islink(labelmap) or not is_our_labelmap(labelmap):
            continue
        record = read_source_record(labelmap)
        source = record.get("input") if isinstance(record, dict) and record.get("kind") != "dicom" else None
        if source not in inputs:
            continue
        stem = labelmap.name[: labelmap.name.rindex("_seg")]
        extras = [(out_dir / f"{stem}_seg.dcm", "dicom_seg"), (out_dir / f"{stem}_overlay.png", "overlay"),
                  *((p, "labelmap") for p in out_dir.glob(f"{stem}_prob.*"))]
        gone = [p for p, kind in extras if p.is_file() and not os.path.islink(p) and is_ours(p, kind)] + [labelmap]
        for p in gone:
            p.unlink()
        removed[source] = gone
    return removed


def stale_note(files: list[Path]) -> str:
    return (f"earlier output removed ({', '.join(p.name for p in files)}): it was made from this input before, and "
            "the input now gives no result")
