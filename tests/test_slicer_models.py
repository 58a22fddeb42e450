"""The Slicer module's model choice (issue 24): a shipped model set or a model folder made by ``finetune``.

Headless under slicer-core, real MRML and the real ``segment-case`` child process: a model folder in
``finetune``'s layout (its ``configs/inference.json`` written by the same function) gives the same labelmap
through the Logic, in-process and as a background job, as ``monaiunetseg segment --model-dir``; the shipped
``fast`` and ``default`` sets load different weights; a wrong folder is refused with a message saying why.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from test_slicer_mrml import _drive, headless_widget, module_logic, stand_in_command, variant_files  # noqa: F401
from MONAIUNetSegLib import jobs, models, mrml, segmentations  # noqa: E402

from conftest import BUNDLE_DIR  # noqa: E402


@pytest.fixture(scope="module")
def model_folder(ensemble_bundle, tmp_path_factory) -> Path:
    """A folder as ``finetune`` writes it (models/model.pt, configs/inference.json, docs/README.md) holding
    real weights that differ from the shipped ones (the ensemble fixture's perturbed member)."""
    from monaiunetseg.training.model_folder import inference_config

    root = tmp_path_factory.mktemp("finetuned") / "my_model"
    (root / "models").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "docs").mkdir()
    shutil.copy(ensemble_bundle / "models" / "fold1.pt", root / "models" / "model.pt")
    config = inference_config("shipped", {"min_fraction": 0.2})
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (root / "docs" / "README.md").write_text("# my_model: fine-tuned MONAIUNetSeg model (test)\n")
    return root


def test_shipped_model_sets_are_listed_default_first():
    config = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())
    sets = models.model_sets()
    assert sets[0] == "default" and set(sets) == set(config["models"]) >= {"default", "fast", "full"}


def test_module_offers_the_shipped_sets_and_a_folder(module_logic):
    assert module_logic.MODEL_CHOICES == models.model_sets() + [models.FOLDER_CHOICE]


def test_segment_case_command_names_the_model_and_folder(tmp_path):
    command = jobs.segment_case_command("in.nii.gz", "out", "r.json", "cpu", python="py", model="fast")
    assert command[-4:] == ["--device", "cpu", "--model", "fast"] and "--bundle" not in command
    command = jobs.segment_case_command("in.nii.gz", "out", "r.json", "cpu", python="py", bundle=tmp_path)
    assert command[-4:] == ["--model", "default", "--bundle", str(tmp_path)]


def test_invalid_model_folders_are_refused_with_the_reason(tmp_path, model_folder):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    broken = tmp_path / "broken"
    shutil.copytree(model_folder, broken)
    (broken / "models" / "model.pt").unlink()
    cases = {
        "": "no model folder chosen",
        ".": "no model folder chosen",
        str(tmp_path / "missing"): "does not exist or is not a folder",
        str(tmp_path / "notes.txt"): "does not exist or is not a folder",
        str(tmp_path / "empty"): "is not a model folder: it has no configs/inference.json",
        str(broken): "weights missing for set 'default': models/model.pt",
    }
    for folder, reason in cases.items():
        with pytest.raises(models.ModelFolderError, match=reason):
            models.check_model_folder(folder)
    with pytest.raises(models.ModelFolderError, match=r"no model set 'fast' \(it has: default\)"):
        models.check_model_folder(model_folder, "fast")
    assert models.check_model_folder(model_folder) == model_folder.resolve()
    assert models.resolve("fast") == models.ModelChoice("fast", None)
    assert models.resolve(models.FOLDER_CHOICE, model_folder) == models.ModelChoice("default", str(model_folder.resolve()))


def test_fast_and_default_load_different_weights_and_are_cached_apart(module_logic):
    logic = module_logic.MONAIUNetSegLogic()
    fast, default = logic.getSegmenter("cpu", "fast"), logic.getSegmenter("cpu", "default")
    config = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())
    assert [w.resolve() for w in fast.weights] == [(BUNDLE_DIR / f).resolve() for f in config["models"]["fast"]]
    assert [w.resolve() for w in default.weights] == [(BUNDLE_DIR / f).resolve() for f in config["models"]["default"]]
    assert fast.weights != default.weights
    assert logic.getSegmenter("cpu", "fast") is fast and logic.getSegmenter("cpu") is default
    assert set(module_logic.MONAIUNetSegLogic._segmenters) == {("cpu", None, "fast"), ("cpu", None, "default")}


