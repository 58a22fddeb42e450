"""Hostile and odd input files, each real: a FIFO and a link to /dev/zero in a tree, gigabytes of zeros, forged
NIfTI headers, degenerate geometry, complex voxels, a single voxel, DICOM text written to trick spreadsheets."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from monaiunetseg.batch.cases import Case
from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.report import CaseResult, write_report
from monaiunetseg.batch.run import failure_result, run_batch
from monaiunetseg.cli import main as cli_main

from dicom_factory import write_series
from segment_data import save_nifti, small_volume


def read_report(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def retag(paths: list[Path], **values) -> None:
    """Set DICOM elements in every file of a series, as an export tool or a hostile sender would."""
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


@pytest.fixture(scope="module")
def flair(kaggle_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return small_volume(kaggle_dir, n_slices=4)


def test_fifo_dev_zero_and_gigabytes_of_zeros_never_hang_discovery(flair, tmp_path: Path):
    """Point 6: only regular files are opened, header reads are bounded: the good scan beside them runs."""
    tree = tmp_path / "tree"
    good = save_nifti(*flair, tree / "good.nii.gz")
    os.mkfifo(tree / "pipe.nii.gz")
    os.mkfifo(tree / "pipe_no_suffix")
    (tree / "zero").symlink_to("/dev/zero")
    with open(tree / "zeros_blob", "wb") as fh:  # 1 GiB of zeros (sparse), no suffix: read as possible DICOM
        fh.truncate(2**30)
    lone_fifo = tmp_path / "lone.fifo"
    os.mkfifo(lone_fifo)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "monaiunetseg.cli", "segment", str(tree), str(lone_fifo), "-o", str(out),
                           "--quiet", "--device", "cpu"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr  # the lone FIFO named on the command line fails; nothing hangs
    rows = {Path(r["input"]).name: r for r in read_report(out / "report.csv")}
    assert rows["good.nii.gz"]["status"] == "ok" and Path(rows["good.nii.gz"]["output"]).is_file()
    for name, kind in [("pipe.nii.gz", "a named pipe (FIFO)"), ("pipe_no_suffix", "a named pipe (FIFO)"),
                       ("zero", "a character device")]:
        assert rows[name]["status"] == "skipped", rows[name]
        assert rows[name]["error"] == f"{tree / name}: {kind}, not a regular file: not read"
    assert rows["lone.fifo"]["status"] == "failed" and "a named pipe (FIFO), not a regular file" in rows["lone.fifo"]["error"]
    assert "zeros_blob" in rows["tree"]["error"] and rows["tree"]["status"] == "skipped"  # neither NIfTI nor DICOM
    assert good.is_file()


FORGED = """
import json, resource, sys, time, zlib
resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))  # the old reader asked for 7 GB: never here
from monaiunetseg.io.nifti import read_nifti_volume
out = {}
for path in sys.argv[1:]:
    t0 = time.perf_counter()
    try:
        read_nifti_volume(path)
        out[path] = ["read", 0]
    except Exception as exc:
        out[path] = [f"{type(exc).__name__}: {exc}", time.perf_counter() - t0]
