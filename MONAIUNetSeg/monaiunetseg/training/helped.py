"""Did fine-tuning help? The starting model and the fine-tuned one scored on the site's validation case(s),
per patient, each exactly as ``segment`` runs it (``Segmenter(...).segment``: its model set, post-processing and
mapping back onto the case's grid), so the comparison is between the two things a user could run.

Why a rule and not a table only: the model card's leave-DU-out runs made the model worse at the new site in all
four runs, and nothing said so. ``finetune`` delivers a model only when its mean validation Dice is at least its
start's (``--keep-worse`` overrides).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from monaiunetseg.metrics import dice
from monaiunetseg.model.bundle import INFERENCE_CONFIG
from monaiunetseg.training.model_folder import validation_cases

SHIPPED_SETS = ("default", "fast", "full")


def is_model_folder(source: str | os.PathLike) -> bool:
    """A folder ``finetune`` (or a bundle) wrote: it has ``configs/inference.json``."""
    return Path(source).is_dir() and (Path(source) / INFERENCE_CONFIG).is_file()


def source_normalisation(source: str) -> str | None:
    """The input normalisation the starting weights were trained with (fine-tuning keeps it): a model folder's,
    or that of the model folder a weights file sits in (``DIR/models/model.pt``), else the shipped bundle's;
    None (``train.json``'s own) when training from scratch."""
    from monaiunetseg.model.bundle import read_spec

    if source == "none":
        return None
    if is_model_folder(source):
        return read_spec(source).normalisation
    folder = Path(source).resolve().parent.parent
    if source not in SHIPPED_SETS and is_model_folder(folder):
        return read_spec(folder).normalisation
    return read_spec(None).normalisation


def start_segmenter(source: str, device: str = "cpu"):
    """The starting model as ``segment`` runs it: a shipped set (``--model``), a model folder (``--model-dir``)
    or a weights file (the shipped network and post-processing); None for ``none`` (nothing to compare with)."""
    from monaiunetseg.model.predictor import Segmenter

    if source == "none":
        return None
    if source in SHIPPED_SETS:
        return Segmenter(device=device, model=source)
    if is_model_folder(source):
        return Segmenter(bundle=source, device=device)
    return Segmenter(device=device, weights=source, normalisation=source_normalisation(source))


def score_cases(segmenter, prepared: str | os.PathLike, fold: int) -> dict[str, float]:
    """Per-case Dice of ``segmenter`` on fold ``fold`` of ``prepared`` (the prepared NIfTI, read with nibabel:
    a 2D picture is a 1-slice volume there)."""
    scores = {}
    for e in validation_cases(prepared, fold):
        img = nib.load(Path(prepared) / e["image"])
        label = np.asarray(nib.load(Path(prepared) / e["label"]).dataobj) > 0
        scores[e["folder"]] = dice(segmenter.segment(np.asarray(img.dataobj, dtype=np.float32), img.affine) > 0, label)
    return scores


@dataclass
class Verdict:
    """The start's and the fine-tuned model's per-case Dice on the validation case(s), and the decision."""

    start: dict[str, float] | None
    tuned: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def start_mean(self) -> float | None:
        return float(np.mean(list(self.start.values()))) if self.start else None

    @property
    def tuned_mean(self) -> float:
        return float(np.mean(list(self.tuned.values())))

    @property
    def helped(self) -> bool | None:
        """True when the fine-tuned mean is at least the start's; None without a start (``--from none``)."""
        return None if self.start_mean is None else self.tuned_mean >= self.start_mean

    def line(self, source: str) -> str:
        n = len(self.tuned)
        if self.start_mean is None:
            return f"validation Dice {self.tuned_mean:.3f} on {n} case(s) (trained from scratch: no start to compare)"
        word = "better than" if self.tuned_mean > self.start_mean else ("as good as" if self.helped else "WORSE than")
        return (f"validation Dice {self.tuned_mean:.3f} fine-tuned vs {self.start_mean:.3f} for the start ({source}) "
                f"on {n} case(s): {word} the start")

    def to_dict(self) -> dict:
        return {"start": self.start, "tuned": self.tuned, "start_mean": self.start_mean,
                "tuned_mean": self.tuned_mean, "helped": self.helped}
