"""Evaluation pictures: the panels show the right slices with each outline where its mask is, the summary figure
and the index decode and link what exists, and the data-set summary agrees with the prepared labels."""

from __future__ import annotations

import csv
import html.parser
import math
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monaiunetseg.geometry import kaggle_affine, voxel_volume_ml
from monaiunetseg.visual.evaluation import (
    INDEX_HTML,
    PANELS,
    SUMMARY_PNG,
    institution_of,
    write_case_panel,
    write_evaluation_pictures,
)
from monaiunetseg.visual.panels import choose_slices, layout
from monaiunetseg.visual.style import PREDICTION_RGB, REFERENCE_RGB

from conftest import BUNDLE_DIR

SHAPE = (64, 48, 12)  # LPS voxel axes: x -> patient left, y -> posterior, z -> superior


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _ring(mask: np.ndarray, outside: bool) -> np.ndarray:
    """Pixels just outside (not in the mask, an 8-neighbour in it) or just inside (in it, an 8-neighbour not)."""
    padded = np.pad(mask, 1, constant_values=False)
    shifts = [padded[1 + dy:1 + dy + mask.shape[0], 1 + dx:1 + dx + mask.shape[1]]
              for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    if outside:
        return ~mask & np.any(shifts, axis=0)
    return mask & ~np.all(shifts, axis=0)


def _synthetic_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference on the patient's right (low x); the prediction overlaps it shifted, plus an island far away."""
    rng = np.random.default_rng(0)
    image = rng.uniform(100, 200, SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, bool)
    label[16:28, 14:30, 3:7] = True
    label[14:30, 12:32, 5] = True  # slice 5: the largest reference area
    pred = np.zeros(SHAPE, bool)
    pred[20:30, 14:30, 3:7] = True  # shifted toward the left: errors on every tumour slice
    pred[20:36, 14:34, 4] = True  # slice 4: the largest disagreement
    pred[44:52, 30:38, 9] = True  # slice 9: an island on the patient's left, touching no reference voxel
    return image, label, pred


def test_choose_slices_picks_largest_lesion_worst_error_and_island():
    _, label, pred = _synthetic_case()
    chosen = choose_slices(label, pred, axis=2)
    assert [(c.index, c.reasons) for c in chosen] == [(5, ["largest lesion"]), (4, ["worst error"]),
                                                     (9, ["false-positive island"])]
    # A prediction whose every component touches the reference has no island; one slice can serve two reasons.
    same = choose_slices(label, label.copy(), axis=2)
    assert [(c.index, c.reasons) for c in same] == [(5, ["largest lesion"])]
    only = label.copy()
    only[:, :, 5] = False  # error only on the largest reference slice
    assert [(c.index, c.reasons) for c in choose_slices(label, only, axis=2)] == [(5, ["largest lesion", "worst error"])]
    nothing = np.zeros(SHAPE, bool)
    assert [(c.index, c.reasons) for c in choose_slices(nothing, nothing, axis=2)] == [(6, ["middle slice (nothing found)"])]


def test_panel_outlines_come_from_the_right_masks(tmp_path: Path):
    """Each tile shows its slice: orange exactly on the ring just outside the reference, blue exactly on the ring
    just inside the prediction, nowhere else; radiological (the patient's right on the image left)."""
    image, label, pred = _synthetic_case()
    metrics = {"dice": 0.5, "label_ml": 1.0, "pred_ml": 2.0, "hd95_mm": math.nan}
    path = write_case_panel(tmp_path, "TCGA_XX_0001", image, label, pred, kaggle_affine(SHAPE), metrics)
    assert path == tmp_path / PANELS / "TCGA_XX_0001.png"
    rgb = _rgb(path)
    geo = layout((SHAPE[1], SHAPE[0]), (1.0, 1.0), 3)  # axial display: rows = y (posterior down), columns = x
    k = geo.repeat[0]
    assert rgb.shape == (geo.height, geo.width, 3) and geo.repeat == (k, k) and geo.tile_shape == (SHAPE[1] * k, SHAPE[0] * k)
    orange, blue = (np.all(rgb == c, axis=-1) for c in (REFERENCE_RGB, PREDICTION_RGB))
    for z, (top, left) in zip((5, 4, 9), geo.corners):
        tile = (slice(top, top + geo.tile_shape[0]), slice(left, left + geo.tile_shape[1]))
        up = [np.repeat(np.repeat(m[:, :, z].T, k, axis=0), k, axis=1) for m in (label, pred)]
        want_blue = _ring(up[1], outside=False)
        want_orange = _ring(up[0], outside=True) & ~want_blue  # the model's line is drawn last
        assert np.array_equal(blue[tile], want_blue), f"slice {z}: blue pixels are not the prediction's inner ring"
        assert np.array_equal(orange[tile], want_orange), f"slice {z}: orange pixels are not the reference's outer ring"
        assert want_blue.any() and (z == 9 or want_orange.any())
    # Nowhere else: the legend's lines are the only other pixels of the two colours, above the tiles.
    top = geo.corners[0][0]
    assert orange[top:].sum() == sum(orange[top:][:, left:left + geo.tile_shape[1]].sum() for _, left in geo.corners)
    # The reference lies on the patient's right: the left half of the first tile.
    cols = np.nonzero(orange[top:, geo.corners[0][1]:geo.corners[0][1] + geo.tile_shape[1]].any(axis=0))[0]
    assert cols.max() < geo.tile_shape[1] / 2


def test_panel_of_a_real_patient(prepared_small: Path, tmp_path: Path):
    """A prepared patient (LPS file, 256 x 256 grid): one tile per distinct chosen slice, at 2 pixels per voxel."""
    image_path = next((prepared_small / "images").glob("*_flair.nii.gz"))
    patient = image_path.name[: -len("_flair.nii.gz")]
    img = nib.load(image_path)
    label = np.asanyarray(nib.load(prepared_small / "labels" / f"{patient}_label.nii.gz").dataobj) > 0
    pred = np.roll(label, 6, axis=0)  # a shifted "prediction": disagreement on every tumour slice
    path = write_case_panel(tmp_path, patient, img.get_fdata(dtype=np.float32), label, pred, img.affine,
                            {"dice": 0.7, "label_ml": 10.0, "pred_ml": 10.0})
    n_tiles = len(choose_slices(label, pred, axis=2))
    geo = layout((256, 256), (1.0, 1.0), n_tiles)
    assert _rgb(path).shape == (geo.height, geo.width, 3) == (geo.height, 2 * 8 + n_tiles * 512 + (n_tiles - 1) * 8, 3)
    assert path.stat().st_size < 250_000


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.sections: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        if tag == "section":
            self.sections.append(attrs["id"])


def test_summary_figure_and_index_list_patients_worst_first(tmp_path: Path):
    image, label, pred = _synthetic_case()
    rows = [{"patient": f"TCGA_{inst}_{i:04d}", "dice": d, "label_ml": ml, "pred_ml": ml * 1.1, "hd95_mm": 3.0}
            for i, (inst, d, ml) in enumerate([("CS", 0.8, 40.0), ("DU", 0.3, 5.0), ("DU", 0.9, 90.0), ("HT", 0.0, 0.0)])]
    for r in rows[:3]:  # the last patient has no panel: the index says so rather than linking nothing
        write_case_panel(tmp_path, r["patient"], image, label, pred, kaggle_affine(SHAPE), r)
    index = write_evaluation_pictures(tmp_path, rows, "test <evaluation>")
    assert index == tmp_path / INDEX_HTML
    assert _rgb(tmp_path / SUMMARY_PNG).shape == (560, 1300, 3)
    page = index.read_text()
    assert "test &lt;evaluation&gt;" in page and "file:" not in page and str(tmp_path) not in page
    links = _Links()
    links.feed(page)
    assert links.sections == [r["patient"] for r in sorted(rows, key=lambda r: r["dice"])]
    assert links.srcs == [SUMMARY_PNG, *(f"{PANELS}/{r['patient']}.png" for r in sorted(rows[:3], key=lambda r: r["dice"]))]
    assert all((tmp_path / s).is_file() for s in links.srcs)
    assert page.count("(no panel)") == 1


def test_institution_of():
    assert institution_of("TCGA_CS_4944") == "CS" and institution_of("case0") == "" and institution_of("TCGA_x") == ""


def test_dataset_summary_agrees_with_the_labels(prepared_small: Path):
    """prepare-lgg writes dataset_summary.csv (one row per patient, from its label volume) and the figure."""
    with open(prepared_small / "dataset_summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    labels = sorted((prepared_small / "labels").glob("*_label.nii.gz"))
    assert len(rows) == len(labels) == 3
    for row in rows:
        (path,) = [p for p in labels if p.name.startswith(row["patient"] + "_")]
        img = nib.load(path)
        mask = np.asanyarray(img.dataobj) > 0
        assert int(row["n_slices"]) == mask.shape[2]
        assert int(row["tumour_slices"]) == int(mask.any(axis=(0, 1)).sum()) > 0
        assert float(row["lesion_ml"]) == pytest.approx(mask.sum() * voxel_volume_ml(img.affine), abs=1e-3)
        assert float(row["tumour_slice_fraction"]) == pytest.approx(int(row["tumour_slices"]) / mask.shape[2], abs=1e-4)
        assert row["institution"] == row["patient"].split("_")[1]
    assert _rgb(prepared_small / "dataset_summary.png").shape == (500, 1500, 3)


def test_model_card_pictures_are_committed_small_and_current(kaggle_dir: Path):
    """Every picture the model card shows is committed, decodes and stays small; the committed data-set summary
    matches the shared data (slices per patient, institution, fold)."""
    from monaiunetseg.training.lgg import institution, list_patients, patient_id
    from monaiunetseg.training.prepare import assign_folds

    docs = BUNDLE_DIR / "docs"
    card = (docs / "README.md").read_text()
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", card)
    assert {"dataset_summary.png", "eval_summary.png"} <= set(shown) and sum("eval_panel_" in s for s in shown) == 2
    for name in shown:
        assert (docs / name).stat().st_size < 150_000, name
        with Image.open(docs / name) as im:
            im.load()
            assert im.format == "PNG" and min(im.size) >= 400, name
    assert "dataset_summary.csv" in card
    with open(docs / "dataset_summary.csv", newline="") as fh:
        rows = {r["patient"]: r for r in csv.DictReader(fh)}
    folders = list_patients(kaggle_dir)
    folds = assign_folds([p.name for p in folders])
    assert sorted(rows) == sorted(patient_id(p.name) for p in folders)
    for folder in folders:
        row = rows[patient_id(folder.name)]
        assert int(row["n_slices"]) == len(list(folder.glob("*_mask.tif"))), folder.name
        assert (row["institution"], int(row["fold"])) == (institution(folder.name), folds[folder.name])
