"""Pictures of an evaluation: a panel per patient, one summary figure and a static ``index.html``.

Written beside an evaluation's tables (the bundle's ``evaluating``: ``PerPatientMetricsWriter``; out-of-fold:
``evaluate_oof(pictures_dir=...)``) in one layout::

    index.html      patients worst Dice first, each with its panel (relative links: open the file in any browser)
    summary.png     Dice against reference lesion volume by institution; Bland-Altman of predicted vs reference mL
    panels/<patient>.png
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np

from monaiunetseg.files import write_text_atomic
from monaiunetseg.visual.panels import write_panel
from monaiunetseg.visual.style import (
    PREDICTION_RGB,
    REFERENCE_RGB,
    category_colours,
    category_markers,
    hex_colour,
    new_figure,
    save_png,
)

PANELS = "panels"
SUMMARY_PNG = "summary.png"
INDEX_HTML = "index.html"


def institution_of(patient: str) -> str:
    """``TCGA_CS_4944`` -> ``CS`` (the TCGA tissue source site); empty for names that are not TCGA ids.

    The same split as ``training.lgg.institution``, spelt out: the pictures sit below training and import none of it.
    """
    return patient.split("_")[1] if patient.startswith("TCGA_") and patient.count("_") >= 2 else ""


def panel_path(out_dir: str | os.PathLike, patient: str) -> Path:
    return Path(out_dir) / PANELS / f"{patient}.png"


def write_case_panel(out_dir: str | os.PathLike, patient: str, image: np.ndarray, label: np.ndarray,
                     pred: np.ndarray, affine: np.ndarray, metrics: dict) -> Path:
    """``out_dir/panels/<patient>.png`` (see :func:`monaiunetseg.visual.panels.write_panel`)."""
    metrics = {"institution": institution_of(patient), **metrics}
    return write_panel(image, label, pred, affine, panel_path(out_dir, patient), patient, metrics)


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in rows], dtype=float)


def write_summary_figure(rows: list[dict], target: str | os.PathLike, title: str = "") -> Path:
    """Per-patient Dice against reference volume (log scale) by institution with mean and median, beside a
    Bland-Altman plot of predicted against reference mL (mean difference and 95 % limits of agreement)."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    insts = [r.get("institution") or institution_of(str(r["patient"])) or "?" for r in rows]
    colours, markers = category_colours(sorted(set(insts))), category_markers(sorted(set(insts)))
    dice, ref, pred = _column(rows, "dice"), _column(rows, "label_ml"), _column(rows, "pred_ml")
    fig = new_figure(1300, 560)
    ax1, ax2 = fig.add_axes((0.06, 0.12, 0.40, 0.74)), fig.add_axes((0.56, 0.12, 0.40, 0.74))
    floor = 0.01  # mL: an empty reference still gets a place on the log axis
    for inst in sorted(colours):
        sel = np.array([i == inst for i in insts])
        style = {"s": 40, "color": colours[inst], "marker": markers[inst], "edgecolor": "black", "linewidth": 0.5,
                 "zorder": 3}
        ax1.scatter(np.maximum(ref[sel], floor), dice[sel], label=f"{inst} (n={int(sel.sum())})", **style)
        ax2.scatter((pred[sel] + ref[sel]) / 2, pred[sel] - ref[sel], **style)
    ax1.set_xscale("log")
    ax1.xaxis.set_major_locator(FixedLocator([0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500]))
    ax1.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.xaxis.set_minor_formatter(NullFormatter())
    mean, median = float(np.mean(dice)), float(np.median(dice))
    ax1.axhline(mean, color="black", lw=1.2, label=f"mean {mean:.3f}")
    ax1.axhline(median, color="black", lw=1.2, ls="--", label=f"median {median:.3f}")
    ax1.set(xlabel="reference lesion volume (mL, log scale)", ylabel="Dice (per patient)", ylim=(-0.02, 1.02),
            title=f"Dice against lesion size ({len(rows)} patients)")
    ax1.grid(True, which="both", alpha=0.25)
    ax1.legend(loc="lower right", fontsize=8, ncol=2)

    diff = pred - ref
    bias = float(np.mean(diff))
    sd = float(np.std(diff, ddof=1)) if diff.size > 1 else 0.0
    for y, ls, text in ((bias, "-", f"mean difference {bias:+.1f} mL"),
                        (bias + 1.96 * sd, ":", f"+1.96 SD {bias + 1.96 * sd:+.1f} mL"),
                        (bias - 1.96 * sd, ":", f"-1.96 SD {bias - 1.96 * sd:+.1f} mL")):
        ax2.axhline(y, color="black", lw=1.1, ls=ls)
        ax2.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-4, 3), textcoords="offset points",
                     ha="right", fontsize=8)
    ax2.axhline(0.0, color="grey", lw=0.8)
    ax2.set(xlabel="mean of predicted and reference volume (mL)", ylabel="predicted - reference (mL)",
            title="Bland-Altman: predicted vs reference volume")
    ax2.grid(True, alpha=0.25)
    ax2.legend(handles=[Line2D([], [], ls="-", color="black", label="mean difference"),
                        Line2D([], [], ls=":", color="black", label="95 % limits of agreement")],
               loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_png(fig, target)


def _cell(value, fmt: str) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return html.escape(str(value))
    return "-" if math.isnan(v) else fmt.format(v)


def write_index(out_dir: str | os.PathLike, rows: list[dict], title: str) -> Path:
    """``out_dir/index.html``: the summary figure, then patients worst Dice first with their panels; static and
    self-contained but for the PNGs beside it (relative links)."""
    out_dir = Path(out_dir)
    ordered = sorted(rows, key=lambda r: (float(r["dice"]), str(r["patient"])))
    table, sections = [], []
    for rank, r in enumerate(ordered, 1):
        name = html.escape(str(r["patient"]))
        anchor = quote(str(r["patient"]))
        inst = html.escape(str(r.get("institution") or institution_of(str(r["patient"]))))
        cells = [_cell(r["dice"], "{:.3f}"), _cell(r["label_ml"], "{:.1f}"), _cell(r["pred_ml"], "{:.1f}"),
                 _cell(r.get("hd95_mm", math.nan), "{:.1f}")]
        table.append(f'<tr><td>{rank}</td><td><a href="#{anchor}">{name}</a></td><td>{inst}</td>'
                     + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        img = f"{PANELS}/{quote(str(r['patient']))}.png"
        body = (f'<img src="{img}" alt="{name}: slices with expert and model outlines" loading="lazy">'
                if (out_dir / PANELS / f"{r['patient']}.png").is_file() else "<p>(no panel)</p>")
        sections.append(f'<section id="{anchor}"><h2>{rank}. {name} &middot; Dice {cells[0]}</h2>{body}</section>')
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1600px}} img{{max-width:100%;height:auto}}
table{{border-collapse:collapse}} td,th{{padding:2px 10px;text-align:right}}
td:nth-child(2),td:nth-child(3){{text-align:left}} tr:nth-child(even){{background:#f2f2f2}}
.key span{{display:inline-block;width:2em;height:4px;vertical-align:middle}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<p>Research use only, not for diagnosis. {len(rows)} patients, worst Dice first. Panels: FLAIR, patient right on the
image left; <span class="key">expert outline <span style="background:{hex_colour(REFERENCE_RGB)}"></span></span> and
<span class="key">model outline <span style="background:{hex_colour(PREDICTION_RGB)}"></span></span>. Volumes in mL
(nominal on the Kaggle slices), HD95 in mm.</p>
<p><img src="{SUMMARY_PNG}" alt="Dice against lesion volume and Bland-Altman plot of the volumes"></p>
<table><tr><th>#</th><th>patient</th><th>site</th><th>Dice</th><th>reference mL</th><th>predicted mL</th>
<th>HD95 mm</th></tr>
{chr(10).join(table)}
</table>
{chr(10).join(sections)}
</body></html>
"""
    target = out_dir / INDEX_HTML
    write_text_atomic(target, page)
    return target


def write_evaluation_pictures(out_dir: str | os.PathLike, rows: list[dict], title: str) -> Path:
    """The summary figure and ``index.html`` over ``rows`` (the panels are written per case, as cases come);
    returns the index."""
    write_summary_figure(rows, Path(out_dir) / SUMMARY_PNG, title)
    return write_index(out_dir, rows, title)
