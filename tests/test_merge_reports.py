"""``merge-reports``: the shard reports of one batch joined into one report (every case once, with its shard, in
a single run's order), refused while a shard runs, when cases are missing (listed) or when two shards disagree
(both named); merging again changes nothing. Also ``auto`` shard numbers from a scheduler's environment.

The shards here are real ``segment`` runs (``run_batch``) on small synthetic scans with a threshold stand-in for
the network, so that every case takes milliseconds; the SLURM tests run the real model.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from monaiunetseg.batch.array_task import ArrayTaskError, resolve
from monaiunetseg.batch.lock import FolderBusyError, OutputLock
from monaiunetseg.batch.merge import IncompleteShardsError, ShardConflictError, merge_reports
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.outdir import OutputFolderError
from monaiunetseg.batch.run import run_batch

from test_run_record import validated

N_CASES, N_SHARDS = 6, 3


class ThresholdSegmenter:
    """Stand-in for the network: the brightest voxels (``percentile``); ``stop_after`` calls, then a Ctrl-C, as a
    cancelled job stops mid-batch."""

    def __init__(self, percentile: float = 98, stop_after: int | None = None) -> None:
        self.percentile, self.stop_after, self.calls = percentile, stop_after, 0
        self.timings = SimpleNamespace(preprocess=0.0, model=0.0, postprocess=0.0)

    def segment(self, array, affine):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt
        self.calls += 1
        return (array > np.percentile(array, self.percentile)).astype(np.uint8)


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    """Six small textured scans (not label maps) in ``in/``."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(N_CASES):
        array = (rng.normal(100, 20, (24, 24, 5)) + 60 * i).astype(np.int16)
        nib.Nifti1Image(array, np.diag([1.0, 1.0, 3.0, 1.0])).to_filename(folder / f"case{i}.nii.gz")
    return folder


def run_shard(scans: Path, out: Path, k: int, segmenter=None, **options) -> None:
    run_batch([scans], out, BatchOptions(progress=False, num_shards=N_SHARDS, shard_id=k, **options),
              segmenter=segmenter or ThresholdSegmenter())


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monaiunetseg.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_merge_joins_the_shards_in_a_single_runs_order_and_again_changes_nothing(scans: Path, tmp_path: Path):
    single = tmp_path / "single"
    run_batch([scans], single, BatchOptions(progress=False), segmenter=ThresholdSegmenter())
    out = tmp_path / "out"
    for k in (2, 0, 1):  # finishing order does not matter
        run_shard(scans, out, k)

    merged = merge_reports(out)
    assert merged.exit_code == 0 and merged.count("ok") == N_CASES
    rows, expected = csv_rows(out / "report.csv"), csv_rows(single / "report.csv")
    assert [r["input"] for r in rows] == [r["input"] for r in expected]  # every case once, in a single run's order
    assert [r["shard"] for r in rows] == [f"{i % N_SHARDS}of{N_SHARDS}" for i in range(N_CASES)]
    assert {r["shard"] for r in expected} == {""}  # an unsharded run leaves the column empty
    assert [r["volume_ml"] for r in rows] == [r["volume_ml"] for r in expected]
    assert [r["shard"] for r in json.loads((out / "report.json").read_text())["rows"]] == [r["shard"] for r in rows]
    record = validated(out / "run.json")
    assert [run["shard"] for run in record["runs"]] == ["0of3", "1of3", "2of3"]
    assert record["merged_from"] == [f"run.shard{k}of3.json" for k in range(N_SHARDS)]
    assert sum(len(run["cases"]) for run in record["runs"]) == N_CASES

    before = {p.name: p.read_bytes() for p in (out / "report.csv", out / "report.json", out / "run.json")}
    again = cli("merge-reports", str(out))
    assert again.returncode == 0, again.stderr
    assert f"merge-reports: {N_CASES} case(s) from {N_SHARDS} shard(s)" in again.stdout
    assert {name: (out / name).read_bytes() for name in before} == before  # idempotent, byte for byte
    assert not [p.name for p in out.iterdir() if ".part" in p.name]


def test_missing_shard_and_stopped_shard_are_refused_with_their_cases(scans: Path, tmp_path: Path):
    out = tmp_path / "out"
    run_shard(scans, out, 0)
    with pytest.raises(KeyboardInterrupt):  # shard 1 stopped after its first case (as scancel stops it)
        run_shard(scans, out, 1, segmenter=ThresholdSegmenter(stop_after=1))
    # shard 2 never ran: its cases are found again from the inputs another shard's record names
    with pytest.raises(IncompleteShardsError) as info:
        merge_reports(out)
    assert sorted(Path(m).name for m in info.value.missing) == ["case2.nii.gz", "case4.nii.gz", "case5.nii.gz"]
    message = str(info.value)
    assert "shard 1of3 stopped with 1 case(s) not done" in message and "shard 2of3 wrote no report" in message
    proc = cli("merge-reports", str(out))
    assert proc.returncode == 3 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "case5.nii.gz" in proc.stderr, proc.stderr
    assert not (out / "report.csv").exists() and not (out / "run.json").exists()  # nothing written

    run_shard(scans, out, 1)  # resubmitted: resumes (its first case is kept), no row twice
    run_shard(scans, out, 2)
    merged = merge_reports(out)
    rows = csv_rows(out / "report.csv")
    assert len(rows) == N_CASES == len({r["input"] for r in rows}) and merged.count("ok") == N_CASES
    kept = [r for r in rows if r["shard"] == "1of3" and not r["seconds"]]
    assert [Path(r["input"]).name for r in kept] == ["case1.nii.gz"]  # existing output kept, not redone


