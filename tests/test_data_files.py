"""Data files of NRRD/MetaImage headers: found as ITK finds them, hashed by resume, confined, never a FIFO (#22.2, 15, 10).

Each header form is checked against SimpleITK itself: changing any data byte changes what ITK reads, and so must
change the content hash that resume keeps a result by.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monaiunetseg.batch.discover import discover_cases
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.resume import content_digest
from monaiunetseg.batch.run import run_batch
from monaiunetseg.io.nrrd_mha import ImageInputError, input_files, read_image_volume

from segment_data import small_volume

SHAPE = (6, 5, 4)  # (i, j, k)
COMMENTS = "".join(f"# comment line {n:05d} " + "x" * 60 + "\n" for n in range(1200))  # > 64 KiB
MHD = ("ObjectType = Image\nNDims = 3\nDimSize = {size}\nElementSpacing = 1 1 2\nOffset = 0 0 0\n"
       "TransformMatrix = 1 0 0 0 1 0 0 0 1\nElementType = MET_SHORT\nBinaryData = True\n"
       "BinaryDataByteOrderMSB = False\nElementDataFile = {data}\n")
NHDR = ("NRRD0004\n{comments}type: short\ndimension: 3\nspace: left-posterior-superior\nsizes: {size}\n"
        "space directions: (1,0,0) (0,1,0) (0,0,2)\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
        "space origin: (0,0,0)\ndata file: {data}\n")


def _slices(volume: np.ndarray) -> list[bytes]:
    return [np.ascontiguousarray(volume[:, :, k].T).astype("<i2").tobytes() for k in range(volume.shape[2])]


def write_header(folder: Path, form: str, volume: np.ndarray) -> tuple[Path, list[Path]]:
    """One header form (see the parametrisation) and its data files; returns (header, data files)."""
    folder.mkdir(parents=True, exist_ok=True)
    size = " ".join(map(str, volume.shape))
    whole = b"".join(_slices(volume))
    if form in ("mhd space", "nhdr space", "nhdr comments"):
        data = [folder / ("my scan.raw" if "space" in form else "scan.raw")]
        data[0].write_bytes(whole)
        text = (MHD if form.startswith("mhd") else NHDR).format(size=size, data=data[0].name,
                                                                comments=COMMENTS if "comments" in form else "")
        header = folder / ("scan.mhd" if form.startswith("mhd") else "scan.nhdr")
    elif form in ("mhd list", "nhdr list"):
        data = [folder / f"slice {k}.raw" for k in range(volume.shape[2])]
        for path, payload in zip(data, _slices(volume)):
            path.write_bytes(payload)
        listing = "LIST 2D\n" if form == "mhd list" else "LIST\n"
        text = (MHD if form == "mhd list" else NHDR).format(size=size, data=listing + "\n".join(p.name for p in data),
                                                            comments="")
        header = folder / ("scan.mhd" if form == "mhd list" else "scan.nhdr")
    else:  # "%d" patterns
        data = [folder / f"sl{k + 1:02d}.raw" for k in range(volume.shape[2])]
        for path, payload in zip(data, _slices(volume)):
            path.write_bytes(payload)
        pattern = f"sl%02d.raw 1 {volume.shape[2]} 1" + (" 2" if form == "nhdr pattern" else "")
        text = (MHD if form == "mhd pattern" else NHDR).format(size=size, data=pattern, comments="")
        header = folder / ("scan.mhd" if form == "mhd pattern" else "scan.nhdr")
    header.write_text(text)
    return header, data


FORMS = ["mhd space", "nhdr space", "nhdr comments", "mhd list", "nhdr list", "mhd pattern", "nhdr pattern"]


@pytest.mark.parametrize("form", FORMS)
def test_every_data_file_itk_reads_is_hashed(form: str, tmp_path: Path):
    """Issue 22.2: a space in the name, a LIST, a %d pattern or >64 KiB of comments: the hash covered the header
    alone, so replaced data kept the old labelmap. Each data file ITK reads changes the hash when it changes."""
    volume = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    header, data = write_header(tmp_path / "in", form, volume)
    assert np.array_equal(read_image_volume(header).array, volume)  # the form is one ITK reads as we wrote it
    assert input_files(header) == [header, *data]
    (case,) = [c for c in discover_cases([tmp_path / "in"]) if c.is_file]
    assert case.source == header
    before = content_digest(case)
    last = data[-1]
    payload = bytearray(last.read_bytes())
    payload[-1] ^= 1
    last.write_bytes(bytes(payload))
    assert not np.array_equal(read_image_volume(header).array, volume)
    assert content_digest(case) != before


def test_replaced_data_behind_a_spaced_name_is_redone(kaggle_dir: Path, segmenter, tmp_path: Path):
    """Issue 22.2 end to end: the rerun after the data file changed segments again instead of keeping the result."""
    image, _ = small_volume(kaggle_dir, n_slices=8)
    header, (data,) = write_header(tmp_path / "in", "mhd space", np.round(image).astype(np.int16))
    opts = BatchOptions(progress=False)
    (first,) = run_batch([header], tmp_path / "out", opts, segmenter=segmenter).results
    assert first.status == "ok"
    data.write_bytes(b"".join(_slices(np.roll(np.round(image).astype(np.int16), 40, axis=0))))
    (again,) = run_batch([header], tmp_path / "out", opts, segmenter=segmenter).results
    assert again.status == "ok" and again.note.startswith("input changed since the earlier output"), again.note


@pytest.mark.parametrize("name", ["../outside/secret.bin", "/etc/hostname", "link.raw"])
def test_data_file_outside_the_header_folder_is_refused(name: str, segmenter, tmp_path: Path, monkeypatch):
    """Issue 22.15: a header naming ``../outside/secret.bin`` or an absolute path (or a link leading out) had that
    file read into the scan and the overlay. Refused naming the header and the file unless allowed."""
    volume = np.ones(SHAPE, dtype=np.int16)
    outside = tmp_path / "outside" / "secret.bin"
    outside.parent.mkdir()
    outside.write_bytes(b"".join(_slices(volume)))
    folder = tmp_path / "in"
    header, (unused,) = write_header(folder, "nhdr space", volume)
    unused.unlink()
    if name == "link.raw":
        (folder / name).symlink_to(outside)
    header.write_text(header.read_text().replace("data file: my scan.raw", f"data file: {name}"))
    with pytest.raises(ImageInputError, match="lies outside the header's folder") as err:
        read_image_volume(header)
    assert str(header) in str(err.value) and "--allow-outside-data" in str(err.value)
    result = run_batch([folder], tmp_path / "out", BatchOptions(progress=False), segmenter=segmenter)
    (row,) = result.results
    assert row.status == "failed" and "lies outside the header's folder" in row.error
    if name != "/etc/hostname":
        monkeypatch.setenv("MONAIUNETSEG_ALLOW_OUTSIDE_DATA", "1")
        assert np.array_equal(read_image_volume(header).array, volume)


CHILD = """
import sys
from monaiunetseg.batch.discover import discover_cases
from monaiunetseg.batch.resume import content_digest
from monaiunetseg.io.nrrd_mha import read_image_volume
for case in discover_cases([sys.argv[1]]):
    if case.problem:
        print("problem:", case.problem)
    if case.is_file and not case.problem:
        for step in (content_digest, lambda c: read_image_volume(c.source)):
            try:
                step(case)
            except Exception as exc:
                print("error:", exc)
