"""``scripts/measurement_agreement.py`` on a few of the real out-of-fold predictions and expert labels (skipped
where the prepared data set or the cached probabilities are absent)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "scripts" / "measurement_agreement.py"
PREPARED = Path("/work/prepared")
PROBS_DIRS = [REPO / "monai_bundle" / "models" / "cv_tissue_v1" / "oof_probs", REPO.parent / "main" / "monai_bundle"
              / "models" / "cv_tissue_v1" / "oof_probs"]


def _script():
    spec = importlib.util.spec_from_file_location("measurement_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_agreement_of_three_patients_writes_the_csv_plot_and_tables(tmp_path: Path, monkeypatch, capsys):
    probs = next((p for p in PROBS_DIRS if p.is_dir()), None)
    if probs is None or not (PREPARED / "datalist.json").is_file():
        pytest.skip("the prepared data set or the out-of-fold probabilities are not here")
    script = _script()
    monkeypatch.setattr(sys, "argv", ["x", "--prepared", str(PREPARED), "--probs", str(probs), "--out", str(tmp_path),
                                      "--limit", "3"])
    assert script.main() == 0
    rows = list(csv.DictReader(open(tmp_path / "measurement_agreement.csv")))
    assert len(rows) == 3 and {"patient", "expert_bidimensional_mm2", "model_bidimensional_mm2",
                               "expert_volume_ml", "model_max_diameter_mm"} <= set(rows[0])
    assert (tmp_path / "measurement_agreement.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "| bidimensional product (mm²) |" in out and "| x 1 (+0 %) | stable disease |" in out


def test_category_table_counts_a_reader_switch_across_a_threshold():
    script = _script()
    rows = [{"expert_sum_products_mm2": 1000.0, "model_sum_products_mm2": 1300.0},  # +30 %: progression at x 1
            {"expert_sum_products_mm2": 1000.0, "model_sum_products_mm2": 1000.0}]
    lines = script.category_table(rows)
    no_change = next(line for line in lines if line.startswith("| x 1 "))
    # expert -> model: 1000 -> 1300 is "progressive disease"; model -> expert: 1300 -> 1000 (-23 %) is stable
    assert no_change == "| x 1 (+0 %) | stable disease | 1 of 2 (50%) | 0 of 2 (0%) | 1 of 2 (50%) |"
