"""The output folder under stress: two real processes on one folder, files the tool did not write, a folder
that is a file, read-only or full, temporary files of a killed run, a late step failing, a bad model."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.report import REPORT_COLUMNS
from monaiunetseg.batch.run import run_batch
from monaiunetseg.cli import main as cli_main

from segment_data import save_nifti, small_volume


def read_report(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def cli(args: list, **kwargs) -> subprocess.Popen:
    """``monaiunetseg`` in a fresh process (PYTHONPATH as the tests', so it runs this checkout's code)."""
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "-m", "monaiunetseg.cli", *map(str, args)], text=True, **streams)


def finish(proc: subprocess.Popen, timeout: int = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def scans(kaggle_dir: Path, tmp_path_factory) -> dict:
    """Four small FLAIR NIfTI scans in two disjoint input folders (two per folder)."""
    root = tmp_path_factory.mktemp("folder_inputs")
    flair, affine = small_volume(kaggle_dir, n_slices=4)
    for i, folder in enumerate(["a", "a", "b", "b"]):
        save_nifti(np.roll(flair, 7 * i, axis=0), affine, root / folder / f"scan{i}.nii.gz")
    return {"root": root, "a": root / "a", "b": root / "b", "flair": flair, "affine": affine}


def private_tmpfs(folder: Path, options: str, then: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run shell ``then`` with a fresh tmpfs (mount ``options``) at ``folder``, in a private mount namespace
    (gone with the process, so ``then`` also lists what it needs to see). Skips where that is not allowed."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4k tmpfs /mnt"],
                           capture_output=True, text=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"no private tmpfs mounts here (needs root and unshare): {probe.stderr.strip()}")
    folder.mkdir(parents=True, exist_ok=True)
    script = f"mount -t tmpfs -o {options} tmpfs '{folder}' && {then}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=timeout)


def test_second_run_into_a_held_folder_stops_or_waits(scans, tmp_path: Path):
    """Point 1: a run holding -o (here: this test process, through the same lock) turns a second run away
    with exit code 2 naming the holder; two --wait runs racing for it then both finish, no row lost."""
    from monaiunetseg.batch.lock import LOCK_NAME, OutputLock

    out = tmp_path / "out"
    out.mkdir()
    holder = OutputLock(out).acquire()
    try:
        code, _, err = finish(cli(["segment", scans["a"], "-o", out, "--quiet"]), timeout=120)
        assert code == 2, err
        assert f"output folder {out} is in use by another monaiunetseg run (PID {os.getpid()} on" in err
        assert "--wait" in err and "Traceback" not in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written by the refused run
        result = tmp_path / "case.json"  # segment-case (the Slicer module's job) holds the folder the same way
        code, _, err = finish(cli(["segment-case", scans["a"] / "scan0.nii.gz", "-o", out, "--result-json", result]))
        assert code == 2 and json.loads(result.read_text())["status"] == "failed"
        assert f"is in use by another monaiunetseg run (PID {os.getpid()} on" in json.loads(result.read_text())["error"]

        logs = [tmp_path / f"{k}.err" for k in ("a", "b")]
        racers = [cli(["segment", scans[k], "-o", out, "--quiet", "--wait", "--device", "cpu"], stderr=log.open("w"))
                  for k, log in zip(("a", "b"), logs)]
        deadline = time.monotonic() + 120
        while not all("waiting (--wait)" in log.read_text() for log in logs):  # both queued on the held folder
            assert time.monotonic() < deadline and all(p.poll() is None for p in racers), [log.read_text() for log in logs]
            time.sleep(0.2)
    finally:
        holder.release()
    results = [finish(p) for p in racers]
    assert [r[0] for r in results] == [0, 0], [log.read_text() for log in logs]
    rows = read_report(out / "report.csv")
    assert sorted((Path(r["input"]).name, r["status"]) for r in rows) == [(f"scan{i}.nii.gz", "ok") for i in range(4)]
    raw = json.loads((out / "report.json").read_text())["rows"]  # the same rows, numbers as numbers
    assert [(r["input"], r["status"]) for r in raw] == [(r["input"], r["status"]) for r in rows]
    assert [r["volume_ml"] for r in raw] == [pytest.approx(float(r["volume_ml"]), abs=1e-3) for r in rows]
    assert not (out / LOCK_NAME).exists()


def test_shards_share_a_folder_but_not_with_a_whole_run(tmp_path: Path):
    """Point 1 for shards: shards of one batch run side by side; the same shard twice, or a whole run while
    shards hold the folder, is refused."""
    from monaiunetseg.batch.lock import OutputLock
    from monaiunetseg.batch.outdir import OutputFolderError

    zero, one = OutputLock(tmp_path, 2, 0).acquire(), OutputLock(tmp_path, 2, 1).acquire()
    try:
        with pytest.raises(OutputFolderError, match=r"in use by another monaiunetseg run \(PID \d+"):
            OutputLock(tmp_path, 2, 0).acquire()
        with pytest.raises(OutputFolderError, match="in use"):
            OutputLock(tmp_path).acquire()
    finally:
        zero.release()
    with pytest.raises(OutputFolderError):
        OutputLock(tmp_path).acquire()  # shard 1 still runs
    one.release()
    OutputLock(tmp_path).acquire().release()
    assert [p.name for p in tmp_path.iterdir()] == []  # lock files go with their last holder


def test_files_the_tool_did_not_write_are_never_replaced(scans, segmenter, tmp_path: Path, capsys):
    """Point 2: a user's report.csv, labelmap-named or overlay-named file stops the run (exit 2) untouched."""
    scan = scans["a"] / "scan0.nii.gz"
    for name, content in [("report.csv", "patient,score\nA,1\n"), ("report.json", '{"mine": 1}'),
                          ("run.json", '{"mine": 1}'),
                          ("scan0_seg.nii.gz", None), ("scan0_overlay.png", b"\x89PNG my own picture")]:
        out = tmp_path / name
        out.mkdir()
        if content is None:  # the user's own segmentation, with the tool's file name
            save_nifti(np.ones((4, 4, 4)), np.eye(4), out / name, dtype=np.uint8)
        elif isinstance(content, bytes):
            (out / name).write_bytes(content)
        else:
            (out / name).write_text(content)
        before = (out / name).read_bytes()
        assert cli_main(["segment", str(scan), "-o", str(out), "--quiet", "--overlay"]) == 2
        err = capsys.readouterr().err
        assert f"not written by MONAIUNetSeg but have the name of an output of this run: {out / name}" in err
        assert (out / name).read_bytes() == before
        assert sorted(p.name for p in out.iterdir()) == [name]  # stopped before any work
    out = tmp_path / "report.csv"
    result = run_batch([scan], out, BatchOptions(progress=False, overwrite=True), segmenter=segmenter)
    assert result.exit_code == 0 and read_report(out / "report.csv")[0]["status"] == "ok"  # --overwrite: replaced


