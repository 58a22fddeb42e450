"""The model card (monai_bundle/docs/README.md) leads with what ships and states nothing the configs and the
committed out-of-fold files contradict (issue 25.2): model sets and post-processing as configs/inference.json has
them, accuracy figures as docs/oof_summary.json and oof_metrics_per_patient.csv give them, the trust figures as
docs/trust_calibration.json gives them, and the fold-0 history last."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest

from monaiunetseg.model.postprocess import PostProcessing

from conftest import BUNDLE_DIR

DOCS = BUNDLE_DIR / "docs"
CARD = (DOCS / "README.md").read_text()
INFERENCE = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())
OOF = json.loads((DOCS / "oof_summary.json").read_text())
TRUST = json.loads((DOCS / "trust_calibration.json").read_text())
with open(DOCS / "oof_metrics_per_patient.csv", newline="") as _fh:
    ROWS = list(csv.DictReader(_fh))


def f3(x: float) -> str:
    return f"{x:.3f}"


def section(title: str) -> str:
    start = CARD.index(f"\n## {title}")
    end = CARD.find("\n## ", start + 1)
    return CARD[start: end if end > 0 else len(CARD)]


def table_row(text: str, first_cell: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {first_cell} |"))
    return [c.strip().strip("*") for c in line.strip("|").split("|")]


def test_sections_lead_with_what_ships_and_end_with_the_history():
    headings = re.findall(r"^## (.+)$", CARD, flags=re.M)
    assert headings[0] == "What ships" and headings[1] == "Limits"
    assert headings[2].startswith("When to trust it")
    assert headings.index("How it was chosen: cross-validation") < headings.index("History: fold 0 alone (bundle 0.1.0)")
    assert headings[-2:] == ["History: fold 0 alone (bundle 0.1.0)", "References"]
    # the first figure a reader meets is the shipped recipe's out-of-fold mean; fold 0's 0.807 only in the history
    first_bold_number = re.search(r"\*\*[^*]*?(0\.\d{3})", CARD).group(1)
    assert first_bold_number == f3(OOF["all"]["mean"])
    assert CARD.index("0.807") > CARD.index("## History")


def test_model_sets_and_post_processing_are_the_configs():
    ships = section("What ships")
    sets = INFERENCE["models"]
    assert [r[0].strip("`") for r in (table_row(ships, f"`{name}`") for name in sets)] == list(sets)
    folds = {name: [0 if w == "models/model.pt" else int(re.search(r"fold(\d)", w).group(1)) for w in members]
             for name, members in sets.items()}
    assert folds == {"default": [0, 1, 2], "fast": [0], "full": [0, 1, 2, 3, 4]}
    assert table_row(ships, "`default`")[1].startswith("fold models 0, 1, 2 ")
    assert table_row(ships, "`fast`")[1] == f"fold model 0 (`{sets['fast'][0]}`)"
    assert table_row(ships, "`full`")[1] == "all five fold models"
    assert f'"postprocessing": {json.dumps(INFERENCE["postprocessing"])}' in ships
    assert f'"flip_tta": {json.dumps(INFERENCE["flip_tta"])}' in ships
    name = PostProcessing.from_dict(INFERENCE["postprocessing"]).name
    assert OOF["postprocessing"] == INFERENCE["postprocessing"] == TRUST["postprocessing"]
    assert OOF["postprocessing_name"] == name
    assert f"`postprocessing: {json.dumps(INFERENCE['postprocessing'])}`" in ships


def test_out_of_fold_figures_are_the_committed_ones():
    ships = section("What ships")
    dice = np.array([float(r["dice"]) for r in ROWS])
    raw = np.array([float(r["dice_raw"]) for r in ROWS])
    assert len(ROWS) == OOF["n_patients"] == OOF["all"]["n"] == 77
    assert np.mean(dice) == pytest.approx(OOF["all"]["mean"], abs=1e-4)
    assert np.mean(raw) == pytest.approx(OOF["dice_mean_without_postprocessing"], abs=1e-4)
    name = OOF["postprocessing_name"]
    assert (f"out-of-fold per-patient Dice {f3(OOF['all']['mean'])} mean, {f3(OOF['all']['median'])} median over "
            f"all {len(ROWS)} patients** ({f3(np.mean(raw))} / {f3(np.median(raw))}") in " ".join(ships.split())
    assert table_row(ships, f"**all, {name} (chosen)**")[1:] == \
        ["77", f3(OOF["all"]["mean"]), f3(OOF["all"]["median"]), f3(OOF["all"]["min"])]
    assert table_row(ships, "all, no post-processing")[1:] == ["77", f3(np.mean(raw)), f3(np.median(raw)), f3(raw.min())]
    for size, stats in OOF["by_size"].items():
        assert table_row(ships, f"lesion {size}")[1:] == [str(stats["n"]), f3(stats["mean"]), f3(stats["median"]),
                                                          f3(stats["min"])], size
    insts = sorted(OOF["by_institution"])
    row = table_row(ships, f"institution {' / '.join(insts)}")
    assert row[1:4] == [" / ".join(str(OOF["by_institution"][i][k]) if k == "n" else f3(OOF["by_institution"][i][k])
                                   for i in insts) for k in ("n", "mean", "median")]
    row = table_row(ships, "fold 0 / 1 / 2 / 3 / 4")
    assert row[1:4] == [" / ".join(str(OOF["by_fold"][str(k)][key]) if key == "n" else f3(OOF["by_fold"][str(k)][key])
                                   for k in range(5)) for key in ("n", "mean", "median")]
    assert (f"HD95 {OOF['hd95_mm_mean']:.1f} mm and absolute volume error {OOF['abs_vol_diff_ml_mean']:.1f} mL" in
            " ".join(ships.split()))
    assert (f"{int((dice < 0.7).sum())} of 77 patients below Dice 0.70 ({int((raw < 0.7).sum())} without "
            "post-processing)") in " ".join(ships.split())


def test_limits_state_the_small_lesion_figures_of_the_committed_csv():
    small = [float(r["dice"]) for r in ROWS if float(r["label_ml"]) < 15]
    large = [float(r["dice"]) for r in ROWS if float(r["label_ml"]) > 50]
    text = " ".join(section("Limits").split())
    assert (f"the {len(small)} patients with lesions under 15 mL score Dice {np.mean(small):.2f} on average "
            f"({min(small):.2f}-{max(small):.2f}), against {np.mean(large):.2f} above 50 mL") in text


def test_trust_figures_are_the_calibration():
    trust = section("When to trust it")
    conf = INFERENCE["trust"]["confidence"]
    assert conf == TRUST["confidence"] and conf["features"] == ["uncertain_ratio", "mean_probability"]
    a, b = conf["coefficients"]
    assert (f"`confidence = {conf['intercept']:.3f} - {-a:.3f} x uncertain_ratio + {b:.3f} x mean_probability`"
            in " ".join(trust.split()))
    assert f"AUROC of `confidence` for Dice < 0.70 **{f3(TRUST['cv_auroc_bad'])}**" in " ".join(trust.split())
    for r in TRUST["cv_review_table"]:
        row = table_row(trust, r["dice"])
        assert row[1] == str(r["patients"]) and row[2].startswith(f"{r['review_yes']} ("), (row, r)
    assert f"`confidence` < {INFERENCE['trust']['review_below']:.2f}" in trust