# this process's peak RSS (VmHWM: ru_maxrss would include the parent's, kept across exec)
out["maxrss_mb"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
"""


def _forged(path: Path, shape: tuple[int, int, int]) -> Path:
    """A NIfTI file of a header claiming ``shape`` int16 voxels followed by 36 bytes (384 bytes uncompressed)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    header.set_sform(np.eye(4), 1)
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\0" * 36
    assert len(raw) == 384
    if path.name.endswith(".gz"):
        import gzip

        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def test_forged_headers_fail_fast_before_any_allocation(tmp_path: Path, flair):
    """Point 7: a 384-byte file whose header claims 1200^3 voxels (over the voxel budget), or 512^3 (within it,
    but not in the file), fails in milliseconds with a message saying so; memory stays low."""
    files = [_forged(tmp_path / name, shape) for name, shape in [
        ("huge.nii", (1200, 1200, 1200)), ("huge.nii.gz", (1200, 1200, 1200)),
        ("short.nii", (512, 512, 512)), ("short.nii.gz", (512, 512, 512))]]
    proc = subprocess.run([sys.executable, "-c", FORGED, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for path in files[:2]:
        error, seconds = result[str(path)]
        assert error.startswith(f"NiftiInputError: {path}: the header describes 1200 x 1200 x 1200 = 1.73e+09 voxels, "
                                "more than the limit of 134217728"), error
        assert "MONAIUNETSEG_MAX_VOXELS" in error and seconds < 2
    for path in files[2:]:
        error, seconds = result[str(path)]
        assert error == (f"NiftiInputError: {path}: cannot read voxel data: truncated or inconsistent file: the header "
                         "describes 512 x 512 x 512 int16 voxels (268435456 bytes of data after byte 352) but the "
                         "file holds only 32 (uncompressed)"), error
        assert seconds < 2
    assert result["maxrss_mb"] < 400, result

    small = save_nifti(*flair, tmp_path / "small.nii.gz")  # the budget is configurable
    env = {**os.environ, "MONAIUNETSEG_MAX_VOXELS": "1000"}
    proc = subprocess.run([sys.executable, "-c", FORGED, str(small)], capture_output=True, text=True, timeout=120, env=env)
    assert "more than the limit of 1000" in json.loads(proc.stdout)[str(small)][0]


def _singular_nifti(path: Path, shape=(16, 16, 4)) -> Path:
    """A NIfTI whose sform maps the third voxel axis onto the first: a rank-deficient affine (qform unset)."""
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    affine[:3, 2] = affine[:3, 0]
    img = nib.Nifti1Image(np.random.default_rng(0).integers(0, 500, shape).astype(np.int16), None)
    img.header.set_sform(affine, 1)
    img.header.set_qform(None, 0)
    nib.save(img, path)
    return path


def test_degenerate_geometry_and_odd_voxels_fail_their_own_case(flair, segmenter, tmp_path: Path):
    """Points 8 and 13: a rank-deficient affine, an all-zero sform, PixelSpacing 0, complex voxels and a single
    voxel each fail their case with a message saying so; the good case beside them is segmented."""
    image, affine = flair
    inputs = tmp_path / "in"
    save_nifti(image, affine, inputs / "good.nii.gz")
    _singular_nifti(inputs / "singular.nii.gz", shape=image.shape)
    zero = save_nifti(image, affine, inputs / "zero_sform.nii.gz")
    img = nib.load(zero)
    img.header.set_sform(np.zeros((4, 4)), 1)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), None, header=img.header), zero)
    assert nib.load(zero).header["sform_code"] == 1 and not nib.load(zero).affine[:3, :3].any()
    save_nifti(image + 1j * image, affine, inputs / "complex.nii.gz", dtype=np.complex64)
    save_nifti(np.ones((1, 1, 1)), affine, inputs / "voxel.nii.gz")
    series = write_series(image, affine, inputs / "spacing0", description="AX FLAIR")
    retag(series["paths"], PixelSpacing=["0", "0"])
    result = run_batch([inputs], tmp_path / "out", BatchOptions(progress=False), segmenter=segmenter)
    rows = {Path(r.input).name: r for r in result.results}
    assert rows["good.nii.gz"].status == "ok" and rows["good.nii.gz"].volume_ml > 0
    expected = {
        "singular.nii.gz": f"{inputs / 'singular.nii.gz'}: invalid geometry: the affine is not invertible",
        "zero_sform.nii.gz": f"{inputs / 'zero_sform.nii.gz'}: invalid geometry: voxel size 0 x 0 x 0 mm has a zero axis",
        "complex.nii.gz": f"{inputs / 'complex.nii.gz'}: complex-valued voxels (complex64)",
        "voxel.nii.gz": f"{inputs / 'voxel.nii.gz'}: a single voxel of shape (1, 1, 1): expected a 3D volume",
        "spacing0": f"{inputs / 'spacing0'}: series #5 'AX FLAIR' ({series['series_uid']}): invalid geometry: voxel size "
                    "0 x 0 x 3 mm has a zero axis",
    }
    for name, start in expected.items():
        assert rows[name].status == "failed" and rows[name].output == "", (name, rows[name])
        assert rows[name].error.startswith(start), (name, rows[name].error)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["good_seg.nii.gz"]


