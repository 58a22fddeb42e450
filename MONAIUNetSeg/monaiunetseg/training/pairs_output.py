"""Where ``prepare-pairs`` may write: never into its input tree, never over a file it did not write.

Its own module so that the rule reads in one place, beside ``pairs`` (which pairs, reads and writes): the output
folder's ``images/`` and ``labels/`` must not be, hold or lie in an input folder (``-o D`` for ``D/images
D/labels`` would rewrite the user's labels), and an existing ``datalist.json``, ``dataset_summary.csv`` or image of
an output name is replaced only when an earlier prepare-pairs run wrote it (its datalist lists it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monaiunetseg import TOOL_NAME
from monaiunetseg.training.prepare import DATALIST_NAME, SUMMARY_CSV

DESCRIPTION = "image/label pairs prepared by prepare-pairs"  # the datalist's mark (earlier versions: the only one)


class OutputError(ValueError):
    """The output folder would change an input or a user's file; the message names them (exit code 2)."""


def _ours(out_dir: Path) -> set[str]:
    """The files an earlier prepare-pairs run wrote in ``out_dir`` (its datalist says so), which a rerun may
    replace; none when the datalist is missing or is not ours."""
    try:
        data = json.loads((out_dir / DATALIST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    marked = isinstance(data, dict) and (data.get("tool") == TOOL_NAME
                                         or str(data.get("description", "")).startswith(DESCRIPTION))
    if not marked:
        return set()
    entries = [e for e in data.get("training", []) if isinstance(e, dict)]
    return {DATALIST_NAME, SUMMARY_CSV, *(str(e.get(k)) for e in entries for k in ("image", "label"))}


def check_out_dir(out_dir: Path, inputs: list[Path], cases: list[str]) -> None:
    """Refuse, before anything is written, an output folder that would change an input tree (the folder itself,
    inside one, or ``images/``/``labels/`` on or around one) or replace a file that is no earlier prepare-pairs
    output (the user's own ``datalist.json``, summary or images)."""
    out = out_dir.resolve()
    written = [out / "images", out / "labels"]
    for raw in inputs:
        real = raw.resolve()
        if out == real or real in out.parents:
            raise OutputError(f"output folder {out_dir} is inside the input folder {raw}; choose one outside the inputs")
        if any(real == w or w in real.parents or real in w.parents for w in written):
            raise OutputError(f"output folder {out_dir} would write images/ and labels/ into the input folder {raw}; "
                            "choose another output folder")
    ours = _ours(out_dir)
    targets = [DATALIST_NAME, SUMMARY_CSV, *(f"{d}/{c}_{d[:-1]}.nii.gz" for c in cases for d in ("images", "labels"))]
    foreign = [t for t in targets if os.path.lexists(out_dir / t) and t not in ours]
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        names = ", ".join(str(out_dir / t) for t in foreign[:5]) + more
        raise OutputError(f"{len(foreign)} file(s) in the output folder were not written by prepare-pairs but have the "
                        f"name of one of its outputs: {names}; they are left as they are: choose another output folder")
