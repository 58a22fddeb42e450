"""Render the Slicer extension's screenshot: the ``--overlay`` PNG of the bundled sample, segmented with the shipped
``default`` model set (a real result, drawn by the project's own overlay writer).

    python scripts/render_screenshot.py [-o MONAIUNetSeg/Resources/Screenshots/sample_overlay.png]

``tests/test_docs.py`` checks that the committed PNG still shows what ``monaiunetseg segment --overlay`` gives.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "MONAIUNetSeg" / "Resources" / "Sample" / "TCGA_DU_A5TR_19970726_flair.nii.gz"
DEFAULT = REPO / "MONAIUNetSeg" / "Resources" / "Screenshots" / "sample_overlay.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run_batch([SAMPLE], Path(tmp) / "out", BatchOptions(overlay=True, progress=False, device="cpu"))
        (row,) = result.results
        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.overlay, args.output)
    print(args.output)


if __name__ == "__main__":
    main()
