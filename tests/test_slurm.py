"""The cluster scripts on a real single-node SLURM (``slurm_cluster``): the segment array with its dependent merge
gives one report whose labelmaps equal a single process's, voxel for voxel; a shard ``scancel``led mid-run leaves
the merge refusing with its missing case, and resubmitted it resumes without duplicate rows; the train-cv array
trains both folds into the ``models/cv`` layout and evaluate-oof follows.

Skipped where SLURM or munge are not installed (``.ci/run`` installs them) or without root (the daemons need it).
Kept short for CI: few-slice cases, the ``fast`` model, 1 epoch on one patient per side.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import REPO, SMALL_PATIENTS
from segment_data import save_nifti, small_volume
from slurm_cluster import SlurmCluster, free_port, missing_binaries, start_cluster
from test_run_record import validated

SCRIPTS = REPO / "scripts" / "slurm"
# Two jobs at a time on a 2-core machine: one thread each, and the single-process reference the same, so that no
# sum is taken in another order (the labelmaps are compared voxel for voxel).
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL_JOBS = "--cpus-per-task=1 --mem=3G"  # what this test node has; the scripts ask for a real node's share
SEGMENT_OPTIONS = ["--model", "fast", "--device", "cpu"]
# (patient, slices) of c0..c5; shard 1 of 3 gets c1 and c4, the largest, so that a cancel lands inside it
CASES = [(SMALL_PATIENTS[0], 4), (SMALL_PATIENTS[1], 4), (SMALL_PATIENTS[2], 4), (SMALL_PATIENTS[1], 6),
         (SMALL_PATIENTS[0], 20), (SMALL_PATIENTS[2], 6)]


@pytest.fixture(scope="module")
def slurm() -> SlurmCluster:
    missing = missing_binaries()
    if missing:
        pytest.skip(f"SLURM/munge not installed ({', '.join(missing)} missing; Debian: apt-get install slurmctld "
                    "slurmd slurm-client munge)")
    if os.geteuid() != 0:
        pytest.skip("the test cluster's daemons (munged, slurmctld, slurmd) run as root")
    # A short folder of its own: munge's socket path must fit a Unix socket name (108 bytes), whatever --basetemp is
    root = Path(tempfile.mkdtemp(prefix="monaiunetseg-slurm-"))
    cluster = start_cluster(root)
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


def job_env(cluster: SlurmCluster) -> dict[str, str]:
    """What the jobs inherit (sbatch exports the submitting environment): this Python's command and threads."""
    venv_bin = str(Path(sys.executable).parent)
    return cluster.env(MONAIUNETSEG=f"{sys.executable} -m monaiunetseg.cli", SBATCH_OPTIONS=SMALL_JOBS,
                       PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""), **THREADS)


def submit(cluster: SlurmCluster, cwd: Path, *args: str) -> list[str]:
    """``submit.sh ARGS`` from ``cwd`` (where the job logs go); the two job IDs it printed."""
    proc = subprocess.run(["bash", str(SCRIPTS / "submit.sh"), *args], capture_output=True, text=True, cwd=cwd,
                          env=job_env(cluster), timeout=60)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.replace(";", " ").split()
    return [w for w in words if w.isdigit()]


def sbatch(cluster: SlurmCluster, cwd: Path, *args: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *SMALL_JOBS.split(), *args], capture_output=True, text=True,
                          cwd=cwd, env=job_env(cluster), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


@pytest.fixture(scope="module")
def cases(kaggle_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slurm_cases") / "in"
    for i, (patient, n) in enumerate(CASES):
        array, affine = small_volume(kaggle_dir, n_slices=n, patient=patient)
        save_nifti(array, affine, folder / f"c{i}.nii.gz")
    return folder


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def logs(folder: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(folder.glob("*.log")))


def test_segment_array_with_dependent_merge_equals_one_process(slurm: SlurmCluster, cases: Path, tmp_path: Path):
    reference = subprocess.Popen([sys.executable, "-m", "monaiunetseg.cli", "segment", str(cases), "-o",
                                  str(tmp_path / "single"), "--quiet", *SEGMENT_OPTIONS],
                                 env=dict(os.environ, **THREADS), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
    out = tmp_path / "out"
    array, merge = submit(slurm, tmp_path, "segment", "3", str(out), str(cases), *SEGMENT_OPTIONS)
    states = slurm.wait([array, merge])
    assert set(states.values()) == {"COMPLETED"} and len(states) == 4, f"{states}\n{logs(tmp_path)}"
    assert reference.wait(timeout=600) == 0, reference.stdout.read()

    merged, single = rows(out / "report.csv"), rows(tmp_path / "single" / "report.csv")
    assert [r["input"] for r in merged] == [r["input"] for r in single] and len(merged) == len(CASES)
    assert {r["status"] for r in merged} == {"ok"} and sorted(r["shard"] for r in merged) == ["0of3"] * 2 + [
        "1of3"] * 2 + ["2of3"] * 2
    for row, ref in zip(merged, single):
        ours, theirs = nib.load(row["output"]), nib.load(ref["output"])
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj)), row["input"]
        assert np.allclose(ours.affine, theirs.affine) and row["volume_ml"] == ref["volume_ml"]
    record = validated(out / "run.json")
    assert sorted(run["shard"] for run in record["runs"]) == ["0of3", "1of3", "2of3"]
    assert "merge-reports: 6 case(s) from 3 shard(s)" in (tmp_path / f"monaiunetseg-merge_{merge}.log").read_text()


