"""``finetune``: train (or fine-tune) the bundle's network on a prepared data set into a self-contained model
folder that ``segment --model-dir`` runs like the shipped model sets.

The bundle's own ``configs/train.json`` trains (``monai.bundle run training``, as ``train-cv`` launches it),
with its ``pretrained`` key set to the source weights; only the project's configs are run. Rerunning the same
command resumes from the newest checkpoint in ``MODEL_DIR/train/``; a rerun with more ``--epochs`` continues
the finished run (the learning-rate schedule keeps its first length).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from monaiunetseg.files import write_text_atomic
from monaiunetseg.model.bundle import bundle_root, read_spec
from monaiunetseg.model.predictor import device_name
from monaiunetseg.training.cv import train_command
from monaiunetseg.training.prepare import DATALIST_NAME

SOURCES = ("default", "fast", "none")
RECORD = "finetune.json"
WORK = "train"  # MODEL_DIR/train: checkpoints, train.log, the record; not needed to segment


def source_weights(source: str) -> Path | None:
    """The weights to start from: the first member of a shipped model set, a weights file, or None."""
    if source == "none":
        return None
    if source in SOURCES:
        return read_spec(None).weights(source)[0].resolve()
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"--from {source!r}: use default, fast, none or a weights file")
    from monaiunetseg.training.initial_weights import check_initial_weights

    check_initial_weights(path, read_spec(None).network_args)
    return path.resolve()


def source_normalisation(source: str, weights: Path | None) -> str | None:
    """The input normalisation the source weights were trained with (fine-tuning keeps it): a shipped set's, or
    that of the model folder a weights file sits in (``DIR/models/model.pt`` -> ``DIR``), else the shipped
    bundle's; None (``train.json``'s own) when training from scratch."""
    if weights is None:
        return None
    folder = weights.parent.parent
    if source not in SOURCES and weights.parent.name == "models" and (folder / "configs" / "inference.json").is_file():
        return read_spec(folder).normalisation
    return read_spec(None).normalisation


def read_record(work: Path) -> dict:
    try:
        return json.loads((work / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def finetune(prepared: str | os.PathLike, model_dir: str | os.PathLike, source: str = "default", epochs: int = 50,
             fold: int = 0, device: str = "auto", batch_size: int | None = None, num_samples: int | None = None,
             learning_rate: float | None = None, num_workers: int = 0, log=print) -> dict:
    """Train on every fold but ``fold`` of ``prepared`` (a prepare-pairs / prepare-lgg output), validate on
    ``fold``, and write ``model_dir`` (``model_folder.write_model_folder``); returns the training record
    (``status`` ``done`` or ``interrupted``)."""
    from monaiunetseg.training.model_folder import write_model_folder

    prepared, model_dir = Path(prepared).resolve(), Path(model_dir).resolve()
    if not (prepared / DATALIST_NAME).is_file():
        raise FileNotFoundError(f"{prepared}: no {DATALIST_NAME} (run prepare-pairs or prepare-lgg first)")
    folds = {e["fold"] for e in json.loads((prepared / DATALIST_NAME).read_text())["training"]}
    if fold not in folds or len(folds) < 2:
        raise ValueError(f"{prepared}: --fold {fold} is not one of its folds {sorted(folds)} (and training needs "
                         "another fold)")
    work = model_dir / WORK
    record = read_record(work)
    if record and record.get("source") != source:
        raise ValueError(f"{model_dir} was started --from {record.get('source')}; resume it with that, or use "
                         "another folder")
    if record and (record.get("fold") != fold or int(record.get("epochs", 0)) > epochs):
        raise ValueError(f"{model_dir} was trained with --fold {record.get('fold')} --epochs {record.get('epochs')}: "
                         "resume it with that fold and at least as many epochs, or use another folder")
    work.mkdir(parents=True, exist_ok=True)
    if not (record.get("status") == "done" and record.get("epochs") == epochs and (work / "model.pt").is_file()):
        weights = source_weights(source)
        dev = device_name(device)
        overrides: dict[str, object] = {"device": dev, "num_workers": num_workers}
        if weights is not None:
            overrides["pretrained"] = str(weights)
            overrides["normalisation"] = source_normalisation(source, weights)
        for key, value in (("train#dataloader#batch_size", batch_size), ("num_samples", num_samples),
                           ("learning_rate", learning_rate)):
            if value is not None:
                overrides[key] = value
        record.update(source=source, source_weights=str(weights) if weights else None, prepared=str(prepared),
                      fold=fold, epochs=epochs, device=dev, overrides={k: str(v) for k, v in overrides.items()},
                      status="running")
        record.setdefault("runs", []).append({"started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        write_text_atomic(work / RECORD, json.dumps(record, indent=1))
        cmd = train_command(bundle_root(None).resolve(), prepared, work, fold, epochs, ["configs/train.json"],
                            {k: str(v) for k, v in overrides.items()})
        log(f"finetune: training {epochs} epochs from {source} -> {work} (log: {work / 'train.log'})")
        t0 = time.perf_counter()
        with open(work / "train.log", "a", encoding="utf-8") as fh:
            rc = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        record["runs"][-1].update(seconds=round(time.perf_counter() - t0, 1), returncode=rc)
        record["train_seconds"] = round(sum(r.get("seconds") or 0.0 for r in record["runs"]), 1)
        record["status"] = "done" if rc == 0 and (work / "model.pt").is_file() else "interrupted"
        write_text_atomic(work / RECORD, json.dumps(record, indent=1))
        if record["status"] != "done":
            log(f"finetune: training stopped (exit {rc}); rerun the same command to resume")
            return record
    else:
        log(f"finetune: training finished earlier ({work}); rewriting the model folder")
    summary = write_model_folder(model_dir, work / "model.pt", prepared, fold, source, record, device)
    record["summary"] = summary
    write_text_atomic(work / RECORD, json.dumps(record, indent=1))
    log(f"finetune: {model_dir}: validation Dice {summary['dice']:.3f} on fold {fold} "
        f"({summary['n_val']} cases), post-processing: {summary['postprocessing_name']}")
    return record