def test_missing_cases_of_relative_inputs_are_found_from_the_runs_own_folder(scans: Path, tmp_path: Path,
                                                                            monkeypatch):
    monkeypatch.chdir(scans.parent)
    out = tmp_path / "out"
    run_batch([Path(scans.name)], out, BatchOptions(progress=False, num_shards=N_SHARDS, shard_id=0),
              segmenter=ThresholdSegmenter())
    monkeypatch.chdir(tmp_path.parent)  # merged from elsewhere
    with pytest.raises(IncompleteShardsError) as info:
        merge_reports(out)
    assert sorted(Path(m).name for m in info.value.missing) == [f"case{i}.nii.gz" for i in (1, 2, 4, 5)]
    assert all(Path(m).is_absolute() for m in info.value.missing)


def test_two_shards_disagreeing_on_a_case_are_refused_naming_both(scans: Path, tmp_path: Path):
    """Inputs changed between shards (a scan removed): the shards' case lists shift, two shards run one case, with
    different results; merging names the case and both reports and writes nothing."""
    out = tmp_path / "out"
    run_shard(scans, out, 2)  # of case0-5: case2, case5
    (scans / "case0.nii.gz").unlink()
    run_shard(scans, out, 0)  # of case1-5: case1, case4
    run_shard(scans, out, 1, segmenter=ThresholdSegmenter(percentile=90), overwrite=True)  # case2, case5, anew
    with pytest.raises(ShardConflictError) as info:
        merge_reports(out)
    message = str(info.value)
    assert "case2.nii.gz" in message and "report.shard1of3.csv" in message and "report.shard2of3.csv" in message
    proc = cli("merge-reports", str(out))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "case2.nii.gz" in proc.stderr
    assert not (out / "report.csv").exists()


def test_merge_is_refused_while_a_shard_holds_its_lock_and_waits_with_wait(scans: Path, tmp_path: Path):
    out = tmp_path / "out"
    for k in range(N_SHARDS):
        run_shard(scans, out, k)
    running = OutputLock(out, N_SHARDS, 1).acquire()  # shard 1 rerunning now
    try:
        with pytest.raises(FolderBusyError, match=r"is not merged: a shard still runs \(PID \d+ on "):
            merge_reports(out)
        proc = cli("merge-reports", str(out))
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "a shard still runs (PID" in proc.stderr and "--wait" in proc.stderr, proc.stderr
        assert not (out / "report.csv").exists()
        threading.Timer(1.5, running.release).start()
        t0 = time.monotonic()
        merged = merge_reports(out, wait=True)
        assert time.monotonic() - t0 >= 1.0 and len(merged.rows) == N_CASES
    finally:
        running.release()


def test_merge_never_replaces_an_unsharded_runs_report(scans: Path, tmp_path: Path):
    out = tmp_path / "out"
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.nii.gz").write_bytes((scans / "case0.nii.gz").read_bytes())
    run_batch([other], out, BatchOptions(progress=False), segmenter=ThresholdSegmenter())
    report = (out / "report.csv").read_bytes()
    for k in range(N_SHARDS):
        run_shard(scans, out, k)
    with pytest.raises(OutputFolderError, match="unsharded segment run"):
        merge_reports(out)
    assert (out / "report.csv").read_bytes() == report


def test_no_shard_reports_is_a_command_error(tmp_path: Path):
    proc = cli("merge-reports", str(tmp_path))
    assert proc.returncode == 2 and "no shard reports" in proc.stderr


@pytest.mark.parametrize(("env", "index", "count"), [
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_MAX": "2"}, 2, 3),
    ({"JOB_COMPLETION_INDEX": "4"}, 4, None),  # Kubernetes: the count must be given
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_MAX": "1"}, 1, None),  # one task resubmitted alone: its count is no shard count
    ({}, None, None),
])
def test_auto_shard_numbers_come_from_the_scheduler(env: dict, index: int | None, count: int | None):
    if index is None:
        with pytest.raises(ArrayTaskError, match="neither .SLURM_ARRAY_TASK_ID .* nor .JOB_COMPLETION_INDEX"):
            resolve("auto", "--shard-id", counting=False, env=env)
    else:
        assert resolve("auto", "--shard-id", counting=False, env=env) == index
    if count is None:
        with pytest.raises(ArrayTaskError, match="give --num-shards N"):
            resolve("auto", "--num-shards", counting=True, env=env)
    else:
        assert resolve("auto", "--num-shards", counting=True, env=env) == count
    assert resolve(5, "--shard-id", counting=False, env=env) == 5


def test_merge_when_done_lets_the_last_shard_merge(scans: Path, tmp_path: Path):
    """Three shards started at once with the real model: whichever finishes last merges (the others say they leave
    it); the report has every case once."""
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "monaiunetseg.cli", "segment", str(scans), "-o", str(out),
                               "--num-shards", "3", "--shard-id", str(k), "--merge-when-done", "--model", "fast",
                               "--device", "cpu", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
             for k in range(N_SHARDS)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * N_SHARDS, outputs
    merged = [o for o in outputs if f"merge-reports: {N_CASES} case(s) from {N_SHARDS} shard(s)" in o]
    assert merged, outputs  # at least the last; two finishing within a moment may both merge (the same files)
    assert all(o in merged or "the last" in o for o in outputs), outputs
    rows = csv_rows(out / "report.csv")
    assert sorted(Path(r["input"]).name for r in rows) == [f"case{i}.nii.gz" for i in range(N_CASES)]
