"""What the bundle's evaluator uses beyond MONAI: the inferer that segments with a shipped model set (as users get
it), the per-patient metric CSV and summary, and the pictures beside them."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
from ignite.engine import Engine, Events

from monaiunetseg.files import write_text_atomic
from monaiunetseg.metrics import case_metrics, summarise

logger = logging.getLogger(__name__)


def _spacing(meta) -> tuple[float, float, float]:
    affine = np.asarray(meta.affine if hasattr(meta, "affine") else meta["affine"], dtype=float)
    return tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))


class SegmenterInferer:
    """A MONAI inferer (``inferer(inputs, network)``) that segments each volume of a batch with a
    :class:`~monaiunetseg.model.predictor.Segmenter`: the model set, post-processing and mapping back onto the
    input's grid of ``monaiunetseg segment``, so an evaluation scores what users get. ``inputs``: the image as
    loaded (channel first, its RAS affine in the metadata); returns the one-hot labelmap (B, 2, x, y, z).
    ``network`` (the evaluator's) is not used: the Segmenter holds its own networks."""

    def __init__(self, segmenter) -> None:
        self.segmenter = segmenter

    def __call__(self, inputs, network=None, *args, **kwargs):
        import torch

        affines = np.asarray(inputs.affine.detach().cpu() if hasattr(inputs.affine, "detach") else inputs.affine)
        out = []
        for i in range(inputs.shape[0]):
            affine = affines[i] if affines.ndim == 3 else affines
            labels = self.segmenter.segment(inputs[i].detach().cpu().numpy(), affine.astype(float))
            out.append(torch.from_numpy(np.stack([1 - labels, labels]).astype(np.float32)))
        return torch.stack(out).to(inputs.device)


def evaluation_title(segmenter, model: str, weights=None) -> str:
    """What an evaluation scored, for its pictures and summary: ``model set 'default' (3 models: ...),
    post-processing: components >= 0.2 x largest``."""
    root = Path(segmenter.spec.root).resolve()

    def name(w: Path) -> str:
        w = Path(w).resolve()
        return str(w.relative_to(root)) if w.is_relative_to(root) else str(w)

    names = ", ".join(name(w) for w in segmenter.weights)
    what = f"weights {names}" if weights else f"model set '{model}' ({len(segmenter.weights)} model(s): {names})"
    tta = ", flip TTA" if segmenter.flip_tta else ""
    return f"{what}{tta}, post-processing: {segmenter.postprocessing.name}"


class PerPatientMetricsWriter:
    """After each validation run write ``<output_dir>/metrics_per_patient.csv`` and ``metrics_summary.json``;
    with ``pictures`` (default) also a panel per patient, ``summary.png`` and ``index.html`` there
    (:mod:`monaiunetseg.visual.evaluation`), because a segmentation is judged by looking at it.

    Expects one volume per batch with ``pred`` and ``label`` as one-hot or single-channel tensors on the grid of
    the input file (inverted), and the input file's name in the image's metadata (``filename_or_obj``): the
    panels show that file's FLAIR (channel 1 of a 3-channel file).
    """

    def __init__(self, output_dir: str | os.PathLike, id_key: str = "patient", pictures: bool = True,
                 title: str = "") -> None:
        self.output_dir = Path(output_dir)
        self.title = title  # what was evaluated (evaluation_title): in the summary JSON and on the pictures
        self.id_key = id_key
        self.pictures = pictures
        self.rows: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    @staticmethod
    def _binary(t) -> np.ndarray:
        arr = np.asarray(t.detach().cpu() if hasattr(t, "detach") else t)
        return (arr[1] if arr.shape[0] > 1 else arr[0]) > 0.5

    def _iteration(self, engine: Engine) -> None:
        batch = engine.state.batch if isinstance(engine.state.batch, list) else []
        for i, item in enumerate(engine.state.output):
            label = item["label"]
            ident = batch[i].get(self.id_key) if i < len(batch) else None
            row = {"patient": str(ident if ident is not None else f"case{len(self.rows)}")}
            pred, ref = self._binary(item["pred"]), self._binary(label)
            row.update(case_metrics(pred, ref, _spacing(label)))
            self.rows.append(row)
            if self.pictures:
                self._panel(row, pred, ref, batch[i] if i < len(batch) else {})

    def _panel(self, row: dict, pred: np.ndarray, label: np.ndarray, item: dict) -> None:
        """Draw the patient's panel from the input file; a picture that cannot be drawn is logged, not raised."""
        import nibabel as nib

        from monaiunetseg.training.lgg import FLAIR_CHANNEL
        from monaiunetseg.visual.evaluation import write_case_panel

        meta = getattr(item.get("image"), "meta", {})
        source = meta.get("filename_or_obj")
        try:
            img = nib.load(str(source))
            image = img.get_fdata(dtype=np.float32)
            if image.ndim == 4:
                image = image[..., FLAIR_CHANNEL]
            if image.shape != pred.shape:
                raise ValueError(f"image {image.shape} and prediction {pred.shape} are not on one grid")
            write_case_panel(self.output_dir, row["patient"], image, label, pred, img.affine, row)
        except Exception as exc:  # the metrics matter more than a picture
            logger.warning("no panel for %s (%s): %s", row["patient"], source, exc)

    def _write(self, engine: Engine) -> None:
        if not self.rows:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.rows[0]))
        writer.writeheader()
        for r in sorted(self.rows, key=lambda r: r["patient"]):
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
        write_text_atomic(self.output_dir / "metrics_per_patient.csv", buf.getvalue())
        summary = summarise(self.rows)
        if self.title:
            summary = {"evaluated": self.title, **summary}
        write_text_atomic(self.output_dir / "metrics_summary.json", json.dumps(summary, indent=1))
        line = (f"per-patient metrics ({len(self.rows)} volumes): Dice {summary['dice_mean']:.4f} "
                f"(median {summary['dice_median']:.4f}), HD95 {summary['hd95_mm_mean']:.2f} mm, "
                f"|dV| {summary['abs_vol_diff_ml_mean']:.2f} mL; with largest component: Dice "
                f"{summary['dice_lcc_mean']:.4f}, HD95 {summary['hd95_mm_lcc_mean']:.2f} mm")
        if self.title:
            line += f"; {self.title}"
        print(line, flush=True)  # once (a log record too would print it twice through the bundle's console handler)
        if self.pictures:
            from monaiunetseg.visual.evaluation import write_evaluation_pictures

            title = f"Evaluation: {len(self.rows)} patients" + (f", {self.title}" if self.title else "")
            index = write_evaluation_pictures(self.output_dir, self.rows, title)
            print(f"pictures: {index}", flush=True)