def _nrrd_header(directions: str, data_file: str | None = None) -> bytes:
    return ("NRRD0004\ntype: float\ndimension: 3\nspace: left-posterior-superior\nsizes: 8 8 4\n"
            f"space directions: {directions}\nkinds: domain domain domain\nendian: little\nencoding: raw\n"
            "space origin: (0,0,0)\n" + (f"data file: {data_file}\n" if data_file else "\n")).encode()


def test_nrrd_inputs_pass_the_same_guards(segmenter, tmp_path: Path):
    """The one geometry check and the regular-file rule hold for NRRD too: parallel axes fail the case, and a
    detached header whose data file is a FIFO fails fast instead of blocking (hashing or reading)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    voxels = np.zeros((4, 8, 8), dtype="<f4").tobytes()
    (inputs / "parallel.nrrd").write_bytes(_nrrd_header("(1,0,0) (2,0,0) (0,0,3)") + voxels)
    (inputs / "piped.nhdr").write_bytes(_nrrd_header("(1,0,0) (0,1,0) (0,0,3)", data_file="piped.raw"))
    os.mkfifo(inputs / "piped.raw")
    result = run_batch([inputs / "parallel.nrrd", inputs / "piped.nhdr"], tmp_path / "out", BatchOptions(progress=False),
                       segmenter=segmenter)
    rows = {Path(r.input).name: r for r in result.results}
    assert rows["parallel.nrrd"].status == "failed"
    assert rows["parallel.nrrd"].error.startswith(f"{inputs / 'parallel.nrrd'}: invalid geometry: the affine is not "
                                                  "invertible"), rows["parallel.nrrd"].error
    assert rows["piped.nhdr"].status == "failed"
    assert rows["piped.nhdr"].error == f"{inputs / 'piped.raw'}: a named pipe (FIFO), not a regular file: not read"


def test_the_one_geometry_check():
    """Point 8: the check every reader calls (NIfTI, DICOM, later NRRD/MHA)."""
    from monaiunetseg.geometry import GeometryError, check_affine

    ok = np.diag([-0.9, -0.9, 3.0, 1.0])
    assert np.array_equal(check_affine(ok, "x"), ok)
    sheared = ok.copy()
    sheared[0, 2] = 1.0  # sheared but invertible: fine
    check_affine(sheared, "x")
    for bad, why in [(np.zeros((4, 4)), "zero axis"), (np.diag([1.0, np.nan, 1.0, 1.0]), "NaN or infinite"),
                     (np.diag([1.0, 1.0, np.inf, 1.0]), "NaN or infinite"), (np.eye(3), r"shape \(3, 3\)")]:
        with pytest.raises(GeometryError, match=why):
            check_affine(bad, "scan.nii")
    parallel = ok.copy()
    parallel[:3, 1] = ok[:3, 0] * 2
    with pytest.raises(GeometryError, match="scan.nii: invalid geometry: the affine is not invertible"):
        check_affine(parallel, "scan.nii")


def test_report_cells_cannot_run_as_spreadsheet_formulas(flair, segmenter, tmp_path: Path):
    """Point 12: DICOM text beginning with = + - @ is quoted in report.csv, control characters (NUL) are
    removed; report.json keeps the raw values; numbers stay numbers."""
    image, affine = flair
    hyperlink = '=HYPERLINK("http://example.invalid/?x","FLAIR")'
    series = write_series(image, affine, tmp_path / "in" / "flair", description="AX FLAIR")
    retag(series["paths"], SeriesDescription=hyperlink, PatientID="@SUM(1+1)")
    other = write_series(image, affine, tmp_path / "in" / "t1", description="T1", series_number=3)
    retag(other["paths"], SeriesDescription="-2+3 T1\x00\x07 post", ProtocolName="+T1")
    out = tmp_path / "out"
    run_batch([tmp_path / "in"], out, BatchOptions(progress=False), segmenter=segmenter)
    rows = {r["series_uid"]: r for r in read_report(out / "report.csv")}
    flair_row, t1_row = rows[series["series_uid"]], rows[other["series_uid"]]
    assert flair_row["status"] == "ok" and flair_row["series_description"] == "'" + hyperlink
    assert float(flair_row["volume_ml"]) >= 0 and not flair_row["volume_ml"].startswith("'")
    assert t1_row["status"] == "skipped" and t1_row["series_description"] == "'-2+3 T1 post"
    assert "\x00" not in (out / "report.csv").read_text(encoding="utf-8")
    assert Path(flair_row["output"]).name == "SUM_1_1_19970726_S5_HYPERLINK_http_example.invalid_x_FLAIR_seg.nii.gz"
    raw = {r["series_uid"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["rows"]}
    assert raw[series["series_uid"]]["series_description"] == hyperlink
    assert raw[other["series_uid"]]["series_description"] == "-2+3 T1\x00\x07 post"
    assert raw[series["series_uid"]]["volume_ml"] == pytest.approx(float(flair_row["volume_ml"]), abs=1e-3)

    path = write_report([CaseResult("/x", volume_ml=-1.5, seconds=-0.25, note="-note", error="\tcmd").data()],
                        tmp_path / "neg" / "report.csv")
    (row,) = read_report(path)
    assert (row["volume_ml"], row["seconds"], row["note"], row["error"]) == ("-1.500", "-0.250", "'-note", "cmd")


MEMORY = """
import resource, sys
from monaiunetseg.io.nifti import read_nifti_volume
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
resource.setrlimit(resource.RLIMIT_AS, (vm + 64 * 2**20, resource.RLIM_INFINITY))
try:
    read_nifti_volume(sys.argv[1])
