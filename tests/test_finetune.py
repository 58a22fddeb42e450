"""``finetune``: the bundle's trainer from the shipped weights on a prepare-pairs data set, resumed from its
checkpoint on a rerun, into a model folder that ``segment --model-dir`` (and ``--bundle``) runs from anywhere."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from monaiunetseg.cli import main as cli_main
from monaiunetseg.model.bundle import read_spec

from conftest import BUNDLE_DIR, SAMPLE_FLAIR

DATA = Path(__file__).parent / "data" / "stardist"
TILE = 128


def write_tiles(out: Path, columns: slice, tile: int = TILE) -> Path:
    """The StarDist nuclei picture's ``columns`` cut into ``tile`` x ``tile`` PNG tiles with TIF instance masks."""
    image, mask = tifffile.imread(DATA / "img2d.tif"), tifffile.imread(DATA / "mask2d.tif")
    image, mask = image[:, columns], mask[:, columns]
    out.mkdir(parents=True, exist_ok=True)
    for r in range(0, image.shape[0] - tile + 1, tile):
        for c in range(0, image.shape[1] - tile + 1, tile):
            Image.fromarray(image[r:r + tile, c:c + tile].astype(np.uint8)).save(out / f"t{r:03d}_{c:03d}.png")
            tifffile.imwrite(out / f"t{r:03d}_{c:03d}_mask.tif", mask[r:r + tile, c:c + tile])
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    tiles = write_tiles(root / "tiles", slice(0, 256))
    assert cli_main(["prepare-pairs", str(tiles), "-o", str(root / "prepared"), "--folds", "4"]) == 0
    return root / "prepared"


def run_finetune(prepared: Path, model: Path, epochs: int, source: str = "fast") -> str:
    """One ``finetune`` call (``--keep-worse``: these tests are about the mechanics, not whether LGG weights help
    on nuclei); returns what it added to the training log."""
    log = model / "train" / "train.log"
    before = log.stat().st_size if log.is_file() else 0
    rc = cli_main(["finetune", str(prepared), "-o", str(model), "--from", source, "--epochs", str(epochs),
                   "--batch-size", "2", "--num-samples", "2", "--device", "cpu", "--keep-worse"])
    assert rc == 0, log.read_text()[-3000:] if log.is_file() else "no log"
    return log.read_text()[before:]


def test_finetune_from_shipped_weights_resumes_and_runs_elsewhere(prepared: Path, tmp_path: Path):
    model = tmp_path / "model"
    first = run_finetune(prepared, model, epochs=1)
    start = read_spec(BUNDLE_DIR).weights("fast")[0]  # the shipped fast set's one member
    assert f"pretrained: initial weights from {Path(start).resolve()}" in first, first[-2000:]
    config = json.loads((model / "configs" / "inference.json").read_text())
    shipped = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())
    assert config["models"] == {"default": ["models/model.pt"]}
    assert config["network_def"] == shipped["network_def"] and config["trust"] == shipped["trust"]
    card = (model / "docs" / "README.md").read_text()
    assert "Validation Dice" in card and "models/model.pt" in card and "1 epochs" in card

    second = run_finetune(prepared, model, epochs=2)  # more epochs: continues from the epoch-1 checkpoint
    assert re.search(r"Restored all variables from .*checkpoint_epoch=1\.pt", second), second[-3000:]
    assert "Epoch: 2/2, Iter" in second and "Epoch: 1/2, Iter" not in second, second[-3000:]
    record = json.loads((model / "train" / "finetune.json").read_text())
    assert record["status"] == "done" and len(record["runs"]) == 2 and record["epochs"] == 2

    third = run_finetune(prepared, model, epochs=2)  # finished: nothing trained again
    assert third == ""

    copy = tmp_path / "elsewhere" / "my_model"
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("train"))
    spec = read_spec(copy)
    assert spec.weights("default") == [copy / "models" / "model.pt"]
    outputs = []
    for flag in ("--model-dir", "--bundle"):
        out = tmp_path / f"seg{flag}"
        assert cli_main(["segment", str(SAMPLE_FLAIR), "-o", str(out), flag, str(copy), "--device", "cpu", "--quiet"]) == 0
        seg = next(out.glob("*_seg.nii.gz"))
        outputs.append(np.asarray(nib.load(seg).dataobj))
        assert outputs[-1].shape == nib.load(SAMPLE_FLAIR).shape
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_finetune_refuses_a_different_source_on_resume(prepared: Path, tmp_path: Path):
    model = tmp_path / "model"
    (model / "train").mkdir(parents=True)
    (model / "train" / "finetune.json").write_text(json.dumps({"source": "none", "epochs": 3, "fold": 0}))
    assert cli_main(["finetune", str(prepared), "-o", str(model), "--from", "fast", "--epochs", "3"]) == 2
    assert cli_main(["finetune", str(prepared), "-o", str(model), "--from", "none", "--epochs", "2"]) == 2  # fewer
    assert cli_main(["finetune", str(prepared), "-o", str(model), "--from", "none", "--fold", "1", "--epochs", "3"]) == 2
    assert cli_main(["finetune", str(prepared), "-o", str(tmp_path / "other"), "--fold", "7"]) == 2  # no such fold
    assert not (tmp_path / "other").exists() and not (model / "train" / "train.log").exists()


