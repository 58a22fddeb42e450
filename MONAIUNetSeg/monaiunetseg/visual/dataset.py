"""The data-set summary figure of ``prepare-lgg``: what a model trained on these volumes has seen.

Three views of the per-patient rows of ``dataset_summary.csv``: slices per patient and lesion volume per patient
(sorted bars, coloured by institution) and the fraction of slices with tumour by institution (one dot per patient,
the institution's median as a bar).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monaiunetseg.visual.style import category_colours, category_markers, new_figure, save_png


def write_dataset_figure(rows: list[dict], target: str | os.PathLike) -> Path:
    """``rows``: ``patient``, ``institution``, ``n_slices``, ``tumour_slice_fraction``, ``lesion_ml`` per patient."""
    from matplotlib.patches import Patch

    insts = sorted({str(r["institution"]) for r in rows})
    colours, markers = category_colours(insts), category_markers(insts)
    counts = {i: sum(str(r["institution"]) == i for r in rows) for i in insts}
    fig = new_figure(1500, 500)
    axes = [fig.add_axes((0.045 + 0.33 * k, 0.13, 0.27, 0.68)) for k in range(3)]

    for ax, key, label in ((axes[0], "n_slices", "slices"), (axes[1], "lesion_ml", "lesion volume (mL, nominal)")):
        ordered = sorted(rows, key=lambda r: (float(r[key]), str(r["patient"])))
        values = [float(r[key]) for r in ordered]
        ax.bar(range(len(ordered)), values, width=0.85, color=[colours[str(r["institution"])] for r in ordered])
        ax.axhline(float(np.median(values)), color="black", lw=1, ls="--", label=f"median {np.median(values):.3g}")
        ax.set(xlabel=f"patients, sorted ({len(rows)})", ylabel=label, xticks=[], xlim=(-1, len(rows)))
        ax.set_title(f"{label.split(' (')[0].capitalize()} per patient (range {min(values):.3g}-{max(values):.3g})",
                     fontsize=11)
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(True, axis="y", alpha=0.25)

    ax = axes[2]
    rng = np.random.default_rng(0)  # fixed jitter: the same data give the same picture
    for k, inst in enumerate(insts):
        values = np.array([float(r["tumour_slice_fraction"]) for r in rows if str(r["institution"]) == inst])
        ax.scatter(k + rng.uniform(-0.18, 0.18, values.size), values, s=26, color=colours[inst], marker=markers[inst],
                   edgecolor="black", linewidth=0.5, zorder=3)
        ax.hlines(np.median(values), k - 0.3, k + 0.3, color="black", lw=2, zorder=4)
    ax.set(xticks=range(len(insts)), xticklabels=[f"{i}\n(n={counts[i]})" for i in insts], ylim=(0, 1.02),
           xlabel="institution (TCGA site)", ylabel="fraction of slices with tumour")
    ax.set_title("Tumour-slice fraction by institution (bar: median)", fontsize=11)
    ax.grid(True, axis="y", alpha=0.25)

    fig.legend(handles=[Patch(color=colours[i], label=f"{i} ({counts[i]})") for i in insts], loc="upper center",
               ncol=len(insts), frameon=False, fontsize=9, bbox_to_anchor=(0.5, 0.93))
    folds = len({r["fold"] for r in rows if "fold" in r})
    fig.suptitle(f"Data set (prepare-lgg): {len(rows)} patients from {len(insts)} institutions"
                 + (f", {folds} folds" if folds else ""), fontsize=13)
    return save_png(fig, target)