def test_output_folder_problems_are_exit_2_errors(scans, tmp_path: Path, capsys):
    """Point 10 (file, not writable): a clear error with exit code 2, no traceback."""
    scan = scans["a"] / "scan0.nii.gz"
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine\n")
    assert cli_main(["segment", str(scan), "-o", str(a_file), "--quiet"]) == 2
    assert f"output folder {a_file} is an existing file, not a folder" in capsys.readouterr().err
    assert cli_main(["segment", str(scan), "-o", str(a_file / "sub"), "--quiet"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert a_file.read_text() == "mine\n"

    ro = tmp_path / "ro"
    command = f"{sys.executable} -m monaiunetseg.cli segment '{scan}' -o"
    proc = private_tmpfs(ro, "ro,size=64k", f"{command} '{ro}' --quiet; echo rc=$?; {command} '{ro}/new' --quiet; echo rc=$?")
    assert proc.stdout.split() == ["rc=2", "rc=2"], proc.stderr
    assert f"output folder {ro} is not writable" in proc.stderr
    assert f"cannot create the output folder {ro}/new (Read-only file system)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_full_disk_report_is_an_exit_2_error_and_a_failed_late_step_leaves_no_output(scans, tmp_path: Path):
    """Points 10 and 9 on a real full file system (a small tmpfs): the report cannot be written -> exit 2 with
    the reason; an overlay that does not fit -> that case fails naming the step, and no labelmap is left."""
    scan = scans["a"] / "scan0.nii.gz"
    out = tmp_path / "full"
    run = f"{sys.executable} -m monaiunetseg.cli segment '{scan}' -o '{out}' --quiet --device cpu"
    fill = f"head -c 12288 /dev/zero > '{out}/filler'"  # one 4 KiB page left: the lock takes it
    proc = private_tmpfs(out, "size=16k", f"{fill}; {run}; echo rc=$?; ls -A '{out}'")
    assert proc.stdout.split() == ["rc=2", ".monaiunetseg", "filler"], (proc.stdout, proc.stderr)
    assert f"cannot write the report {out / 'report.csv'} (No space left on device)" in proc.stderr
    assert "the output folder must be writable and have free space" in proc.stderr
    assert "Traceback" not in proc.stderr

    # 48 KiB: the labelmap, records and report fit, an overlay PNG of a 256 x 256 slice does not
    proc = private_tmpfs(out, "size=48k", f"{run} --overlay >/dev/null; echo rc=$?; ls -A '{out}'; cat '{out}/report.csv'")
    lines = proc.stdout.splitlines()
    assert lines[0] == "rc=1", (proc.stdout, proc.stderr)
    header = ",".join(REPORT_COLUMNS)
    (row,) = csv.DictReader(lines[lines.index(header):])
    assert row["status"] == "failed" and row["output"] == "" and row["overlay"] == ""
    assert row["error"].startswith(f"{scan}: overlay: OSError: [Errno 28] No space left on device"), row["error"]
    assert set(lines[1:lines.index(header)]) == {".monaiunetseg", "report.csv", "report.json", "run.json"}


def test_temporary_files_of_a_killed_run_are_removed(scans, segmenter, tmp_path: Path):
    """Point 11: a writer killed with SIGKILL leaves its hidden .part file; the next run that holds the folder
    removes it (a shard only its own)."""
    out = tmp_path / "out"
    kill = ("import os, sys\nfrom monaiunetseg.files import atomic_path\n"
            "for name in sys.argv[1:]:\n"
            "    atomic_path(name).__enter__().write_bytes(b'half')\n"
            "os.kill(os.getpid(), 9)\n")
    victims = [out / "scan0_seg.nii.gz", out / "report.csv", out / "scan2_seg.nii.gz"]
    proc = subprocess.run([sys.executable, "-c", kill, *map(str, victims)], capture_output=True)
    assert proc.returncode == -9
    parts = sorted(p.name for p in out.glob(".*.part*"))
    assert len(parts) == 3 and all(p.startswith(tuple(f".{v.name}." for v in victims)) for p in parts)
    result = run_batch([scans["a"] / "scan0.nii.gz", scans["b"] / "scan2.nii.gz"], out,
                       BatchOptions(progress=False, num_shards=2, shard_id=1), segmenter=segmenter)
    assert result.exit_code == 0  # shard 1 of 2 = scan2: its part goes, the others are not its own
    assert sorted(p.name for p in out.glob(".*.part*")) == [p for p in parts if not p.startswith(".scan2")]
    assert run_batch([scans["a"] / "scan0.nii.gz"], out, BatchOptions(progress=False), segmenter=segmenter).exit_code == 0
    assert not list(out.glob(".*.part*"))


def test_failing_dicom_seg_keeps_the_labelmap_and_says_why_in_the_note(kaggle_dir: Path, segmenter, tmp_path: Path):
    """Issue 22.7c (was point 9): a DICOM SEG refused for an invalid StudyDate took the labelmap down with it. The
    SEG is an extra: the case is ok with its labelmap, the note names the SEG's step and problem, no SEG or
    temporary file is left, and the next run tries the SEG again."""
    import pydicom

    from dicom_factory import write_series

    flair, affine = small_volume(kaggle_dir, n_slices=4)
    series = write_series(flair, affine, tmp_path / "in" / "study", description="AX FLAIR")
    for path in series["paths"]:
        ds = pydicom.dcmread(path)
        ds.StudyDate = "2024-13-45"
        ds.save_as(path)
    out = tmp_path / "out"
    options = BatchOptions(progress=False, dicom_seg=True)
    result = run_batch([tmp_path / "in"], out, options, segmenter=segmenter)
    (res,) = result.results
    assert res.status == "ok" and res.output.endswith("_seg.nii.gz") and Path(res.output).is_file()
    assert res.dicom_seg == "" and result.exit_code == 0
    assert res.note.startswith("DICOM SEG not written (dicom-seg: ValueError: Unable to convert '2024-13-45' to 'DA'")
    assert res.note.endswith("; labelmap written")
    assert sorted(p.name for p in out.iterdir()) == [".monaiunetseg", Path(res.output).name, "report.csv",
                                                     "report.json", "run.json"]
    (again,) = run_batch([tmp_path / "in"], out, options, segmenter=segmenter).results
    assert again.status == "ok" and again.note.startswith("earlier output incomplete (no DICOM SEG): redone; DICOM SEG "
                                                          "not written (dicom-seg: "), again.note


def test_ctrl_c_is_one_line_and_exit_130(scans, tmp_path: Path):
    """Minor of issue 22: Ctrl-C printed a 30-line traceback. A run waiting (--wait) on a held folder, then
    interrupted, says so in one line and exits 130, leaving nothing behind."""
    import signal

    from monaiunetseg.batch.lock import LOCK_NAME, OutputLock

    out = tmp_path / "out"
    out.mkdir()
    holder = OutputLock(out).acquire()
    try:
        log = tmp_path / "err"
        proc = cli(["segment", scans["a"], "-o", out, "--quiet", "--wait"], stderr=log.open("w"))
        deadline = time.monotonic() + 120
        while "waiting (--wait)" not in log.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        code, _, _ = finish(proc, timeout=60)
    finally:
        holder.release()
    err = log.read_text()
    assert code == 130, err
    assert err.splitlines()[-1] == "monaiunetseg segment: interrupted" and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == []


def test_bad_weights_leave_no_report_of_pending_rows(scans, tmp_path: Path, capsys):
    """Point 13: an unusable --weights file is a command error before any row is written."""
    out = tmp_path / "out"
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert cli_main(["segment", str(scans["a"]), "-o", str(out), "--quiet", "--weights", str(empty)]) == 2
    assert f"{empty}: not a readable PyTorch state_dict (the file is empty: 0 bytes)" in capsys.readouterr().err
    assert not (out / "report.csv").exists() and not list(out.glob("*_seg.nii.gz"))


def test_links_at_the_lock_or_record_folder_are_refused_never_written_through(scans, tmp_path: Path):
    """Issue 22.9: ``out/.monaiunetseg.lock`` (or the record folder) as a link to a file (folder) outside -o
    stops the run with exit code 2 naming it; the file it points to is left as it was."""
    from monaiunetseg.batch.lock import LOCK_NAME, OutputLock
    from monaiunetseg.batch.outdir import OutputFolderError

    victim = tmp_path / "thesis.txt"
    victim.write_text("years of work\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    code, _, err = finish(cli(["segment", scans["a"], "-o", out, "--quiet", "--device", "cpu"]), timeout=120)
    assert code == 2 and f"the lock file {out / LOCK_NAME} is a symbolic link" in err, err
    assert victim.read_text() == "years of work\n" and (out / LOCK_NAME).is_symlink()
    (out / LOCK_NAME).unlink()
    os.link(victim, out / LOCK_NAME)  # a hard link would be emptied just the same
    with pytest.raises(OutputFolderError, match="is a hard link"):
        OutputLock(out).acquire()
    assert victim.read_text() == "years of work\n"
    (out / LOCK_NAME).unlink()

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "records" / "report.csv").mkdir(parents=True)
    keep = elsewhere / "records" / "report.csv" / "keep.json"
    keep.write_text('{"row": {"input": "%s"}}' % (scans["a"] / "scan0.nii.gz"))
    (out / ".monaiunetseg").symlink_to(elsewhere)
    with pytest.raises(OutputFolderError, match=r"the record folder .*\.monaiunetseg is a symbolic link"):
        run_batch([scans["a"]], out, BatchOptions(progress=False, device="cpu"))
    assert [p.name for p in keep.parent.iterdir()] == ["keep.json"]
    assert sorted(p.name for p in out.iterdir()) == [".monaiunetseg"]


def test_user_files_that_look_like_temporary_files_are_never_deleted(scans, segmenter, tmp_path: Path):
    """Issue 22.16: only the exact temporary names the tool creates (an output's name, mkstemp's random part, the
    output's own suffix) are removed as stale; a user's look-alikes in -o are left, by segment and segment-case."""
    from monaiunetseg.batch.single import segment_single

    out = tmp_path / "out"
    out.mkdir()
    users = [".notes.20251231.part", ".thesis.docx.backup01.part.docx", ".scan0_seg.nii.gz.backup01.part.gz",
             ".holiday.png.abcd1234.part.png"]
    for name in users:
        (out / name).write_text("mine\n")
    stale = out / ".scan0_seg.nii.gz.k3j_9x2a.part.nii.gz"
    stale.write_bytes(b"half")
    assert run_batch([scans["a"] / "scan0.nii.gz"], out, BatchOptions(progress=False), segmenter=segmenter).exit_code == 0
    assert not stale.exists()
    assert sorted(p.name for p in out.glob(".*.part*")) == sorted(users)
    stale.write_bytes(b"half")
    assert segment_single(scans["a"] / "scan0.nii.gz", out, BatchOptions(progress=False), segmenter=segmenter).status == "ok"
    assert not stale.exists()
    assert all((out / name).read_text() == "mine\n" for name in users)


def test_truncated_report_json_of_ours_is_rebuilt_not_refused(scans, segmenter, tmp_path: Path):
    """Issue 22 (minor): a report.json cut short forced --overwrite and a full recompute; it is ours (how it
    begins says so), so a rerun keeps the earlier results and writes it whole again."""
    out = tmp_path / "out"
    scan = scans["a"] / "scan0.nii.gz"
    assert run_batch([scan], out, BatchOptions(progress=False), segmenter=segmenter).exit_code == 0
    whole = (out / "report.json").read_text()
    (out / "report.json").write_text(whole[: len(whole) // 2])
    again = run_batch([scan], out, BatchOptions(progress=False), segmenter=segmenter)
    assert again.exit_code == 0 and again.results[0].seconds is None  # kept, not recomputed
    assert json.loads((out / "report.json").read_text())["rows"][0]["status"] == "ok"
    (out / "report.json").write_text('{"someone": "else"')  # a foreign file is still refused
    from monaiunetseg.batch.outdir import OutputFolderError

    with pytest.raises(OutputFolderError, match="report.json"):
        run_batch([scan], out, BatchOptions(progress=False), segmenter=segmenter)