def test_finetune_resumes_after_a_kill(prepared: Path, tmp_path: Path):
    """A finetune process killed (SIGKILL) after its first checkpoint: the same command continues from it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    model = tmp_path / "model"
    cmd = [sys.executable, "-m", "monaiunetseg.cli", "finetune", str(prepared), "-o", str(model), "--from", "fast",
           "--epochs", "6", "--batch-size", "2", "--num-samples", "2", "--device", "cpu", "--keep-worse"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while not list((model / "train").rglob("checkpoint_epoch=1.pt")):
            assert proc.poll() is None, "finetune ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 10 min"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: the trainer is a child of the CLI
        proc.wait()
    assert not (model / "models" / "model.pt").exists()  # killed: no model folder yet
    log = run_finetune(prepared, model, epochs=6)
    assert re.search(r"Restored all variables from .*checkpoint_epoch=\d\.pt", log), log[-3000:]
    assert "Epoch: 1/6, Iter" not in log and "Epoch: 6/6, Iter" in log, log[-3000:]
    assert (model / "models" / "model.pt").is_file()


def test_model_folder_runs_with_the_bundles_inference(prepared: Path, tmp_path: Path):
    """The shipped bundle's ``run inference`` with ``--bundle_root`` a copied model folder uses that folder's
    weights and post-processing, exactly as ``segment --model-dir`` does."""
    import subprocess
    import sys

    model = tmp_path / "model"
    run_finetune(prepared, model, epochs=1)
    copy = tmp_path / "elsewhere" / "my_model"
    shutil.copytree(model, copy, ignore=shutil.ignore_patterns("train"))
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(SAMPLE_FLAIR, scans / SAMPLE_FLAIR.name)
    out_bundle, out_cli = tmp_path / "bundle_out", tmp_path / "cli_out"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
                           str(BUNDLE_DIR / "configs" / "inference.json"), "--bundle_root", str(copy),
                           "--input_dir", str(scans), "--output_dir", str(out_bundle), "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert cli_main(["segment", str(scans), "-o", str(out_cli), "--model-dir", str(copy), "--device", "cpu", "--quiet"]) == 0
    (a,), (b,) = list(out_bundle.glob("*_seg.nii.gz")), list(out_cli.glob("*_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
    run = json.loads((out_bundle / "run.json").read_text())
    assert [w["path"] for w in run["runs"][-1]["weights"]] == [str((copy / "models" / "model.pt").resolve())]