def test_cancelled_shard_resubmitted_resumes_without_duplicate_rows(slurm: SlurmCluster, cases: Path,
                                                                    tmp_path: Path):
    out = tmp_path / "out"
    array, merge = submit(slurm, tmp_path, "segment", "3", str(out), str(cases), *SEGMENT_OPTIONS)
    first = out / "c1_seg.nii.gz"  # shard 1's first case; c4, its second, takes longest
    deadline = time.monotonic() + 300
    while not first.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    slurm.run("scancel", f"{array}_1")
    states = slurm.wait([array, merge])
    assert states[f"{array}_1"] == "CANCELLED", f"{states}\n{logs(tmp_path)}"
    assert not (out / "c4_seg.nii.gz").exists(), "shard 1 finished before it could be cancelled"
    merge_log = (tmp_path / f"monaiunetseg-merge_{merge}.log").read_text()
    assert states[merge] == "FAILED" and "c4.nii.gz" in merge_log and "shard 1of3 stopped" in merge_log, merge_log
    assert not (out / "report.csv").exists()

    # As docs/cluster.md says: the task again (the shard count given: alone, its array has one task), then the merge
    again = sbatch(slurm, tmp_path, "--array=1", "--export=ALL,NUM_SHARDS=3", str(SCRIPTS / "segment_array.sbatch"),
                   str(out), str(cases), *SEGMENT_OPTIONS)
    merge = sbatch(slurm, tmp_path, f"--dependency=afterok:{again}", str(SCRIPTS / "merge_reports.sbatch"), str(out))
    states = slurm.wait([again, merge])
    assert set(states.values()) == {"COMPLETED"}, f"{states}\n{logs(tmp_path)}"
    merged = rows(out / "report.csv")
    assert len(merged) == len(CASES) == len({r["input"] for r in merged}) and {r["status"] for r in merged} == {"ok"}
    runs = json.loads((out / "run.shard1of3.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["started", "finished"]  # the cancelled run, then the resumed one
    reused = {Path(c["input"]).name: c["reused"] for c in runs[1]["cases"]}
    assert reused == {"c1.nii.gz": True, "c4.nii.gz": False}  # resumed where it stopped


def test_train_cv_array_trains_both_folds_then_evaluates(slurm: SlurmCluster, prepared_small: Path, tmp_path: Path):
    cv = tmp_path / "cv"
    array, evaluate = submit(slurm, tmp_path, "train-cv", "2", str(prepared_small), str(cv), "--epochs", "1",
                             "--subset", "1", "--device", "cpu", "--num-workers", "0")
    states = slurm.wait([array, evaluate])
    assert set(states.values()) == {"COMPLETED"} and len(states) == 3, f"{states}\n{logs(tmp_path)}"
    for fold in (0, 1):
        record = json.loads((cv / f"fold{fold}" / "cv_fold.json").read_text())
        assert record["fold"] == fold and record["status"] == "done" and record["epochs"] == 1
        assert (cv / f"fold{fold}" / "model.pt").is_file()
    assert not (cv / "fold2").exists()
    table = rows(cv / "oof" / "oof_metrics_per_patient.csv")
    assert sorted(int(r["fold"]) for r in table) == [0, 1]  # each patient by the fold model that never saw it


def test_multi_node_ddp_script_trains_with_srun_and_torchrun(slurm: SlurmCluster, kaggle_dir: Path, tmp_path: Path):
    """The DDP example on the one node there is: srun starts torchrun, torchrun two CPU processes (gloo) that
    meet at the rendezvous and train one epoch together (2 patients per fold: each rank validates one)."""
    from monaiunetseg.training.prepare import prepare_lgg

    prepared = tmp_path / "prepared"
    results, _ = prepare_lgg(kaggle_dir, prepared, n_folds=2, subset=2, progress=False)
    assert len(results) == 4 and not [r.error for r in results if r.error]
    out = tmp_path / "ddp"
    env = {"GPUS_PER_NODE": "2", "PYTHON": sys.executable, "TORCHRUN": str(Path(sys.executable).parent / "torchrun"),
           "PORT": str(free_port())}
    job = sbatch(slurm, tmp_path, "--nodes=1", "--gpus-per-node=0", "--export=ALL," + ",".join(
        f"{k}={v}" for k, v in env.items()), str(SCRIPTS / "train_ddp_multinode.sbatch"), str(prepared),
                 str(out), "--epochs", "1", "--subset", "2", "--device", "cpu", "--num_workers", "0")
    states = slurm.wait([job])
    log = (tmp_path / f"monaiunetseg-ddp_{job}.log").read_text(errors="replace")
    assert states[job] == "COMPLETED", f"{states}\n{log[-3000:]}"
    assert (out / "model.pt").is_file(), log[-3000:]
    assert log.count("Setting logging properties based on config") == 2  # one line per rank: two processes trained
