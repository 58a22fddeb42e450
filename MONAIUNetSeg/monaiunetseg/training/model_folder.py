"""The self-contained model folder a fine-tuning writes: ``models/model.pt``, ``configs/inference.json`` (plain
values only, read by ``segment --model-dir`` exactly as the shipped bundle's) and ``docs/README.md`` (a model
card), with the post-processing chosen on the validation fold.

Why chosen here: post-processing that helps LGG lesions (dropping small islands) can erase nuclei or other many-
object targets, so a new data set picks its own among the cross-validation's candidates, or none.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from monaiunetseg.files import atomic_path, write_csv_atomic, write_text_atomic
from monaiunetseg.metrics import dice
from monaiunetseg.model.bundle import INFERENCE_CONFIG, WEIGHTS, bundle_root
from monaiunetseg.model.intensity import LEGACY_NORMALISATION
from monaiunetseg.model.postprocess import PostProcessing
from monaiunetseg.model.predictor import Segmenter
from monaiunetseg.training.oof import CANDIDATES
from monaiunetseg.training.prepare import DATALIST_NAME

CARD = Path("docs") / "README.md"
VALIDATION_CSV = Path("docs") / "validation.csv"


def trained_normalisation(record: dict, bundle: str | os.PathLike | None = None) -> str:
    """The input normalisation a training ran with: its override, else the bundle's ``train.json`` key."""
    chosen = (record.get("overrides") or {}).get("normalisation")
    if chosen:
        return str(chosen)
    train = json.loads((bundle_root(bundle) / "configs" / "train.json").read_text(encoding="utf-8"))
    return str(train.get("normalisation", LEGACY_NORMALISATION))


def member_files(n: int) -> list[str]:
    """The weights files of an ``n``-member model folder: ``models/model.pt``, then ``models/member<k>.pt``."""
    return [WEIGHTS.as_posix()] + [f"models/member{k}.pt" for k in range(1, n)]


def inference_config(source: str, postprocessing: dict, bundle: str | os.PathLike | None = None,
                     n_members: int = 1, normalisation: str | None = None) -> dict:
    """The folder's ``configs/inference.json``: the shipped network definition and context, the normalisation
    the weights were trained with (default: the shipped set's), its model(s) (one, or every fine-tuned member of
    an ensemble), the post-processing; the shipped ``trust`` block only for weights that started from the
    shipped ones."""
    shipped = json.loads((bundle_root(bundle) / INFERENCE_CONFIG).read_text(encoding="utf-8"))
    config = {"network_def": shipped["network_def"], "context": shipped.get("context", 0),
              "normalisation": normalisation or shipped.get("normalisation", LEGACY_NORMALISATION),
              "models": {"default": member_files(n_members)}, "postprocessing": postprocessing}
    if source != "none" and shipped.get("trust"):
        config["trust"] = shipped["trust"]
    return config


def validation_cases(prepared: str | os.PathLike, fold: int) -> list[dict]:
    datalist = json.loads((Path(prepared) / DATALIST_NAME).read_text())
    return [e for e in datalist["training"] if e["fold"] == fold]


