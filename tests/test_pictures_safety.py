"""Issue 31: 2D pictures read as what they show (palette colours, not indices; JPEG masks without compression
noise), within the pixel budget, and judged by reasons true of a picture."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from monaiunetseg.cli import main

CASE = "TCGA_CS_4941_19960909"


def kaggle_slice(kaggle_dir: Path, k: int = 14) -> tuple[np.ndarray, np.ndarray]:
    """(FLAIR grey, mask 0/255) of one real Kaggle slice: the FLAIR is the middle channel of the TIFF."""
    folder = kaggle_dir / CASE
    rgb = tifffile.imread(folder / f"{CASE}_{k}.tif")
    return np.ascontiguousarray(rgb[..., 1]), tifffile.imread(folder / f"{CASE}_{k}_mask.tif")


def palette_png(values: np.ndarray, path: Path) -> Path:
    """The same visible picture as the grey ``values``, stored as palette indices ``255 - value``."""
    img = Image.fromarray((255 - values).astype(np.uint8), mode="P")
    img.putpalette([c for i in range(256) for c in (255 - i,) * 3])
    img.save(path)
    return path


def report_rows(out: Path) -> dict[str, dict]:
    with open(out / "report.csv", newline="") as fh:
        return {Path(r["input"]).name: r for r in csv.DictReader(fh)}


def test_palette_pictures_and_masks_are_read_as_their_colours(kaggle_dir: Path, tmp_path: Path, capsys):
    """Item 9: a palette PNG segments like the grey PNG it shows; a palette mask and a JPEG mask give the drawn
    foreground in prepare-pairs, not its inverse or its compression noise."""
    grey, mask = kaggle_slice(kaggle_dir)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(grey).save(src / "grey.png")
    palette_png(grey, src / "palette.png")
    assert np.array_equal(np.asarray(Image.open(src / "palette.png").convert("L")), grey)
    out = tmp_path / "out"
    assert main(["segment", str(src / "grey.png"), str(src / "palette.png"), "-o", str(out), "--device", "cpu",
                 "--quiet"]) == 0
    rows = report_rows(out)
    assert float(rows["grey.png"]["volume_ml"]) > 1.0
    assert rows["palette.png"]["volume_ml"] == rows["grey.png"]["volume_ml"]

    images, labels = tmp_path / "pairs" / "images", tmp_path / "pairs" / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    drawn = int((mask > 0).sum())
    for name in ("p", "j"):
        Image.fromarray(grey).save(images / f"{name}.png")
    lut = Image.fromarray(np.where(mask > 0, 0, 1).astype(np.uint8), mode="P")  # index 0 drawn (white), 1 black
    lut.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    lut.save(labels / "p.png")
    Image.fromarray(mask).save(labels / "j.jpg", quality=75)
    assert int((np.asarray(Image.open(labels / "j.jpg")) > 0).sum()) > 1.2 * drawn  # the noise is there
    prepared = tmp_path / "prepared"
    assert main(["prepare-pairs", str(images), str(labels), "-o", str(prepared), "--folds", "2"]) == 0
    with open(prepared / "dataset_summary.csv", newline="") as fh:
        counts = {r["case"]: int(r["foreground_voxels"]) for r in csv.DictReader(fh)}
    assert counts["p"] == drawn
    assert abs(counts["j"] - drawn) < 0.05 * drawn, (counts, drawn)
    assert "warning j: " in capsys.readouterr().out  # said, not silent


def test_pictures_have_a_pixel_budget(tmp_path: Path, monkeypatch, capsys):
    """Item 13: a picture with more pixels than the budget is refused from its header, before decoding (the
    budget is the voxel budget, $MONAIUNETSEG_MAX_VOXELS)."""
    monkeypatch.setenv("MONAIUNETSEG_MAX_VOXELS", str(100_000))
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((1000, 1000), np.uint8), compression="zlib")
    Image.fromarray(np.zeros((1000, 1000), np.uint8)).save(tmp_path / "big.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "big.tif"), str(tmp_path / "big.png"), "-o", str(out), "--device", "cpu",
                 "--quiet"]) == 1
    rows = report_rows(out)
    for name in ("big.tif", "big.png"):
        assert rows[name]["status"] == "failed" and "more than the limit of 100000" in rows[name]["error"]
    capsys.readouterr()


def test_a_real_flair_slice_is_flagged_for_what_a_picture_is(kaggle_dir: Path, tmp_path: Path):
    """Item 17: a picture is still flagged, but not for "no head found" or a "3D isotropic acquisition": the
    reason says it is a 2D picture."""
    grey, _ = kaggle_slice(kaggle_dir)
    Image.fromarray(grey).save(tmp_path / "flair.png")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "flair.png"), "-o", str(out), "--device", "cpu", "--quiet"]) == 0
    row = report_rows(out)["flair.png"]
    assert row["review"] == "yes" and "a 2D picture" in row["review_reasons"]
    assert "no head" not in row["review_reasons"] and "isotropic" not in row["review_reasons"]
    assert float(row["confidence"]) > 0  # no false hard finding sets it to 0


def test_unknown_picture_format_lists_the_picture_formats(tmp_path: Path, capsys):
    """Item 18: a GIF named on the command line is failed with a message that lists the 2D formats too."""
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "x.gif")
    assert main(["segment", str(tmp_path / "x.gif"), "-o", str(tmp_path / "out"), "--device", "cpu", "--quiet"]) != 0
    assert ".png, .tif" in report_rows(tmp_path / "out")["x.gif"]["error"]
    capsys.readouterr()
