"""Benchmark of the DICOM node: from the last instance of a series received to its SEG and SR stored in Orthanc.

Starts a real Orthanc (Debian's ``orthanc``, on free loopback ports) and ``monaiunetseg listen`` with
``--complete-on-release`` (Orthanc sends a study in one association, so the study is complete when it ends and no
``--series-timeout`` is waited), then for each run uploads a new study holding the sample FLAIR as a 40-slice
DICOM series (the 38 slices plus the edge slices repeated), has Orthanc send it to the node, and polls Orthanc's
REST API every 50 ms until the study holds a SEG and an SR. "Last received" is the node's own time stamp of the
study's last instance (its ``state.json``). Prints one row per run and the median.

    python scripts/benchmark_dicom_node.py [--model default] [--runs 5] [--slices 40]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MONAIUNetSeg"))  # the core, also when not pip-installed
sys.path.insert(0, str(REPO / "tests"))  # the Orthanc harness and the DICOM writer of the tests

from monaiunetseg.batch.record import cpu_name  # noqa: E402  (after the paths above)
from monaiunetseg.node.spool import load_states  # noqa: E402
from dicom_factory import write_series  # noqa: E402
from orthanc import Orthanc, free_port, wait_for  # noqa: E402

SAMPLE = REPO / "MONAIUNetSeg" / "Resources" / "Sample" / "TCGA_DU_A5TR_19970726_flair.nii.gz"


def series_volume(n_slices: int):
    """The sample FLAIR with edge slices repeated (or cut) to ``n_slices``, and its affine."""
    import nibabel as nib
    import numpy as np

    image = nib.load(SAMPLE)
    volume = np.asarray(image.dataobj).astype(np.float64)
    extra = n_slices - volume.shape[2]
    if extra > 0:
        volume = np.pad(volume, ((0, 0), (0, 0), (extra // 2, extra - extra // 2)), mode="edge")
    return volume[:, :, :n_slices], image.affine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model set of the node (default: default)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=40)
    args = parser.parse_args()
    volume, affine = series_volume(args.slices)
    with tempfile.TemporaryDirectory(prefix="node-bench-") as tmp:
        root = Path(tmp)
        port = free_port()
        orthanc = Orthanc(root / "orthanc", port).start()
        log = open(root / "node.log", "wb")
        node = subprocess.Popen([sys.executable, "-m", "monaiunetseg.cli", "listen", "--spool", str(root / "spool"),
                                 "--host", "127.0.0.1", "--port", str(port), "--send-to", orthanc.destination,
                                 "--complete-on-release", "--model", args.model, "--device", "cpu"],
                                stdout=subprocess.DEVNULL, stderr=log,
                                env={**os.environ, "PYTHONPATH": str(REPO / "MONAIUNetSeg")})
        try:
            wait_for(lambda: "listening as" in (root / "node.log").read_text() or node.poll() is not None, 300, "node")
            rows = []
            for run in range(args.runs):
                info = write_series(volume, affine, root / f"series{run}", patient_id=f"BENCH-{run}", seed=run)
                study = orthanc.upload(info["paths"])
                orthanc.send_to_node([study])
                wait_for(lambda: orthanc.instances_of_modality(study, "SEG") and
                         orthanc.instances_of_modality(study, "SR"), 300, "SEG and SR", poll=0.05)
                stored = time.time()
                state = next(s for s in load_states(root / "spool").values() if s.study_uid == info["study_uid"])
                rows.append((run + 1, len(info["paths"]), stored - state.last_received))
        finally:
            node.terminate()
            node.wait(timeout=60)
            orthanc.stop()
    print(f"DICOM node, model set '{args.model}', {args.slices}-slice FLAIR series, {cpu_name()} "
          f"({os.cpu_count()} logical CPUs)")
    print("| run | instances | last instance received -> SEG + SR stored in Orthanc (s) |")
    print("| ---: | ---: | ---: |")
    for run, n, seconds in rows:
        print(f"| {run} | {n} | {seconds:.2f} |")
    print(f"median {statistics.median(r[2] for r in rows):.2f} s over {len(rows)} runs (first run included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
