"""``segment`` on 2D pictures (PNG, JPEG, TIFF named on the command line): a PNG mask of the picture's size,
marked as ours (resume keeps it, a rerun never takes it for a scan); pictures inside scanned folders are not cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from monaiunetseg.cli import main as cli_main
from monaiunetseg.io.labelmap import is_our_labelmap, read_source_record


def blobs(shape=(100, 140)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = 20 + 200 * (((yy - 40) ** 2 + (xx - 60) ** 2) < 15**2)
    return (image + np.random.default_rng(0).normal(0, 5, shape)).clip(0, 255).astype(np.uint8)


def test_pictures_give_png_masks_of_their_size(tmp_path: Path):
    src = tmp_path / "in"
    src.mkdir()
    grey = blobs()
    Image.fromarray(grey).save(src / "a.png")
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(src / "b.jpg")
    tifffile.imwrite(src / "c.tif", grey.astype(np.uint16) * 100)
    out = tmp_path / "out"
    inputs = [str(src / n) for n in ("a.png", "b.jpg", "c.tif")]
    assert cli_main(["segment", *inputs, "-o", str(out), "--device", "cpu", "--quiet", "--save-probabilities"]) == 0
    for name in ("a", "b", "c"):
        mask = np.asarray(Image.open(out / f"{name}_seg.png"))
        assert mask.shape == grey.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        assert is_our_labelmap(out / f"{name}_seg.png")
        assert read_source_record(out / f"{name}_seg.png")["input"] == str((src / f"{name}").with_suffix(
            {"a": ".png", "b": ".jpg", "c": ".tif"}[name]).resolve())
        assert (out / f"{name}_prob.nii.gz").is_file()  # probabilities stay float32: a 1-slice NIfTI
    run = json.loads((out / "run.json").read_text())
    assert {c["kind"] for c in run["runs"][-1]["cases"]} == {"picture"}

    assert cli_main(["segment", *inputs, "-o", str(out), "--device", "cpu", "--quiet", "--save-probabilities"]) == 0
    report = (out / "report.csv").read_text()
    assert report.count("existing output kept") == 3, report
    assert not is_our_labelmap(src / "a.png")  # a user's picture is never taken for an output


def test_pictures_in_scanned_folders_are_not_cases(tmp_path: Path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(blobs()).save(src / "thumbnail.png")
    assert cli_main(["segment", str(src), "-o", str(tmp_path / "out"), "--device", "cpu", "--quiet"]) != 0
    assert not (tmp_path / "out" / "thumbnail_seg.png").exists()
