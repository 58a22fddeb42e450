"""NRRD and MetaImage inputs (SimpleITK) and outputs: same labelmap in world space as NIfTI, the input's own grid
and format family by default, resume and "is this our output" through a header field; other ITK formats through
the optional itk extra (MONAI's ITKReader), skipped cleanly without it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from monaiunetseg.batch.options import BatchOptions
from monaiunetseg.batch.run import run_batch
from monaiunetseg.cli import main as cli_main
from monaiunetseg.io.labelmap import grid_of, read_labels, read_source_record
from monaiunetseg.io.nrrd_mha import ImageInputError, read_image_volume

from segment_data import flipped, on_grid, permuted, save_nifti, small_volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_image(array: np.ndarray, affine_ras: np.ndarray, dtype=np.int16) -> sitk.Image:
    """``array`` (i, j, k) with the RAS ``affine_ras`` as an ITK image (LPS direction, spacing, origin)."""
    lps = LPS_TO_RAS @ affine_ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)).astype(dtype))
    image.SetSpacing(tuple(spacing))
    image.SetOrigin(tuple(lps[:3, 3]))
    image.SetDirection(tuple((lps[:3, :3] / spacing).ravel()))
    return image


def write_ras_nhdr(array: np.ndarray, affine_ras: np.ndarray, path: Path) -> Path:
    """A detached NRRD header in RAS space (as some tools write), raw int16 data beside it, written by hand."""
    data = path.with_suffix(".raw")
    data.write_bytes(np.ascontiguousarray(array.transpose(2, 1, 0)).astype("<i2").tobytes())
    directions = " ".join("(" + ",".join(f"{v:.10g}" for v in affine_ras[:3, a]) + ")" for a in range(3))
    path.write_text("NRRD0004\ntype: short\ndimension: 3\nspace: right-anterior-superior\n"
                    f"sizes: {' '.join(map(str, array.shape))}\nspace directions: {directions}\n"
                    "kinds: domain domain domain\nendian: little\nencoding: raw\n"
                    f"space origin: ({','.join(f'{v:.10g}' for v in affine_ras[:3, 3])})\ndata file: {data.name}\n")
    return path


@pytest.fixture(scope="module")
def inputs(kaggle_dir: Path, tmp_path_factory) -> dict:
    """The same scan as NIfTI, NRRD (stored permuted and flipped), MetaImage and a RAS-space .nhdr."""
    root = tmp_path_factory.mktemp("formats")
    flair, affine = small_volume(kaggle_dir, n_slices=8)
    nifti = save_nifti(flair, affine, root / "nifti" / "scan.nii.gz")
    a, aff = flipped(*permuted(flair, affine, (1, 0, 2)), (0, 2))
    nrrd = root / "nrrd" / "scan.nrrd"
    nrrd.parent.mkdir()
    sitk.WriteImage(sitk_image(a, aff), str(nrrd), True)
    mha = root / "mha" / "scan.mha"
    mha.parent.mkdir()
    sitk.WriteImage(sitk_image(flair, affine), str(mha))
    (root / "nhdr").mkdir()
    nhdr = write_ras_nhdr(*flipped(flair, affine, (1,)), root / "nhdr" / "scan.nhdr")
    return {"root": root, "flair": flair, "affine": affine, "nifti": nifti, "nrrd": nrrd, "mha": mha, "nhdr": nhdr}


def test_readers_give_the_scan_in_world_space(inputs):
    for key in ("nrrd", "mha", "nhdr"):
        volume = read_image_volume(inputs[key])
        assert volume.array.dtype == np.float32
        np.testing.assert_array_equal(on_grid(volume.array, volume.affine, inputs["flair"].shape, inputs["affine"]),
                                      inputs["flair"])
        shape, affine = grid_of(inputs[key])
        assert shape == volume.array.shape and np.allclose(affine, volume.affine)


def test_same_labelmap_in_world_space_and_own_format(inputs, segmenter, tmp_path: Path):
    out = tmp_path / "out"
    sources = [inputs["nifti"], inputs["nrrd"], inputs["mha"], inputs["nhdr"]]
    result = run_batch(sources, out, BatchOptions(progress=False, dicom_seg=True), segmenter=segmenter)
    assert result.exit_code == 0
    by_input = {Path(r.input).parent.name: r for r in result.results}
    names = {k: Path(r.output).name for k, r in by_input.items()}
    assert names["nifti"].endswith(".nii.gz") and names["nrrd"].endswith("_seg.nrrd")
    assert names["mha"].endswith("_seg.mha") and names["nhdr"].endswith("_seg.nrrd")
    reference = np.asarray(nib.load(by_input["nifti"].output).dataobj)
    assert reference.any()
    for key in ("nrrd", "mha", "nhdr"):
        res = by_input[key]
        assert res.status == "ok" and "this input is" in res.note and res.volume_ml == pytest.approx(by_input["nifti"].volume_ml)
        labels = read_labels(res.output)
        shape, affine = grid_of(res.output)
        np.testing.assert_array_equal(on_grid(labels, affine, reference.shape, inputs["affine"]), reference)
        # exactly the input's grid: size, spacing, origin and direction as the input file has them
        src, seg = sitk.ReadImage(str(inputs[key])), sitk.ReadImage(res.output)
        assert seg.GetPixelID() == sitk.sitkUInt8 and seg.GetSize() == src.GetSize()
        assert seg.GetSpacing() == src.GetSpacing() and seg.GetOrigin() == src.GetOrigin()
        assert seg.GetDirection() == src.GetDirection()
        record = read_source_record(res.output)
        assert len(record.pop("sha256")) == 64  # the input's content hash: resume redoes a replaced scan
        assert record.pop("model")["name"] == "default"  # the model that made it: resume redoes another model's
        assert record.pop("review") in ("yes", "no") and 0 <= float(record.pop("confidence")) <= 1  # the verdict
        record.pop("review_reasons")
        assert record == {"kind": res.output.endswith(".mha") and "metaimage" or "nrrd",
                          "input": str(Path(inputs[key]).resolve())}

    again = run_batch(sources, out, BatchOptions(progress=False), segmenter=segmenter)
    assert again.n_existing == 4  # resume reads the source record and grid of NRRD/MHA labelmaps
    rerun_outputs = run_batch([out], tmp_path / "out2", BatchOptions(progress=False), segmenter=segmenter)
    assert {r.status for r in rerun_outputs.results} == {"skipped"}  # our labelmaps are not scans
    labelmap_rows = [r for r in rerun_outputs.results if "_seg." in Path(r.input).name]
    assert len(labelmap_rows) == 4 and all("earlier output" in r.error for r in labelmap_rows)


def test_output_format_option_and_foreign_output(inputs, segmenter, tmp_path: Path):
    out = tmp_path / "out"
    assert cli_main(["segment", str(inputs["nrrd"]), str(inputs["nifti"]), "-o", str(out), "--quiet",
                     "--output-format", "nifti"]) == 0
    outputs = sorted(out.glob("scan_*_seg*"))  # both named "scan": told apart by a hash of their paths
    assert len(outputs) == 2 and all(p.name.endswith("_seg.nii.gz") for p in outputs)
    from_nrrd, from_nifti = (nib.load(p) for p in sorted(outputs, key=lambda p: read_source_record(p)["kind"] != "nrrd"))
    np.testing.assert_array_equal(on_grid(np.asarray(from_nrrd.dataobj), from_nrrd.affine, inputs["flair"].shape,
                                          inputs["affine"]), np.asarray(from_nifti.dataobj))
    out2 = tmp_path / "out2"
    assert cli_main(["segment", str(inputs["nifti"]), "-o", str(out2), "--quiet", "--output-format", "nrrd"]) == 0
    seg = sitk.ReadImage(str(out2 / "scan_seg.nrrd"))
    np.testing.assert_array_equal(read_labels(out2 / "scan_seg.nrrd"), np.asarray(from_nifti.dataobj))
    np.testing.assert_allclose(grid_of(out2 / "scan_seg.nrrd")[1], inputs["affine"], atol=1e-6)
    assert seg.GetSize() == inputs["flair"].shape
    # another input of the same name and format: never reported as its result nor written over
    (res,) = run_batch([inputs["mha"]], out2, BatchOptions(progress=False, output_format="nrrd"), segmenter=segmenter).results
    assert res.status == "failed" and f"already holds the result of {inputs['nifti'].resolve()}" in res.error


def test_bad_nrrd_and_mha_fail_naming_the_file(tmp_path: Path):
    four_d = tmp_path / "fourd.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 4, 3], sitk.sitkInt16), str(four_d))
    flat = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkInt16), str(flat))
    rgb = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3), str(rgb))
    corrupt = tmp_path / "corrupt.mha"
    corrupt.write_text("ObjectType = Image\nNDims = 3\nDimSize = 8 8 4\nElementType = MET_SHORT\nElementDataFile = gone.raw\n")
    expected = {four_d: "4D image", flat: "2D image", rgb: "3 components per voxel", corrupt: "cannot read voxel data"}
    for path, problem in expected.items():
        with pytest.raises(ImageInputError, match=problem) as err:
            read_image_volume(path)
        assert str(path) in str(err.value)
    result = run_batch(list(expected), tmp_path / "out", BatchOptions(progress=False))
    assert [r.status for r in result.results] == ["failed"] * 4
    assert all(str(Path(r.input)) in r.error for r in result.results)


def test_itk_formats_without_the_extra_name_it(tmp_path: Path):
    """Without itk (as in a core install) a MINC file is refused with the command that adds the extra."""
    image = tmp_path / "scan.mnc"
    sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkInt16), str(image))
    code = ("import sys\n"
            "sys.modules['itk'] = None  # not installed\n"
            "from monaiunetseg.cli import main\n"
            f"sys.exit(main(['segment', {str(image)!r}, '-o', {str(tmp_path / 'out')!r}, '--quiet']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"{image}: MINC files are read through the optional itk extra: pip install 'monaiunetseg[itk]'" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("itk") is None, reason="itk extra not installed (pip install '.[itk]')")
def test_itk_extra_reads_minc_like_nifti(inputs, segmenter, tmp_path: Path):
    """With the itk extra a MINC file (MONAI's ITKReader) gives the NIfTI labelmap in world space."""
    minc = tmp_path / "in" / "scan.mnc"
    minc.parent.mkdir()
    a, aff = flipped(inputs["flair"], inputs["affine"], (0,))
    sitk.WriteImage(sitk_image(a, aff), str(minc))
    out = tmp_path / "out"
    result = run_batch([minc, inputs["nifti"]], out, BatchOptions(progress=False), segmenter=segmenter)
    assert result.exit_code == 0
    minc_res, nifti_res = sorted(result.results, key=lambda r: r.input.endswith(".nii.gz"))
    assert minc_res.output.endswith(".nii.gz") and read_source_record(minc_res.output)["kind"] == "itk"
    img = nib.load(minc_res.output)
    np.testing.assert_allclose(img.affine, aff, atol=1e-4)
    reference = np.asarray(nib.load(nifti_res.output).dataobj)
    np.testing.assert_array_equal(on_grid(np.asarray(img.dataobj), img.affine, reference.shape, inputs["affine"]), reference)
    assert run_batch([minc, inputs["nifti"]], out, BatchOptions(progress=False), segmenter=segmenter).n_existing == 2