def test_model_folder_gives_the_cli_labelmap_in_process_and_in_the_background(module_logic, model_folder, variant_files,
                                                                              tmp_path):
    """The Slicer Logic with a finetune-style folder = ``monaiunetseg segment --model-dir`` on the same file,
    voxel for voxel, in-process and through the background job (its ``segment-case --bundle``)."""
    from monaiunetseg.cli import main as cli_main

    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(variant_files["axial"], inputs / "axial.nii.gz")
    out = tmp_path / "cli"
    assert cli_main(["segment", str(inputs), "-o", str(out), "--device", "cpu", "--quiet",
                     "--model-dir", str(model_folder)]) == 0
    cli = np.asarray(nib.load(out / "axial_seg.nii.gz").dataobj)
    assert cli.any()

    scene = module_logic.slicer.mrmlScene
    logic = module_logic.MONAIUNetSegLogic()
    volumeNode = mrml.load_volume(inputs / "axial.nii.gz", scene)
    for in_process in (True, False):
        result = logic.run(volumeNode, device="cpu", inProcess=in_process, timeout=600, bundle=str(model_folder))
        mask = segmentations.segment_array_xyz(result.segmentationNode, result.segmentId, volumeNode)
        assert np.array_equal(mask, cli), in_process
    segmenter = logic.getSegmenter("cpu", bundle=model_folder)
    assert [w.resolve() for w in segmenter.weights] == [(model_folder / "models" / "model.pt").resolve()]
    shipped = logic.run(volumeNode, device="cpu", model="fast")  # the shipped weights: another labelmap
    assert not np.array_equal(segmentations.segment_array_xyz(shipped.segmentationNode, shipped.segmentId, volumeNode), cli)


def test_logic_refuses_an_invalid_folder_before_any_work(module_logic, variant_files, tmp_path):
    scene = module_logic.slicer.mrmlScene
    logic = module_logic.MONAIUNetSegLogic()
    volumeNode = mrml.load_volume(variant_files["axial"], scene)
    (tmp_path / "empty").mkdir()
    for in_process in (True, False):
        with pytest.raises(models.ModelFolderError, match="is not a model folder: it has no configs/inference.json"):
            logic.run(volumeNode, device="cpu", inProcess=in_process, bundle=str(tmp_path / "empty"))
    assert not logic.isBusy() and not module_logic.MONAIUNetSegLogic._segmenters
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_widget_passes_the_chosen_folder_to_the_background_job(headless_widget, module_logic, variant_files,
                                                                stand_in_command, model_folder, monkeypatch):
    seen = []
    stand_in = jobs.segment_case_command

    def recording(*args, **kwargs):
        seen.append((kwargs.get("model"), kwargs.get("bundle")))
        return stand_in(*args, **kwargs)

    monkeypatch.setattr(jobs, "segment_case_command", recording)
    scene = module_logic.slicer.mrmlScene
    headless_widget._parameterNode.inputVolume = mrml.load_volume(variant_files["axial"], scene)
    headless_widget._parameterNode.model = models.FOLDER_CHOICE

    headless_widget.onSegment()  # no folder chosen yet: a message, nothing queued
    assert not headless_widget.logic.isBusy() and "no model folder chosen" in headless_widget.errors[-1][0]

    headless_widget._parameterNode.modelFolder = model_folder
    headless_widget._updateButtons()
    assert headless_widget.ui.modelFolderPathLineEdit.enabled
    headless_widget.onSegment()
    _drive(headless_widget)
    assert seen == [("default", str(model_folder.resolve()))]
    assert "with the model folder" in "\n".join(headless_widget.ui.logTextEdit.lines)
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1

    headless_widget._parameterNode.model = "fast"
    headless_widget._updateButtons()
    assert not headless_widget.ui.modelFolderPathLineEdit.enabled
    headless_widget.onSegment()
    _drive(headless_widget)
    assert seen[-1] == ("fast", None)