"""


@pytest.mark.parametrize("form", ["nhdr space", "nhdr comments", "mhd list", "mhd space"])
def test_fifo_behind_a_header_fails_fast(form: str, tmp_path: Path):
    """Issue 22.10: a FIFO as the data file of a header we did not follow hung discovery (.nhdr) or the case (.mhd):
    discovery, the resume hash and reading (in a child process, killed after 60 s) end naming the FIFO."""
    volume = np.ones(SHAPE, dtype=np.int16)
    header, data = write_header(tmp_path / "in", form, volume)
    data[-1].unlink()
    os.mkfifo(data[-1])
    try:
        child = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "in")], capture_output=True, text=True,
                               timeout=60, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        pytest.fail("blocked on a FIFO")
    assert child.returncode == 0, child.stderr
    assert f"{data[-1]}: a named pipe (FIFO), not a regular file: not read" in child.stdout, child.stdout


def test_allow_outside_data_flag_of_segment_case(kaggle_dir: Path, tmp_path: Path, monkeypatch):
    """Issue 22.15: ``segment-case --allow-outside-data`` reads a data file beside the header's folder; without the
    flag the case fails naming it (exit 1, result JSON written)."""
    import json

    from monaiunetseg.cli import main as cli_main
    from monaiunetseg.io.data_files import OUTSIDE_DATA_ENV

    monkeypatch.delenv(OUTSIDE_DATA_ENV, raising=False)
    image, _ = small_volume(kaggle_dir, n_slices=8)
    header, (data,) = write_header(tmp_path / "in", "nhdr space", np.round(image).astype(np.int16))
    (tmp_path / "shared").mkdir()
    data.rename(tmp_path / "shared" / "scan.raw")
    header.write_text(header.read_text().replace("data file: my scan.raw", "data file: ../shared/scan.raw"))
    args = ["segment-case", str(header), "-o", str(tmp_path / "out"), "--result-json", str(tmp_path / "r.json")]
    assert cli_main(args) == 1
    assert "lies outside the header's folder" in json.loads((tmp_path / "r.json").read_text())["error"]
    assert cli_main(args + ["--allow-outside-data"]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "ok"


@pytest.mark.parametrize("form", ["mhd space", "nhdr list", "mhd pattern"])
def test_data_files_of_headers_are_not_listed_as_skipped(form: str, tmp_path: Path):
    """Minor of issue 22: the .raw files a header reads were reported as "file(s) that are neither images nor DICOM
    ignored"; a stray data file no header names still is."""
    scan = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)  # many values: a scan, not a label map
    header, _ = write_header(tmp_path / "in", form, scan)
    cases = discover_cases([tmp_path / "in"])
    assert [c.source for c in cases] == [header]
    (tmp_path / "in" / "stray.raw").write_bytes(b"\\0" * 8)
    (skipped,) = [c for c in discover_cases([tmp_path / "in"]) if c.status == "skipped"]
    assert "1 file(s) that are neither images nor DICOM ignored (e.g. stray.raw)" in skipped.problem
