"""Issue 31: model folders and weights files checked when they are loaded: JSON types as JSON gives them, the trust
block in full, weights against the declared network without building it, and refusals that never suggest running
a file's code."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monaiunetseg.cli import main

from conftest import BUNDLE_DIR, SAMPLE_FLAIR
from test_prepare_pairs import save_nifti, volume


def model_folder(root: Path, **changes) -> Path:
    """A copy of the shipped bundle's configs and first weights, with ``changes`` made to configs/inference.json."""
    shutil.copytree(BUNDLE_DIR / "configs", root / "configs")
    (root / "models").mkdir()
    shutil.copy(BUNDLE_DIR / "models" / "model.pt", root / "models" / "model.pt")
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["models"] = {"default": ["models/model.pt"]}
    for key, value in changes.items():
        config[key] = value
    path.write_text(json.dumps(config))
    return root


@pytest.mark.parametrize("changes, message", [
    ({"postprocessing": {"largest_only": "false"}}, "largest_only must be true or false"),
    ({"postprocessing": {"min_fraction": "0.5"}}, "min_fraction must be a number"),
    ({"trust": {"confidence": {"features": ["uncertain_ratio"], "coefficients": [1.0]}, "review_below": 0.8,
                "min_agreement": 0.8}}, "trust: malformed block"),
    ({"trust": {"confidence": {"features": ["volume"], "coefficients": [1.0], "intercept": 0.0}, "review_below": 0.8,
                "min_agreement": 0.8}}, "unknown feature"),
])
def test_a_model_folder_with_bad_values_is_refused_up_front(tmp_path: Path, capsys, changes, message):
    """Item 11: "false" as a string is not applied as true, "0.5" is not a traceback, a malformed trust block is
    refused when the folder is loaded (exit 2, one line naming configs/inference.json), before any case."""
    folder = model_folder(tmp_path / "model", **changes)
    out = tmp_path / "out"
    assert main(["segment", str(SAMPLE_FLAIR), "-o", str(out), "--model-dir", str(folder), "--device", "cpu",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "inference.json" in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "report.csv").exists()


def test_declared_channels_are_checked_against_the_weights_before_building(tmp_path: Path):
    """Item 14: a folder declaring channels of 4096 is refused from the weights' shapes, without building the
    1 GB network (peak memory of the loading process stays near that of torch itself)."""
    folder = model_folder(tmp_path / "model", network_def={
        **json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())["network_def"],
        "channels": [4096, 4096, 4096, 4096, 4096]})
    code = ("import sys; from monaiunetseg.model.bundle import read_spec, load_networks\n"
            "spec = read_spec(sys.argv[1])\n"
            "try:\n    load_networks(spec, spec.weights('default'))\nexcept ValueError as exc:\n    print(exc)\n"
            # peak RSS of this process alone: VmHWM (ru_maxrss keeps the forking pytest's, across exec)
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) // 1024)")
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300)
    message, peak = proc.stdout.strip().splitlines()[-2:]
    assert "do not fit" in message and "4096" in message, proc.stdout + proc.stderr
    assert int(peak) < 700, peak


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    for i in range(2):
        image, label, affine = volume()
        save_nifti(image, affine, tmp_path / "pairs" / "images" / f"c{i}.nii.gz")
        save_nifti(label, affine, tmp_path / "pairs" / "labels" / f"c{i}.nii.gz")
    out = tmp_path / "prepared"
    assert main(["prepare-pairs", str(tmp_path / "pairs" / "images"), str(tmp_path / "pairs" / "labels"), "-o",
                 str(out), "--folds", "2"]) == 0
    return out


class _Code:
    def __reduce__(self):
        return (print, ("this ran",))


def test_finetune_from_a_bad_weights_file_says_why_on_the_console(prepared: Path, tmp_path: Path, capsys):
    """Item 16 (and 18, the pickle refusal): a corrupt file, a pickle, another network's weights: exit 2 with the
    reason on the console before training starts, no "rerun to resume", no advice to load with
    weights_only=False."""
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    pickled = tmp_path / "code.pt"
    pickled.write_bytes(pickle.dumps({"w": _Code()}))
    other = tmp_path / "other.pt"
    from monai.networks.nets import UNet

    torch.save(UNet(2, 1, 2, (4, 8), (2,)).state_dict(), other)
    capsys.readouterr()
    for source, message in ((corrupt, "not a readable PyTorch state_dict"), (pickled, "beyond tensors"),
                            (other, "do not fit the network trained here")):
        code = main(["finetune", str(prepared), "-o", str(tmp_path / f"m_{source.stem}"), "--from", str(source),
                     "--epochs", "1", "--device", "cpu"])
        captured = capsys.readouterr()
        assert code == 2 and message in captured.err and str(source) in captured.err, captured
        assert "rerun" not in captured.out + captured.err and "weights_only=False" not in captured.err
        assert "will likely succeed" not in captured.err
        assert not (tmp_path / f"m_{source.stem}" / "train" / "model.pt").exists()
