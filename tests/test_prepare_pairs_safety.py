"""Issue 31: ``prepare-pairs`` never changes its input tree nor replaces a user's file, and a full disk is one
line with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


from monaiunetseg.cli import main

from test_prepare_pairs import save_nifti, volume


def pairs(root: Path, n: int = 2) -> tuple[Path, Path]:
    for i in range(n):
        image, label, affine = volume()
        save_nifti(image, affine, root / "images" / f"c{i}.nii.gz")
        save_nifti(label, affine, root / "labels" / f"c{i}.nii.gz")
    return root / "images", root / "labels"


def snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_output_around_the_inputs_is_refused_and_the_inputs_stay(tmp_path: Path, capsys):
    """Item 2: ``-o D`` for ``D/images D/labels`` (and -o inside an input) is refused before anything is
    written: the instance labels are not rewritten as 0/1, no file is added to images/."""
    images, labels = pairs(tmp_path / "D")
    before = snapshot(tmp_path / "D")
    for out in (tmp_path / "D", images / "prepared"):
        assert main(["prepare-pairs", str(images), str(labels), "-o", str(out), "--folds", "2"]) == 2
        err = capsys.readouterr().err
        assert "input folder" in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path / "D") == before
    assert main(["prepare-pairs", str(images), str(labels), "-o", str(tmp_path / "D" / "prepared"), "--folds", "2"]) == 0


def test_an_existing_folder_with_the_users_files_is_refused(tmp_path: Path, capsys):
    """Item 3: -o EXISTING holding the user's own datalist.json, dataset_summary.csv or images: refused naming
    them, left as they are; a rerun into the tool's own output replaces it."""
    images, labels = pairs(tmp_path / "in")
    existing = tmp_path / "mine"
    (existing / "images").mkdir(parents=True)
    (existing / "datalist.json").write_text('{"training": [{"image": "images/a.nii.gz"}]}\n')
    (existing / "dataset_summary.csv").write_text("my,columns\n")
    (existing / "images" / "c0_image.nii.gz").write_bytes(b"my own image")
    before = snapshot(existing)
    assert main(["prepare-pairs", str(images), str(labels), "-o", str(existing), "--folds", "2"]) == 2
    err = capsys.readouterr().err
    assert "were not written by prepare-pairs" in err and "datalist.json" in err and "c0_image.nii.gz" in err
    assert snapshot(existing) == before
    out = tmp_path / "prepared"
    assert main(["prepare-pairs", str(images), str(labels), "-o", str(out), "--folds", "2"]) == 0
    assert main(["prepare-pairs", str(images), str(labels), "-o", str(out), "--folds", "2"]) == 0  # ours: rerun


def test_a_full_disk_is_one_line_and_exit_2(tmp_path: Path):
    """Item 15: writing past the file-size limit (EFBIG, as a full disk gives ENOSPC) is one line naming the
    file, exit 2, no traceback."""
    images, labels = pairs(tmp_path / "in")
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000)); from monaiunetseg.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "prepare-pairs", str(images), str(labels), "-o",
                           str(tmp_path / "out"), "--folds", "2"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "cannot write" in proc.stderr and "File too large" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
