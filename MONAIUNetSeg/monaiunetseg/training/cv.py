"""Cross-validation as one resumable run: train the bundle once per patient-level fold.

Each fold is a separate ``monai.bundle run training`` process writing ``<out>/fold<k>/``; the bundle resumes
a fold from its newest checkpoint, and a fold whose process finished is recorded in ``fold<k>/cv_fold.json``
and skipped on the next call, so a CV can be spread over several interrupted runs. Folds may also run at once, one
process each (``train-cv --fold K``, a SLURM array with ``--fold auto``): each holds its fold folder
(``batch.lock``), so a fold resubmitted while it still runs is turned away rather than trained twice into one folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from monaiunetseg.batch.lock import FolderBusyError, OutputLock
from monaiunetseg.files import write_text_atomic
from monaiunetseg.model.bundle import bundle_root
from monaiunetseg.model.intensity import LEGACY_NORMALISATION
from monaiunetseg.training.prepare import DATALIST_NAME

RECORD = "cv_fold.json"


@dataclass
class FoldRun:
    fold: int
    status: str  # "done" (this call), "skipped" (finished earlier), "failed" or "busy" (another process on it)
    seconds: float = 0.0
    returncode: int = 0


def fold_dir(out_root: str | os.PathLike, fold: int) -> Path:
    return Path(out_root) / f"fold{fold}"


def read_record(out_root: str | os.PathLike, fold: int) -> dict:
    path = fold_dir(out_root, fold) / RECORD
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def fold_weights(out_root: str | os.PathLike, fold: int) -> Path:
    """The fold's weights: ``fold<k>/model.pt``, or the file its record names (``"weights"``, relative to the
    fold folder), e.g. a fold trained before and shipped elsewhere in the bundle, so that it is not a second copy."""
    named = read_record(out_root, fold).get("weights")
    return fold_dir(out_root, fold) / (named if isinstance(named, str) and named else "model.pt")


def configured_normalisation(bundle: Path, configs: list[str], overrides: dict) -> str:
    """The input normalisation a training runs with: an override, else the last of ``configs`` that names one."""
    if overrides.get("normalisation"):
        return str(overrides["normalisation"])
    chosen = LEGACY_NORMALISATION
    for name in configs:
        try:
            chosen = json.loads((bundle / name).read_text(encoding="utf-8")).get("normalisation", chosen)
        except (OSError, ValueError):
            continue
    return str(chosen)


def fold_normalisation(out_root: str | os.PathLike, fold: int) -> str:
    """The normalisation a fold was trained with (its record; folds recorded before the key: ``percentile``)."""
    return str(read_record(out_root, fold).get("normalisation") or LEGACY_NORMALISATION)


def fold_finished(out_root: str | os.PathLike, fold: int, epochs: int | None = None) -> bool:
    """True when the fold's training process ended normally (not merely left a ``model.pt``: the bundle also
    writes one when training is interrupted by an exception)."""
    record = read_record(out_root, fold)
    done = record.get("status") == "done" and fold_weights(out_root, fold).is_file()
    return done and (epochs is None or record.get("epochs") == epochs)


def train_command(bundle: Path, dataset_dir: str | os.PathLike, out: Path, fold: int, epochs: int,
                  configs: list[str], overrides: dict[str, str]) -> list[str]:
    """``python -m monai.bundle run training`` for one fold (validation only at the end: folds are evaluated
    out-of-fold afterwards, and no checkpoint is picked on the fold's own patients)."""
    files = [str(bundle / c) for c in configs]
    config_arg = files[0] if len(files) == 1 else json.dumps(files)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config_arg,
           "--meta_file", str(bundle / "configs" / "metadata.json"), "--logging_file", str(bundle / "configs" / "logging.conf"),
           "--bundle_root", str(bundle), "--dataset_dir", str(dataset_dir), "--val_fold", str(fold),
           "--epochs", str(epochs), "--val_interval", str(epochs), "--output_dir", str(out)]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def check_folds(dataset_dir: str | os.PathLike, folds: list[int]) -> None:
    """Refuse a fold the prepared data set does not have (``--fold auto`` from an array larger than the CV)
    before any folder is made; a raw kaggle_3m folder (prepared by the bundle) is checked by the bundle."""
    path = Path(dataset_dir) / DATALIST_NAME
    try:
        n_folds = int(json.loads(path.read_text(encoding="utf-8"))["n_folds"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    wrong = [k for k in folds if not 0 <= k < n_folds]
    if wrong:
        raise ValueError(f"{path}: no fold {wrong[0]}: the data set has folds 0-{n_folds - 1}")


def train_cv(dataset_dir: str | os.PathLike, out_root: str | os.PathLike, folds: list[int], epochs: int,
             bundle: str | os.PathLike | None = None, configs: list[str] | None = None,
             overrides: dict[str, str] | None = None, log=print) -> list[FoldRun]:
    """Train every fold in ``folds`` that has not finished with this number of ``epochs``; returns what
    happened to each. A failed fold is reported and the next one still runs."""
    bundle = bundle_root(bundle).resolve()
    configs = configs or ["configs/train.json"]
    overrides = dict(overrides or {})
    check_folds(dataset_dir, folds)
    runs: list[FoldRun] = []
    for fold in folds:
        out = fold_dir(out_root, fold).resolve()
        if fold_finished(out_root, fold, epochs):
            log(f"fold {fold}: finished earlier ({out}), skipped")
            runs.append(FoldRun(fold, "skipped"))
            continue
        out.mkdir(parents=True, exist_ok=True)
        try:
            with OutputLock(out):
                runs.append(_train_fold(bundle, dataset_dir, out_root, fold, epochs, configs, overrides, log))
        except FolderBusyError as exc:
            log(f"fold {fold}: not trained: {exc}")
            runs.append(FoldRun(fold, "busy"))
    return runs


def _train_fold(bundle: Path, dataset_dir: str | os.PathLike, out_root: str | os.PathLike, fold: int, epochs: int,
                configs: list[str], overrides: dict[str, str], log) -> FoldRun:
    """Train one fold, its folder held, unless it finished meanwhile (another process, before this one held it)."""
    out = fold_dir(out_root, fold).resolve()
    if fold_finished(out_root, fold, epochs):
        log(f"fold {fold}: finished earlier ({out}), skipped")
        return FoldRun(fold, "skipped")
    record = read_record(out_root, fold)
    if record and record.get("epochs") not in (None, epochs):
        raise ValueError(f"{out} was trained for {record['epochs']} epochs; resume it with --epochs "
                         f"{record['epochs']} or use another output folder")
    record.update({"fold": fold, "epochs": epochs, "configs": configs, "overrides": overrides,
                   "normalisation": configured_normalisation(bundle, configs, overrides),
                   "dataset_dir": str(dataset_dir), "status": "running"})
    # A run is recorded before it starts, so one killed outright still shows (without seconds).
    record.setdefault("runs", []).append({"started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    write_text_atomic(out / RECORD, json.dumps(record, indent=1))
    cmd = train_command(bundle, dataset_dir, out, fold, epochs, configs, overrides)
    log(f"fold {fold}: training ({epochs} epochs) -> {out} (log: {out / 'train.log'})")
    t0 = time.perf_counter()
    with open(out / "train.log", "a", encoding="utf-8") as fh:
        rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    record["runs"][-1].update({"seconds": round(seconds, 1), "returncode": rc})
    record["status"] = "done" if rc == 0 and (out / "model.pt").is_file() else "interrupted"
    record["train_seconds"] = round(sum(r.get("seconds") or 0.0 for r in record["runs"]), 1)
    write_text_atomic(out / RECORD, json.dumps(record, indent=1))
    log(f"fold {fold}: {record['status']} in {seconds / 60:.1f} min (exit {rc})")
    return FoldRun(fold, "done" if record["status"] == "done" else "failed", seconds, rc)