except Exception as exc:
    print(exc)
"""


def test_out_of_memory_and_empty_device_are_explained(tmp_path: Path, capsys):
    """Point 13: a MemoryError reads "out of memory", never an empty reason; --device '' is not 'auto'."""
    big = save_nifti(np.zeros((256, 256, 320)), np.eye(4), tmp_path / "big.nii.gz")  # 80 MB as float32
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", MEMORY, str(big)], capture_output=True, text=True, timeout=120, env=env)
    assert proc.stdout.startswith(f"{big}: cannot read voxel data (out of memory (MemoryError"), (proc.stdout, proc.stderr)
    assert "()" not in proc.stdout and ": )" not in proc.stdout

    case = Case("nifti", tmp_path / "scan.nii.gz")
    assert failure_result(case, MemoryError()).error == (f"{tmp_path / 'scan.nii.gz'}: out of memory (MemoryError): the "
                                                         "image needs more memory than is free; free memory or use a "
                                                         "machine with more")
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["segment", str(big), "-o", str(tmp_path / "out"), "--device", ""])
    assert exit_info.value.code == 2
    assert "argument --device: empty device name: use auto, cuda, cuda:N or cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_file_names_that_are_no_utf8_are_reported_escaped_and_the_batch_goes_on(flair, tmp_path: Path):
    """Issue 22.13: one byte that is no UTF-8 in a file name ("surrogates not allowed") stopped the whole batch.
    Such names are segmented (or fail) like any other; report, records and console show them backslash-escaped."""
    tree = tmp_path / "tree"
    good = save_nifti(*flair, Path(os.fsdecode(bytes(tree) + b"/a\xff.nii.gz")))
    plain = save_nifti(*flair, tree / "b.nii.gz")
    broken = Path(os.fsdecode(bytes(tree) + b"/c\xfe.nii.gz"))
    broken.write_text("not an image\n")
    write_series(*flair, Path(os.fsdecode(bytes(tree) + b"/d\xfd")), description="AX FLAIR")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "monaiunetseg.cli", "segment", str(tree), "-o", str(out), "--device", "cpu",
               "--model", "fast"]
    for again in (False, True):
        proc = subprocess.run(command, capture_output=True, timeout=300)
        stdout, stderr = proc.stdout.decode("utf-8"), proc.stderr.decode("utf-8")  # strict: all printable
        assert proc.returncode == 1 and "surrogates" not in stderr, stderr
        rows = {r["input"]: r for r in read_report(out / "report.csv")}
        assert json.loads((out / "report.json").read_text(encoding="utf-8"))["rows"][0]["input"] in rows
        escaped = {p: str(p).replace(os.fsdecode(b"\xff"), "\\xff").replace(os.fsdecode(b"\xfe"), "\\xfe")
                   for p in (good, plain, broken)}
        assert rows[escaped[good]]["status"] == rows[escaped[plain]]["status"] == "ok"
        assert ("existing output kept" in rows[escaped[good]]["note"]) == again
        assert rows[escaped[broken]]["status"] == "failed" and rows[escaped[broken]]["error"].startswith(escaped[broken])
        (dicom,) = [r for r in rows.values() if r["series_uid"]]
        assert dicom["status"] == "ok" and "d\\xfd" in dicom["input"], dicom
        assert f"FAILED  {escaped[broken]}" in stderr and "segment: 4 case(s): 3 ok" in stdout


def test_single_file_nifti_with_vox_offset_inside_its_header_is_refused(flair, segmenter, tmp_path: Path):
    """Issue 22.4: ``vox_offset = 0`` in a single-file ``.nii`` made the header's bytes the first voxels: a shifted
    image, segmented and reported ok. A single-file NIfTI-1 needs vox_offset >= 352: refused naming the file."""
    import gzip
    import struct

    folder = tmp_path / "in"
    good = save_nifti(*flair, folder / "good.nii")
    raw = bytearray(good.read_bytes())
    assert struct.unpack("<f", raw[108:112]) == (352.0,)
    raw[108:112] = struct.pack("<f", 0.0)  # vox_offset
    (folder / "zero.nii").write_bytes(raw)
    (folder / "zero_gz.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    result = run_batch([folder], tmp_path / "out", BatchOptions(progress=False), segmenter=segmenter)
    rows = {Path(r.input).name: r for r in result.results}
    assert rows["good.nii"].status == "ok"
    for name, offset in [("zero.nii", 0), ("zero_gz.nii.gz", 0)]:  # (1-351: nibabel refuses those itself)
        assert rows[name].status == "failed" and rows[name].output == ""
        assert rows[name].error == (f"{folder / name}: invalid header: vox_offset is {offset}, but a single-file NIfTI-1 "
                                    "image keeps its voxel data after its 352-byte header (vox_offset >= 352); the "
                                    "voxels would be read from the header: fix or re-save the file"), rows[name].error


def test_scan_with_a_copied_output_header_is_still_a_scan(flair, segmenter, tmp_path: Path):
    """Issue 22.14: a real scan saved with a labelmap's header (``descrip``, source record) copied was skipped as
    "an earlier output". The header alone no longer decides: an output also holds what the tool writes (uint8
    labels 0/1, or float32 probabilities 0-1), so such scans are segmented, and never replaced in -o as ours."""
    image, affine = flair
    first = run_batch([save_nifti(image, affine, tmp_path / "orig" / "x.nii.gz")], tmp_path / "first",
                      BatchOptions(progress=False), segmenter=segmenter)
    template = nib.load(first.results[0].output).header  # descrip, source record extension and all
    folder = tmp_path / "in"
    folder.mkdir()
    for name, data in [("float_scan.nii.gz", image.astype(np.float32)),
                       ("byte_scan.nii.gz", np.clip(image / image.max() * 255, 0, 255).astype(np.uint8))]:
        img = nib.Nifti1Image(data, affine, header=template.copy())
        img.header.set_data_dtype(data.dtype)
        nib.save(img, folder / name)
        assert bytes(nib.load(folder / name).header["descrip"]).startswith(b"MONAIUNetSeg")
    real_output = folder / "old_seg.nii.gz"
    real_output.write_bytes(Path(first.results[0].output).read_bytes())
    result = run_batch([folder], tmp_path / "out", BatchOptions(progress=False), segmenter=segmenter)
    rows = {Path(r.input).name: r for r in result.results}
    assert rows["float_scan.nii.gz"].status == rows["byte_scan.nii.gz"].status == "ok", rows
    assert rows["old_seg.nii.gz"].status == "skipped" and "an earlier output" in rows["old_seg.nii.gz"].error

    out = tmp_path / "out2"  # under an output's name in -o, such a scan is the user's file: refused, kept
    out.mkdir()
    (out / "float_scan_seg.nii.gz").write_bytes((folder / "float_scan.nii.gz").read_bytes())
    with pytest.raises(RuntimeError, match="were not written by MONAIUNetSeg"):
        run_batch([folder / "float_scan.nii.gz"], out, BatchOptions(progress=False), segmenter=segmenter)


@pytest.mark.parametrize("scaled", [False, True])
def test_float64_nifti_is_converted_in_slabs(tmp_path: Path, scaled: bool):
    """Issue 22.11c: a float64 gzip NIfTI at the voxel budget (512x512x1024, 2 GiB of data) reached 4.25 GB: nibabel
    held the whole float64 array next to its float32 copy. Read and converted a few slices at a time, the peak is
    the float32 volume and a slab (here 256x256x64: 16 MiB out, 32 MiB as float64), and the values are the same."""
    import tracemalloc

    from monaiunetseg.io.nifti import read_nifti_volume

    rng = np.random.default_rng(0)
    data = rng.normal(300.0, 80.0, size=(256, 256, 64))
    img = nib.Nifti1Image(data, np.diag([-0.9, -0.9, 2.0, 1.0]))
    img.header.set_data_dtype(np.float64)
    if scaled:
        img.header.set_slope_inter(2.0, -5.0)
    path = tmp_path / "f64.nii.gz"
    nib.save(img, path)
    expected = nib.load(path).get_fdata(dtype=np.float32)
    tracemalloc.start()
    try:
        volume = read_nifti_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out_bytes = volume.array.nbytes
    assert peak < out_bytes + 10 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {out_bytes / 2**20:.0f} MiB volume"
    assert volume.array.dtype == np.float32
    if scaled:
        assert np.allclose(volume.array, expected, rtol=1e-6)
    else:
        assert np.array_equal(volume.array, expected)


def test_float64_volume_over_the_memory_bound_is_refused_up_front(tmp_path: Path):
    """Issue 22.11c, "Done when": a 512x512x1024 float64 NIfTI (its float32 copy alone would be 1 GiB) is refused
    before any voxel is read, with a message naming the limit and how to raise it; peak RSS stays small."""
    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 1024))
    header.set_data_dtype(np.float64)
    header.set_sform(np.eye(4), 1)
    header["vox_offset"] = 352
    path = tmp_path / "bomb.nii.gz"
    import gzip

    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 36))
    proc = subprocess.run([sys.executable, "-c", FORGED, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    error, seconds = result[str(path)]
    assert "512 x 512 x 1024 = 2.68e+08 voxels, more than the limit of 134217728 (about 1.0 GiB as float32)" in error
    assert "MONAIUNETSEG_MAX_VOXELS" in error and seconds < 2 and result["maxrss_mb"] < 400


def test_extensionless_zero_file_is_passed_over_quickly(tmp_path: Path):
    """Issue 22 (minor): a 4 MiB file of zeros without an extension cost 3.8 s in discovery (pydicom read it as
    raw DICOM 8 bytes at a time); a file that does not start like DICOM is not parsed."""
    from pydicom.errors import InvalidDicomError

    from monaiunetseg.batch.discover import discover_cases
    from monaiunetseg.io.dicom_series import read_header

    (tmp_path / "in").mkdir()
    blob = tmp_path / "in" / "blob"
    blob.write_bytes(b"\0" * 4 * 2**20)
    with pytest.raises(InvalidDicomError, match="no preamble, no header group at its start"):
        read_header(blob, force=True)  # refused from its first two bytes, before pydicom reads any of it
    assert [c.kind for c in discover_cases([tmp_path / "in"])] == ["problem"]


def test_voxel_size_no_scanner_has_fails_the_case_naming_it(tmp_path: Path, flair, segmenter):
    """A NIfTI with 1e-30 mm voxels (a header in the wrong units) failed late, in the overlay ("cannot write
    empty image"); the geometry check names it, and the next file still runs."""
    data, affine = flair
    folder = tmp_path / "in"
    save_nifti(data, np.diag([1e-30, 1e-30, 1e-30, 1.0]), folder / "tiny.nii.gz")
    save_nifti(data, affine, folder / "good.nii.gz")
    result = run_batch([folder], tmp_path / "out", BatchOptions(progress=False, overlay=True), segmenter=segmenter)
    by_name = {Path(r.input).name: r for r in result.results}
    assert str(by_name["tiny.nii.gz"].status) == "failed"
    assert "is no scanner's" in by_name["tiny.nii.gz"].error and "tiny.nii.gz" in by_name["tiny.nii.gz"].error
    assert str(by_name["good.nii.gz"].status) == "ok"
