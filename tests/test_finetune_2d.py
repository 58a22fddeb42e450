"""A real 2D task end to end: the DSB-2018 nuclei picture shipped with StarDist (BSD-3, tests/data/stardist).
Tiles of its left half -> prepare-pairs -> finetune --from none (the bundle's full trainer, from scratch, on the
CPU) -> ``segment --model-dir`` on PNG tiles of the right half, which the model never saw (a PNG mask per tile)
-> Dice. Measured: 0.93 after 25 epochs (about 1.7 CPU minutes of training on 2 shared cores)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from monaiunetseg.cli import main as cli_main
from monaiunetseg.metrics import dice

from test_finetune import DATA, TILE, write_tiles

EPOCHS = 25


def test_nuclei_from_scratch_reach_dice_080_on_the_unseen_half(tmp_path: Path):
    tiles = write_tiles(tmp_path / "tiles", slice(0, 256))
    prepared, model = tmp_path / "prepared", tmp_path / "model"
    assert cli_main(["prepare-pairs", str(tiles), "-o", str(prepared), "--folds", "4"]) == 0
    assert cli_main(["finetune", str(prepared), "-o", str(model), "--from", "none", "--epochs", str(EPOCHS),
                     "--batch-size", "2", "--num-samples", "4", "--device", "cpu"]) == 0
    config = json.loads((model / "configs" / "inference.json").read_text())
    assert "trust" not in config  # the LGG confidence model says nothing about a model trained from scratch

    truth = tifffile.imread(DATA / "mask2d.tif")[:, 256:] > 0
    unseen = write_tiles(tmp_path / "unseen", slice(256, 512))  # the tiles' scale, as in training
    pictures = sorted(unseen.glob("t*[0-9].png"))
    out = tmp_path / "seg"
    assert cli_main(["segment", *map(str, pictures), "-o", str(out), "--model-dir", str(model), "--device", "cpu",
                     "--quiet"]) == 0
    pred = np.zeros(truth.shape, bool)
    for picture in pictures:
        mask = np.asarray(Image.open(out / f"{picture.stem}_seg.png"))
        assert mask.shape == (TILE, TILE) and set(np.unique(mask)) <= {0, 255}  # a PNG of the picture's size
        r, c = (int(v) for v in picture.stem[1:].split("_"))
        pred[r:r + TILE, c:c + TILE] = mask > 0
    score = dice(pred, truth)
    print(f"nuclei Dice on the unseen half: {score:.3f}")
    assert score >= 0.80
