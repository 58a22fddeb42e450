"""Datalist access for the bundle: patient-level train/validation splits of a prepared (or raw) dataset."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

from monaiunetseg.training.lgg import list_patients
from monaiunetseg.training.logs import is_rank0
from monaiunetseg.training.prepare import DATALIST_NAME, prepare_lgg


def resolve_dataset(dataset_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                    subset: int | None = None, val_fold: int | None = None) -> Path:
    """Path of ``datalist.json`` for ``dataset_dir``: a ``prepare-lgg`` output, or a raw ``kaggle_3m`` folder
    that is prepared into ``cache_dir`` (never next to the input data; patients already there are kept). With
    ``subset`` only the patients a ``subset`` run uses are prepared (the first N of ``val_fold`` and of the
    other folds)."""
    dataset_dir = Path(dataset_dir)
    if (dataset_dir / DATALIST_NAME).is_file():
        return dataset_dir / DATALIST_NAME
    try:
        raw = bool(list_patients(dataset_dir))
    except FileNotFoundError:
        raw = False
    if not raw:
        raise FileNotFoundError(f"{dataset_dir}: neither a prepare-lgg output ({DATALIST_NAME}) nor a kaggle_3m folder")
    if cache_dir is None:
        raise ValueError(f"{dataset_dir} is a raw kaggle_3m folder: give a cache directory to prepare it into")
    results, datalist = prepare_lgg(dataset_dir, cache_dir, progress=is_rank0(), subset=subset, val_fold=val_fold)
    return datalist


def load_split(dataset_dir: str | os.PathLike, val_fold: int = 0, cache_dir: str | os.PathLike | None = None,
               subset: int | None = None) -> tuple[list[dict], list[dict]]:
    """(training, validation) items with absolute paths; validation is fold ``val_fold``.

    ``subset`` keeps only the first N patients of each list (quick smoke runs and tests); a raw folder is then
    prepared for those patients only.
    """
    path = resolve_dataset(dataset_dir, cache_dir, subset, val_fold)
    datalist = json.loads(path.read_text())
    root = path.parent
    # Only fields every entry has: clinical fields are optional and would break batch collation. A prepare-pairs
    # data set has no 3-channel image: its one image stands in (only train_3ch.json reads it).
    items = [
        {"image": str(root / e["image"]), "image_3ch": str(root / e.get("image_3ch", e["image"])),
         "label": str(root / e["label"]),
         "patient": e["patient"], "fold": e["fold"]}
        for e in datalist["training"]
    ]
    train = [i for i in items if i["fold"] != val_fold]
    val = [i for i in items if i["fold"] == val_fold]
    if not val:
        raise ValueError(f"{path}: fold {val_fold} is empty (folds 0..{datalist['n_folds'] - 1})")
    if subset:
        train, val = train[:subset], val[:subset]
    return train, val


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """Highest-epoch ``<prefix>_*epoch=N.pt`` in ``ckpt_dir`` to resume from, or None for a fresh run.

    Matches the names the bundle writes (``checkpoint_epoch=N.pt``) and those of runs started before that
    (``checkpoint_checkpoint_epoch=N.pt``: CheckpointSaver's own "checkpoint" after a "checkpoint" prefix), so an
    interrupted older run still resumes. Chosen by the epoch in the name, not the file time, so copied or restored
    folders resume correctly. A file that is not a complete checkpoint (``torch.save`` writes a zip archive;
    MONAI's saver writes in place, so a run killed while saving leaves a truncated one) is passed over for the one
    before it.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None

    def epoch(path: Path) -> int:
        match = re.search(r"epoch=(\d+)", path.name)
        return int(match.group(1)) if match else -1

    found = sorted(ckpt_dir.glob(f"{prefix}_*.pt"), key=lambda p: (epoch(p), p.stat().st_mtime))
    complete = [p for p in found if zipfile.is_zipfile(p)]
    return str(complete[-1]) if complete else None
