"""Colours and figure plumbing shared by the pictures: one palette that stays distinct for colour-blind readers.

Okabe-Ito colours (Okabe and Ito 2008): the expert outline is orange and the model's blue, a pair that red-green
colour-blind readers (the common forms) still tell apart; institutions cycle through the rest of the palette.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from monaiunetseg.files import atomic_path

OKABE_ITO = {
    "orange": (230, 159, 0),
    "sky_blue": (86, 180, 233),
    "bluish_green": (0, 158, 115),
    "yellow": (240, 228, 66),
    "blue": (0, 114, 178),
    "vermillion": (213, 94, 0),
    "reddish_purple": (204, 121, 167),
    "black": (0, 0, 0),
}
REFERENCE_RGB = OKABE_ITO["orange"]  # the expert's outline
PREDICTION_RGB = OKABE_ITO["blue"]  # the model's outline
# Categories get colour and marker both, so that no reader depends on colour alone.
CATEGORY_ORDER = ("blue", "orange", "bluish_green", "reddish_purple", "sky_blue", "vermillion", "yellow", "black")
CATEGORY_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DPI = 100


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def category_colours(names: list[str]) -> dict[str, str]:
    """A stable colour per category (e.g. institution), in sorted order of the names."""
    return {name: hex_colour(OKABE_ITO[CATEGORY_ORDER[i % len(CATEGORY_ORDER)]]) for i, name in enumerate(sorted(names))}


def category_markers(names: list[str]) -> dict[str, str]:
    """A matplotlib marker per category, in the order of :func:`category_colours`."""
    return {name: CATEGORY_MARKERS[i % len(CATEGORY_MARKERS)] for i, name in enumerate(sorted(names))}


def new_figure(width_px: int, height_px: int, facecolor: str = "white"):
    """A matplotlib ``Figure`` of exactly ``width_px`` x ``height_px`` pixels when saved (Agg, no pyplot)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, facecolor=facecolor)


def save_png(fig, target: str | os.PathLike, palette: list[tuple[int, int, int]] | None = None) -> Path:
    """Save ``fig`` as a PNG at its own size, atomically (a killed run leaves no half-written picture).

    ``palette`` (at most 256 colours): store the picture as an indexed PNG of these colours (each pixel to the
    nearest one, no dithering), about a third of the size of RGB: for pictures of grey images with a few drawn
    colours, which the palette then keeps exactly.
    """
    target = Path(target)
    with atomic_path(target) as tmp:
        if palette is None:
            fig.savefig(tmp, format="png", dpi=DPI, facecolor=fig.get_facecolor())
        else:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from PIL import Image

            canvas = FigureCanvasAgg(fig)
            canvas.draw()
            rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
            pal = Image.new("P", (1, 1))
            pal.putpalette([c for colour in palette for c in colour] + [0] * 3 * (256 - len(palette)))
            rgb.quantize(palette=pal, dither=Image.Dither.NONE).save(tmp, format="PNG", optimize=True)
    return target


def grey_palette(*colours: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    """``colours`` followed by as many evenly spaced greys (black and white included) as fit in 256 entries."""
    greys = np.linspace(0, 255, 256 - len(colours)).round().astype(int)
    return [*colours, *((int(g),) * 3 for g in greys)]