def validate(model_dir: Path, prepared: str | os.PathLike, fold: int, device: str = "auto") -> list[dict]:
    """Dice of every validation case under every post-processing candidate (the folder's model, raw
    probabilities thresholded at 0.5). The prepared NIfTI is read with nibabel: a 2D picture is a 1-slice
    volume there, which the scan readers refuse as 'not 3D'."""
    segmenter = Segmenter(bundle=model_dir, device=device, postprocessing={})
    rows = []
    for e in validation_cases(prepared, fold):
        img, lab = nib.load(Path(prepared) / e["image"]), nib.load(Path(prepared) / e["label"])
        prob = segmenter.probabilities(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        label = np.asarray(lab.dataobj) > 0
        mask = (prob > 0.5).astype(np.uint8)
        row = {"case": e["folder"], "patient": e["patient"]}
        for pp in CANDIDATES:
            row[pp.name] = dice(pp(mask, prob), label)
        rows.append(row)
    return rows


def choose_postprocessing(rows: list[dict]) -> tuple[PostProcessing, float, float]:
    """(best candidate by mean validation Dice, its mean, the mean without post-processing); none on a tie."""
    means = {pp: float(np.mean([r[pp.name] for r in rows])) for pp in CANDIDATES}
    best = max(CANDIDATES, key=lambda pp: (round(means[pp], 6), pp.is_identity))
    return best, means[best], means[PostProcessing()]


def model_card(summary: dict) -> str:
    s = summary
    lines = [
        f"# {s['name']}: fine-tuned MONAIUNetSeg model (research use only)",
        "",
        "Made by `monaiunetseg finetune`; use it with `monaiunetseg segment --model-dir <this folder> ...`.",
        "Files: `models/model.pt` (the weights, a state_dict), `configs/inference.json` (network, model set, "
        "post-processing: plain values), `docs/` (this card, `validation.csv`); `train/` (checkpoints, log) is "
        "only needed to resume the training.",
        "",
        "| | |", "|---|---|",
        f"| Source weights | {s['source']} |",
        f"| Data | {s['prepared']}: {s['n_cases']} cases of {s['n_patients']} patients ({s['kinds']}), "
        f"{s['n_train']} for training, {s['n_val']} in validation fold {s['fold']} |",
        f"| Training | {s['epochs']} epochs, {s['train_seconds'] / 60:.1f} min ({s['device']})"
        f"{', ' + s['recipe'] if s.get('recipe') else ''}{f', {n} members' if (n := s.get('n_members', 1)) > 1 else ''} |",
        f"| Validation Dice | {s['dice']:.3f} mean over {s['n_val']} cases ({s['dice_raw']:.3f} without post-processing) |",
        f"| Post-processing | {s['postprocessing_name']} (chosen on the validation fold) |",
        f"| Confidence model | {'the shipped one (calibrated on LGG FLAIR, not on this data)' if s['trust'] else 'none'} |",
        *verdict_rows(s.get("verdict")),
        "",
        "The validation Dice comes from the fold the post-processing was chosen on: an optimistic estimate, not a "
        "test result. Per-case values: `validation.csv`.",
        "",
    ]
    return "\n".join(lines)


def verdict_rows(verdict: dict | None) -> list[str]:
    """The card's "did fine-tuning help" rows (``training.helped.Verdict.to_dict``), none without a verdict."""
    if not verdict or verdict.get("start_mean") is None:
        return []
    helped = "yes" if verdict["helped"] else "**no: worse than the start**"
    return [f"| Start on the same cases | Dice {verdict['start_mean']:.3f} (the starting model as `segment` runs it) |",
            f"| Fine-tuned on the same cases | Dice {verdict['tuned_mean']:.3f} (this folder as `segment --model-dir` "
            f"runs it); helped: {helped} |"]


def write_model_folder(model_dir: str | os.PathLike, weights: str | os.PathLike | list, prepared: str | os.PathLike,
                       fold: int, source: str, record: dict, device: str = "auto") -> dict:
    """Copy ``weights`` (one file, or the members of a fine-tuned ensemble) into ``model_dir``, write its
    inference config (post-processing chosen on ``fold``), per-case validation Dice and the model card; returns
    the card's summary."""
    model_dir = Path(model_dir)
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    (model_dir / WEIGHTS).parent.mkdir(parents=True, exist_ok=True)
    (model_dir / INFERENCE_CONFIG).parent.mkdir(parents=True, exist_ok=True)
    (model_dir / CARD).parent.mkdir(parents=True, exist_ok=True)
    for src, name in zip(weights, member_files(len(weights))):
        with atomic_path(model_dir / name) as tmp:
            shutil.copyfile(src, tmp)
    normalisation = trained_normalisation(record)
    write_text_atomic(model_dir / INFERENCE_CONFIG, json.dumps(
        inference_config(source, {}, n_members=len(weights), normalisation=normalisation), indent=1))
    rows = validate(model_dir, prepared, fold, device)
    best, mean, raw = choose_postprocessing(rows)
    config = inference_config(source, best.to_dict(), n_members=len(weights), normalisation=normalisation)
    write_text_atomic(model_dir / INFERENCE_CONFIG, json.dumps(config, indent=1))
    write_validation_csv(model_dir, [{**r, "dice": r[best.name], "dice_raw": r["none"]} for r in rows])
    entries = json.loads((Path(prepared) / DATALIST_NAME).read_text())["training"]
    summary = {"name": model_dir.name, "source": record.get("source_weights") or "none (trained from scratch)",
               "prepared": str(prepared), "n_cases": len(entries), "n_patients": len({e["patient"] for e in entries}),
               "kinds": ", ".join(sorted({e.get("kind", "3d") for e in entries})), "n_val": len(rows),
               "n_train": sum(e["fold"] != fold for e in entries), "fold": fold, "epochs": record["epochs"],
               "train_seconds": record.get("train_seconds", 0.0), "device": record.get("device", device),
               "dice": mean, "dice_raw": raw, "postprocessing": best.to_dict(), "postprocessing_name": best.name,
               "trust": "trust" in config, "n_members": len(weights),
               "recipe": record.get("recipe_text", "")}
    write_text_atomic(model_dir / CARD, model_card(summary))
    return summary


def write_validation_csv(model_dir: Path, rows: list[dict]) -> None:
    columns = ["case", "patient", "dice", "dice_raw"] + [c for c in ("dice_start", "dice_segment") if c in rows[0]]
    write_csv_atomic(model_dir / VALIDATION_CSV, rows, columns)


def add_verdict(model_dir: str | os.PathLike, summary: dict, verdict: dict) -> dict:
    """The card and ``validation.csv`` of ``model_dir`` with the start's and this folder's per-case Dice as
    ``segment`` gives them (``training.helped``); returns the summary with the verdict."""
    import csv

    model_dir = Path(model_dir)
    with open(model_dir / VALIDATION_CSV, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["dice_segment"] = verdict["tuned"].get(r["case"])
        if verdict.get("start"):
            r["dice_start"] = verdict["start"].get(r["case"])
    write_validation_csv(model_dir, rows)
    summary = {**summary, "verdict": verdict}
    write_text_atomic(model_dir / CARD, model_card(summary))
    return summary
