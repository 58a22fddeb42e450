"""Cross-validation machinery: 2.5D input layout, post-processing, fold ensembles, resumable CV, OOF metrics."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monaiunetseg.model.bundle import load_state_dict
from monaiunetseg.model.postprocess import PostProcessing
from monaiunetseg.model.predictor import Segmenter, SliceBatchInferer
from monaiunetseg.model.transforms import SlicesToChannelsd, neighbour_stack
from monaiunetseg.training.cv import RECORD, fold_finished, read_record
from monaiunetseg.training.datalist import latest_checkpoint
from monaiunetseg.training.oof import CANDIDATES, CSV_COLUMNS, evaluate_oof, predict_oof

from conftest import BUNDLE_DIR, SAMPLE_FLAIR


# ----------------------------------------------------------------------------------------------- 2.5D


@pytest.mark.parametrize("context", [0, 1, 2])
def test_inference_and_training_build_the_same_2p5d_input(context: int):
    """The inferer's per-slice channel stacks are exactly what training's crop transform makes of a slab
    (edges repeated), so a 2.5D model sees the same layout in both."""
    gen = torch.Generator().manual_seed(context)
    vol = torch.randn(2, 8, 9, 7, generator=gen)
    stacks = SliceBatchInferer(batch_size=3, context=context).slices(vol, 0, 7)
    padded = torch.cat([vol[..., :1]] * context + [vol] + [vol[..., -1:]] * context, dim=-1)
    transform = SlicesToChannelsd("image", "label", context=context)
    for z in range(7):
        slab = padded[..., z:z + 2 * context + 1]
        out = transform({"image": slab, "label": slab[:1] > 0})
        assert torch.equal(stacks[z], out["image"]) and torch.equal(stacks[z], neighbour_stack(slab, context))
        assert torch.equal(out["label"], vol[:1, ..., z] > 0)  # the label is the centre slice
    assert stacks.shape == (7, 2 * (2 * context + 1), 8, 9)


# ----------------------------------------------------------------------------------------------- post-processing


def _blob(mask: np.ndarray, corner: tuple[int, int, int], size: tuple[int, int, int]) -> None:
    (x, y, z), (a, b, c) = corner, size
    mask[x:x + a, y:y + b, z:z + c] = 1


def test_postprocessing_keeps_a_second_focus_above_its_threshold():
    """``min_fraction`` drops small islands but keeps a second tumour focus above the fraction; ``largest_only``
    would erase that focus; ``min_mean_prob`` drops an unconfident island."""
    mask = np.zeros((40, 40, 20), np.uint8)
    _blob(mask, (2, 2, 2), (10, 10, 10))      # main focus: 1000 voxels
    _blob(mask, (25, 25, 5), (6, 6, 6))       # second focus: 216 voxels (21.6 %)
    _blob(mask, (35, 2, 15), (2, 2, 2))       # island: 8 voxels (0.8 %)
    prob = mask * 0.95
    prob[35:37, 2:4, 15:17] = 0.55            # the island is unconfident
    kept = PostProcessing(min_fraction=0.1)(mask, prob)
    assert kept[5, 5, 5] and kept[27, 27, 7] and not kept[35, 2, 15]
    assert int(kept.sum()) == 1000 + 216
    largest = PostProcessing(largest_only=True)(mask)
    assert int(largest.sum()) == 1000 and not largest[27, 27, 7]
    confident = PostProcessing(min_mean_prob=0.7)(mask, prob)
    assert int(confident.sum()) == 1000 + 216
    assert int(PostProcessing(min_fraction=0.3)(mask).sum()) == 1000  # the threshold is what decides
    assert np.array_equal(PostProcessing()(mask), mask)
    with pytest.raises(ValueError, match="unknown post-processing"):
        PostProcessing.from_dict({"min_fractoin": 0.1})


# ----------------------------------------------------------------------------------------------- ensemble


def test_ensemble_averages_probabilities_not_labels(tmp_path: Path):
    """Two members: the ensemble's foreground probability is the mean of the members' probabilities (so its
    labelmap is that mean thresholded, which no vote of the members' labelmaps gives in general)."""
    shipped = BUNDLE_DIR / "models" / "model.pt"
    state = load_state_dict(shipped)
    key = next(k for k, v in reversed(list(state.items())) if k.endswith("bias") and v.shape == (2,))
    shifted = {k: v.clone() for k, v in state.items()}
    shifted[key] += torch.tensor([-1.5, 1.5])  # a bolder member: more foreground
    torch.save(shifted, tmp_path / "bold.pt")
    img = nib.load(SAMPLE_FLAIR)
    array = img.get_fdata(dtype=np.float32)[..., 14:22]
    members = [Segmenter(device="cpu", weights=w).probabilities(array, img.affine) for w in (shipped, tmp_path / "bold.pt")]
    ensemble = Segmenter(device="cpu", weights=[shipped, tmp_path / "bold.pt"], postprocessing={})
    prob = ensemble.probabilities(array, img.affine)
    np.testing.assert_allclose(prob, (members[0] + members[1]) / 2, atol=1e-5)
    labels = ensemble.segment(array, img.affine)
    assert np.array_equal(labels, (prob > 0.5).astype(np.uint8))
    a, b = members[0] > 0.5, members[1] > 0.5
    assert (a != b).any() and not np.array_equal(labels.astype(bool), a & b)  # differs from a unanimous vote


def test_flip_tta_averages_the_flipped_view():
    """Flip TTA = mean of the plain and the left-right flipped prediction (flipped back)."""
    img = nib.load(SAMPLE_FLAIR)
    array = img.get_fdata(dtype=np.float32)[..., 16:19]
    plain = Segmenter(device="cpu").probabilities(array, img.affine)
    tta = Segmenter(device="cpu", flip_tta=True).probabilities(array, img.affine)
    assert tta.shape == plain.shape and not np.allclose(tta, plain)
    assert abs(float((tta > 0.5).sum()) - float((plain > 0.5).sum())) < 0.2 * float((plain > 0.5).sum())


# ----------------------------------------------------------------------------------------------- CV runs


def _train_cv_cmd(prepared: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "monaiunetseg.cli", "train-cv", str(prepared), "-o", str(out), "--folds", "0",
            "--epochs", str(epochs), "--device", "cpu", "--num-workers", "0"]


def test_train_cv_resumes_an_interrupted_fold_and_skips_a_finished_one(prepared_small: Path, tmp_path: Path):
    """kill -9 during fold 0 -> the rerun resumes from the last checkpoint (not from scratch) and finishes it;
    a third run skips it."""
    out, epochs = tmp_path / "cv", 12
    proc = subprocess.Popen(_train_cv_cmd(prepared_small, out, epochs), stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)
    ckpts = out / "fold0" / "checkpoints"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None and not list(ckpts.glob("*epoch=2.pt")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # The kill often lands while the newest checkpoint is being written: resume must pass over a truncated one.
    resume_from = latest_checkpoint(ckpts)
    assert resume_from, sorted(p.name for p in ckpts.iterdir())
    killed_at = int(resume_from.rsplit("=", 1)[-1][:-3])
    assert killed_at < epochs, "the fold finished before it could be interrupted"
    assert not fold_finished(out, 0) and read_record(out, 0)["status"] == "running"

    resumed = subprocess.run(_train_cv_cmd(prepared_small, out, epochs), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    log = (out / "fold0" / "train.log").read_text()
    assert f"checkpoint_epoch={killed_at}.pt" in log and "Restored all variables" in log
    record = read_record(out, 0)
    assert record["status"] == "done" and fold_finished(out, 0, epochs)
    assert len(record["runs"]) == 2 and "returncode" not in record["runs"][0] and record["runs"][1]["returncode"] == 0
    last = latest_checkpoint(ckpts)
    assert last and last.endswith(f"epoch={epochs}.pt"), last
    trainer = torch.load(last, map_location="cpu", weights_only=True)["trainer"]
    assert trainer["iteration"] == epochs * trainer["epoch_length"]  # no epoch trained twice

    again = subprocess.run(_train_cv_cmd(prepared_small, out, epochs), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "finished earlier" in again.stdout and "0 fold(s) trained" in again.stdout
    assert len(read_record(out, 0)["runs"]) == 2


def test_out_of_fold_evaluation_on_a_small_set(prepared_small: Path, tmp_path: Path):
    """Each patient predicted by its own fold's model; per-patient CSV, summary by institution and size, and
    the post-processing table; the cached probabilities are reused."""
    cv = tmp_path / "cv"
    for fold in range(3):
        (cv / f"fold{fold}").mkdir(parents=True)
        shutil.copy(BUNDLE_DIR / "models" / "model.pt", cv / f"fold{fold}" / "model.pt")
        (cv / f"fold{fold}" / RECORD).write_text(json.dumps({"status": "done", "epochs": 1, "overrides": {"context": 0}}))
    probs = predict_oof(cv, prepared_small, tmp_path / "probs", device="cpu", log=lambda *_: None)
    assert len(probs) == 3 and all(p.is_file() for p in probs.values())
    stamps = {k: p.stat().st_mtime_ns for k, p in probs.items()}
    assert {k: p.stat().st_mtime_ns for k, p in predict_oof(cv, prepared_small, tmp_path / "probs", device="cpu",
                                                           log=lambda *_: None).items()} == stamps

    docs, pictures = tmp_path / "docs", tmp_path / "pictures"
    summary = evaluate_oof(probs, prepared_small, docs, log=lambda *_: None, pictures_dir=pictures)
    with open(docs / "oof_metrics_per_patient.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    datalist = json.loads((prepared_small / "datalist.json").read_text())["training"]
    assert sorted(r["patient"] for r in rows) == sorted(e["patient"] for e in datalist)
    assert {r["patient"]: int(r["fold"]) for r in rows} == {e["patient"]: e["fold"] for e in datalist}
    dices = [float(r["dice"]) for r in rows]
    assert all(0.0 <= d <= 1.0 for d in dices)
    assert summary["all"]["mean"] == pytest.approx(np.mean(dices), abs=1e-3)
    assert summary["all"]["min"] == pytest.approx(min(dices), abs=1e-3)
    assert sum(v["n"] for v in summary["by_size"].values()) == 3 == sum(v["n"] for v in summary["by_institution"].values())
    with open(docs / "oof_postprocessing.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(CANDIDATES) and table[0]["postprocessing"] == "none"
    assert summary["all"]["mean"] >= float(table[0]["mean"]) - 1e-4  # the chosen one is the best mean
    assert json.loads((docs / "oof_summary.json").read_text())["n_patients"] == 3
    # The pictures go where asked, not among the tables: a panel per patient, the summary and the index, worst first.
    assert sorted(p.name for p in docs.iterdir()) == ["oof_metrics_per_patient.csv", "oof_postprocessing.csv", "oof_summary.json"]
    assert sorted(p.stem for p in (pictures / "panels").glob("*.png")) == sorted(r["patient"] for r in rows)
    page = (pictures / "index.html").read_text()
    worst_first = [r["patient"] for r in sorted(rows, key=lambda r: (float(r["dice"]), r["patient"]))]
    assert sorted(worst_first, key=lambda p: page.index(f'<section id="{p}"')) == worst_first
    assert (pictures / "summary.png").stat().st_size > 10_000


def test_ablation_compares_recipes_paired_on_shared_patients(tmp_path: Path):
    """compare-oof: recipes are compared on the patients they all have, the difference is paired (patient by
    patient) against the reference, with an interval that contains it, and written as CSV and markdown."""
    from monaiunetseg.cli import main as cli_main
    from monaiunetseg.training.ablation import compare_recipes

    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 0.9, 20)
    ml = rng.uniform(5, 80, 20)

    def table(name: str, dice: np.ndarray, raw: np.ndarray, patients: range) -> Path:
        path = tmp_path / name / "oof_metrics_per_patient.csv"
        path.parent.mkdir()
        rows = [{"patient": f"P{i:02d}", "institution": "CS", "fold": i % 2, "label_ml": ml[i], "dice": dice[i],
                 "hd95_mm": 1.0, "pred_ml": ml[i], "abs_vol_diff_ml": 0.0, "dice_raw": raw[i]} for i in patients]
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        (path.parent / "oof_summary.json").write_text(json.dumps({"postprocessing_name": f"pp of {name}"}))
        return path

    ref = table("ref", base, base - 0.05, range(20))
    better = table("better", base + 0.02, base - 0.01, range(4, 20))  # 16 patients only: compared on those
    rows = compare_recipes({"ref": str(ref), "better": str(better)})
    assert [r["n"] for r in rows] == [16, 16]
    assert rows[0]["mean"] == pytest.approx(base[4:].mean()) and rows[0]["postprocessing"] == "pp of ref"
    assert rows[1]["diff"] == pytest.approx(0.02) and rows[1]["raw_diff"] == pytest.approx(0.04)
    lo, hi = (float(x) for x in rows[1]["diff_ci"].split(" to "))
    assert lo <= 0.02 <= hi and (rows[1]["better"], rows[1]["worse"]) == (16, 0)
    assert "diff" not in rows[0]
    out = tmp_path / "docs"
    assert cli_main(["compare-oof", f"ref={ref}", f"better={better}", "-o", str(out)]) == 0
    md = (out / "ablation.md").read_text()
    assert "| better | 16 (0 1) |" in md and "reference" in md
    assert cli_main(["compare-oof", str(ref), "-o", str(out)]) == 2  # NAME=CSV is required


def test_post_processing_that_erases_a_found_lesion_is_never_chosen(prepared_small: Path, tmp_path: Path):
    """A candidate with the best mean but a patient whose found lesion it removes entirely is not chosen; the
    table says how many patients each candidate erased."""
    from monaiunetseg.model.postprocess import PostProcessing
    from monaiunetseg.training.oof import oof_cases

    cases = oof_cases(prepared_small)
    probs = {}
    for i, c in enumerate(cases):  # the expert mask as the prediction, plus a far island bigger than it for one
        img = nib.load(c.label)
        label = np.asanyarray(img.dataobj) > 0
        prob = label.astype(np.float32) * 0.9
        if i == 0:
            island = np.zeros_like(label)
            island[:40, :40, :] = True  # a corner block: larger than the lesion, far from it
            prob[island & ~label] = 0.9
        path = tmp_path / f"{c.patient}.npz"
        np.savez_compressed(path, prob=np.round(prob * 255).astype(np.uint8), affine=img.affine)
        probs[c.patient] = path
    summary = evaluate_oof(probs, prepared_small, tmp_path / "docs", log=lambda *_: None,
                           candidates=[PostProcessing(), PostProcessing(largest_only=True), PostProcessing(min_fraction=0.01)])
    with open(tmp_path / "docs" / "oof_postprocessing.csv", newline="") as fh:
        table = {r["postprocessing"]: r for r in csv.DictReader(fh)}
    assert int(table["largest component"]["patients_erased"]) == 1
    assert summary["postprocessing_name"] != "largest component" and summary["all"]["min"] > 0


def test_a_fold_record_may_name_weights_kept_elsewhere(tmp_path: Path):
    """The shipped fold-0 model lives at models/model.pt: its CV record names it instead of a second copy, and
    both train-cv (finished, skipped) and evaluate-oof (its weights) follow the record."""
    from monaiunetseg.training.cv import fold_finished, fold_weights

    cv = tmp_path / "models" / "cv"
    (cv / "fold0").mkdir(parents=True)
    shutil.copy(BUNDLE_DIR / "models" / "model.pt", tmp_path / "models" / "model.pt")
    (cv / "fold0" / RECORD).write_text(json.dumps({"status": "done", "epochs": 180, "weights": "../../model.pt"}))
    assert fold_weights(cv, 0).resolve() == (tmp_path / "models" / "model.pt").resolve()
    assert fold_finished(cv, 0, 180) and not fold_finished(cv, 0, 60)
    (tmp_path / "models" / "model.pt").unlink()
    assert not fold_finished(cv, 0, 180)


def test_evaluate_oof_of_a_cv_in_progress_uses_the_finished_folds(prepared_small: Path, tmp_path: Path, capsys):
    """A CV spread over sessions: evaluate-oof without --folds scores the patients of the finished folds and
    says which folds are missing (an unfinished fold's model.pt, left by an interrupted run, is not used)."""
    from monaiunetseg.cli import main as cli_main

    cv = tmp_path / "cv"
    for fold, status in ((0, "done"), (1, "interrupted"), (2, "done")):
        (cv / f"fold{fold}").mkdir(parents=True)
        shutil.copy(BUNDLE_DIR / "models" / "model.pt", cv / f"fold{fold}" / "model.pt")
        (cv / f"fold{fold}" / RECORD).write_text(json.dumps({"status": status, "epochs": 1}))
    docs = tmp_path / "docs"
    assert cli_main(["evaluate-oof", str(cv), str(prepared_small), "--docs-dir", str(docs), "--device", "cpu"]) == 0
    assert "folds [1] have not finished training" in capsys.readouterr().out
    with open(docs / "oof_metrics_per_patient.csv", newline="") as fh:
        assert sorted(int(r["fold"]) for r in csv.DictReader(fh)) == [0, 2]


def test_train_cv_fold_is_turned_away_while_another_process_trains_it(prepared_small: Path, tmp_path: Path):
    """One fold per array task: a fold whose folder another process holds is not trained twice (exit 1, naming
    the holder); a fold the data set lacks, or ``auto`` outside an array, is a command error before any folder."""
    from monaiunetseg.batch.lock import OutputLock

    out = tmp_path / "cv"
    (out / "fold1").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")}
    cmd = [sys.executable, "-m", "monaiunetseg.cli", "train-cv", str(prepared_small), "-o", str(out), "--epochs", "1",
           "--device", "cpu"]
    with OutputLock(out / "fold1"):
        busy = subprocess.run([*cmd, "--fold", "auto"], capture_output=True, text=True, timeout=120,
                              env=dict(env, SLURM_ARRAY_TASK_ID="1"))
    assert busy.returncode == 1 and "in use by another monaiunetseg run (PID" in busy.stdout, busy.stdout + busy.stderr
    assert not (out / "fold1" / "cv_fold.json").exists() and not (out / "fold1" / "train.log").exists()
    wrong = subprocess.run([*cmd, "--fold", "3"], capture_output=True, text=True, timeout=120, env=env)
    assert wrong.returncode == 2 and "no fold 3: the data set has folds 0-2" in wrong.stderr, wrong.stderr
    outside = subprocess.run([*cmd, "--fold", "auto"], capture_output=True, text=True, timeout=120, env=env)
    assert outside.returncode == 2 and "--fold auto: neither $SLURM_ARRAY_TASK_ID" in outside.stderr
    assert sorted(p.name for p in out.iterdir()) == ["fold1"]
