"""Per-patient (per-volume) segmentation metrics: Dice, HD95 in mm, absolute volume difference in mL."""

from __future__ import annotations

import math

import numpy as np

from monaiunetseg.geometry import voxel_volume_ml
from monaiunetseg.model.postprocess import largest_component


def dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice of two binary volumes; 1.0 when both are empty (nothing to find, nothing found)."""
    pred, label = pred.astype(bool), label.astype(bool)
    denom = pred.sum() + label.sum()
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(pred, label).sum() / denom)


def hd95(pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th percentile Hausdorff distance in mm; NaN when either volume is empty (undefined)."""
    if not pred.any() or not label.any():
        return math.nan
    import torch  # here, not at the top: dice() stays cheap for the Slicer glue and the batch
    from monai.metrics import compute_hausdorff_distance

    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    y = torch.from_numpy(label.astype(np.float32))[None, None]
    value = compute_hausdorff_distance(p, y, include_background=True, percentile=95, spacing=list(spacing))
    return float(value.item())


def case_metrics(pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]) -> dict[str, float]:
    """Metrics of one volume, raw and after largest-connected-component post-processing."""
    vox_ml = voxel_volume_ml(np.diag([*spacing, 1.0]))
    out: dict[str, float] = {"label_ml": float(label.sum()) * vox_ml}
    for suffix, p in (("", pred), ("_lcc", largest_component(pred))):
        out[f"dice{suffix}"] = dice(p, label)
        out[f"hd95_mm{suffix}"] = hd95(p, label, spacing)
        out[f"pred_ml{suffix}"] = float(p.sum()) * vox_ml
        out[f"abs_vol_diff_ml{suffix}"] = abs(out[f"pred_ml{suffix}"] - out["label_ml"])
    return out


def summarise(rows: list[dict], keys: tuple[str, ...] = ("dice", "hd95_mm", "abs_vol_diff_ml", "dice_lcc", "hd95_mm_lcc", "abs_vol_diff_ml_lcc")) -> dict[str, float]:
    """Mean and median of each metric over patients (NaNs, i.e. undefined HD95, are left out)."""
    summary: dict[str, float] = {"n": float(len(rows))}
    for k in keys:
        vals = np.array([r[k] for r in rows if k in r and not math.isnan(r[k])], dtype=float)
        summary[f"{k}_mean"] = float(vals.mean()) if vals.size else math.nan
        summary[f"{k}_median"] = float(np.median(vals)) if vals.size else math.nan
    return summary
